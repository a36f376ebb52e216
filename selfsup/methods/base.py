"""The one method API every self-supervised method implements.

```
method = selfsup.build("fastsiam", backbone="resnet18", in_channels=1, image_size=64)
loss = method(images)                 # default views (per-sample random), then the loss
out = method.training_loss(views)     # views: list of tensors -> LossOutput(loss, logs)
feats = method.embed(images)          # backbone features, eval mode, no grad
method.on_train_step_end(progress)    # momentum / temperature schedules; progress in [0, 1]
method.backbone                       # plain nn.Module with .feature_dim
```
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.backbones import Backbone, build_backbone
from selfsup.registry import Registry

METHODS: Registry[Method] = Registry("method")  # type: ignore[name-defined]  # noqa: F821


def register(name: str) -> Callable[[type], type]:
    """Class decorator: ``@register("simclr")`` adds a Method subclass to ``METHODS``."""

    def add(cls: type) -> type:
        cls.method_name = name
        METHODS.register(name)(cls)
        return cls

    return add


@dataclass
class LossOutput:
    """What ``training_loss`` returns: the scalar loss and detached scalars to log."""

    loss: Tensor
    logs: dict[str, Tensor | float] = field(default_factory=dict)


class Method(nn.Module):
    """Base class: owns the backbone and the default views; subclasses add heads and a loss.

    Subclasses set ``view_recipe`` (a name in ``selfsup.views.recipes``) and implement
    ``training_loss(views)``. Keyword arguments of a subclass constructor are its
    hyper-parameters, defaulting to the paper's values.
    """

    method_name: ClassVar[str] = "method"
    view_recipe: ClassVar[str] = "simclr"

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        *,
        in_channels: int = 3,
        image_size: int = 224,
        views: Any = None,
        view_style: str = "natural",
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels  # of the data; the views may encode it (wafer fail_mask)
        self.image_size = image_size
        self.view_style = view_style
        self.views = self._resolve_views(views)
        backbone_channels = getattr(self.views, "out_channels", in_channels)
        self.backbone: Backbone = build_backbone(
            backbone, backbone_channels, **(backbone_kwargs or {})
        )
        self.feature_dim = self.backbone.feature_dim

    # -- views ---------------------------------------------------------------------------------
    def _resolve_views(self, views: Any) -> Callable[[Tensor], list[Tensor]]:
        from selfsup.views.recipes import make_views

        if views is None or isinstance(views, (str, dict)):
            # a dict holds recipe parameters on top of the method's own (e.g. regrid_p)
            extra = views if isinstance(views, dict) else {}
            derived = self.view_overrides()
            clash = sorted(set(extra) & set(derived))
            if clash:
                raise ValueError(
                    f"views: {', '.join(clash)} follow(s) the method's own parameters; "
                    f"set them on the method (e.g. {clash[0]}={extra[clash[0]]!r})"
                )
            return make_views(
                views if isinstance(views, str) else self.view_recipe,
                image_size=self.image_size,
                in_channels=self.in_channels,
                style=self.view_style,
                **derived,
                **extra,
            )
        if not callable(views):
            raise ValueError(
                f"views must be a recipe name, a dict of recipe parameters or a callable, "
                f"got {type(views)}"
            )
        return views

    def view_overrides(self) -> dict[str, Any]:
        """Recipe arguments a method derives from its hyper-parameters (e.g. number of views)."""
        return {}

    # -- training ------------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor:
        """Default views on a raw batch, then the loss: ``loss = method(images)``."""
        return self.training_loss(self.views(images)).loss

    def training_loss(self, views: list[Tensor]) -> LossOutput:
        raise NotImplementedError

    def on_train_step_end(self, progress: float) -> None:
        """Called after each optimizer step with ``progress`` = step / total steps in [0, 1]."""

    # -- features ------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Backbone features [B, D] of raw images (no augmentation), eval mode, no gradient."""
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            x = self.views.preprocess(images) if hasattr(self.views, "preprocess") else images
            return self.backbone(x.to(next(self.backbone.parameters()).device)).float()
        finally:
            self.backbone.train(was_training)

    def backbone_forward(
        self, views: list[Tensor], encoder: nn.Module | None = None
    ) -> list[Tensor]:
        """Run ``encoder`` (default: the backbone) on every view, one pass per distinct size.

        Views of equal shape are concatenated so BatchNorm and the matmuls see one big batch.
        """
        encoder = encoder or self.backbone
        outputs: list[Tensor | None] = [None] * len(views)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, v in enumerate(views):
            by_shape.setdefault(tuple(v.shape[1:]), []).append(i)
        for indices in by_shape.values():
            batch = (
                torch.cat([views[i] for i in indices]) if len(indices) > 1 else views[indices[0]]
            )
            for i, chunk in zip(indices, encoder(batch).chunk(len(indices)), strict=True):
                outputs[i] = chunk
        return outputs  # type: ignore[return-value]

    def hyperparameters(self) -> dict[str, Any]:
        """The keyword arguments this method was built with (set by ``selfsup.build``)."""
        return dict(getattr(self, "_build_kwargs", {}))


# --- helpers shared by several methods -----------------------------------------------------------


@torch.no_grad()
def embedding_std(z: Tensor) -> Tensor:
    """Collapse monitor: per-dimension std of L2-normalised embeddings, times sqrt(D).

    Well-spread embeddings give about 1 (each normalised dim has std ~1/sqrt(D)); complete
    collapse gives 0 (SimSiam, Chen & He 2021, Fig. 2, plots the unscaled std).
    z: [B, D]. Returns a scalar.
    """
    z = F.normalize(z.detach().float(), dim=-1)
    return z.std(dim=0).mean() * z.shape[-1] ** 0.5


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` (a momentum / EMA target)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, for parameters and float buffers."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        if t.dtype.is_floating_point:
            t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
        else:
            t.copy_(o)


def cosine_schedule(progress: float, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` (progress 0) to ``end`` (progress 1), as BYOL's tau."""
    progress = min(max(progress, 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


def parameters_without(module: nn.Module, exclude: Iterable[nn.Module]) -> list[nn.Parameter]:
    ids = {id(p) for m in exclude for p in m.parameters()}
    return [p for p in module.parameters() if id(p) not in ids]
