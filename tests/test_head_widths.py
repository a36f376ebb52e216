"""Head widths scale with the backbone (at most 16 x feature size) unless set or "paper"."""

import pytest
from torch import nn

import selfsup
from selfsup.cli import main
from selfsup.heads import scaled_width

SMALL_64 = dict(backbone="convnet_small", backbone_kwargs={"width": 8}, image_size=32)  # 64-d


def linear_widths(module: nn.Module) -> list[int]:
    return [m.out_features for m in module.modules() if isinstance(m, nn.Linear)]


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_scaled_width_rule_by_hand():
    assert scaled_width(8192, 64) == 1024 and scaled_width(8192, 256) == 4096
    assert scaled_width(2048, 128) == 2048  # SimCLR / SimSiam / FastSiam unchanged from 128-d
    assert scaled_width(128, 256) == 128 and scaled_width(8192, 64, "paper") == 8192
    with pytest.raises(ValueError, match="head_widths must be one of .* got 'huge'"):
        scaled_width(8192, 64, "huge")


def test_barlow_twins_on_a_64_d_backbone_is_1024_wide_and_far_smaller():
    scaled = selfsup.build("barlow_twins", **SMALL_64)
    paper = selfsup.build("barlow_twins", head_widths="paper", **SMALL_64)
    assert scaled.feature_dim == 64
    assert max(linear_widths(scaled.projector)) <= 16 * 64 == 1024
    assert linear_widths(paper.projector) == [8192, 8192, 8192]
    assert count(scaled.projector) * 50 < count(paper.projector)  # 135 M -> about 2 M
    recorded = scaled.hyperparameters()
    assert recorded["proj_hidden_dim"] == 1024 and recorded["proj_dim"] == 1024
    assert recorded["head_widths"] == "scaled"


def test_an_explicit_width_is_kept_and_a_rebuild_gives_the_same_heads():
    method = selfsup.build("byol", proj_dim=1024, **SMALL_64)
    assert method.hyperparameters()["proj_dim"] == 1024
    assert method.hyperparameters()["proj_hidden_dim"] == 1024  # 4096 capped at 16 x 64
    assert method.hyperparameters()["pred_hidden_dim"] == 1024
    again = selfsup.build("byol", **method.hyperparameters())
    assert linear_widths(again) == linear_widths(method)
    assert again.hyperparameters() == method.hyperparameters()


def test_simclr_on_convnet_small_keeps_the_published_2048_128_head():
    method = selfsup.build("simclr", backbone="convnet_small", image_size=32)
    assert method.feature_dim == 256
    assert linear_widths(method.projector) == [2048, 128]
    dino = selfsup.build("dino", head_widths="scaled", **SMALL_64)
    assert dino.hyperparameters()["out_dim"] == 65536  # prototypes, not a width: kept
    assert dino.hyperparameters()["head_hidden_dim"] == 1024


def test_unknown_head_widths_mode_is_refused_by_name():
    with pytest.raises(ValueError, match="head_widths .* got 'wide'"):
        selfsup.build("simclr", head_widths="wide", **SMALL_64)


def test_methods_listing_shows_what_pretrain_uses(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert "backbone convnet_small" in first and "image_size 32" in first
    assert "resnet18" not in out and "224" not in out
    assert "barlow_twins: proj_hidden_dim=8192" in out
    assert (
        "on convnet_small, 50,000 images: 256-d features; proj_hidden_dim=2048, proj_dim=2048"
        in out
    )
    assert "exemplar: " in out and "num_samples=None" in out  # filled from the data by pretrain
