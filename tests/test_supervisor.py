"""Supervisor: the Super-Selfish style front door over selfsup.pretrain, on tiny runs."""

import json
import logging

import pytest
import torch
import yaml
from torch import nn
from torchvision.datasets import FakeData

from selfsup.methods import METHODS
from selfsup.runtime.optim import LARS
from selfsup.supervisor import CombinedNet, Supervisor, _optimizer_settings

FEATURES = 32  # convnet_tiny width 4: 8 * 4 channels after the last stage
# name -> small heads (the papers' defaults are thousands wide)
HEADS = {
    "simclr": dict(proj_hidden_dim=16, proj_dim=8),
    "mocov2": dict(proj_hidden_dim=16, proj_dim=8, queue_size=64),
    "byol": dict(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16),
    "simsiam": dict(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=4),
    "fastsiam": dict(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=4),
    "barlow_twins": dict(proj_hidden_dim=16, proj_dim=8),
    "dino": dict(out_dim=32, head_hidden_dim=16, bottleneck_dim=8, num_local_crops=2),
    "rotnet": {},
    "jigsaw": dict(tile_dim=8, hidden_dim=16),
    "pirl": dict(proj_dim=8, num_negatives=16),
    "cpc": dict(target_dim=8, context_hidden_dim=16, context_blocks=2),
    "cmc": dict(proj_dim=8, num_negatives=16),  # two half-width encoders: 16 + 16 features
    "instdisc": dict(proj_dim=8, num_negatives=16),
    "exemplar": dict(proj_dim=8),
    # a ViT only; FEATURES wide
    "mae": dict(backbone="vit_tiny", backbone_kwargs=dict(depth=1, width=FEATURES, heads=2)),
    "split_brain": {},  # two half-width encoders: 16 + 16 features
}
TINY_RUN = dict(epochs=1, batch_size=16, precision="32-true", progress_bar=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def fake_data(size: int = 64) -> FakeData:
    return FakeData(size=size, image_size=(3, 16, 16), num_classes=10)


def supervisor(method: str = "simclr", data=None, **kwargs) -> Supervisor:
    tiny = {"backbone": "convnet_tiny", "backbone_kwargs": {"width": 4}}
    return Supervisor(
        method, fake_data() if data is None else data, **{**tiny, **HEADS.get(method, {}), **kwargs}
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 1-epoch simclr run under <tmp>/store/base."""
    run = tmp_path_factory.mktemp("trained") / "store" / "base"
    return supervisor().supervise(name=run, **TINY_RUN), run


@pytest.mark.parametrize("method", METHODS.names())
def test_supervise_every_method_writes_a_run_folder(method, tmp_path):
    run = tmp_path / "store" / method
    sup = supervisor(method).supervise(name=run, **TINY_RUN)
    assert sup.run_dir == run
    for name in ("checkpoints/last.ckpt", "backbone.safetensors", "config.yaml", "summary.json"):
        assert (run / name).is_file(), name
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["method"] == method and config["data"] == "memory:torch dataset FakeData"
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    assert sup.get_backbone()(sup.preprocess(images)).shape == (4, FEATURES)


def test_supervise_maps_the_super_selfish_arguments(trained):
    _, run = trained
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["out"], config["name"]) == (str(run.parent), "base")
    assert config["lr"] == 1e-3 and config["lr_scaling"] == "none"  # lr used as given
    assert config["optimizer"] == "adamw" and config["weight_decay"] == 0.0  # Adam
    assert (config["epochs"], config["batch_size"], config["num_workers"]) == (1, 16, 0)
    assert config["backbone"] == "convnet_tiny" and config["backbone_kwargs"] == {"width": 4}
    assert config["image_size"] == 16 and config["method_kwargs"] == HEADS["simclr"]


def test_backbone_features_and_combined_net(trained):
    sup, _ = trained
    backbone = sup.get_backbone()
    x = torch.rand(5, 3, 16, 16)
    assert backbone(x).shape == (5, FEATURES)
    model = CombinedNet(backbone, nn.Linear(FEATURES, 10))
    assert model(x).shape == (5, 10)
    assert torch.allclose(model(x), model.head(backbone(x)))


def test_load_in_a_new_supervisor_gives_the_same_backbone(trained):
    sup, run = trained
    loaded = supervisor().load(str(run))
    assert loaded.run_dir == run
    mine, theirs = sup.get_backbone().state_dict(), loaded.get_backbone().state_dict()
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key
    with pytest.raises(ValueError, match="holds a simclr run, not byol"):
        supervisor("byol").load(run)
    with pytest.raises(FileNotFoundError, match="holds no checkpoints/last.ckpt"):
        supervisor().load(run.parent / "missing")


def test_pretrained_continues_the_run_up_to_epochs_in_total(tmp_path, caplog):
    run = tmp_path / "store" / "base"
    sup = supervisor().supervise(name=run, **TINY_RUN)
    last = run / "checkpoints" / "last.ckpt"
    stamp = last.stat().st_mtime_ns
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        sup.supervise(name=run, pretrained=True, **TINY_RUN)  # 1 epoch done of 1: loads only
    assert "already trained 1 epoch(s)" in caplog.text
    assert last.stat().st_mtime_ns == stamp and sup.run_dir == run
    sup.supervise(name=run, pretrained=True, **{**TINY_RUN, "epochs": 2})
    assert json.loads((run / "summary.json").read_text())["epochs_completed"] == 2
    assert sorted(p.name for p in run.parent.iterdir()) == ["base"]  # the same folder
    with pytest.raises(ValueError, match="holds a run with method 'simclr', not 'byol'"):
        supervisor("byol").supervise(name=run, pretrained=True, **TINY_RUN)


def test_pretrained_finishes_a_killed_run_without_going_back(tmp_path, caplog):
    run = tmp_path / "store" / "base"
    supervisor().supervise(name=run, **{**TINY_RUN, "epochs": 2})
    for name in ("summary.json", "backbone.safetensors", "backbone.json"):
        (run / name).unlink()  # as a run killed after writing its 2nd epoch's checkpoint
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        sup = supervisor().supervise(name=run, pretrained=True, **TINY_RUN)
    assert "holds 2 epoch(s), more than epochs=1; finishing it at 2" in caplog.text
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["epochs_completed"], summary["steps"]) == (2, 8)  # no step trained again
    assert (run / "backbone.safetensors").is_file() and sup.run_dir == run


def test_an_existing_run_is_never_overwritten(trained, caplog):
    _, run = trained
    stamp = (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    data = fake_data(size=32)
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        sup = supervisor(data=data).supervise(name=run, **TINY_RUN)
    assert sup.run_dir != run and sup.run_dir.name.startswith("base-")
    assert "already held a run" in caplog.text
    assert (run / "checkpoints" / "last.ckpt").stat().st_mtime_ns == stamp


def test_optimizer_classes_map_to_the_trainers_with_torch_defaults():
    assert _optimizer_settings(torch.optim.Adam) == {"optimizer": "adamw", "weight_decay": 0.0}
    assert _optimizer_settings(torch.optim.AdamW) == {"optimizer": "adamw", "weight_decay": 0.01}
    sgd = {"optimizer": "sgd", "weight_decay": 0.0, "sgd_momentum": 0.0}
    assert _optimizer_settings(torch.optim.SGD) == sgd
    assert _optimizer_settings(LARS) == {"optimizer": "lars"}
    assert _optimizer_settings("lars") == {"optimizer": "lars"}


def test_unsupported_training_options_are_refused(tmp_path):
    sup = supervisor()
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="optimizer RMSprop is not supported; use torch.optim"):
        sup.supervise(name=run, optimizer=torch.optim.RMSprop, **TINY_RUN)
    with pytest.raises(ValueError, match="shuffle=False is not supported"):
        sup.supervise(name=run, shuffle=False, **TINY_RUN)
    with pytest.raises(ValueError, match="lr_scheduler must be None"):
        sup.supervise(name=run, lr_scheduler=torch.optim.lr_scheduler.StepLR, **TINY_RUN)
    with pytest.raises(ValueError, match="backbone_kwargs are set by Supervisor"):
        sup.supervise(name=run, backbone_kwargs={}, **TINY_RUN)
    assert not run.exists()


def test_bad_names_and_backbones_are_named():
    with pytest.raises(ValueError, match="unknown method 'simclrr' \\(did you mean 'simclr'"):
        Supervisor("simclrr", fake_data())
    with pytest.raises(ValueError, match="unknown method_kwargs key 'proj_dimm'"):
        Supervisor("simclr", fake_data(), proj_dimm=8)
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'"):
        Supervisor("simclr", fake_data(), backbone="resnet19")
    with pytest.raises(ValueError, match="got a Sequential module.*selfsup.build"):
        Supervisor("simclr", fake_data(), backbone=nn.Sequential(nn.Flatten()))
    with pytest.raises(RuntimeError, match="nothing trained yet"):
        Supervisor("simclr", fake_data()).get_backbone()


def test_a_bad_sample_is_named_before_any_run_folder_exists(tmp_path):
    samples = [(torch.rand(3, 16, 16), 0)] * 20 + [("not an image", 0)]
    with pytest.raises(ValueError, match="sample 20: expected a PIL image.*builtins.str"):
        supervisor(data=samples).supervise(name=tmp_path / "run", **TINY_RUN)
    assert not (tmp_path / "run").exists()
