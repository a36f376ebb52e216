"""Split-brain autoencoder: the bins by hand, each half's targets from the other half's channels
(L*a*b* of RGB; fail dies and wafer of wafer maps), the loss by hand, the splits resolved and
refused, the two-encoder backbone shared with CMC (exported, reloaded), two ranks."""

import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import selfsup
from selfsup.artifacts import export_backbone, load_backbone, preprocess_for
from selfsup.backbones import ChannelSplit
from selfsup.losses import reconstruction_cross_entropy
from selfsup.methods import SplitBrain
from selfsup.methods.split_brain import (
    ab_bin_centres,
    ab_grid,
    expected_value,
    lightness_centres,
    quantise_ab,
    quantise_lightness,
)
from selfsup.views.color import LAB_RANGES, rgb_to_lab
from tests.ddp_harness import assert_ddp_gradients, run_on_ranks

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE, BATCH = 16, 8


def build(**kwargs) -> SplitBrain:
    kwargs = {"image_size": SIZE, "backbone_kwargs": {"width": 4}, **kwargs}
    return selfsup.build("split_brain", backbone="convnet_tiny", **kwargs)


def rgb(seed: int = 0, batch: int = BATCH) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)


# --- the bins -------------------------------------------------------------------------------------


def test_ab_and_lightness_bins_by_hand():
    assert ab_grid(10.0) == (19, 21)  # a: -86.2..98.2, b: -107.9..94.5
    (a_low, _), (b_low, _) = LAB_RANGES[1], LAB_RANGES[2]
    ab = torch.tensor([a_low + 0.1, b_low + 0.1, 0.0, 0.0, 95.0, 90.0]).view(3, 2, 1, 1)
    # cell (floor((a - a_low) / 10), floor((b - b_low) / 10)), index i_a 21 + i_b
    cells = [(0, 0), (math.floor(-a_low / 10), math.floor(-b_low / 10)), (18, 19)]
    assert quantise_ab(ab, 10.0).flatten().tolist() == [i * 21 + j for i, j in cells]
    centres = ab_bin_centres(10.0, ab)
    assert centres.shape == (399, 2)
    assert torch.equal(
        quantise_ab(centres.T.reshape(1, 2, 399, 1), 10.0).flatten(), torch.arange(399)
    )
    lightness = torch.tensor([0.0, 0.99, 1.0, 54.5, 99.99, 100.0])
    assert quantise_lightness(lightness, 100).tolist() == [0, 0, 1, 54, 99, 99]
    assert quantise_lightness(lightness, 50).tolist() == [0, 0, 0, 27, 49, 49]
    assert torch.equal(
        quantise_lightness(lightness_centres(100, lightness), 100), torch.arange(100)
    )
    certain = torch.full((1, 100, 1, 1), -1e4)
    certain[0, 37] = 0.0
    assert expected_value(certain, lightness_centres(100, certain)).item() == pytest.approx(37.5)


# --- targets and loss -----------------------------------------------------------------------------


def test_each_half_predicts_the_bins_of_the_other_halfs_channels():
    method = build(prediction_stride=2)
    raw = torch.rand(2, 3, SIZE, SIZE)
    views = method.views
    view = (raw - torch.tensor(views.mean).view(1, 3, 1, 1)) / torch.tensor(views.std).view(
        1, 3, 1, 1
    )
    lab = F.avg_pool2d(rgb_to_lab(raw), 2)  # the mean L*a*b* of each 2 x 2 output cell
    ab_target, l_target = method.targets(view)
    assert ab_target.shape == l_target.shape == (2, SIZE // 2, SIZE // 2)
    # a cell whose mean lies within 1e-3 of a bin edge may fall either way after the round trip
    assert (ab_target == quantise_ab(lab[:, 1:], 10.0)).float().mean() > 0.99
    assert (l_target == quantise_lightness(lab[:, 0], 100)).float().mean() > 0.99


def test_the_loss_is_the_sum_of_both_halves_cross_entropies():
    torch.manual_seed(0)
    method = build()
    view = torch.randn(BATCH, 3, SIZE, SIZE)
    out = method.training_loss([view])
    with torch.no_grad():
        fmap = method.backbone.feature_map(view)
        first, second = method.backbone.trunk
        parts = method.backbone.model_input(view)
        assert torch.equal(fmap[:, :16], first.feature_map(parts[:, :1]))  # L half: L only
        assert torch.equal(fmap[:, 16:], second.feature_map(parts[:, 1:]))  # ab half: ab only
        logits = method.decode(fmap, (4, 4))  # stride 4 at 16 px
    ab_target, l_target = method.targets(view)
    assert logits[0].shape == (BATCH, 399, 4, 4) and logits[1].shape == (BATCH, 100, 4, 4)
    expected = [F.cross_entropy(logits[0], ab_target), F.cross_entropy(logits[1], l_target)]
    assert out.loss.item() == pytest.approx(sum(e.item() for e in expected), rel=1e-5)
    assert out.logs["loss_ab_from_l"].item() == pytest.approx(expected[0].item(), rel=1e-5)
    assert out.logs["loss_l_from_ab"].item() == pytest.approx(expected[1].item(), rel=1e-5)
    out.loss.backward()
    for trunk in method.backbone.trunk:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trunk.parameters())


def test_wafer_halves_predict_the_wafer_from_the_fails_and_the_fails_from_the_wafer():
    torch.manual_seed(0)
    method = build(in_channels=1, view_style="wafer")
    assert method.split == "wafer_channels" and method.views.encoding == "fail_mask"
    assert method.prediction_stride == 1 and method.backbone.groups == [[0], [1]]
    codes = torch.randint(0, 3, (BATCH, 1, SIZE, SIZE), dtype=torch.uint8)
    view = method.views.preprocess(codes)
    wafer_target, fails_target = method.targets(view)
    assert torch.equal(wafer_target, (codes[:, 0] > 0).long())
    assert torch.equal(fails_target, (codes[:, 0] == 2).long())
    assert torch.isfinite(method.train()(codes))
    pictures = method.reconstruction_examples(codes[:4])
    assert list(pictures) == [
        "inputs", "corrupted", "corrupted_2", "reconstructions", "reconstructions_2"
    ]  # fmt: skip
    assert all(p.dtype == torch.uint8 and p.shape == (4, 1, SIZE, SIZE) for p in pictures.values())
    assert torch.equal(pictures["corrupted"], (codes[:4] == 2).to(torch.uint8) * 255)
    assert set(pictures["reconstructions"].unique().tolist()) <= {0, 128, 255}


def test_rgb_pictures_recolour_from_l_and_relight_from_ab():
    torch.manual_seed(0)
    method = build()
    images = rgb(batch=4)
    pictures = method.reconstruction_examples(images)
    assert all(p.dtype == torch.uint8 and p.shape == (4, 3, SIZE, SIZE) for p in pictures.values())
    grey = pictures["corrupted"].int()
    assert (grey.max(dim=1).values - grey.min(dim=1).values).max() <= 1  # L alone is grey
    assert method.training


# --- splits and the backbone ---------------------------------------------------------------------


def test_splits_are_resolved_recorded_and_the_others_refused_with_the_alternatives():
    cases = (
        (build(), "lab", 3),
        (build(in_channels=1, view_style="wafer"), "wafer_channels", 2),
    )
    for method, split, channels in cases:
        recorded = method.hyperparameters()
        assert recorded["split"] == split and recorded["encoder_width"] == 0.5
        assert method.backbone.in_channels == channels and method.feature_dim == 32
        assert method.backbone.build_kwargs["trunk_kwargs"] == {"width": 2}  # half of 4
        assert json.loads(json.dumps(recorded)) == recorded
        assert selfsup.build("split_brain", **recorded).hyperparameters() == recorded
    with pytest.raises(ValueError, match=r"grey \(1-channel\) natural images .*denoising_ae"):
        build(in_channels=1)
    with pytest.raises(ValueError, match="split 'lab' needs RGB images"):
        build(in_channels=1, view_style="wafer", split="lab")
    with pytest.raises(ValueError, match="split must be one of"):
        build(split="views")
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="one encoder per channel group.*'Sequential'.*context_ae"):
        SplitBrain(net, 4, image_size=SIZE)
    for kwargs, pattern in (
        ({"encoder_width": 0.0}, "split_brain: encoder_width must be > 0"),
        ({"ab_grid_size": -1.0}, "split_brain: ab_grid_size must be > 0"),
        ({"lightness_bins": 1}, "split_brain: lightness_bins must be >= 2"),
        ({"prediction_stride": 0}, "split_brain: prediction_stride must be an integer >= 1"),
    ):
        with pytest.raises(ValueError, match=pattern):
            build(**kwargs)


def test_the_halves_are_cmcs_channel_split_exported_and_reloaded(tmp_path):
    torch.manual_seed(0)
    method = build()
    cmc = selfsup.build(
        "cmc", backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=SIZE,
        num_samples=16,
    )  # fmt: skip
    assert isinstance(method.backbone, ChannelSplit)
    assert method.backbone.build_kwargs == cmc.backbone.build_kwargs  # one builder for both
    method.training_loss(method.views(rgb())).loss.backward()
    images = rgb(1)
    features = method.embed(images)
    assert features.shape == (BATCH, 32)
    export_backbone(method, tmp_path / "sb")
    loaded = load_backbone(tmp_path / "sb")
    with torch.no_grad():
        assert torch.equal(loaded(preprocess_for(loaded.metadata)(images)), features)
        assert torch.equal(method.eval().encoder(method.views.preprocess(images)), features)


# --- two ranks: a per-sample loss, no gather ------------------------------------------------------


def ce_grads(data, rows):
    logits = data["logits"][rows].clone().requires_grad_()
    reconstruction_cross_entropy(logits, data["target"][rows]).backward()
    return {"logits": logits.grad}


def test_two_ranks_give_the_one_process_gradients_without_a_gather():
    g = torch.Generator().manual_seed(0)
    data = {
        "logits": torch.randn(BATCH, 7, 3, 3, generator=g),
        "target": torch.randint(0, 7, (BATCH, 3, 3), generator=g),
    }
    assert_ddp_gradients(ce_grads, data, run_on_ranks(ce_grads, data))
