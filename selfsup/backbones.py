"""Backbone registry: a name -> an ``nn.Module`` that maps [B, C, H, W] to features [B, D].

Every backbone carries ``feature_dim`` (D) and ``in_channels`` (C) and has no classifier.
``backbone.feature_map(x)`` gives the last feature map [B, D, h, w] before the global pooling
(registered backbones and timm conv nets; methods that predict over positions use it).

Names:
- ``resnet18``, ``resnet34``, ``resnet50``: torchvision ResNets, random init (no downloads).
  ``cifar_stem=True`` swaps the 7x7/stride-2 stem and max-pool for a 3x3/stride-1 conv, as in
  SimCLR's CIFAR experiments; ``cifar_resnet18`` etc. are shortcuts.
- ``convnet_tiny`` and ``convnet_small``: 4-stage conv nets for 28-64 px inputs (wafer maps,
  Fashion-MNIST); ``width`` scales the channels.
- ``timm/<model>``: any timm model (``pip install timm``), built with ``num_classes=0``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from selfsup.registry import Registry

BACKBONES: Registry[nn.Module] = Registry("backbone")


class Backbone(nn.Module):
    """Wraps a trunk that outputs [B, D] and records its feature size and input channels."""

    def __init__(self, trunk: nn.Module, feature_dim: int, in_channels: int, name: str) -> None:
        super().__init__()
        self.trunk = trunk
        self.feature_dim = feature_dim
        self.in_channels = in_channels
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        self._check_images(x)
        return self.trunk(x)

    def _check_images(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"backbone '{self.name}' expects images [B, {self.in_channels}, H, W], "
                f"got shape {tuple(x.shape)}"
            )

    def feature_map(self, x: Tensor) -> Tensor:
        """The last feature map [B, D, h, w] of images ``x`` [B, C, H, W]: what ``forward``
        pools into [B, D]. Same weights as ``forward``; a user module without a known pooling
        step is refused with a message naming it."""
        self._check_images(x)
        spatial = _spatial_trunk(self.trunk)
        if spatial is None:
            raise ValueError(
                f"backbone '{self.name}' has no known last feature map (its pooling step is not "
                "a trailing AdaptiveAvgPool2d + Flatten, a torchvision ResNet or a timm model); "
                "use a registered backbone for methods that need one"
            )
        out = spatial(x)
        if out.ndim != 4 or out.shape[1] != self.feature_dim:
            raise ValueError(
                f"backbone '{self.name}': its last feature map has shape {tuple(out.shape)}, "
                f"not [B, {self.feature_dim}, h, w]"
            )
        return out


def _spatial_trunk(trunk: nn.Module):
    """A callable giving ``trunk``'s feature map before its global pooling, or None."""
    pools = (nn.AdaptiveAvgPool2d, nn.Flatten)
    if isinstance(trunk, nn.Sequential) and len(trunk) > 2:
        if isinstance(trunk[-2], pools[0]) and isinstance(trunk[-1], pools[1]):
            return trunk[:-2]
    resnet_parts = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    if all(hasattr(trunk, name) for name in resnet_parts) and hasattr(trunk, "avgpool"):
        return nn.Sequential(*(getattr(trunk, name) for name in resnet_parts))
    if callable(getattr(trunk, "forward_features", None)):
        return trunk.forward_features  # timm
    return None


def build_backbone(
    name: str | nn.Module, in_channels: int = 3, *, feature_dim: int | None = None, **kwargs: Any
) -> Backbone:
    """Build a registered backbone, or wrap a user module that maps images to [B, D] features.

    A user module needs ``feature_dim`` = D, here or as its attribute; ``kwargs`` configure a
    registered backbone only. Given with a registered name, ``feature_dim`` must match it.
    """
    if isinstance(name, nn.Module):
        if kwargs:
            raise ValueError(
                f"backbone keyword(s) {', '.join(sorted(kwargs))} configure a registered backbone "
                f"by name; your module '{type(name).__name__}' is built already"
            )
        return _wrap_module(name, in_channels, feature_dim)
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    if name.startswith("timm/"):
        built = _timm_backbone(name[len("timm/") :], in_channels, **kwargs)
    else:
        built = BACKBONES.get(name)(in_channels=in_channels, **kwargs)
    if feature_dim is not None and feature_dim != built.feature_dim:
        raise ValueError(
            f"backbone '{name}' gives {built.feature_dim} features, but a feature size of "
            f"{feature_dim} was given"
        )
    return built


def _wrap_module(module: nn.Module, in_channels: int, feature_dim: int | None) -> Backbone:
    """A user module as a Backbone (a Backbone stays itself); its feature size is checked."""
    known = getattr(module, "feature_dim", None)
    if feature_dim is None:
        feature_dim = known
    if not isinstance(feature_dim, int) or isinstance(feature_dim, bool) or feature_dim < 1:
        raise ValueError(
            f"your backbone module '{type(module).__name__}' needs its feature size D (of its "
            "[B, D] output): pass feature_size to the method (feature_dim to build_backbone) "
            f"or give the module a feature_dim attribute; got {feature_dim!r}"
        )
    if known is not None and known != feature_dim:
        raise ValueError(
            f"backbone '{type(module).__name__}' has feature_dim={known}, but a feature size "
            f"of {feature_dim} was given"
        )
    if isinstance(module, Backbone):
        if module.in_channels != in_channels:
            raise ValueError(
                f"backbone '{module.name}' takes in_channels={module.in_channels}, "
                f"but in_channels={in_channels} was asked for"
            )
        return module
    return Backbone(module, feature_dim, in_channels, type(module).__name__)


def list_backbones() -> list[str]:
    return BACKBONES.names() + ["timm/<model name>"]


# --- torchvision ResNets -------------------------------------------------------------------------


def _resnet(arch: str, in_channels: int, cifar_stem: bool = False, zero_init_residual: bool = True):
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None, zero_init_residual=zero_init_residual)
    if cifar_stem:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    name = ("cifar_" if cifar_stem else "") + arch
    return Backbone(net, feature_dim, in_channels, name)


def _register_resnet(arch: str) -> None:
    @BACKBONES.register(arch)
    def plain(in_channels: int = 3, cifar_stem: bool = False, **kw: Any) -> Backbone:
        return _resnet(arch, in_channels, cifar_stem=cifar_stem, **kw)

    @BACKBONES.register(f"cifar_{arch}")
    def cifar(in_channels: int = 3, **kw: Any) -> Backbone:
        return _resnet(arch, in_channels, cifar_stem=True, **kw)


for _arch in ("resnet18", "resnet34", "resnet50"):
    _register_resnet(_arch)


# --- small conv nets ------------------------------------------------------------------------------


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _small_convnet(in_channels: int, widths: tuple[int, ...], convs_per_stage: int, name: str):
    layers: list[nn.Module] = []
    cin = in_channels
    for stage, width in enumerate(widths):
        # first stage keeps full resolution; later stages halve it with a strided conv
        layers.append(_conv_bn_relu(cin, width, stride=1 if stage == 0 else 2))
        for _ in range(convs_per_stage - 1):
            layers.append(_conv_bn_relu(width, width))
        cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return Backbone(nn.Sequential(*layers), widths[-1], in_channels, name)


@BACKBONES.register("convnet_tiny")
def convnet_tiny(in_channels: int = 3, width: int = 32) -> Backbone:
    """4 conv layers (widths w, 2w, 4w, 8w; strides 1, 2, 2, 2), BN + ReLU, global average pool."""
    widths = (width, 2 * width, 4 * width, 8 * width)
    return _small_convnet(in_channels, widths, convs_per_stage=1, name="convnet_tiny")


@BACKBONES.register("convnet_small")
def convnet_small(in_channels: int = 3, width: int = 32) -> Backbone:
    """8 conv layers (two per stage; widths w, 2w, 4w, 8w), BN + ReLU, global average pool."""
    widths = (width, 2 * width, 4 * width, 8 * width)
    return _small_convnet(in_channels, widths, convs_per_stage=2, name="convnet_small")


# --- timm -----------------------------------------------------------------------------------------


def _timm_backbone(model_name: str, in_channels: int, **kwargs: Any) -> Backbone:
    try:
        import timm
    except ImportError as err:
        raise ValueError(
            f"backbone 'timm/{model_name}' needs timm: pip install 'selfsup[timm]'"
        ) from err
    try:
        net = timm.create_model(
            model_name, pretrained=False, num_classes=0, in_chans=in_channels, **kwargs
        )
    except RuntimeError as err:
        raise ValueError(f"timm does not know the model '{model_name}': {err}") from err
    return Backbone(net, int(net.num_features), in_channels, f"timm/{model_name}")
