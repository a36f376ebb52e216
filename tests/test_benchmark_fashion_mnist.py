"""benchmarks/fashion_mnist.py end to end on a small generated IDX folder (a few seconds of
pretraining per method), and its install hint when the data is missing."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import load_benchmark, make_idx_folder


@pytest.mark.slow
def test_benchmark_pretrains_each_method_and_scores_every_row(tmp_path, capsys):
    folder = make_idx_folder(tmp_path / "fashion-mnist", n_train=120, n_test=60, size=14)
    argv = ["--data", str(folder), "--minutes", "0.04", "--methods", "simclr", "byol",
            "--backbone", "convnet_tiny", "--width", "4", "--image-size", "16",
            "--batch-size", "32", "--out", str(tmp_path / "runs"),
            "--set", "method_kwargs.views.crop_scale=[0.3,1.0]"]  # fmt: skip
    script = load_benchmark("fashion_mnist")
    script.PROBE_SETTINGS = {"epochs": 15, "patience": 5}  # the default 200 is for 54k images
    assert script.main(argv) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| representation | pretraining | kNN k=200 top-1")
    assert [line.split(" | ")[0] for line in table[1:]] == [
        "| simclr", "| byol", "| random init", "| raw pixels"
    ]  # fmt: skip
    record = json.loads((tmp_path / "runs" / "fashion_mnist.json").read_text())
    assert record["sizes"] == {"train": 120, "val": 12, "test": 60}
    for name in ("simclr", "byol"):
        row = record["rows"][name]
        assert row["pretraining"]["steps"] >= 1 and 0 <= row["linear_top1"] <= 1
        assert Path(row["pretraining"]["run"], "backbone.safetensors").is_file()
        # the time budget, not the 1000-epoch bound, ends pretraining
        assert row["pretraining"]["minutes"] >= 0.04 and row["pretraining"]["epochs"] < 1000
        config = yaml.safe_load(Path(row["pretraining"]["run"], "config.yaml").read_text())
        assert config["method_kwargs"]["views"]["crop_scale"] == [0.3, 1.0]
    # the grey levels separate the classes: raw pixels must find them
    assert record["rows"]["raw pixels"]["linear_top1"] > 0.9


def test_benchmark_without_the_data_says_how_to_install_it(tmp_path, capsys):
    assert load_benchmark("fashion_mnist").main(["--data", str(tmp_path / "missing")]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_benchmark_defaults_are_the_goal_recipe_and_set_overrides_them():
    script = load_benchmark("fashion_mnist")
    cfg = script.base_config(script.parse_args([]), "simclr", "data")
    assert (cfg.backbone, cfg.backbone_kwargs, cfg.lr) == ("convnet_tiny", {"width": 64}, 0.12)
    assert cfg.method_kwargs["views"]["crop_scale"] == [0.2, 1.0]
    args = script.parse_args(["--set", "lr=0.3", "--set", "method_kwargs.views.crop_scale=[0.5,1]"])
    cfg = script.base_config(args, "byol", "data")
    assert cfg.lr == 0.3 and cfg.method_kwargs["views"]["crop_scale"] == [0.5, 1]


def test_recipe_view_overrides_apply_only_where_the_recipe_has_them():
    bench = load_benchmark("fashion_mnist")
    assert "method_kwargs.views.crop_scale=[0.2,1.0]" in bench.recipe_overrides("simclr", 28)
    for multi_crop in ("dino", "swav"):  # their recipes have no single crop_scale
        assert bench.recipe_overrides(multi_crop, 28) == ["lr=0.12"]
