"""CMC: L*a*b* by hand, the loss of both directions by hand, each split resolved and recorded,
the two-encoder backbone exported and reloaded, one process against two ranks."""

import copy
import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import selfsup
from selfsup.artifacts import export_backbone, load_backbone, preprocess_for
from selfsup.backbones import Backbone, ChannelSplit, build_backbone
from selfsup.methods import CMC, load_method, save_method
from selfsup.methods.cmc import ViewProjector
from selfsup.views.color import LAB_RANGES, rgb_to_lab
from tests.ddp_harness import WORLD, assert_ddp_gradients, run_on_ranks

pytestmark = pytest.mark.usefixtures("one_thread")
BATCH, SIZE, N = 8, 16, 32


def build(**kwargs) -> CMC:
    kwargs = {"proj_dim": 8, "num_samples": N, "num_negatives": 16, "image_size": SIZE, **kwargs}
    return selfsup.build("cmc", backbone="convnet_tiny", backbone_kwargs={"width": 4}, **kwargs)


def rgb(seed: int = 0, batch: int = BATCH, size: int = SIZE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)


# --- L*a*b* ---------------------------------------------------------------------------------------


def test_rgb_to_lab_gives_the_known_values():
    colours = {  # sRGB -> (L, a, b), D65 (skimage.color.rgb2lab's values)
        (1.0, 1.0, 1.0): (100.0, 0.0, 0.0),
        (0.0, 0.0, 0.0): (0.0, 0.0, 0.0),
        (1.0, 0.0, 0.0): (53.24, 80.09, 67.20),
        (0.0, 1.0, 0.0): (87.74, -86.18, 83.18),
        (0.0, 0.0, 1.0): (32.30, 79.19, -107.86),
    }
    x = torch.tensor(list(colours)).T.reshape(1, 3, len(colours), 1)
    lab = rgb_to_lab(x)[0, :, :, 0].T
    assert torch.allclose(lab, torch.tensor(list(colours.values())), atol=0.01)
    grey = rgb_to_lab(torch.full((2, 3, 4, 5), 0.5))  # batched, any size; grey has a = b = 0
    assert grey.shape == (2, 3, 4, 5) and grey[:, 1:].abs().max() < 0.01
    with pytest.raises(ValueError, match=r"needs RGB images \[B, 3, H, W\]"):
        rgb_to_lab(torch.zeros(1, 1, 4, 4))


def test_the_lab_backbone_undoes_the_normalisation_and_scales_lab_to_minus_one_one():
    method = build()
    views = method.views
    raw = torch.rand(2, 3, 5, 5)
    normalised = (raw - torch.tensor(views.mean).view(1, 3, 1, 1)) / torch.tensor(views.std).view(
        1, 3, 1, 1
    )
    low = torch.tensor([r[0] for r in LAB_RANGES]).view(1, 3, 1, 1)
    high = torch.tensor([r[1] for r in LAB_RANGES]).view(1, 3, 1, 1)
    expected = (rgb_to_lab(raw) - low) / (high - low) * 2 - 1
    assert torch.allclose(method.backbone.model_input(normalised), expected, atol=1e-5)


# --- the loss by hand -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["softmax", "nce"])
def test_loss_is_each_view_against_the_other_views_bank_and_both_banks_move(kind):
    torch.manual_seed(0)
    method = build(nce_kind=kind, temperature=0.5, num_negatives=5)
    view = torch.randn(4, 3, SIZE, SIZE)
    indices = torch.tensor([3, 0, 7, 1])
    with torch.no_grad():
        f1, f2 = method.backbone.split_forward(view)
        z1 = F.normalize(method.projector.layers[0](f1), dim=1)
        z2 = F.normalize(method.projector.layers[1](f2), dim=1)
    method.bank_1.written.fill_(True)  # rows as written by earlier steps
    method.bank_2.written.fill_(True)
    bank1, bank2 = method.bank_1.rows.clone(), method.bank_2.rows.clone()
    noise2 = copy.deepcopy(method.bank_2).sample(5)  # the draws the step will make
    noise1 = copy.deepcopy(method.bank_1).sample(5)

    def by_hand(z, bank, noise):
        total = 0.0
        positives = [float(z[i] @ bank[j]) / 0.5 for i, j in enumerate(indices)]
        negatives = [[float(z[i] @ bank[k]) / 0.5 for k in noise] for i in range(4)]
        if kind == "softmax":
            for pos, negs in zip(positives, negatives, strict=True):
                total += -math.log(math.exp(pos) / (math.exp(pos) + sum(math.exp(s) for s in negs)))
            return total / 4
        every = positives + [s for negs in negatives for s in negs]
        z_norm = N * sum(math.exp(s) for s in every) / len(every)  # Z fixed at the first batch
        noise_mass = 5 / N  # K P_n
        for pos, negs in zip(positives, negatives, strict=True):
            p = math.exp(pos) / z_norm
            total -= math.log(p / (p + noise_mass))
            total -= sum(math.log(noise_mass / (math.exp(s) / z_norm + noise_mass)) for s in negs)
        return total / 4

    expected = by_hand(z1, bank2, noise2) + by_hand(z2, bank1, noise1)
    out = method.training_loss([view], indices=indices)
    assert out.loss.item() == pytest.approx(expected, rel=1e-4)
    assert "loss_view1" in out.logs and "positive_is_top_view2" in out.logs
    for bank, old, z in ((method.bank_1, bank1, z1), (method.bank_2, bank2, z2)):
        assert torch.allclose(
            bank.rows[indices], F.normalize(0.5 * old[indices] + 0.5 * z), atol=1e-6
        )
        others = torch.ones(N, dtype=torch.bool)
        others[indices] = False
        assert torch.equal(bank.rows[others], old[others])


def test_the_gradient_reaches_both_encoders_and_heads_not_the_banks():
    torch.manual_seed(0)
    method = build()
    method.training_loss(
        [torch.randn(BATCH, 3, SIZE, SIZE)], indices=torch.arange(BATCH)
    ).loss.backward()
    for trunk in method.backbone.trunk:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trunk.parameters())
    assert all(p.grad is not None for p in method.projector.parameters())
    assert not method.bank_1.rows.requires_grad and not method.bank_2.rows.requires_grad


# --- the splits -----------------------------------------------------------------------------------


def test_each_split_is_resolved_recorded_and_rebuilt():
    lab = build()
    wafer = build(in_channels=1, view_style="wafer")
    grey = build(in_channels=1)
    cases = (
        (lab, "lab", [[0], [1, 2]], 1, 3),
        (wafer, "wafer_channels", [[0], [1]], 1, 2),
        (grey, "views", [[0], [0]], 2, 1),
    )
    for method, split, groups, num_views, channels in cases:
        recorded = method.hyperparameters()
        assert recorded["split"] == split and method.split == split
        assert method.backbone.groups == groups and method.backbone.in_channels == channels
        assert method.views.num_views == num_views
        assert recorded["encoder_width"] == 0.5
        assert method.backbone.build_kwargs["trunk_kwargs"] == {"width": 2}  # half of 4
        assert json.loads(json.dumps(recorded)) == recorded
        again = selfsup.build("cmc", **recorded)
        assert again.hyperparameters() == recorded and again.split == split
    assert wafer.views.encoding == "fail_mask" and lab.backbone.convert == "lab"
    assert build(in_channels=3, split="views").views.num_views == 2  # asked for on RGB


def test_wafer_channels_give_the_fail_dies_to_one_encoder_and_the_wafer_to_the_other():
    method = build(in_channels=1, view_style="wafer").eval()
    codes = torch.randint(0, 3, (4, 1, SIZE, SIZE), dtype=torch.uint8)
    x = method.views.preprocess(codes)
    assert torch.equal(x[:, 0], (codes[:, 0] == 2).float())  # fail dies
    assert torch.equal(x[:, 1], (codes[:, 0] > 0).float())  # on the wafer
    first, second = method.backbone.trunk
    with torch.no_grad():
        expected = torch.cat([first(x[:, :1]), second(x[:, 1:])], dim=1)
        assert torch.equal(method.backbone(x), expected)
    loss = method.train()(codes, indices=torch.arange(4))
    assert torch.isfinite(loss)


def test_the_views_split_feeds_each_encoder_its_own_view():
    method = build(in_channels=1).eval()
    a, b = torch.randn(2, 4, 1, SIZE, SIZE)
    first, second = method.backbone.trunk
    with torch.no_grad():
        f1, f2 = method.backbone.split_forward([a, b])
        assert torch.equal(f1, first(a)) and torch.equal(f2, second(b))
    with pytest.raises(ValueError, match="cmc with split 'views' needs 2 view"):
        method.training_loss([a], indices=torch.arange(4))


def test_a_user_module_gets_the_views_split_with_a_copy_of_it():
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    method = CMC(net, 6, image_size=SIZE, num_samples=N, proj_dim=4)
    recorded = method.hyperparameters()
    assert recorded["split"] == "views" and recorded["feature_size"] == 6
    assert recorded["encoder_width"] == 1.0 and method.feature_dim == 12
    first, second = method.backbone.trunk
    assert first.trunk is net and second.trunk is not net
    assert method.embed(rgb()).shape == (BATCH, 12)
    with pytest.raises(
        ValueError, match="split 'lab' needs one encoder per channel group.*'Sequential'"
    ):
        CMC(net, 6, image_size=SIZE, num_samples=N, split="lab")
    with pytest.raises(ValueError, match="encoder_width=0.5 scales .*your module has none"):
        CMC(net, 6, image_size=SIZE, num_samples=N, encoder_width=0.5)


def test_bad_arguments_name_the_argument():
    for kwargs, pattern in (
        ({"split": "rgb"}, "split must be one of"),
        ({"split": "lab", "in_channels": 1}, r"split 'lab' needs RGB images \(in_channels=3"),
        ({"split": "wafer_channels"}, "split 'wafer_channels' needs 1-channel wafer maps"),
        ({"temperature": 0.0}, "cmc: temperature"),
        ({"encoder_width": 0.0}, "cmc: encoder_width"),
        ({"bank_momentum": 1.0}, "cmc: bank_momentum"),
        ({"nce_kind": "hinge"}, "cmc: nce_kind"),
        ({"num_samples": None}, "cmc needs num_samples"),
    ):
        with pytest.raises(ValueError, match=pattern):
            build(**kwargs)
    with pytest.raises(ValueError, match=r"encoder_width=0.5 .*backbone 'resnet18' has none"):
        selfsup.build("cmc", backbone="resnet18", num_samples=N, encoder_width=0.5)
    with pytest.raises(ValueError, match=r"cmc: indices must be in \[0, num_samples=32\)"):
        build().training_loss([torch.randn(2, 3, SIZE, SIZE)], indices=torch.tensor([0, 40]))


# --- the two-encoder backbone ---------------------------------------------------------------------


def test_embed_concatenates_both_encoders_and_the_export_reloads_the_same_features(tmp_path):
    for kwargs in ({}, {"in_channels": 1, "view_style": "wafer"}, {"in_channels": 1}):
        torch.manual_seed(0)
        method = build(**kwargs)
        codes = method.view_style == "wafer"
        train, images = (rgb(i)[:, : method.in_channels] for i in (0, 1))
        if codes:  # die codes 0, 1, 2
            train, images = train % 3, images % 3
        method.training_loss(method.views(train), indices=torch.arange(BATCH)).loss.backward()
        feats = method.embed(images)
        dims = method.view_feature_dims
        assert feats.shape == (BATCH, sum(dims)) and method.feature_dim == sum(dims) == 32
        with torch.no_grad():
            parts = method.eval().backbone.split_forward(method.views.preprocess(images))
        assert torch.equal(feats, torch.cat(parts, dim=1))
        folder = tmp_path / method.split
        export_backbone(method, folder)
        loaded = load_backbone(folder)
        assert isinstance(loaded, ChannelSplit) and loaded.metadata["name"] == "channel_split"
        with torch.no_grad():
            reloaded = loaded(preprocess_for(loaded.metadata)(images))
        assert torch.equal(reloaded, feats), method.split
        fmap = loaded.feature_map(preprocess_for(loaded.metadata)(images))
        assert fmap.shape[:2] == (BATCH, 32) and fmap.ndim == 4


def test_channel_split_is_a_registered_backbone_with_checked_groups():
    net = build_backbone("channel_split", 3, trunk="convnet_tiny", trunk_kwargs={"width": 2})
    assert net.groups == [[0], [1, 2]] and net.feature_dim == 32 and net.convert is None
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 32)
    with pytest.raises(ValueError, match=r"name channel\(s\) \[3\], outside 0..2"):
        build_backbone("channel_split", 3, trunk="convnet_tiny", groups=[[0], [3]])
    with pytest.raises(ValueError, match="convert='lab' needs RGB input"):
        build_backbone("channel_split", 1, trunk="convnet_tiny", convert="lab")
    trunk = Backbone(nn.Flatten(), 4, 1, "flat")
    with pytest.raises(ValueError, match="trunk 'flat' takes 1 channel"):
        ChannelSplit([trunk, trunk], [[0], [1, 2]], 3)


# --- training -------------------------------------------------------------------------------------


def test_smoke_training_moves_both_encoders_and_both_banks():
    torch.manual_seed(0)
    method = build()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    before = [[p.detach().clone() for p in t.parameters()] for t in method.backbone.trunk]
    banks = [method.bank_1.rows.clone(), method.bank_2.rows.clone()]
    for step in range(3):
        indices = torch.arange(BATCH) + step * BATCH
        loss = method(rgb(step), indices=indices)
        assert loss.ndim == 0 and torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for trunk, old in zip(method.backbone.trunk, before, strict=True):
        assert any(not torch.equal(a, b) for a, b in zip(trunk.parameters(), old, strict=True))
    for bank, old in zip((method.bank_1, method.bank_2), banks, strict=True):
        moved = (bank.rows != old).any(dim=1)
        assert moved[: 3 * BATCH].all() and not moved[3 * BATCH :].any()
    assert torch.isfinite(method.contrast_1.log_z) and torch.isfinite(method.contrast_2.log_z)


def test_a_225_px_build_runs_a_loss():
    torch.manual_seed(0)
    method = selfsup.build("cmc", backbone="resnet18", image_size=225, num_samples=4, proj_dim=8)
    assert method.hyperparameters()["encoder_width"] == 1.0  # no width keyword: full ResNets
    images = rgb(0, batch=2, size=240)
    loss = method(images, indices=torch.tensor([0, 3]))
    assert torch.isfinite(loss)
    loss.backward()
    assert method.embed(images).shape == (2, 1024)


def test_save_load_keeps_both_banks(tmp_path):
    torch.manual_seed(0)
    method = build()
    method(rgb(), indices=torch.arange(BATCH)).backward()
    folder = save_method(method, tmp_path / "cmc")
    torch.manual_seed(1)
    loaded = load_method(folder)
    for name in ("bank_1.rows", "bank_2.rows", "contrast_1.log_z", "contrast_2.log_z"):
        assert torch.equal(loaded.state_dict()[name], method.state_dict()[name]), name


def test_pretrain_records_the_split_and_exports_a_reloadable_backbone(labelled_npz, tmp_path):
    train, val = labelled_npz
    method, run = selfsup.pretrain(
        method="cmc", backbone="convnet_tiny", backbone_kwargs={"width": 4},
        method_kwargs={"proj_dim": 8, "num_negatives": 16}, data=str(train), val_data=str(val),
        image_size=16, epochs=1, batch_size=16, precision="32-true", out=str(tmp_path),
        name="run", knn_k=[3], progress_bar=False,
    )  # fmt: skip
    provenance = json.loads((run / "provenance.json").read_text())
    recorded = provenance["method_hyperparameters"]
    assert recorded["split"] == "lab" and recorded["num_samples"] == 96
    assert "split: lab" in (run / "config.yaml").read_text()
    images = rgb(2)
    loaded = load_backbone(run)
    # pretrain leaves the method channels_last on CPU; NHWC kernels sum in another order (last
    # bits differ on AVX2), so compare in the memory format the exported backbone loads in
    method = method.to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        assert torch.equal(loaded(preprocess_for(loaded.metadata)(images)), method.embed(images))


# --- two ranks ------------------------------------------------------------------------------------

PROJ, BANK, K = 5, 12, 6


def cmc_steps(data, rows):
    """Two training_loss calls of a CMC whose two encoders (L: 1 channel, ab: 2) are BatchNorm-free
    Linear layers on 2x2 "images", so one process on the global batch must equal two ranks."""
    torch.manual_seed(0)
    method = CMC("convnet_tiny", image_size=2, num_samples=BANK, num_negatives=K, proj_dim=PROJ,
                 temperature=0.5, backbone_kwargs={"width": 1})  # fmt: skip
    trunks = [
        Backbone(nn.Sequential(nn.Flatten(), nn.Linear(c * 4, 6)), 6, c, f"linear{c}")
        for c in (1, 2)
    ]
    views = method.views
    method.backbone = ChannelSplit(
        trunks, [[0], [1, 2]], 3, convert="lab", rgb_mean=views.mean, rgb_std=views.std
    )
    method.projector = ViewProjector([6, 6], PROJ)
    for name, value in data["weights"].items():
        method.get_parameter(name).data.copy_(value)
    grads = []
    for step in range(2):
        view = data["views"][step][rows].clone().requires_grad_()
        method.training_loss([view], indices=data["indices"][step][rows]).loss.backward()
        grads.append(view.grad)
    return {
        "views": tuple(grads),
        "weights": {n: p.grad for n, p in method.named_parameters()},
        "banks": (method.bank_1.rows.clone(), method.bank_2.rows.clone()),
        "log_z": torch.stack([method.contrast_1.log_z, method.contrast_2.log_z]),
    }


def test_two_ranks_give_the_one_process_gradients_banks_and_normalisers():
    g = torch.Generator().manual_seed(2)
    weights = {
        "backbone.trunk.0.trunk.1.weight": torch.randn(6, 4, generator=g),
        "backbone.trunk.1.trunk.1.weight": torch.randn(6, 8, generator=g),
        "projector.layers.0.weight": torch.randn(PROJ, 6, generator=g),
        "projector.layers.1.weight": torch.randn(PROJ, 6, generator=g),
    }
    data = {
        "views": torch.rand(2, BATCH, 3, 2, 2, generator=g) * 1.5 - 0.5,
        "indices": torch.stack([torch.randperm(BANK, generator=g)[:BATCH] for _ in range(2)]),
        "weights": weights,
    }
    results = run_on_ranks(cmc_steps, data, batch=BATCH)
    assert_ddp_gradients(cmc_steps, data, results, keys=["views"], batch=BATCH)
    reference = cmc_steps(data, slice(None))
    for name, expected in reference["weights"].items():
        mean = sum(r["weights"][name] for r in results) / WORLD
        assert torch.allclose(mean, expected, atol=1e-5), name
    for result in results:
        for i, expected in enumerate(reference["banks"]):
            assert torch.equal(result["banks"][i], results[0]["banks"][i])  # alike on every rank
            assert torch.allclose(result["banks"][i], expected, atol=1e-6)
        assert torch.allclose(result["log_z"], reference["log_z"], atol=1e-6)
    assert torch.isfinite(reference["log_z"]).all()
