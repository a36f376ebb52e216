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
- ``vit_tiny``, ``vit_small``, ``vit_base``: torchvision Vision Transformers
  (``selfsup.vit``); ``image_size`` (the position embedding's; methods pass theirs),
  ``patch_size``, ``pooling`` ("cls" or "mean"), ``depth``, ``width``, ``heads``, ``mlp_dim``.
- ``timm/<model>``: any timm model (``pip install timm``), built with ``num_classes=0``.
- ``channel_split``: one trunk (any name above) per group of input channels, features
  concatenated; ``convert="lab"`` turns RGB into L*a*b* first (CMC's L and ab encoders).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.registry import Registry
from selfsup.views.color import LAB_RANGES, rgb_to_lab
from selfsup.vit import VIT_BUILDERS

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
    if callable(getattr(trunk, "feature_map", None)):
        return trunk.feature_map  # a trunk that knows its own (ViT: the patch tokens)
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


# --- Vision Transformers (selfsup/vit.py) ---------------------------------------------------------


def _register_vit(name: str) -> None:
    @BACKBONES.register(name)
    @functools.wraps(VIT_BUILDERS[name])  # its keywords: `selfsup backbones`, kwargs checks
    def build(in_channels: int = 3, **kwargs: Any) -> Backbone:
        trunk = VIT_BUILDERS[name](in_channels=in_channels, **kwargs)
        backbone = Backbone(trunk, trunk.feature_dim, in_channels, name)
        backbone.build_kwargs = trunk.build_kwargs  # written to backbone.json on export
        return backbone


for _name in VIT_BUILDERS:
    _register_vit(_name)


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


# --- one trunk per channel group (CMC) ------------------------------------------------------------

CHANNEL_CONVERSIONS = (None, "lab")


class ChannelSplit(Backbone):
    """One trunk per group of input channels, their features concatenated: [B, D1 + ... + Dn].

    ``groups[i]``: the input channels trunk i reads, in order (e.g. [[0], [1, 2]]: L and ab;
    groups may overlap: [[0], [0]] gives two trunks of a grey image). ``convert="lab"``: the
    input is RGB normalised with ``rgb_mean`` / ``rgb_std`` (as the views give it; None: RGB in
    [0, 1]); it is un-normalised, turned into L*a*b* (``views.color.rgb_to_lab``) and each of
    L, a, b scaled from its ``LAB_RANGES`` to [-1, 1] (CMC's code) before the split.
    ``split_forward(x)`` gives the trunks' features one by one (CMC contrasts them);
    ``split_forward([x1, x2])`` feeds trunk i its own image. ``build_kwargs``: the keywords of
    the registered "channel_split" that rebuild it (None for a user's module), which
    ``artifacts.export_backbone`` writes to backbone.json.
    """

    def __init__(
        self,
        trunks: Sequence[Backbone],
        groups: Sequence[Sequence[int]],
        in_channels: int,
        *,
        convert: str | None = None,
        rgb_mean: Sequence[float] | None = None,
        rgb_std: Sequence[float] | None = None,
        name: str = "channel_split",
        build_kwargs: dict[str, Any] | None = None,
    ) -> None:
        groups = [[int(c) for c in group] for group in groups]
        _check_groups(groups, in_channels, len(trunks), convert)
        for trunk, group in zip(trunks, groups, strict=True):
            if trunk.in_channels != len(group):
                raise ValueError(
                    f"channel_split: trunk '{trunk.name}' takes {trunk.in_channels} channel(s), "
                    f"but its group {group} has {len(group)}"
                )
        feature_dim = sum(trunk.feature_dim for trunk in trunks)
        super().__init__(nn.ModuleList(trunks), feature_dim, in_channels, name)
        self.groups = groups
        self.convert = convert
        self.rgb_mean = tuple(float(m) for m in rgb_mean) if rgb_mean is not None else None
        self.rgb_std = tuple(float(s) for s in rgb_std) if rgb_std is not None else None
        self.build_kwargs = build_kwargs

    def model_input(self, x: Tensor) -> Tensor:
        """The images the groups index: ``x`` itself, or its L*a*b* scaled to [-1, 1]."""
        if self.convert != "lab":
            return x
        if self.rgb_std is not None:
            x = x.float() * x.new_tensor(self.rgb_std).view(1, -1, 1, 1)
        if self.rgb_mean is not None:
            x = x.float() + x.new_tensor(self.rgb_mean).view(1, -1, 1, 1)
        lab = rgb_to_lab(x)
        low = lab.new_tensor([r[0] for r in LAB_RANGES]).view(1, 3, 1, 1)
        high = lab.new_tensor([r[1] for r in LAB_RANGES]).view(1, 3, 1, 1)
        return ((lab - low) / (high - low) * 2 - 1).to(x.dtype)

    def _parts(self, x: Tensor | Sequence[Tensor]) -> list[Tensor]:
        images = [x] * len(self.groups) if isinstance(x, Tensor) else list(x)
        if len(images) != len(self.groups):
            raise ValueError(
                f"backbone '{self.name}' has {len(self.groups)} trunks, got {len(images)} images"
            )
        for image in images:
            self._check_images(image)
        converted: dict[int, Tensor] = {}  # one conversion per distinct image
        parts = []
        for image, group in zip(images, self.groups, strict=True):
            model_input = converted.setdefault(id(image), self.model_input(image))
            parts.append(_select_channels(model_input, group))
        return parts

    def split_forward(self, x: Tensor | Sequence[Tensor]) -> list[Tensor]:
        """Each trunk's features [B, D_i] of ``x`` (or of its own image, ``x[i]``)."""
        return [trunk(part) for trunk, part in zip(self.trunk, self._parts(x), strict=True)]

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(self.split_forward(x), dim=1)

    def feature_map(self, x: Tensor) -> Tensor:
        """The trunks' last feature maps concatenated over channels: [B, D1 + ... + Dn, h, w]."""
        parts = self._parts(x)
        return torch.cat([t.feature_map(p) for t, p in zip(self.trunk, parts, strict=True)], 1)


def _check_groups(
    groups: list[list[int]], in_channels: int, trunks: int, convert: str | None
) -> None:
    if convert not in CHANNEL_CONVERSIONS:
        raise ValueError(
            f"channel_split: convert must be one of {CHANNEL_CONVERSIONS}, got {convert!r}"
        )
    if convert == "lab" and in_channels != 3:
        raise ValueError(
            f"channel_split: convert='lab' needs RGB input (in_channels=3), got {in_channels}"
        )
    if not groups or len(groups) != trunks or any(not group for group in groups):
        raise ValueError(
            f"channel_split: groups must be one non-empty channel list per trunk, got {groups}"
        )
    bad = sorted({c for group in groups for c in group if not 0 <= c < in_channels})
    if bad:
        raise ValueError(
            f"channel_split: groups {groups} name channel(s) {bad}, outside 0..{in_channels - 1}"
        )


def _select_channels(x: Tensor, group: list[int]) -> Tensor:
    if group == list(range(group[0], group[0] + len(group))):
        return x if len(group) == x.shape[1] else x[:, group[0] : group[0] + len(group)]
    return x[:, group]


@BACKBONES.register("channel_split")
def channel_split(
    in_channels: int = 3,
    trunk: str = "resnet18",
    groups: Sequence[Sequence[int]] | None = None,
    trunk_kwargs: dict[str, Any] | None = None,
    convert: str | None = None,
    rgb_mean: Sequence[float] | None = None,
    rgb_std: Sequence[float] | None = None,
) -> ChannelSplit:
    """A registered ``trunk`` (built with ``trunk_kwargs``) per channel group, separate weights
    (``ChannelSplit``). ``groups`` default: the first channel against the others (L against
    ab), two trunks of the same channel for 1-channel input."""
    if groups is None:
        groups = [[0], list(range(1, in_channels))] if in_channels > 1 else [[0], [0]]
    groups = [[int(c) for c in group] for group in groups]
    _check_groups(groups, in_channels, len(groups), convert)
    trunk_kwargs = dict(trunk_kwargs or {})
    trunks = [build_backbone(trunk, len(group), **trunk_kwargs) for group in groups]
    build_kwargs = {
        "trunk": trunk,
        "groups": groups,
        "trunk_kwargs": trunk_kwargs,
        "convert": convert,
        "rgb_mean": None if rgb_mean is None else [float(m) for m in rgb_mean],
        "rgb_std": None if rgb_std is None else [float(s) for s in rgb_std],
    }
    return ChannelSplit(
        trunks, groups, in_channels, convert=convert, rgb_mean=rgb_mean, rgb_std=rgb_std,
        build_kwargs=build_kwargs,
    )  # fmt: skip
