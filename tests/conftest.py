from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def labelled_npz(tmp_path: Path):
    """Two 16x16 RGB arrays files (train / val) with 3 visually distinct classes."""

    def make(name: str, n: int, seed: int) -> Path:
        rng = np.random.default_rng(seed)
        labels = np.arange(n) % 3
        images = rng.integers(0, 60, size=(n, 16, 16, 3), dtype=np.uint8)
        for c in range(3):
            images[labels == c, :, :, c] += 150  # class c is tinted in channel c
        path = tmp_path / f"{name}.npz"
        np.savez(path, images=images, labels=labels, class_names=np.array(["r", "g", "b"]))
        return path

    return make("train", 96, 0), make("val", 48, 1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Decoded-image caches go to a temporary folder, never to ~/.cache/selfsup."""
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path_factory.mktemp("cache")))
