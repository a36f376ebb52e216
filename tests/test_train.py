"""Trainer behaviour: run folder contents, NaN guard, atomic checkpoints, kill-and-resume."""

import json
import subprocess
import sys
import textwrap

import lightning as L
import pytest
import torch
import yaml

import selfsup
from selfsup.runtime.files import atomic_torch_save
from selfsup.train.module import NonFiniteLossError, PretrainModule


def tiny_config(train, val, out, **extra):
    cfg = dict(
        method="simclr",
        backbone="convnet_tiny",
        backbone_kwargs={"width": 4},
        method_kwargs={"proj_hidden_dim": 32, "proj_dim": 16},
        data=str(train),
        val_data=str(val),
        image_size=16,
        epochs=2,
        batch_size=16,
        precision="32-true",
        out=str(out),
        name="run",
        knn_k=[3],
        progress_bar=False,
        log_every_n_steps=1,
    )
    cfg.update(extra)
    return cfg


def test_pretrain_writes_self_describing_run_folder(labelled_npz, tmp_path):
    train, val = labelled_npz
    method, run = selfsup.pretrain(tiny_config(train, val, tmp_path))
    for name in (
        "config.yaml",
        "provenance.json",
        "metrics.csv",
        "summary.json",
        "report.md",
        "backbone.safetensors",
        "backbone.json",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
    ):
        assert (run / name).is_file(), name
    assert (run / "tensorboard").is_dir()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["method"] == "simclr" and config["seed"] == 0
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["versions"]["torch"] == torch.__version__
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 * (96 // 16)
    assert set(summary["random_init"]) == set(summary["pretrained"])
    assert "knn3_macro_f1" in summary["pretrained"]
    assert 0 < summary["knn_monitor_seconds"] < summary["train_seconds"]  # the passes' time
    metrics = (run / "metrics.csv").read_text()
    assert (
        "train/loss" in metrics
        and "train/collapse_std" in metrics
        and "val/knn3_macro_f1" in metrics
    )
    assert not list(run.rglob("*.tmp*")), "temporary files left behind"


@pytest.mark.parametrize("setting", [True, False])
def test_training_runs_inside_the_cpu_heap_allocator_setting(
    labelled_npz, tmp_path, monkeypatch, setting
):
    from selfsup.runtime.allocator import glibc, heap_allocations
    from selfsup.train import pretrain as pretrain_module

    entered = []

    def spy(enabled):
        entered.append(enabled)
        return heap_allocations(enabled)

    def fit_inside(self, *args, **kwargs):
        assert entered, "trainer.fit ran outside heap_allocations"
        return real_fit(self, *args, **kwargs)

    real_fit = L.Trainer.fit
    monkeypatch.setattr(pretrain_module, "heap_allocations", spy)
    monkeypatch.setattr(L.Trainer, "fit", fit_inside)
    train, val = labelled_npz
    _, run = selfsup.pretrain(
        tiny_config(train, val, tmp_path, epochs=1, cpu_heap_allocations=setting)
    )
    expected = setting and glibc() is not None
    assert entered == [expected]
    assert json.loads((run / "provenance.json").read_text())["cpu_heap_allocations"] is expected


def test_batch_larger_than_data_is_named(labelled_npz, tmp_path):
    train, val = labelled_npz
    with pytest.raises(ValueError, match="batch"):
        selfsup.pretrain(tiny_config(train, val, tmp_path, batch_size=512))


def test_nan_loss_stops_with_clear_message():
    method = selfsup.build(
        "simclr",
        backbone="convnet_tiny",
        backbone_kwargs={"width": 4},
        image_size=16,
        proj_hidden_dim=16,
        proj_dim=8,
    )
    real = method.training_loss

    def poisoned(views):
        out = real(views)
        out.loss = out.loss * float("nan")
        return out

    method.training_loss = poisoned
    module = PretrainModule(method, total_steps=4)
    loader = torch.utils.data.DataLoader(
        torch.randint(0, 255, (32, 3, 16, 16), dtype=torch.uint8), batch_size=8
    )
    trainer = L.Trainer(
        max_steps=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 0"):
        trainer.fit(module, loader)


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"a": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"a": 2}, path)
    monkeypatch.undo()
    assert torch.load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys, json
    import lightning as L
    import selfsup.train.pretrain as P

    class KillMidEpoch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 2:
                os._exit(9)  # like SIGKILL: no clean-up, no final checkpoint

    real_trainer = L.Trainer
    def trainer_with_kill(*args, **kwargs):
        kwargs["callbacks"] = kwargs["callbacks"] + [KillMidEpoch()]
        return real_trainer(*args, **kwargs)
    P.L.Trainer = trainer_with_kill
    P.pretrain(json.loads(sys.argv[1]))
    """
)


@pytest.mark.slow
def test_killed_run_resumes_from_last_checkpoint(labelled_npz, tmp_path):
    train, val = labelled_npz
    cfg = tiny_config(train, val, tmp_path, epochs=3)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 9, proc.stderr[-2000:]
    run = tmp_path / "run"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 6  # end of the first epoch
    assert not (run / "summary.json").exists()

    method, resumed = selfsup.pretrain(resume=str(run), progress_bar=False)
    assert resumed == run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 * 6 and summary["epochs_completed"] == 3
    assert ckpt["selfsup_train_seconds"] > 0  # a time budget continues where it stopped
    assert (run / "metrics.part0.csv").is_file()  # the killed part's metrics are kept
    assert not list(run.rglob("*.tmp*"))


@pytest.mark.slow
def test_two_process_ddp_run_on_cpu(labelled_npz, tmp_path):
    """`--devices 2` on CPU: Lightning DDP (gloo) with SyncBatchNorm, one shared run folder."""
    train, val = labelled_npz
    argv = [
        sys.executable, "-m", "selfsup.cli", "pretrain", "--method", "simclr",
        "--backbone", "convnet_tiny", "--data", str(train), "--image-size", "16",
        "--epochs", "1", "--batch-size", "8", "--precision", "32-true",
        "--accelerator", "cpu", "--devices", "2", "--out", str(tmp_path), "--name", "ddp",
        "--no-progress", "--set", "backbone_kwargs.width=4", "--set", f"val_data={val}",
        "--set", "method_kwargs={proj_hidden_dim: 16, proj_dim: 8}", "--set", "knn_k=[3]",
        "--minutes", "60",  # process 0's clock is broadcast every step
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "ddp"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 96 // (8 * 2)  # each rank sees its own half of every epoch
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["world_size"] == 2
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["ddp"]  # no second run folder


class FakeClock:
    """time.monotonic advancing one second per call: one call per training step."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now


def test_time_budget_ends_the_lr_schedule_and_training(labelled_npz, tmp_path, monkeypatch):
    import selfsup.train.module as module

    monkeypatch.setattr(module, "time", FakeClock())
    train, val = labelled_npz
    # 50 epochs x 6 steps would be 300 steps; the 12-"second" budget ends it after ~12
    cfg = tiny_config(train, val, tmp_path, epochs=50, max_minutes=12 / 60, warmup_epochs=0.5)
    _, run = selfsup.pretrain(cfg)
    summary = json.loads((run / "summary.json").read_text())
    assert 8 <= summary["steps"] <= 14
    lrs = [float(row["train/lr"]) for row in _csv_rows(run / "metrics.csv") if row["train/lr"]]
    peak = max(lrs)
    assert lrs[-1] < 0.05 * peak  # annealed by the clock, not cut mid-schedule
    after_warmup = lrs[lrs.index(peak) :]
    assert after_warmup == sorted(after_warmup, reverse=True)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["max_minutes"] == pytest.approx(0.2)


def _csv_rows(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def test_keyword_none_overrides_config_defaults(tmp_path):
    from selfsup.train.pretrain import _as_config

    assert _as_config(None, {"val_split": None}).val_split is None
    assert _as_config(None, {}).val_split == "val"
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 7\nval_split: val\n")
    cfg = _as_config(str(path), {"val_split": None})
    assert cfg.epochs == 7 and cfg.val_split is None


def test_collapse_stops_training_and_the_export_is_the_best_val_epoch(labelled_npz, tmp_path):
    from selfsup.artifacts import load_backbone

    train, val = labelled_npz
    # every epoch counts as collapsed with this threshold: training must end after the first
    _, run = selfsup.pretrain(tiny_config(train, val, tmp_path, epochs=4, collapse_threshold=10.0))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["collapse_warnings_epochs"] == [0]
    assert summary["steps"] == 96 // 16  # one epoch, not four
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]

    # without the collapse stop: 3 epochs; the exported backbone is best.ckpt's, not the last
    _, run = selfsup.pretrain(
        tiny_config(train, val, tmp_path, epochs=3, collapse_stop=False, name="run2")
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["exported_checkpoint"] == "best" and summary["steps"] == 3 * (96 // 16)
    history = summary["knn_history"]
    best = max(history, key=lambda h: h["knn3_macro_f1"])
    assert summary["pretrained_epoch"] == best["epoch"]
    assert summary["pretrained"]["knn3_macro_f1"] == best["knn3_macro_f1"]
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    exported = load_backbone(run).state_dict()
    prefix = "method.backbone."
    for key, value in ckpt["state_dict"].items():
        if key.startswith(prefix):
            assert torch.equal(exported[key[len(prefix) :]], value), key


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(
    labelled_npz, tmp_path, monkeypatch
):
    train, val = labelled_npz
    with pytest.raises(ValueError, match="batch"):
        selfsup.pretrain(tiny_config(train, val, tmp_path, batch_size=512))
    assert not (tmp_path / "run").exists()  # refused before any folder was made

    def failing_step(self, batch, batch_idx):
        raise RuntimeError("broken step")

    monkeypatch.setattr(PretrainModule, "training_step", failing_step)
    with pytest.raises(RuntimeError, match="broken step"):
        selfsup.pretrain(tiny_config(train, val, tmp_path))
    assert list(tmp_path.iterdir()) == [train, val]  # the half-made folder is gone
    monkeypatch.undo()
    _, run = selfsup.pretrain(tiny_config(train, val, tmp_path, epochs=1))
    assert run == tmp_path / "run"  # the corrected rerun takes the name, so --resume NAME works


def test_more_cpu_processes_than_cores_are_warned_about(caplog):
    import os

    from selfsup.train.trainer import warn_if_oversubscribed

    cores = os.cpu_count() or 1
    for devices, warned in ((1, False), (cores + 2, True)):
        trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp", logger=False)
        caplog.clear()
        with caplog.at_level("WARNING", logger="selfsup"):
            warn_if_oversubscribed(trainer)
        assert (f"on {cores} core(s)" in caplog.text) is warned


def test_only_process_zero_prints_the_summary(tmp_path, monkeypatch, capsys):
    from selfsup.cli import main

    calls = []

    def fake_pretrain(cfg):
        calls.append(cfg)
        return None, tmp_path

    monkeypatch.setattr("selfsup.train.pretrain.pretrain", fake_pretrain)
    monkeypatch.setenv("RANK", "1")
    assert main(["pretrain", "--out", str(tmp_path)]) == 0
    assert calls and capsys.readouterr().out == ""  # no "None on wafers: None epochs"
    monkeypatch.setenv("RANK", "0")
    (tmp_path / "summary.json").write_text(json.dumps({"method": "simclr", "data": "d"}))
    assert main(["pretrain", "--out", str(tmp_path)]) == 0
    assert "simclr on d:" in capsys.readouterr().out


def test_resume_bookkeeping(labelled_npz, tmp_path, monkeypatch, capsys):
    """Resumed runs: the summary names the run's data, counts every segment's training time,
    keeps metrics.csv when there was nothing left to train, and find relative data paths."""
    from selfsup.cli import main

    train, val = labelled_npz
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(train.name, val.name, work, epochs=1)  # paths relative to tmp_path
    _, run = selfsup.pretrain(cfg)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"] == str(train) and saved["val_data"] == str(val)  # made absolute
    first = json.loads((run / "summary.json").read_text())["train_seconds"]

    monkeypatch.chdir(work)  # another directory
    assert main(["pretrain", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"on {train}:" in out and "on wafers" not in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_completed"] == 2 and summary["data"] == str(train)
    assert summary["train_seconds"] > first  # both segments
    assert (run / "metrics.csv").is_file() and (run / "metrics.part0.csv").is_file()

    assert main(["pretrain", "--resume", str(run), "--no-progress"]) == 0  # already finished
    assert (run / "metrics.csv").is_file() and not (run / "metrics.part1.csv").exists()

    moved = tmp_path / "moved.npz"
    train.rename(moved)
    assert main(["pretrain", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no longer exists" in err and "--data" in err
    assert main(["pretrain", "--resume", str(run), "--data", str(moved), "--no-progress"]) == 0


def test_pretrain_on_a_dataset_in_memory(labelled_npz, tmp_path):
    from selfsup.data import load_dataset

    train, val = labelled_npz
    data = load_dataset(str(train), image_size=16)
    cfg = tiny_config("unused", val, tmp_path, epochs=1)
    _, run = selfsup.pretrain(cfg, dataset=data)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"].startswith("memory:")
    with pytest.raises(ValueError, match="pass it again as dataset="):
        selfsup.pretrain(resume=str(run), epochs=2, progress_bar=False)
    selfsup.pretrain(resume=str(run), epochs=2, progress_bar=False, dataset=data)
    assert json.loads((run / "summary.json").read_text())["epochs_completed"] == 2


def test_default_batch_fits_small_data_and_a_chosen_one_is_named(labelled_npz, tmp_path, caplog):
    train, val = labelled_npz
    cfg = tiny_config(train, val, tmp_path, epochs=1)
    del cfg["batch_size"]  # the default, 256, for 96 images
    with caplog.at_level("WARNING", logger="selfsup"):
        _, run = selfsup.pretrain(cfg)
    assert "using batch_size=96" in caplog.text
    assert yaml.safe_load((run / "config.yaml").read_text())["batch_size"] == 96
    with pytest.raises(ValueError, match=r"largest batch that fits is 96 \(--batch-size 96\)"):
        selfsup.pretrain(tiny_config(train, val, tmp_path, batch_size=128, name="chosen"))


def test_quiet_short_runs_and_a_hint_for_labelled_data_without_validation(
    labelled_npz, tmp_path, caplog, capsys
):
    from selfsup.cli import main

    train, val = labelled_npz
    cfg = tiny_config(train, val, tmp_path, val_data=None, max_steps=3, log_every_n_steps=50)
    with caplog.at_level("INFO", logger="selfsup"):
        _, run = selfsup.pretrain(cfg)
    assert "kNN monitor off" in caplog.text and "val_data=PATH" in caplog.text
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["epochs_trained"] == 0.5  # 6 steps an epoch
    assert main(["pretrain", "--resume", str(run), "--no-progress"]) == 0
    assert "3 steps (0.5 epochs)" in capsys.readouterr().out


def test_metrics_are_logged_at_least_once_an_epoch(tmp_path):
    from selfsup.config import PretrainConfig
    from selfsup.train.trainer import make_trainer

    cfg = PretrainConfig(log_every_n_steps=50, accelerator="cpu", devices=1)
    trainer = make_trainer(cfg, tmp_path, [], None, "32-true", log_every_at_most=4)
    assert trainer.log_every_n_steps == 4


class SaveRankViews(L.Callback):
    """Each process's views of the same fixed images, drawn at its first training batch."""

    def __init__(self, folder, images) -> None:
        self.folder, self.images = folder, images

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            views = pl_module.method.views(self.images)
            torch.save([v.detach() for v in views], self.folder / f"views{trainer.global_rank}.pt")


@pytest.mark.slow
def test_every_ddp_process_draws_its_own_views(tmp_path):
    """Views are drawn on the device in the training processes, all seeded alike by Lightning:
    without a stream of its own, process 1 would crop and flip exactly as process 0."""
    from lightning.pytorch.strategies import DDPStrategy

    from selfsup.data import ImageDataset
    from selfsup.train.trainer import BatchDataModule
    from tests.conftest import tiny_simclr

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=generator)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, max_steps=1, logger=False, enable_checkpointing=False,
        strategy=DDPStrategy(start_method="spawn"), enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False,
        callbacks=[SaveRankViews(tmp_path, images)],
    )  # fmt: skip
    L.seed_everything(0, verbose=False)
    module = PretrainModule(tiny_simclr(), total_steps=1)
    trainer.fit(module, datamodule=BatchDataModule(ImageDataset(images), 4, 0, 0))
    first, second = (torch.load(tmp_path / f"views{r}.pt") for r in range(2))
    assert len(first) == len(second) == 2
    for a, b in zip(first, second, strict=True):
        assert a.shape == b.shape and not torch.equal(a, b)


def test_process_zero_keeps_the_run_seed_and_the_others_get_their_own():
    from selfsup.runtime.distributed import RANK_SEED_STRIDE, seed_rank_views

    torch.manual_seed(7)
    assert seed_rank_views(0) == 7 and torch.initial_seed() == 7
    assert seed_rank_views(2, seed=7) == 7 + 2 * RANK_SEED_STRIDE == torch.initial_seed()
    assert seed_rank_views(1, seed=2**63 - 1) < 2**63  # a valid seed even at the top


def test_without_a_progress_bar_pretraining_prints_progress_lines(
    labelled_npz, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("SELFSUP_PROGRESS", "0.000001")  # a line after every step
    train, val = labelled_npz
    selfsup.pretrain(tiny_config(train, val, tmp_path, epochs=1))  # 6 steps of 16 images
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pretrain:")]
    assert len(lines) == 6
    assert lines[0].startswith("pretrain: step 1, epoch 0 (1/6 batches), loss ")
    assert lines[-1].startswith("pretrain: step 6, epoch 0 (6/6 batches), loss ")
    assert "elapsed, ~" in lines[0] and lines[0].endswith(" left of 6 steps")
    monkeypatch.setenv("SELFSUP_PROGRESS", "off")
    selfsup.pretrain(tiny_config(train, val, tmp_path, epochs=1, name="quiet"))
    assert "pretrain:" not in capsys.readouterr().err


def test_progress_lines_count_down_a_time_budget():
    from types import SimpleNamespace

    from selfsup.runtime.progress import Progress
    from selfsup.train.callbacks import StepProgress

    trainer = SimpleNamespace(global_step=40, current_epoch=2, num_training_batches=100,
                              estimated_stepping_batches=10**9)  # fmt: skip
    callback = StepProgress(Progress(every=0), budget_s=600)
    callback._first_step = 0
    line = callback.line(trainer, {"loss": torch.tensor(1.23456)}, 39, elapsed=150)
    assert line == (
        "pretrain: step 40, epoch 2 (40/100 batches), loss 1.235, 2:30 elapsed, "
        "~7:30 left of the 10-minute budget"
    )


def test_pretraining_subset_is_seeded_sorted_and_all_when_not_smaller():
    from selfsup.data import ImageDataset
    from selfsup.train.pretrain import pretraining_subset

    data = ImageDataset(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 8, 8))
    first = pretraining_subset(data, 4, seed=3)
    chosen = first.images[:, 0, 0, 0].tolist()
    assert len(first) == 4 and chosen == sorted(set(chosen))
    assert pretraining_subset(data, 4, seed=3).images.equal(first.images)  # resume draws it again
    assert pretraining_subset(data, 4, seed=4).images[:, 0, 0, 0].tolist() != chosen
    assert pretraining_subset(data, None, seed=3) is data
    assert pretraining_subset(data, 10, seed=3) is data
