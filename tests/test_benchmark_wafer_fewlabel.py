"""The few-label wafer benchmark script end to end on a subsample (slow)."""

import json

import pytest
from conftest import load_benchmark

import selfsup


@pytest.mark.slow
def test_wafer_fewlabel_table_shape_and_pretrained_beats_random_init(tmp_path, capsys):
    _, run = selfsup.pretrain(
        method="simclr", backbone="convnet_tiny", backbone_kwargs={"width": 16},
        image_size=16, max_steps=40, batch_size=64, lr=0.3, warmup_epochs=0.05,
        val_split=None, precision="32-true", progress_bar=False,
        out=str(tmp_path / "runs"), name="tiny",
    )  # fmt: skip
    bench = load_benchmark("wafer_fewlabel")
    out = tmp_path / "numbers.json"
    rows = bench.main([
        "--run", str(run), "--subsample", "800", "--protocols", "linear", "finetune",
        "--baselines", "random", "supervised", "--linear-epochs", "15", "--finetune-epochs", "1",
        "--finetune-min-steps", "6", "--finetune-val", "300", "--precision", "32-true",
        "--finetune-views", "die_flip_p=0", "--seed", "1",
        "--json", str(out), "--progress-seconds", "0", "--semi", "fixmatch",
        "--test-time-views", "dihedral", "--finetune-backbone-lr", "0.01", "0.05",
    ])  # fmt: skip
    expected = {
        "pretrained + linear probe", "random init + linear probe",
        "pretrained + fine-tune", "supervised from scratch",
        "pretrained + fine-tune + FixMatch", "FixMatch from random init",
    }  # fmt: skip
    assert set(rows) == expected
    for per_split in rows.values():
        assert set(per_split) == {"train_1", "train_10", "train_20"}
        for cell in per_split.values():
            assert 0 <= cell["macro_f1"] <= 1 and 0 <= cell["balanced_accuracy"] <= 1
            assert len(cell["per_class_f1"]) == 9
    assert json.loads(out.read_text())["rows"].keys() == expected
    for name in ("pretrained + fine-tune", "supervised from scratch"):
        chosen = rows[name]["train_1"]["chosen"]
        assert chosen["views"] == {"die_flip_p": 0} and chosen["seed"] == 1
        assert chosen["steps_run"] == 6 and chosen["max_minutes"] is None
        assert chosen["test_time_views"] == "dihedral"
        tried = chosen["lr_candidates"]  # the backbone's learning rate chosen on val
        assert [(c["lr"], c["backbone_lr"]) for c in tried] == [(0.1, 0.01), (0.1, 0.05)]
        assert chosen["val_macro_f1"] == max(c["val_macro_f1"] for c in tried)
        assert chosen["backbone_lr"] == max(tried, key=lambda c: c["val_macro_f1"])["backbone_lr"]
    for name in ("pretrained + fine-tune + FixMatch", "FixMatch from random init"):
        semi = rows[name]["train_10"]["chosen"]["semi"]
        assert semi["method"] == "fixmatch" and semi["unlabeled"] == 800 and semi["ratio"] == 7

    def mean_f1(name):
        return sum(c["macro_f1"] for c in rows[name].values()) / 3

    assert mean_f1("pretrained + linear probe") > mean_f1("random init + linear probe")
    captured = capsys.readouterr()
    printed = captured.out
    assert "| macro_f1 | 1 % | 10 % | 20 % |" in printed
    assert "| pretrained + linear probe |" in printed
    # progress on stderr: which cell of how many, and each job's steps (rate limit 0 here)
    cells = [line for line in captured.err.splitlines() if line.startswith("[")]
    assert len(cells) == 18
    assert cells[0] == "[1/18] linear probe train_1 (pretrained, simclr)"
    assert cells[-1] == "[18/18] finetune train_20 (FixMatch from random init, simclr)"
    assert "fine-tune: 6/6 steps (100 %)" in captured.err
    assert "linear probe search: " in captured.err and "features of 800 images: " in captured.err


def test_splits_choose_the_label_fractions_in_table_order():
    bench = load_benchmark("wafer_fewlabel")
    args = bench.parse_args([
        "--run", "RUN", "--splits", "train_20", "train_1", "--semi", "fixmatch",
        "--protocols", "finetune", "--baselines", "supervised",
    ])  # fmt: skip
    assert args.splits == ("train_1", "train_20")
    assert bench.count_cells(args) == 4 * 2  # plain and FixMatch, pretrained and scratch
    rows = {"pretrained + fine-tune": {"train_1": {"macro_f1": 0.5}, "train_20": {"macro_f1": 0.7}}}
    assert bench.table(rows, "macro_f1", args.splits).splitlines() == [
        "| macro_f1 | 1 % | 20 % |", "|---|---|---|", "| pretrained + fine-tune | 0.500 | 0.700 |",
    ]  # fmt: skip
    assert bench.parse_args(["--run", "RUN"]).splits == ("train_1", "train_10", "train_20")
    with pytest.raises(SystemExit):
        bench.parse_args(["--run", "RUN", "--finetune-ensemble", "0"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--run", "RUN", "--splits", "train_5"])


def test_side_by_side_commands_write_their_numbers_to_different_files():
    bench = load_benchmark("wafer_fewlabel")
    pretrained = bench.parse_args(["--run", "RUN", "--splits", "train_1", "--seed", "1"])
    baselines = bench.parse_args(
        ["--run", "RUN", "--splits", "train_1", "--seed", "1", "--baselines-only"]
    )
    assert bench.default_json_name(pretrained) == "wafer_fewlabel-pretrained-train_1-seed1.json"
    assert bench.default_json_name(baselines) == "wafer_fewlabel-baselines-train_1-seed1.json"
    every_split = bench.parse_args(["--run", "RUN"])
    assert bench.default_json_name(every_split) == (
        "wafer_fewlabel-pretrained-train_1-train_10-train_20-seed0.json"
    )
