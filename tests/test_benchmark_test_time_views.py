"""The test-time views benchmark script: its val split and a smoke run end to end."""

import json

import pytest
import torch
from conftest import load_benchmark

import selfsup


def test_selection_and_holdout_split_val_as_the_few_label_benchmark_selects():
    bench = load_benchmark("test_time_views")
    select, holdout = bench.selection_and_holdout(50, 20, seed=1)
    assert len(select) == 20 and len(holdout) == 30
    assert sorted(torch.cat([select, holdout]).tolist()) == list(range(50))
    # wafer_fewlabel selects on subsample(val, n, seed=1): the same first n of the permutation
    assert torch.equal(select, torch.randperm(50, generator=torch.Generator().manual_seed(1))[:20])
    with pytest.raises(ValueError, match="--select must be between 1 and 49"):
        bench.selection_and_holdout(50, 50, seed=1)


def test_holdout_scores_per_seed_mean_and_ensemble():
    bench = load_benchmark("test_time_views")
    labels = torch.tensor([0, 1, 1, 0])
    right = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0], [2.0, 0.0]])
    scores = bench.holdout_scores({"none": [right, -right]}, labels, 2)["none"]
    assert scores["seeds"] == [1.0, 0.0] and scores["mean"] == 0.5
    # mean probabilities of a right and a wrong model of equal confidence tie: argmax -> class 0
    assert scores["ensemble"] == pytest.approx(1 / 3)


@pytest.mark.slow
def test_test_time_views_benchmark_end_to_end(tmp_path, capsys):
    _, run = selfsup.pretrain(
        method="simclr", backbone="convnet_tiny", backbone_kwargs={"width": 8},
        image_size=16, max_steps=4, batch_size=32, val_split=None, precision="32-true",
        progress_bar=False, out=str(tmp_path / "runs"), name="tiny",
    )  # fmt: skip
    bench = load_benchmark("test_time_views")
    out = tmp_path / "tta.json"
    scores = bench.main([
        "--run", str(run), "--seeds", "0", "1", "--subsample", "300", "--select", "100",
        "--epochs", "1", "--min-steps", "3", "--precision", "32-true", "--json", str(out),
        "--quiet",
    ])  # fmt: skip
    assert set(scores) == {"none", "dihedral"}
    for per_views in scores.values():
        assert len(per_views["seeds"]) == 2 and 0 <= per_views["ensemble"] <= 1
    saved = json.loads(out.read_text())
    assert saved["seeds"] == [0, 1] and len(saved["steps"]) == 2
    printed = capsys.readouterr().out
    assert "| fine-tuning seed | chosen step | holdout macro-F1, plain | with dihedral views |" in (
        printed
    )
    assert "| ensemble of 2 |" in printed and "scored on the other 200" in printed
