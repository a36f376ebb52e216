"""Run reports: plots from metrics.csv and labelled data; honest notes when inputs are missing."""

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup
from selfsup.data import load_dataset
from selfsup.eval.embedding_map import nearest_neighbours, pca, tsne
from selfsup.eval.report import PLOTS, write_report
from selfsup.eval.report_evaluation import retrieval_queries
from selfsup.eval.run_curves import knn_curves, read_metrics, series, smoothed


def tinted_npz(path: Path, n: int, seed: int) -> Path:
    """16x16 RGB images of 3 classes; class c is tinted in channel c."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, size=(n, 16, 16, 3), dtype=np.uint8)
    for c in range(3):
        images[labels == c, :, :, c] += 150
    np.savez(path, images=images, labels=labels, class_names=np.array(["r", "g", "b"]))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(run folder, val dataset) of a 2-epoch SimCLR run; shared because training costs ~10 s."""
    root = tmp_path_factory.mktemp("report")
    train, val = tinted_npz(root / "train.npz", 96, 0), tinted_npz(root / "val.npz", 48, 1)
    _, run = selfsup.pretrain(
        method="simclr",
        backbone="convnet_tiny",
        backbone_kwargs={"width": 4},
        method_kwargs={"proj_hidden_dim": 16, "proj_dim": 8},
        data=str(train),
        val_data=str(val),
        image_size=16,
        epochs=2,
        batch_size=16,
        precision="32-true",
        knn_k=[3],
        progress_bar=False,
        log_every_n_steps=1,
        out=str(root / "runs"),
        name="tiny",
    )
    return run, load_dataset(str(val), image_size=16)


def copy_run(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / run.name
    shutil.copytree(run, target)
    return target


def linked_plots(report: str) -> list[str]:
    return re.findall(r"\]\(plots/([\w.]+\.png)\)", report)


def assert_valid_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0, path
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 100
        im.verify()


@pytest.mark.slow
def test_report_has_every_plot_and_links_them(tiny_run, tmp_path):
    run, val = tiny_run
    run = copy_run(run, tmp_path)
    path = write_report(run, data=val, seed=0)
    assert path == run / "report.md"
    report = path.read_text()
    expected = set(PLOTS.values())
    assert set(linked_plots(report)) == expected
    for name in expected:
        assert_valid_png(run / "plots" / name)
    assert "| k=3 |" in report  # the end-of-run kNN table from summary.json
    assert "| method | simclr |" in report and "| image_size | 16 |" in report
    assert "Skipped" not in report and "Missing" not in report
    # the bank defaults to the run's own (labelled) training data, all 96 images of it
    assert "48 of 48 query images and 96 of 96 bank images" in report
    assert not list(run.rglob("*.tmp*"))


@pytest.mark.slow
def test_report_without_metrics_csv_says_what_is_missing(tiny_run, tmp_path):
    run, val = tiny_run
    run = copy_run(run, tmp_path)
    (run / "metrics.csv").unlink()
    (run / "summary.json").unlink()
    report = write_report(run, data=val, max_points=20).read_text()
    assert "- metrics.csv: no training curves" in report
    assert "- summary.json: the run was interrupted or is still running" in report
    assert "_Skipped: metrics.csv has no train/loss or train/lr values._" in report
    assert "_Skipped: metrics.csv has no train/collapse_std values._" in report
    for key in ("confusion", "pca", "tsne", "retrieval"):  # the backbone is still there
        assert PLOTS[key] in linked_plots(report)
        assert_valid_png(run / "plots" / PLOTS[key])
    assert "20 of 48 query images" in report


@pytest.mark.slow
def test_interrupted_run_uses_its_checkpoint_and_damaged_csv(tiny_run, tmp_path):
    run, _ = tiny_run
    run = copy_run(run, tmp_path)
    for name in ("summary.json", "backbone.json", "backbone.safetensors"):
        (run / name).unlink()
    text = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(text[: len(text) // 2])  # killed mid-line
    report = write_report(run).read_text()  # val_data comes from config.yaml
    assert PLOTS["training"] in linked_plots(report)
    assert PLOTS["confusion"] in linked_plots(report)  # from checkpoints/last.ckpt
    assert "Features of the last checkpoint (convnet_tiny, " in report
    assert re.search(r"queries: arrays '.*val\.npz'", report)


def test_folder_with_nothing_but_a_config_still_gets_a_report(tmp_path):
    run = tmp_path / "killed"
    (run / "plots").mkdir(parents=True)
    (run / "plots" / PLOTS["training"]).write_bytes(b"stale")
    (run / "config.yaml").write_text("method: byol\nbackbone: convnet_tiny\ndata: wafers\n")
    report = write_report(run).read_text()
    assert "byol with a convnet_tiny backbone" in report
    assert "- metrics.csv: no training curves" in report
    assert "_Skipped: no trained backbone to evaluate" in report
    assert "no summary.json" in report
    assert linked_plots(report) == []
    assert not (run / "plots" / PLOTS["training"]).exists()


def test_read_metrics_joins_resumed_parts_and_skips_damage(tmp_path):
    header = "epoch,step,train/loss,val/knn5_macro_f1\n"
    (tmp_path / "metrics.part0.csv").write_text(header + "0,0,4.0,\n0,1,3.0,\n0,1,,0.25\n")
    # the resumed part repeats step 1 (after the checkpoint) and ends in a half-written line
    (tmp_path / "metrics.csv").write_text(header + "0,1,2.5,\n1,2,2.0,\n1,2,,0.5\n1,3,1.")
    rows, notes = read_metrics(tmp_path)
    steps, loss = series(rows, "train/loss")
    assert steps.tolist() == [0, 1, 2, 3] and loss.tolist() == [4.0, 2.5, 2.0, 1.0]
    epochs, f1 = series(rows, "val/knn5_macro_f1", x="epoch")
    assert epochs.tolist() == [0, 1] and f1.tolist() == [0.25, 0.5]
    assert list(knn_curves(rows, {})) == [(5, "macro_f1")] and notes == []


def test_knn_curves_fall_back_to_the_summary_history():
    history = [{"epoch": 0, "knn5_macro_f1": 0.3}, {"epoch": 1, "knn5_macro_f1": 0.4}]
    curves = knn_curves([], {"knn_history": history})
    assert curves[(5, "macro_f1")][1].tolist() == [0.3, 0.4]


def test_smoothing_is_bias_corrected():
    assert smoothed(np.full(5, 3.0), span=4).tolist() == pytest.approx([3.0] * 5)
    assert smoothed(np.array([1.0, 0.0]), span=3)[1] == pytest.approx(1 / 3)  # (0.5)/(0.75)


def test_pca_recovers_known_axes_with_fixed_signs():
    t = torch.tensor([-2.0, -1.0, 1.0, 2.0])
    s = torch.tensor([1.0, -1.0, -1.0, 1.0])
    x = torch.stack([torch.zeros(4), -3 * t, s], dim=1) + 5.0  # main axis e1, second e2
    coords, ratio = pca(x, 2)
    # variances: 9 * sum(t^2) = 90 along axis 1, sum(s^2) = 4 along axis 2
    assert ratio.tolist() == pytest.approx([90 / 94, 4 / 94], abs=1e-6)
    # the axis is +e1 or -e1: the sign rule picks +e1 (largest loading positive), so -3 t
    assert coords[:, 0].tolist() == pytest.approx((-3 * t).tolist(), abs=1e-5)
    assert coords[:, 1].tolist() == pytest.approx(s.tolist(), abs=1e-5)


def test_nearest_neighbours_are_cosine():
    bank = torch.tensor([[1.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    sims, idx = nearest_neighbours(bank, torch.tensor([[3.0, 0.1], [0.0, 1.0]]), 2)
    assert idx.tolist() == [[0, 2], [1, 2]]
    assert sims[1].tolist() == pytest.approx([1.0, 2**-0.5])


def test_retrieval_queries_take_one_per_class_then_top_up():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    chosen = retrieval_queries(labels, seed=0)
    assert len(chosen) == 4 and sorted(set(labels[chosen].tolist())) == [0, 1, 2]
    many = retrieval_queries(torch.arange(30) % 15, seed=0)
    assert len(many) == 10 and len(set((torch.arange(30) % 15)[many].tolist())) == 10


def test_tsne_without_scikit_learn_gives_a_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    assert "scikit-learn is not installed" in tsne(torch.randn(20, 4))


def test_report_rejects_data_that_does_not_fit_the_backbone(tmp_path):
    from selfsup.eval.report_data import resolve_eval_data

    data = load_dataset(str(tinted_npz(tmp_path / "v.npz", 6, 0)), image_size=8)
    meta = {"in_channels": 3, "image_size": 16}
    with pytest.raises(ValueError, match="image_size=8 but the run's backbone takes image_size=16"):
        resolve_eval_data({}, meta, data, None, None, 0)
    data16 = load_dataset(str(tmp_path / "v.npz"), image_size=16)
    found = resolve_eval_data({}, meta, data16, None, None, 0)  # no training data: halves
    assert len(found.bank) == 3 and len(found.queries) == 3 and "two halves" in found.note


def test_knn_table_has_one_row_per_k_in_numeric_order():
    from selfsup.eval.report import knn_comparison_table

    summary = {
        "random_init": {"knn200_macro_f1": 0.1, "knn5_macro_f1": 0.25},
        "pretrained": {"knn200_macro_f1": 0.4, "knn5_macro_f1": 0.5, "knn5_accuracy": 0.75},
    }
    rows = knn_comparison_table(summary).splitlines()[2:]
    assert rows == [
        "| k=5 | 0.2500 | 0.5000 | n/a | n/a |",
        "| k=200 | 0.1000 | 0.4000 | n/a | n/a |",
    ]
    assert "no kNN table" in knn_comparison_table({"pretrained": {"loss": 1.0}})


def test_training_end_report_is_the_same_report_without_the_embedding_plots(tmp_path):
    from selfsup.eval.report import NOT_EVALUATED
    from selfsup.eval.report_evaluation import EVALUATION_PLOTS

    run = tmp_path / "resumed"
    (run / "plots").mkdir(parents=True)
    (run / "config.yaml").write_text("method: byol\nbackbone: convnet_tiny\ndata: wafers\n")
    summary = {
        "method": "byol",
        "backbone": "convnet_tiny",
        "steps": 12,
        "pretrained": {"knn5_macro_f1": 0.5},
        "random_init": {"knn5_macro_f1": 0.25},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    for key in EVALUATION_PLOTS:  # drawn by an earlier `selfsup report`, before the resume
        (run / "plots" / PLOTS[key]).write_bytes(b"stale")
    report = write_report(run, evaluation=False).read_text()
    assert "byol with a convnet_tiny backbone" in report and "| k=5 | 0.2500 | 0.5000 |" in report
    assert "| steps | 12 |" in report
    assert "val kNN k=5 macro-F1: pretrained 0.5000, random init 0.2500 (+0.2500)" in report
    assert report.count(f"_Skipped: {NOT_EVALUATED}._") == len(EVALUATION_PLOTS)
    assert "`selfsup report RUN`" in NOT_EVALUATED
    assert "no trained backbone" not in report  # evaluation was not attempted
    assert not any((run / "plots" / PLOTS[key]).exists() for key in EVALUATION_PLOTS)


def test_the_monitor_share_line_counts_passes_and_hints_above_a_third():
    from selfsup.eval.report import MONITOR_SHARE_HINT, monitor_share_line

    history = [{"epoch": e} for e in range(24)]
    heavy = {"knn_monitor_seconds": 455.0, "train_seconds": 600.0, "knn_history": history}
    line = monitor_share_line(heavy, every_n_epochs=1)
    assert line.startswith("kNN monitor: 24 passes, 455 s of 600 s training (76%)")
    assert "`--set knn_every_n_epochs=2`" in line
    light = {**heavy, "knn_monitor_seconds": 600.0 * MONITOR_SHARE_HINT - 1}
    assert "knn_every_n_epochs" not in monitor_share_line(light, every_n_epochs=1)
    assert monitor_share_line({"train_seconds": 600.0}, every_n_epochs=1) == ""  # no monitor


def test_a_run_that_gains_nothing_over_random_init_is_flagged():
    from selfsup.eval.report import NO_GAIN_FLAG, NO_GAIN_MARGIN, knn_gain_line

    def summary(pretrained, random_init):
        return {
            "pretrained": {"knn200_macro_f1": 0.9, "knn5_macro_f1": pretrained},
            "random_init": {"knn200_macro_f1": 0.1, "knn5_macro_f1": random_init},
        }

    flagged = knn_gain_line(summary(0.646, 0.669))  # session 11's split-brain: k=5 is the key
    assert flagged.startswith(NO_GAIN_FLAG) and "(-0.0230)" in flagged
    assert knn_gain_line(summary(0.669 + NO_GAIN_MARGIN / 2, 0.669)).startswith(NO_GAIN_FLAG)
    gained = knn_gain_line(summary(0.682, 0.459))
    assert gained == "val kNN k=5 macro-F1: pretrained 0.6820, random init 0.4590 (+0.2230)"
    assert knn_gain_line({"pretrained": {"knn5_macro_f1": 0.5}}) == ""  # no random init score
    assert knn_gain_line({}) == ""
