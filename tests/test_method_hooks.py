"""The method API's per-sample fields and training hooks, driven by the real trainer path:
``batch_fields`` reach ``training_loss``, ``on_train_epoch_start`` and ``before_optimizer_step``
are called where their docstrings say, and nothing reaches a method that did not ask."""

import pytest
import torch
from conftest import cpu_trainer

from selfsup.data import ImageDataset
from selfsup.data.loader import BatchLoader
from selfsup.methods import SimCLR
from selfsup.methods.base import register
from selfsup.train.module import PretrainModule
from selfsup.train.trainer import BatchDataModule

pytestmark = pytest.mark.usefixtures("one_thread")
N, SIZE, BATCH = 24, 16, 8


def dataset(labelled: bool) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    return ImageDataset(images, torch.arange(N) % 3 if labelled else None)


class RecordingSimCLR(SimCLR):
    """SimCLR that records what the trainer hands it (not registered: a test double)."""

    batch_fields = ("labels", "indices")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[dict] = []
        self.epochs: list[int] = []
        self.grads_before_step: list[bool] = []

    def training_loss(self, views, labels=None, indices=None):
        self.seen.append({"labels": labels.clone(), "indices": indices.clone(), "views": views})
        return super().training_loss(views)

    def on_train_epoch_start(self, epoch: int) -> None:
        super().on_train_epoch_start(epoch)
        self.epochs.append(epoch)

    def before_optimizer_step(self) -> None:
        grad = self.projector[0].weight.grad
        self.grads_before_step.append(grad is not None and bool(grad.abs().sum() > 0))


def small(cls=RecordingSimCLR):
    return cls(
        "convnet_tiny",
        image_size=SIZE,
        backbone_kwargs={"width": 4},
        proj_hidden_dim=16,
        proj_dim=8,
    )


def fit(method, data, epochs: int = 2) -> None:
    module = PretrainModule(method, lr=0.01, total_steps=epochs * (N // BATCH))
    trainer = cpu_trainer(max_epochs=epochs)
    datamodule = BatchDataModule(data, BATCH, seed=0, num_workers=0, fields=method.batch_fields)
    trainer.fit(module, datamodule=datamodule)


def test_trainer_hands_declared_fields_and_calls_hooks():
    data = dataset(labelled=True)
    method = small()
    fit(method, data, epochs=2)
    assert len(method.seen) == 2 * N // BATCH
    assert method.epochs == [0, 1] and method.current_epoch == 1
    assert method.grads_before_step == [True] * len(method.seen)
    epoch_indices = torch.cat([s["indices"] for s in method.seen[: N // BATCH]])
    assert sorted(epoch_indices.tolist()) == list(range(N))  # each sample once per epoch
    for record in method.seen:
        assert record["labels"].dtype == torch.int64
        assert torch.equal(record["labels"], data.labels[record["indices"]])


def test_unlabelled_data_gives_minus_one_labels():
    loader = BatchLoader(dataset(labelled=False), BATCH, fields=("labels", "indices"))
    images, fields = next(iter(loader))
    assert torch.equal(fields["labels"], torch.full((BATCH,), -1))
    assert torch.equal(images, dataset(labelled=False).images[fields["indices"]])


def test_methods_without_fields_get_plain_batches():
    loader = BatchLoader(dataset(labelled=True), BATCH, fields=SimCLR.batch_fields)
    assert isinstance(next(iter(loader)), torch.Tensor)


def test_fields_reach_a_method_called_directly_and_unknown_ones_are_refused():
    method = small()
    images = dataset(labelled=True).images[:BATCH]
    labels, indices = torch.arange(BATCH), torch.arange(BATCH) + 100
    loss = method(images, labels=labels, indices=indices)
    assert torch.isfinite(loss)
    assert torch.equal(method.seen[-1]["indices"], indices)
    with pytest.raises(ValueError, match="simclr takes no per-sample fields; got labels"):
        small(SimCLR)(images, labels=labels)


def test_unknown_fields_are_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown sample fields \['label'\]"):
        BatchLoader(dataset(labelled=True), BATCH, fields=("label",))

    class Wrong(SimCLR):
        batch_fields = ("captions",)

    with pytest.raises(ValueError, match=r"unknown batch_fields \['captions'\]"):
        register("wrong_fields")(Wrong)


def test_moco_with_shuffled_bn_asks_for_per_device_batchnorm():
    from selfsup.methods import MoCoV2

    kwargs = dict(image_size=SIZE, backbone_kwargs={"width": 4}, queue_size=16)
    assert MoCoV2("convnet_tiny", **kwargs).sync_batchnorm is False
    assert MoCoV2("convnet_tiny", shuffle_bn=False, **kwargs).sync_batchnorm is True
    assert small(SimCLR).sync_batchnorm is True


def test_queue_and_prototype_defaults_follow_the_training_data(caplog):
    from selfsup.config import PretrainConfig
    from selfsup.methods import SwAV
    from selfsup.methods.queue import queue_size_for
    from selfsup.train.pretrain import build_method

    assert queue_size_for(65536, 1000, 256) == 768  # whole batches within the training set
    assert queue_size_for(65536, 100, 256) == 256 and queue_size_for(4096, 10**6, 256) == 4096
    assert SwAV.data_defaults(10**6, 256) == {"num_prototypes": 256}
    assert SwAV.data_defaults(10**6, 4096) == {"num_prototypes": 3000}  # the paper's setting

    def built(method_kwargs):
        cfg = PretrainConfig.from_dict({
            "method": "mocov2", "data": "unused", "backbone": "convnet_tiny",
            "image_size": SIZE, "batch_size": BATCH, "backbone_kwargs": {"width": 4},
            "method_kwargs": {"proj_hidden_dim": 16, "proj_dim": 8, **method_kwargs},
        })  # fmt: skip
        return build_method(cfg, dataset(labelled=True))

    with caplog.at_level("INFO", logger="selfsup.train"):
        method = built({})
    assert method.queue.keys.shape[0] == N == method.hyperparameters()["queue_size"]
    assert "mocov2: queue_size=24 for 24 training images at global batch 8 (paper: 65536" in (
        caplog.text
    )
    assert built({"queue_size": 40}).queue.keys.shape[0] == 40  # the user's value wins


def test_a_methods_paper_optimizer_applies_where_the_user_set_none(labelled_npz, tmp_path, caplog):
    """Barlow Twins trains with LARS (lr 0.2, wd 1.5e-6) unless the run sets its own; the run's
    config.yaml records what was used, so --resume continues with it."""
    import yaml

    import selfsup
    from selfsup.methods import BarlowTwins

    assert BarlowTwins.optimizer_defaults["optimizer"] == "lars"
    train, val = labelled_npz
    base = dict(
        method="barlow_twins", backbone="convnet_tiny", backbone_kwargs={"width": 4},
        method_kwargs={"proj_hidden_dim": 16, "proj_dim": 16}, data=str(train),
        val_data=str(val), image_size=16, max_steps=1, batch_size=16, precision="32-true",
        out=str(tmp_path), knn_k=[3], progress_bar=False,
    )  # fmt: skip
    with caplog.at_level("INFO", logger="selfsup"):
        _, run = selfsup.pretrain(base, name="paper")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["optimizer"], saved["lr"], saved["weight_decay"]) == ("lars", 0.2, 1.5e-6)
    assert "barlow_twins: its paper's optimizer settings optimizer=lars" in caplog.text
    _, run = selfsup.pretrain({**base, "lr": 0.05}, name="mine")  # the user's lr wins
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["optimizer"], saved["lr"]) == ("lars", 0.05)
    _, run = selfsup.pretrain({**base, "method": "simclr",
                               "method_kwargs": {"proj_hidden_dim": 16, "proj_dim": 8}},
                              name="sgd")  # fmt: skip
    assert yaml.safe_load((run / "config.yaml").read_text())["optimizer"] == "sgd"


def test_a_setting_given_on_the_command_line_counts_even_at_its_default():
    """``selfsup pretrain --method barlow_twins --optimizer sgd`` keeps SGD: resolve_config
    remembers what was given, though sgd is also the config's default."""
    from selfsup.config import resolve_config
    from selfsup.train.resume import explicit_keys

    cfg = resolve_config(None, ["weight_decay=5e-4"], method="barlow_twins", optimizer="sgd")
    assert {"method", "optimizer", "weight_decay"} <= explicit_keys(cfg, {})
    assert "lr" not in explicit_keys(cfg, {})
