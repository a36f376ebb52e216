"""One smoke test per method (tiny backbone, a few SGD steps) plus momentum/queue/centre rules."""

import copy

import pytest
import torch

import selfsup
from selfsup.methods.base import Method, ema_update

SMALL = {
    "simclr": {"proj_hidden_dim": 16, "proj_dim": 8},
    "mocov2": {"proj_hidden_dim": 16, "proj_dim": 8, "queue_size": 64},
    "byol": {"proj_hidden_dim": 16, "proj_dim": 8, "pred_hidden_dim": 16},
    "simsiam": {"proj_hidden_dim": 16, "proj_dim": 8, "pred_hidden_dim": 4},
    "fastsiam": {"proj_hidden_dim": 16, "proj_dim": 8, "pred_hidden_dim": 4},
    "barlow_twins": {"proj_hidden_dim": 16, "proj_dim": 16},
    "dino": {"out_dim": 32, "head_hidden_dim": 16, "bottleneck_dim": 8, "num_local_crops": 2},
    "rotnet": {},
}
VIEW_COUNTS = {"fastsiam": 4, "dino": 4, "rotnet": 4}
TARGETS = {"mocov2": ["key_backbone"], "byol": ["target_backbone"], "dino": ["teacher_backbone"]}


def build(name: str, **extra) -> Method:
    return selfsup.build(
        name,
        backbone="convnet_tiny",
        backbone_kwargs={"width": 4},
        image_size=16,
        **SMALL[name],
        **extra,
    )


def test_every_method_is_registered_with_defaults():
    methods = selfsup.list_methods()
    assert set(SMALL) <= set(methods)
    assert methods["simclr"]["temperature"] == 0.5
    assert methods["byol"]["base_momentum"] == 0.996
    assert methods["fastsiam"]["num_views"] == 4
    assert methods["barlow_twins"]["lambda_param"] == 5e-3
    assert methods["dino"]["out_dim"] == 65536
    assert methods["mocov2"]["queue_size"] == 65536
    assert methods["simsiam"]["image_size"] == 224  # base arguments are listed too


@pytest.mark.parametrize("name", list(SMALL))
def test_smoke_training_moves_parameters(name):
    torch.manual_seed(0)
    method = build(name)
    images = torch.randint(0, 256, (8, 3, 20, 20), dtype=torch.uint8)
    views = method.views(images)
    assert len(views) == VIEW_COUNTS.get(name, 2)
    before = copy.deepcopy(method.backbone.state_dict())
    targets_before = {
        t: copy.deepcopy(getattr(method, t).state_dict()) for t in TARGETS.get(name, [])
    }
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05)
    for step in range(3):
        out = method.training_loss(method.views(images))
        assert torch.isfinite(out.loss)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        method.on_train_step_end((step + 1) / 3)
    for t in TARGETS.get(name, []):
        assert all(p.grad is None for p in getattr(method, t).parameters()), "target got gradients"
        after = getattr(method, t).state_dict()
        assert any(not torch.equal(after[k], v) for k, v in targets_before[t].items())
    moved = [not torch.equal(v, method.backbone.state_dict()[k]) for k, v in before.items()]
    assert any(moved)
    assert torch.isfinite(method(images))  # loss = method(images)


@pytest.mark.parametrize("name", ["byol", "mocov2", "dino"])
def test_momentum_target_follows_ema_rule(name):
    torch.manual_seed(0)
    method = build(name)
    online_name = {"byol": "backbone", "mocov2": "backbone", "dino": "backbone"}[name]
    target = getattr(method, TARGETS[name][0])
    with torch.no_grad():  # make the online weights differ from the target
        for p in getattr(method, online_name).parameters():
            p.add_(torch.randn_like(p))
    expected = copy.deepcopy(target)
    progress = 0.5
    method.on_train_step_end(progress)
    ema_update(expected, getattr(method, online_name), method.momentum)
    for a, b in zip(target.parameters(), expected.parameters(), strict=True):
        assert torch.allclose(a, b)
    if name in ("byol", "dino"):  # cosine schedule 0.996 -> 1 at progress 0.5
        assert method.momentum == pytest.approx(1 - 0.004 * 0.5)
    else:
        assert method.momentum == pytest.approx(0.999)


def test_moco_queue_advances_and_holds_new_keys():
    method = build("mocov2")
    ptr = int(method.queue.ptr)
    method.training_loss(method.views(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)))
    assert int(method.queue.ptr) == (ptr + 8) % 64
    norms = method.queue.keys[ptr : ptr + 8].norm(dim=1)
    assert torch.allclose(norms, torch.ones(8), atol=1e-5)


def test_dino_centre_and_teacher_temperature():
    method = build("dino", warmup_teacher_temp=0.04, teacher_temp=0.07)
    assert float(method.center.abs().sum()) == 0
    method.training_loss(method.views(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)))
    assert float(method.center.abs().sum()) > 0
    method.on_train_step_end(0.15)
    assert method.teacher_temp == pytest.approx(0.055)
    method.on_train_step_end(0.9)
    assert method.teacher_temp == pytest.approx(0.07)


def test_rotnet_targets_follow_view_order():
    torch.manual_seed(0)
    method = build("rotnet")
    views = method.views(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8))
    out = method.training_loss(views)
    shuffled = method.training_loss([views[1], views[0], views[2], views[3]])
    assert not torch.isclose(out.loss, shuffled.loss)
    assert 0 <= float(out.logs["accuracy"]) <= 1


def test_embed_uses_eval_mode_and_restores_training():
    method = build("simsiam")
    method.train()
    images = torch.randint(0, 256, (6, 3, 24, 24), dtype=torch.uint8)
    feats = method.embed(images)
    assert feats.shape == (6, method.feature_dim)
    assert method.backbone.training
    method.backbone.eval()
    with torch.no_grad():
        expected = method.backbone(method.views.preprocess(images))
    assert torch.allclose(feats, expected)


def test_wrong_number_of_views_is_named():
    method = build("fastsiam")
    with pytest.raises(ValueError, match="num_views=4"):
        method.training_loss([torch.zeros(2, 3, 16, 16)] * 2)


def test_wafer_style_and_one_channel():
    method = selfsup.build(
        "fastsiam", backbone="convnet_tiny", backbone_kwargs={"width": 4}, in_channels=1,
        image_size=16, view_style="wafer", **SMALL["fastsiam"],
    )  # fmt: skip
    maps = torch.randint(0, 3, (4, 1, 26, 26), dtype=torch.uint8)
    assert torch.isfinite(method(maps))
    assert method.embed(maps).shape == (4, 32)
