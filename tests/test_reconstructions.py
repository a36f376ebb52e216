"""The reconstructions picture of reconstruction methods and its place in the run report."""

import pytest
import torch

from selfsup.eval.reconstructions import (
    RECONSTRUCTIONS_PLOT,
    plot_reconstructions,
    reconstructs,
    save_reconstructions,
)
from selfsup.eval.report import write_report
from tests.conftest import tiny_simclr


def examples(n: int = 3, channels: int = 1) -> dict:
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (n, channels, 8, 8), dtype=torch.uint8, generator=g)
    return {"inputs": image, "masked": image // 2, "reconstructed": 255 - image}


def test_plot_has_one_row_per_entry_and_refuses_bad_batches(tmp_path):
    path = plot_reconstructions(examples(channels=3), tmp_path / "r.png")
    assert path.is_file() and path.stat().st_size > 1000
    with pytest.raises(ValueError, match="different image counts"):
        plot_reconstructions({"a": examples()["inputs"], "b": examples(2)["inputs"]}, path)
    with pytest.raises(ValueError, match=r"'a' must be uint8 \[N, 1 or 3, H, W\]"):
        plot_reconstructions({"a": torch.zeros(2, 1, 4, 4)}, path)


def test_only_methods_that_reconstruct_draw_and_they_draw_in_eval_mode(tmp_path):
    method = tiny_simclr()
    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8)
    assert not reconstructs(method)
    assert save_reconstructions(method, images, tmp_path / "none.png") is None
    seen = []

    def reconstruction_examples(batch):
        seen.append((len(batch), method.training))
        return {"inputs": batch, "reconstructed": batch}

    method.reconstruction_examples = reconstruction_examples
    method.train()
    assert save_reconstructions(method, images, tmp_path / "r.png").is_file()
    assert seen == [(8, False)] and method.training  # at most 8 images; mode restored


def test_report_shows_the_picture_when_the_run_has_one(tmp_path):
    run = tmp_path / "run"
    (run / "plots").mkdir(parents=True)
    assert "Reconstructions" not in write_report(run, evaluation=False).read_text()
    plot_reconstructions(examples(), run / "plots" / RECONSTRUCTIONS_PLOT)
    text = write_report(run, evaluation=False).read_text()
    assert "Reconstructions at the end of training" in text
    assert f"(plots/{RECONSTRUCTIONS_PLOT})" in text
