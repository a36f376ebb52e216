"""PySSL's front door over the same core: ``model = SimCLR(backbone, feature_size, ...)``, then
PySSL's README training loop (``loss = model(images)``) with every method class."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from selfsup.methods import (
    BYOL,
    CMC,
    CPC,
    DCL,
    DCLW,
    DINO,
    NNCLR,
    PIRL,
    BarlowTwins,
    BiGAN,
    ContextAutoencoder,
    DenoisingAutoencoder,
    Exemplar,
    FastSiam,
    InstDisc,
    Jigsaw,
    MoCoV1,
    MoCoV2,
    MoCoV3,
    RotNet,
    SimCLR,
    SimCLRV2,
    SimSiam,
    SupCon,
    SwAV,
    VICReg,
)
from tests.conftest import sample_fields

torchvision = pytest.importorskip("torchvision")

FEATURE_SIZE = 16
IMAGE_SIZE = 32
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
# class -> (small heads, width of encoder(x))
CLASSES = {
    SimCLR: (dict(proj_hidden_dim=32, proj_dim=8), 8),
    SimCLRV2: (dict(proj_hidden_dim=32, proj_dim=8), 8),
    DCL: (dict(proj_hidden_dim=32, proj_dim=8), 8),
    DCLW: (dict(proj_hidden_dim=32, proj_dim=8), 8),
    MoCoV2: (dict(proj_hidden_dim=32, proj_dim=8, queue_size=64), 8),
    MoCoV1: (dict(proj_dim=8, queue_size=64), 8),
    MoCoV3: (dict(proj_hidden_dim=32, proj_dim=8, pred_hidden_dim=16), 8),
    BYOL: (dict(proj_hidden_dim=32, proj_dim=8, pred_hidden_dim=16), 8),
    SimSiam: (dict(proj_hidden_dim=32, proj_dim=8, pred_hidden_dim=4), 8),
    FastSiam: (dict(proj_hidden_dim=32, proj_dim=8, pred_hidden_dim=4), 8),
    BarlowTwins: (dict(proj_hidden_dim=32, proj_dim=8), 8),
    DINO: (dict(out_dim=32, head_hidden_dim=16, bottleneck_dim=8, num_local_crops=2), 32),
    RotNet: ({}, 4),
    Jigsaw: (dict(tile_dim=8, hidden_dim=16), 8),
    PIRL: (dict(proj_dim=8, num_samples=32, num_negatives=16), 8),
    CPC: (dict(target_dim=8, context_hidden_dim=16, context_blocks=2), 8),
    SupCon: (dict(proj_hidden_dim=32, proj_dim=8), 8),
    NNCLR: (dict(proj_hidden_dim=32, proj_dim=8, pred_hidden_dim=16, queue_size=64), 8),
    VICReg: (dict(proj_hidden_dim=32, proj_dim=8), 8),
    CMC: (dict(proj_dim=8, num_samples=32, num_negatives=16), 16),
    SwAV: (dict(proj_hidden_dim=32, proj_dim=8, num_prototypes=10, num_local_crops=2), 8),
    InstDisc: (dict(proj_dim=8, num_samples=32, num_negatives=16), 8),
    Exemplar: (dict(proj_dim=8, num_samples=32), 8),
    BiGAN: (dict(z_dim=8, generator_width=8, discriminator_width=8, discriminator_hidden_dim=8), 8),
    DenoisingAutoencoder: ({}, 16),  # encoder: the backbone (the decoder reads its map)
    ContextAutoencoder: ({}, 16),
}

# methods that refuse a user's module, with why (tested in their own files)
NO_USER_MODULE = {
    "mae": "needs a ViT: its encoder runs on the visible patch tokens (tests/test_mae.py)",
    "split_brain": "splits L from ab: a 1- and a 2-channel half, not one RGB module "
    "(tests/test_split_brain.py)",
}
# backbone features where the backbone is more than your module (CMC: it and a copy)
BACKBONE_FEATURES = {CMC: 2 * FEATURE_SIZE}

pytestmark = pytest.mark.usefixtures("one_thread")


def user_backbone() -> nn.Module:
    """A user's own 2-conv net; pooling first so DINO's smaller local crops fit too."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, FEATURE_SIZE, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip


def test_every_method_class_is_covered():
    import selfsup.methods

    covered = {cls.method_name for cls in CLASSES} | set(NO_USER_MODULE)
    assert covered == set(selfsup.methods.METHODS.names())


@pytest.mark.parametrize("cls", list(CLASSES), ids=lambda c: c.__name__)
def test_pyssl_readme_loop_trains_every_method(cls):
    torch.manual_seed(0)
    heads, encoder_width = CLASSES[cls]
    backbone = user_backbone()
    model = cls(backbone, FEATURE_SIZE, image_size=IMAGE_SIZE, mean=MEAN, std=STD, **heads)
    assert model.views.mean == MEAN and model.views.std == STD

    dataset = torchvision.datasets.FakeData(
        size=32, image_size=(3, IMAGE_SIZE, IMAGE_SIZE),
        transform=torchvision.transforms.ToTensor(),
    )  # fmt: skip
    before = [p.detach().clone() for p in backbone.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    for images, _ in DataLoader(dataset, batch_size=8, shuffle=True):
        loss = model(images, **sample_fields(model, len(images)))
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, backbone.parameters(), strict=True))

    x = torch.rand(4, 3, IMAGE_SIZE, IMAGE_SIZE)
    features = BACKBONE_FEATURES.get(cls, FEATURE_SIZE)
    assert model.backbone(x).shape == (4, features)
    assert model.encoder(x).shape == (4, encoder_width)
    assert model.feature_dim == features and model.hyperparameters()["feature_size"] == 16
    uint8 = torch.randint(0, 256, (8, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    assert torch.isfinite(model(uint8, **sample_fields(model, len(uint8))))


def test_feature_size_by_keyword_or_attribute_and_a_clear_error_without():
    net = user_backbone()
    assert SimCLR(net, feature_size=FEATURE_SIZE, image_size=IMAGE_SIZE).feature_dim == 16
    net.feature_dim = FEATURE_SIZE
    assert SimCLR(net, image_size=IMAGE_SIZE).hyperparameters()["feature_size"] == 16
    with pytest.raises(ValueError, match="has feature_dim=16, but a feature size of 32"):
        SimCLR(net, 32, image_size=IMAGE_SIZE)
    with pytest.raises(ValueError, match="needs its feature size D.*pass feature_size"):
        SimCLR(user_backbone(), image_size=IMAGE_SIZE)
    with pytest.raises(ValueError, match="simclr: 'feature_dim' is now 'feature_size'"):
        SimCLR(user_backbone(), image_size=IMAGE_SIZE, backbone_kwargs={"feature_dim": 16})
