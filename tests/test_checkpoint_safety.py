"""A checkpoint never runs code: every command that takes a RUN refuses a crafted .ckpt in one
line (exit 2) without running its payload, unless the user passes --trust-checkpoint."""

import shutil
from pathlib import Path

import pytest
import torch

from selfsup.cli import main
from selfsup.runtime.files import (
    CheckpointError,
    UntrustedCheckpointError,
    load_checkpoint_file,
)
from tests.test_cli import pretrain_args


class FileCreatingPayload:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(run folder, train.npz, val.npz) of a tiny finished run with last.ckpt and best.ckpt."""
    import numpy as np

    root = tmp_path_factory.mktemp("safety")
    rng = np.random.default_rng(0)
    paths = []
    for name, n in (("train", 64), ("val", 32)):
        labels = np.arange(n) % 2
        images = rng.integers(0, 60, size=(n, 16, 16, 3), dtype=np.uint8)
        images[labels == 1, :, :, 0] += 150
        path = root / f"{name}.npz"
        np.savez(path, images=images, labels=labels)
        paths.append(path)
    assert main(pretrain_args(*paths, root)) == 0
    run = root / "cli"
    assert (run / "checkpoints" / "best.ckpt").is_file()
    return run, *paths


def craft(clean: Path, out: Path, marker: Path) -> Path:
    """A real selfsup checkpoint with a payload added to its hyper-parameters."""
    ckpt = torch.load(clean, weights_only=False)
    ckpt["hyper_parameters"]["payload"] = FileCreatingPayload(marker)
    torch.save(ckpt, out)
    return out


def assert_refused(argv, marker: Path, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert not marker.exists(), "the checkpoint's payload ran"
    assert len(err.splitlines()) == 1, err
    assert "not plain weights" in err and "--trust-checkpoint" in err
    return err


def test_every_command_taking_a_run_refuses_a_crafted_checkpoint(trained_run, tmp_path, capsys):
    run, train, val = trained_run
    marker = tmp_path / "MARKER"
    evil = craft(run / "checkpoints" / "last.ckpt", tmp_path / "evil.ckpt", marker)
    data = ["--data", str(train)]
    commands = [
        ["export", str(evil), "--out", str(tmp_path / "export")],
        ["embed", str(evil), *data, "--out", str(tmp_path / "f.npz")],
        ["eval", "knn", str(evil), *data, "--query-data", str(val)],
        *(
            ["eval", protocol, str(evil), *data, "--test-data", str(val)]
            for protocol in ("linear", "mlp", "finetune")
        ),
        ["eval", "transfer", str(evil), *data, "--test-data", str(val)],
        ["wafers", "similar", str(evil), "--query", "0", "--out", str(tmp_path / "g.png")],
    ]
    for argv in commands:
        err = assert_refused(argv, marker, capsys)
        assert "evil.ckpt" in err


def test_a_run_folder_with_a_crafted_last_checkpoint_is_refused(trained_run, tmp_path, capsys):
    run, train, val = trained_run
    marker = tmp_path / "MARKER"
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for exported in ("backbone.safetensors", "backbone.json"):  # a killed run: no export yet
        (copy / exported).unlink()
    last = copy / "checkpoints" / "last.ckpt"
    craft(last, last, marker)
    assert_refused(["report", str(copy)], marker, capsys)
    knn = ["eval", "knn", str(copy), "--data", str(train), "--query-data", str(val)]
    assert_refused(knn, marker, capsys)
    assert_refused(["export", str(copy), "--checkpoint", "last"], marker, capsys)
    assert_refused(["pretrain", "--resume", str(copy), "--no-progress"], marker, capsys)


def test_resume_refuses_a_crafted_best_checkpoint_before_training(trained_run, tmp_path, capsys):
    run, _, _ = trained_run
    marker = tmp_path / "MARKER"
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    best = copy / "checkpoints" / "best.ckpt"
    craft(best, best, marker)
    last_before = (copy / "checkpoints" / "last.ckpt").read_bytes()
    err = assert_refused(
        ["pretrain", "--resume", str(copy), "--epochs", "2", "--no-progress"], marker, capsys
    )
    assert "best.ckpt" in err
    assert (copy / "checkpoints" / "last.ckpt").read_bytes() == last_before  # nothing trained


def test_trust_checkpoint_unpickles_fully(trained_run, tmp_path):
    run, _, _ = trained_run
    marker = tmp_path / "MARKER"
    evil = craft(run / "checkpoints" / "last.ckpt", tmp_path / "evil.ckpt", marker)
    out = tmp_path / "export"
    assert main(["export", str(evil), "--out", str(out), "--trust-checkpoint"]) == 0
    assert marker.exists() and (out / "backbone.safetensors").is_file()


def test_selfsup_checkpoints_load_as_plain_weights(trained_run):
    run, _, _ = trained_run
    for name in ("last", "best"):
        ckpt = load_checkpoint_file(run / "checkpoints" / f"{name}.ckpt")
        assert "method" in ckpt["hyper_parameters"]["build_config"]


def test_files_that_are_not_selfsup_checkpoints_are_named(tmp_path, capsys):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("123 not a checkpoint\n")
    plain = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.zeros(2)}, plain)
    listed = tmp_path / "list.ckpt"
    torch.save([1, 2], listed)
    for path in (garbage, plain, listed):
        assert main(["export", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"'{path}' is not a selfsup checkpoint" in err
    with pytest.raises(CheckpointError, match="not a selfsup checkpoint"):
        load_checkpoint_file(garbage)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint_file(tmp_path / "missing.ckpt")


def test_untrusted_error_names_the_refused_global(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": FileCreatingPayload(marker)}, path)
    with pytest.raises(UntrustedCheckpointError, match=r"builtins\.open|io\.open"):
        load_checkpoint_file(path)
    assert not marker.exists()
