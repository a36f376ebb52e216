"""Every method saves and loads: built by name or with your own nn.Module, same outputs after."""

import io
import json

import pytest
import torch
from torch import nn

from selfsup.methods import METHODS, SimCLR, build, load_method, save_method
from tests.conftest import sample_fields

IMAGE_SIZE = 16
# small heads so every method builds fast
SMALL = {
    "simclr": dict(proj_hidden_dim=16, proj_dim=8),
    "simclrv2": dict(proj_hidden_dim=16, proj_dim=8),
    "dcl": dict(proj_hidden_dim=16, proj_dim=8),
    "dclw": dict(proj_hidden_dim=16, proj_dim=8),
    "mocov2": dict(proj_hidden_dim=16, proj_dim=8, queue_size=32),
    "mocov1": dict(proj_dim=8, queue_size=32),
    "mocov3": dict(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16),
    "byol": dict(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16),
    "simsiam": dict(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=4),
    "fastsiam": dict(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=4, num_views=3),
    "barlow_twins": dict(proj_hidden_dim=16, proj_dim=8),
    "dino": dict(out_dim=32, head_hidden_dim=16, bottleneck_dim=8, num_local_crops=2),
    "rotnet": dict(classifier_hidden_dim=8),
    "jigsaw": dict(tile_dim=8, hidden_dim=16),
    "pirl": dict(proj_dim=8, num_samples=32, num_negatives=16),
    "cpc": dict(target_dim=8, context_hidden_dim=16, context_blocks=2),
    "supcon": dict(proj_hidden_dim=16, proj_dim=8),
    "nnclr": dict(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16, queue_size=32),
    "vicreg": dict(proj_hidden_dim=16, proj_dim=8),
    "cmc": dict(proj_dim=8, num_samples=32, num_negatives=16),
    "instdisc": dict(proj_dim=8, num_samples=32, num_negatives=16),
    "exemplar": dict(proj_dim=8, num_samples=32),
    "bigan": dict(z_dim=8, generator_width=8, discriminator_width=8, discriminator_hidden_dim=8),
    "mae": {},  # its decoder follows the ViT of OWN_BACKBONE: 8 wide, 1 block
    "denoising_ae": {},
    "context_ae": {},
    "split_brain": {},
    "swav": dict(  # the queue fills in train_a_step, so its buffers round-trip too
        proj_hidden_dim=16,
        proj_dim=8,
        num_prototypes=10,
        num_local_crops=2,
        queue_length=12,
        epoch_queue_starts=0,
    ),
}
# methods that train only a kind of registered backbone -> (name, backbone_kwargs); they refuse
# a user's module (MAE: its ViT encoder runs on the visible patch tokens alone)
OWN_BACKBONE = {"mae": ("vit_tiny", dict(depth=1, width=16, heads=2))}
# methods that read the backbone's last feature map, which TinyNet (pooling inside a plain
# Module) does not expose: refused by name (tests/test_decoders.py); split_brain splits L / ab
NEEDS_FEATURE_MAP = {"denoising_ae", "context_ae", "split_brain"}


class TinyNet(nn.Module):
    """A user's backbone: no feature_dim attribute, its size is given as feature_size."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def batch(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (6, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=g)


def train_a_step(method: nn.Module) -> None:
    """Move weights, BatchNorm statistics, EMA targets, queues and centres off their init."""
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    images = batch(1)
    loss = method(images, **sample_fields(method, len(images)))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    method.on_train_step_end(0.5)


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_every_method_is_covered():
    assert set(SMALL) == set(METHODS.names())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_method_built_directly_round_trips(name, tmp_path):
    torch.manual_seed(0)
    cls = METHODS.get(name)
    backbone, backbone_kwargs = OWN_BACKBONE.get(name, ("convnet_tiny", {"width": 2}))
    method = cls(backbone, image_size=IMAGE_SIZE, backbone_kwargs=backbone_kwargs, **SMALL[name])
    train_a_step(method)
    folder = save_method(method, tmp_path / name)
    saved = json.loads((folder / "method.json").read_text())
    assert saved == {"method": name, **method.hyperparameters()}

    torch.manual_seed(1)  # a different init: equal outputs can only come from the file
    loaded = load_method(folder)
    assert type(loaded) is cls
    assert loaded.hyperparameters() == method.hyperparameters()
    assert_same_state(loaded, method)
    assert torch.equal(loaded.embed(batch()), method.embed(batch()))


@pytest.mark.parametrize("name", sorted(set(SMALL) - set(OWN_BACKBONE) - NEEDS_FEATURE_MAP))
def test_hyperparameters_survive_a_weights_only_checkpoint(name):
    method = build(name, backbone=TinyNet(), feature_size=24, image_size=IMAGE_SIZE, **SMALL[name])
    buffer = io.BytesIO()
    torch.save({"build_config": {"method": name, **method.hyperparameters()}}, buffer)
    buffer.seek(0)
    read = torch.load(buffer, weights_only=True)["build_config"]
    assert read == {"method": name, **method.hyperparameters()}
    assert read["backbone"] == {"custom_module": "TinyNet"} and read["feature_size"] == 24


def test_custom_module_round_trips_when_passed_back(tmp_path):
    torch.manual_seed(0)
    method = SimCLR(TinyNet(), 24, image_size=IMAGE_SIZE, proj_hidden_dim=16, proj_dim=8,
                    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # fmt: skip
    train_a_step(method)
    folder = save_method(method, tmp_path / "mine")
    recorded = method.hyperparameters()
    assert recorded["backbone"] == {"custom_module": "TinyNet"} and recorded["feature_size"] == 24

    with pytest.raises(ValueError, match=r"simclr: backbone=.*TinyNet.*pass it again: backbone="):
        load_method(folder)
    with pytest.raises(ValueError, match="not your own object; leave views out"):
        load_method(folder, backbone=TinyNet(), views=lambda x: [x, x])
    torch.manual_seed(1)
    loaded = load_method(folder / "method.json", backbone=TinyNet())
    assert loaded.hyperparameters() == recorded
    assert loaded.views.mean == (0.5, 0.5, 0.5)
    assert_same_state(loaded, method)
    assert torch.equal(loaded.embed(batch()), method.embed(batch()))


def test_a_folder_without_the_files_or_with_other_weights_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no method.json"):
        load_method(tmp_path)
    method = build("simclr", backbone="convnet_tiny", image_size=IMAGE_SIZE, **SMALL["simclr"])
    folder = save_method(method, tmp_path / "a")
    config = json.loads((folder / "method.json").read_text())
    config["proj_dim"] = 4
    (folder / "method.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="the weights do not fit simclr"):
        load_method(folder)
