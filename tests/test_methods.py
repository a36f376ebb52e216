"""One smoke test per method plus the momentum, queue, centre and schedule rules, on tiny nets."""

import math

import pytest
import torch
from torch.nn import functional as F

import selfsup
from selfsup.methods.base import Method
from selfsup.runtime.optim import parameter_groups
from tests.conftest import sample_fields

IMAGE_SIZE = 16
BATCH = 8
# name -> (small head kwargs, number of views of the default recipe)
SPECS = {
    "simclr": (dict(proj_hidden_dim=16, proj_dim=8), 2),
    "simclrv2": (dict(proj_hidden_dim=16, proj_dim=8), 2),
    "dcl": (dict(proj_hidden_dim=16, proj_dim=8), 2),
    "dclw": (dict(proj_hidden_dim=16, proj_dim=8), 2),
    "mocov2": (dict(proj_hidden_dim=16, proj_dim=8, queue_size=64), 2),
    "mocov1": (dict(proj_dim=8, queue_size=64), 2),
    "mocov3": (dict(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16), 2),
    "byol": (dict(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16), 2),
    "simsiam": (dict(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=4), 2),
    "fastsiam": (dict(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=4), 4),
    "barlow_twins": (dict(proj_hidden_dim=16, proj_dim=8), 2),
    "dino": (dict(out_dim=32, head_hidden_dim=16, bottleneck_dim=8, num_local_crops=2), 4),
    "rotnet": ({}, 4),
    "jigsaw": (dict(tile_dim=8, hidden_dim=16), 1),
    "pirl": (dict(proj_dim=8, num_samples=32, num_negatives=16), 2),
    "cpc": (dict(target_dim=8, context_hidden_dim=16, context_blocks=2), 1),
    "supcon": (dict(proj_hidden_dim=16, proj_dim=8), 2),
    "nnclr": (dict(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16, queue_size=64), 2),
    "vicreg": (dict(proj_hidden_dim=16, proj_dim=8), 2),
    "cmc": (dict(proj_dim=8, num_samples=32, num_negatives=16), 1),
    "swav": (dict(proj_hidden_dim=16, proj_dim=8, num_prototypes=10, num_local_crops=2), 4),
    "instdisc": (dict(proj_dim=8, num_samples=32, num_negatives=16), 1),
    "exemplar": (dict(proj_dim=8, num_samples=32), 2),
    "bigan": (
        dict(z_dim=8, generator_width=8, discriminator_width=8, discriminator_hidden_dim=8),
        1,
    ),
    # MAE trains a ViT only: its backbone comes with its entry (a 1-block, 32-wide vit_tiny)
    "mae": (dict(backbone="vit_tiny", backbone_kwargs=dict(depth=1, width=32, heads=2)), 1),
    "denoising_ae": ({}, 1),
    "context_ae": ({}, 1),
    "split_brain": ({}, 1),
}
# momentum methods: (target attribute, online attribute) pairs
TARGETS = {
    "mocov2": [("key_backbone", "backbone"), ("key_projector", "projector")],
    "mocov1": [("key_backbone", "backbone"), ("key_projector", "projector")],
    "mocov3": [("key_backbone", "backbone"), ("key_projector", "projector")],
    "byol": [("target_backbone", "backbone"), ("target_projector", "projector")],
    "dino": [("teacher_backbone", "backbone"), ("teacher_head", "head")],
}


pytestmark = pytest.mark.usefixtures("one_thread")


def build(name: str, **extra) -> Method:
    kwargs = {"backbone": "convnet_tiny", "backbone_kwargs": {"width": 4}, **SPECS[name][0]}
    return selfsup.build(name, image_size=IMAGE_SIZE, **{**kwargs, **extra})


def images(seed: int = 0, batch: int = BATCH) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=g)


def hand_views(name: str, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    count = SPECS[name][1]
    sizes = [IMAGE_SIZE] * count
    if name in ("dino", "swav"):  # multi-crop: 2 global crops, then smaller local ones
        sizes = [IMAGE_SIZE, IMAGE_SIZE] + [8] * (count - 2)
    return [torch.randn(BATCH, 3, s, s, generator=g) for s in sizes]


def optimizer_for(method: Method) -> torch.optim.Optimizer:
    return torch.optim.SGD(parameter_groups(method, weight_decay=0.0), lr=0.05, momentum=0.9)


@pytest.mark.parametrize("name", list(SPECS))
def test_method_trains_a_few_steps(name):
    torch.manual_seed(0)
    method = build(name)
    optimizer = optimizer_for(method)
    before = [p.detach().clone() for p in method.backbone.parameters()]
    for step in range(3):
        out = method.training_loss(hand_views(name, seed=step), **sample_fields(method, BATCH))
        assert out.loss.ndim == 0 and torch.isfinite(out.loss), name
        optimizer.zero_grad()
        out.loss.backward()
        for target_name, _ in TARGETS.get(name, []):
            target = getattr(method, target_name)
            assert all(p.grad is None and not p.requires_grad for p in target.parameters())
        optimizer.step()
        method.on_train_step_end((step + 1) / 3)
    after = list(method.backbone.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True)), name
    if name != "rotnet":
        assert "collapse_std" in out.logs and 0 < float(out.logs["collapse_std"]) < 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        views = hand_views(name, seed=9)
        loss = method.training_loss(views, **sample_fields(method, BATCH)).loss
    assert loss.dtype == torch.float32 and torch.isfinite(loss), name


@pytest.mark.parametrize("name", list(SPECS))
def test_default_views_end_to_end_and_embed(name):
    torch.manual_seed(0)
    method = build(name)
    batch = images()
    views = method.views(batch)
    assert len(views) == SPECS[name][1]
    assert all(v.shape[0] == BATCH for v in views)
    loss = method(batch, **sample_fields(method, BATCH))
    assert torch.isfinite(loss)
    loss.backward()
    for mode in (True, False):
        method.train(mode)
        feats = method.embed(batch)
        assert feats.shape == (BATCH, method.feature_dim) and not feats.requires_grad
        assert method.backbone.training is mode and method.training is mode


@pytest.mark.parametrize("name", list(TARGETS))
def test_momentum_targets_follow_the_ema_rule_and_stay_out_of_the_optimizer(name):
    torch.manual_seed(0)
    method = build(name)
    optimizer = optimizer_for(method)
    optimised = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for target_name, online_name in TARGETS[name]:
        target, online = getattr(method, target_name), getattr(method, online_name)
        assert not any(id(p) in optimised for p in target.parameters())
        pairs = zip(target.parameters(), online.parameters(), strict=True)
        assert all(torch.equal(t, o) for t, o in pairs)

    out = method.training_loss(hand_views(name), **sample_fields(method, BATCH))
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    snapshot = {
        n: (
            [p.clone() for p in getattr(method, t).parameters()],
            [p.detach().clone() for p in getattr(method, o).parameters()],
        )
        for n, (t, o) in enumerate(TARGETS[name])
    }
    progress = 0.25
    base = method.base_momentum
    final = method.final_momentum
    tau = final - (final - base) * (math.cos(math.pi * progress) + 1) / 2
    method.on_train_step_end(progress)
    assert method.momentum == pytest.approx(tau)
    moved = False
    for n, (target_name, _) in enumerate(TARGETS[name]):
        old_target, online = snapshot[n]
        for new, old, o in zip(
            getattr(method, target_name).parameters(), old_target, online, strict=True
        ):
            assert torch.allclose(new, tau * old + (1 - tau) * o, atol=1e-7)
            moved |= not torch.equal(new, old)
    assert moved, "no target parameter moved after an optimizer step and an EMA update"


def test_ema_update_blends_float_buffers_and_copies_integer_ones():
    from selfsup.methods.base import ema_update

    torch.manual_seed(0)
    online = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    target = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    online(torch.randn(8, 3))  # moves the running statistics and counts one batch
    before = {k: v.clone() for k, v in target.state_dict().items()}
    ema_update(target, online, 0.9)
    for key, value in target.state_dict().items():
        if value.dtype.is_floating_point:
            expected = 0.9 * before[key] + 0.1 * online.state_dict()[key]
            assert torch.allclose(value, expected, atol=1e-7), key
        else:
            assert torch.equal(value, online.state_dict()[key]), key


def test_default_momentum_schedules():
    byol = build("byol")
    assert (byol.base_momentum, byol.final_momentum) == (0.996, 1.0)
    assert byol.momentum_at(0.0) == pytest.approx(0.996)
    assert byol.momentum_at(0.5) == pytest.approx(0.998)
    assert byol.momentum_at(1.0) == pytest.approx(1.0)
    moco = build("mocov2")
    assert moco.momentum_at(0.0) == moco.momentum_at(0.7) == pytest.approx(0.999)


def test_moco_queue_advances_with_the_normalised_keys():
    torch.manual_seed(0)
    method = build("mocov2", shuffle_bn=False)  # shuffled keys: tests/test_shuffle_bn.py
    views = hand_views("mocov2")
    with torch.no_grad():
        expected = F.normalize(method.key_projector(method.key_backbone(views[1])), dim=1)
    assert int(method.queue.ptr) == 0
    old = method.queue.keys.clone()
    method.training_loss(views).loss.backward()
    assert int(method.queue.ptr) == BATCH
    assert torch.allclose(method.queue.keys[:BATCH], expected, atol=1e-6)
    assert torch.equal(method.queue.keys[BATCH:], old[BATCH:])
    assert torch.allclose(old.norm(dim=1), torch.ones(len(old)))

    symmetric = build("mocov2", symmetric=True)
    symmetric.training_loss(views).loss.backward()
    assert int(symmetric.queue.ptr) == 2 * BATCH


def test_dino_centre_update_and_teacher_temperature_warmup():
    torch.manual_seed(0)
    method = build("dino", teacher_temp=0.07, warmup_teacher_temp=0.04)
    views = hand_views("dino")
    with torch.no_grad():
        teacher = method.teacher_head(method.teacher_backbone(torch.cat(views[:2])))
    assert torch.equal(method.center, torch.zeros_like(method.center))
    method.training_loss(views).loss.backward()
    assert torch.allclose(method.center, 0.1 * teacher.mean(dim=0), atol=1e-6)

    assert method.teacher_temp == pytest.approx(0.04)
    method.on_train_step_end(0.15)  # half of the 0.3 warm-up
    assert method.teacher_temp == pytest.approx(0.055)
    method.on_train_step_end(0.6)
    assert method.teacher_temp == pytest.approx(0.07)


def test_dino_norm_last_layer_reaches_student_and_teacher():
    fixed, trained = build("dino"), build("dino", norm_last_layer=False)
    for method, trainable in ((fixed, False), (trained, True)):
        g = method.head.last_layer.parametrizations.weight.original0
        teacher_g = method.teacher_head.last_layer.parametrizations.weight.original0
        assert g.requires_grad is trainable and not teacher_g.requires_grad
        assert any(p is g for p in method.parameters() if p.requires_grad) is trainable


def test_dino_teacher_sees_global_views_only_and_local_size_override():
    method = build("dino", num_local_crops=3, local_crop_size=6)
    views = method.views(images())
    assert [v.shape[-1] for v in views] == [IMAGE_SIZE, IMAGE_SIZE, 6, 6, 6]
    assert torch.isfinite(method.training_loss(views).loss)


def test_fastsiam_loss_is_mean_over_views_of_cosine_to_the_others_mean():
    torch.manual_seed(0)
    method = build("fastsiam")
    views = hand_views("fastsiam")
    z, p = method.project_and_predict(views)
    expected = 0.0
    for i in range(4):
        target = sum(z[j] for j in range(4) if j != i) / 3
        expected += -F.cosine_similarity(p[i], target, dim=-1).mean() / 4
    out = method.training_loss(views)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-6)
    out.loss.backward()


def test_fastsiam_num_views_reaches_the_recipe():
    method = build("fastsiam", num_views=3)
    assert len(method.views(images())) == 3


def test_rotnet_cross_entropy_with_view_index_targets():
    torch.manual_seed(0)
    method = build("rotnet")
    views = hand_views("rotnet")
    logits = method.classifier(method.backbone(torch.cat(views)))
    targets = torch.arange(4).repeat_interleave(BATCH)
    expected = F.cross_entropy(logits, targets)
    accuracy = (logits.argmax(1) == targets).float().mean()
    out = method.training_loss(views)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert float(out.logs["accuracy"]) == pytest.approx(accuracy.item())
    mlp_head = build("rotnet", classifier_hidden_dim=8)
    assert mlp_head.classifier(torch.randn(2, mlp_head.feature_dim)).shape == (2, 4)


@pytest.mark.parametrize("name", list(SPECS))
def test_wrong_number_of_views_names_the_method(name):
    method = build(name)
    with pytest.raises(ValueError, match=name):
        views = hand_views(name)
        wrong = views[:1] if len(views) > 1 else views * 2  # 1-view methods: 2 views
        method.training_loss(wrong, **sample_fields(method, BATCH))


def test_registry_lists_all_eight_with_paper_defaults():
    methods = selfsup.list_methods()
    assert set(SPECS) <= set(methods)
    expected = {
        "simclr": dict(temperature=0.5, proj_hidden_dim=2048, proj_dim=128, num_proj_layers=2),
        "mocov2": dict(
            temperature=0.2, queue_size=65536, proj_dim=128, base_momentum=0.999, symmetric=False
        ),
        "byol": dict(
            proj_hidden_dim=4096,
            proj_dim=256,
            pred_hidden_dim=4096,
            base_momentum=0.996,
            final_momentum=1.0,
        ),
        "simsiam": dict(proj_dim=2048, pred_hidden_dim=512),
        "fastsiam": dict(num_views=4, proj_dim=2048, pred_hidden_dim=512),
        "barlow_twins": dict(
            proj_hidden_dim=8192, proj_dim=8192, num_proj_layers=3, lambda_param=5e-3
        ),
        "dino": dict(
            out_dim=65536,
            student_temp=0.1,
            teacher_temp=0.04,
            warmup_teacher_temp=0.04,
            warmup_teacher_temp_progress=0.3,
            center_momentum=0.9,
            base_momentum=0.996,
            num_local_crops=6,
        ),
        "rotnet": dict(classifier_hidden_dim=None),
    }
    for name, defaults in expected.items():
        for key, value in defaults.items():
            assert methods[name][key] == value, (name, key)
    method = build("simclr", temperature=0.1)
    assert type(method).method_name == "simclr" and method.temperature == 0.1
    assert method.hyperparameters()["temperature"] == 0.1


def test_views_dict_sets_recipe_parameters_and_survives_a_rebuild():
    method = selfsup.build(
        "fastsiam", backbone="convnet_tiny", in_channels=1, image_size=16, view_style="wafer",
        backbone_kwargs={"width": 4}, views={"regrid_p": 0.5}, num_views=3,
    )  # fmt: skip
    assert method.views.params["regrid_p"] == 0.5 and method.views.num_views == 3
    again = selfsup.build("fastsiam", **method.hyperparameters())
    assert again.views.params == method.views.params
    with pytest.raises(ValueError, match="has no parameter 'regrid'"):
        selfsup.build("fastsiam", backbone="convnet_tiny", in_channels=1, image_size=16,
                      view_style="wafer", views={"regrid": 0.5})  # fmt: skip
    with pytest.raises(ValueError, match="num_views follow"):
        selfsup.build("fastsiam", backbone="convnet_tiny", views={"num_views": 2})


def test_fail_mask_method_has_a_two_channel_backbone_and_exports_it(tmp_path):
    from selfsup.artifacts import export_backbone, load_backbone, preprocess_for

    method = selfsup.build(
        "fastsiam", backbone="convnet_tiny", in_channels=1, image_size=16, view_style="wafer",
        backbone_kwargs={"width": 4}, views={"encoding": "fail_mask"},
    )  # fmt: skip
    assert method.backbone.in_channels == 2 and method.in_channels == 1
    codes = torch.randint(0, 3, (8, 1, 20, 20), dtype=torch.uint8)
    loss = method(codes)
    assert torch.isfinite(loss)
    export_backbone(method, tmp_path)
    backbone = load_backbone(tmp_path)
    meta = backbone.metadata
    assert backbone.in_channels == 2 and meta["in_channels"] == 1
    assert meta["wafer_encoding"] == "fail_mask"
    x = preprocess_for(meta)(codes)
    assert x.shape == (8, 2, 16, 16)
    assert backbone(x).shape == (8, backbone.feature_dim)


def test_subclass_sets_attributes_after_super_and_derives_views_from_its_arguments():
    from collections.abc import Mapping

    from selfsup.heads import mlp

    class ThreeViews(Method):
        view_recipe = "fastsiam"

        def __init__(self, backbone="convnet_tiny", feature_size=None, *, views_wanted=3, **kw):
            super().__init__(backbone, feature_size, **kw)
            self.views_wanted = views_wanted  # after super(): the views never read it
            self.projector = mlp(self.feature_dim, 8, 4)

        @classmethod
        def view_overrides(cls, arguments: Mapping) -> dict:
            return {"num_views": arguments["views_wanted"]}

    method = ThreeViews(views_wanted=2, image_size=IMAGE_SIZE, backbone_kwargs={"width": 4})
    assert len(method.views(images())) == 2 and method.views_wanted == 2
    recorded = method.hyperparameters()
    assert recorded["views_wanted"] == 2 and recorded["backbone"] == "convnet_tiny"
    assert recorded["backbone_kwargs"] == {"width": 4} and recorded["image_size"] == IMAGE_SIZE
    assert method.encoder(torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)).shape == (2, 4)


def test_old_keywords_are_refused_naming_the_new_one():
    with pytest.raises(ValueError, match="mocov2: 'momentum' is now 'base_momentum'.*key encoder"):
        build("mocov2", momentum=0.99)
    method = build("mocov2", base_momentum=0.99)
    assert method.momentum_at(0.0) == method.momentum_at(1.0) == pytest.approx(0.99)
    assert method.hyperparameters()["base_momentum"] == 0.99


def test_a_registered_method_names_a_known_view_recipe():
    from selfsup.methods import register

    class NoRecipe(Method):
        pass

    with pytest.raises(ValueError, match="must name its view_recipe"):
        register("no_recipe")(NoRecipe)

    class BadRecipe(Method):
        view_recipe = "rotation"

    with pytest.raises(ValueError, match="view recipe 'rotation' is now 'rotnet'"):
        register("bad_recipe")(BadRecipe)
    assert "no_recipe" not in selfsup.list_methods() and "bad_recipe" not in selfsup.list_methods()


def test_hyperparameters_are_every_argument_and_plain_data():
    import json

    method = build("byol", views={"crop_scale": (0.3, 1.0)}, mean=(0.5, 0.5, 0.5), std=[0.25] * 3)
    recorded = method.hyperparameters()
    assert recorded["base_momentum"] == 0.996 and recorded["final_momentum"] == 1.0  # defaults
    assert recorded["views"] == {"crop_scale": [0.3, 1.0]} and recorded["mean"] == [0.5] * 3
    assert recorded["feature_size"] is None and recorded["backbone"] == "convnet_tiny"
    assert json.loads(json.dumps(recorded)) == recorded
    assert method.views.mean == (0.5,) * 3 and method.views.std == (0.25,) * 3
    recorded["proj_dim"] = -1
    assert method.hyperparameters()["proj_dim"] == 8  # a copy: editing it changes nothing
    again = selfsup.build("byol", **method.hyperparameters())
    assert again.hyperparameters() == method.hyperparameters()
    assert again.views.params == method.views.params


def test_feature_size_must_match_a_registered_backbone():
    with pytest.raises(ValueError, match="gives 32 features, but a feature size of 64"):
        build("simclr", feature_size=64)
    assert build("simclr", feature_size=32).feature_dim == 32
    with pytest.raises(ValueError, match="configure a registered backbone"):
        selfsup.build("simclr", backbone=torch.nn.Flatten(), feature_size=8,
                      backbone_kwargs={"width": 4})  # fmt: skip
