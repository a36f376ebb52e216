import gzip
import importlib.util
import struct
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


@pytest.fixture
def one_thread():
    """Tiny nets: with 2 threads on 2 busy shared cores, OpenMP spinning makes a step much
    slower than with one; use as ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Decoded-image caches go to a temporary folder, never to ~/.cache/selfsup."""
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path_factory.mktemp("cache")))


IDX_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False, code: int | None = None) -> Path:
    """The IDX layout written by hand: magic, big-endian uint32 dims, big-endian values."""
    kind = array.dtype.str[1:]
    header = struct.pack(">BBBB", 0, 0, IDX_CODES[kind] if code is None else code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def make_idx_folder(
    folder: Path, n_train: int = 60, n_test: int = 30, *, size: int = 12, gz: bool = True
) -> Path:
    """An MNIST-style folder of 3 grey classes: class c is noise around grey level 30 + 90 c."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        rng = np.random.default_rng(seed)
        labels = (np.arange(n) % 3).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, size, size), dtype=np.uint8)
        images += (90 * labels).astype(np.uint8)[:, None, None]
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz=gz)
    return folder


@pytest.fixture
def idx_folder(tmp_path: Path) -> Path:
    """A small gzipped IDX folder: 60 train and 30 test 12x12 grey images of 3 classes."""
    return make_idx_folder(tmp_path / "idx")


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """A script of benchmarks/ imported as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_trainer(**kwargs):
    """A quiet one-process CPU Lightning Trainer (no logger, checkpoints or bars) for tests
    that drive ``PretrainModule`` directly; ``kwargs`` add to or replace these settings."""
    import lightning as L

    settings = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
    )  # fmt: skip
    return L.Trainer(**{**settings, **kwargs})


def tiny_simclr(name: str = "simclr"):
    """An untrained ``name`` on convnet_tiny (width 4) for 16x16 RGB images, seeded."""
    import selfsup

    torch.manual_seed(0)
    return selfsup.build(
        name, backbone="convnet_tiny", backbone_kwargs={"width": 4}, in_channels=3,
        image_size=16, proj_hidden_dim=16, proj_dim=8,
    )  # fmt: skip


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """``tiny_simclr()``'s backbone exported to ``tmp_path / "export"``: no training needed."""
    from selfsup.artifacts import export_backbone

    export_backbone(tiny_simclr(), tmp_path / "export")
    return tmp_path / "export"


def sample_fields(method, batch: int) -> dict:
    """The per-sample fields ``method`` declares (``batch_fields``) for a batch of ``batch``
    samples 0..batch-1: indices (memory banks) and labels (all unlabelled)."""
    made = {
        "indices": torch.arange(batch),
        "labels": torch.full((batch,), -1, dtype=torch.long),
    }
    return {name: made[name] for name in method.batch_fields}
