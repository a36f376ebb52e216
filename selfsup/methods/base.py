"""The one method API every self-supervised method implements.

```
method = selfsup.build("fastsiam", backbone="resnet18", in_channels=1, image_size=64)
model = SimCLR(my_module, 512, image_size=32)   # PySSL style: your nn.Module and its feature size
loss = method(images)                 # default views (per-sample random), then the loss
out = method.training_loss(views)     # views: list of tensors -> LossOutput(loss, logs)
feats = method.embed(images)          # backbone features, eval mode, no grad
method.on_train_step_end(progress)    # after a step: schedules (set_progress), EMA targets
method.on_train_epoch_start(epoch)    # at every epoch start (SwAV's queue and prototype freeze)
method.before_optimizer_step()        # after backward, before the optimizer step
loss = supcon(images, labels=labels)  # methods with batch_fields take per-sample fields
method.backbone                       # plain nn.Module with .feature_dim
method.encoder                        # backbone + the head whose output the loss uses
method.hyperparameters()              # the constructor's arguments, JSON-safe (save / rebuild)
method.optimizer_parts()              # [(name, parameters)] per optimizer, in update order
out = bigan.part_loss(views, "discriminator")   # methods with several optimizer parts
```

Rules for a subclass (one file, ``@register("name")``):
- its constructor takes ``(backbone, feature_size, *, <hyper-parameters with the paper's
  defaults>, **kwargs)``, passes ``backbone, feature_size, **kwargs`` to ``super().__init__``
  and sets its own attributes and heads after that call;
- ``view_recipe`` names its default recipe in ``selfsup.views.VIEW_RECIPES``; recipe parameters
  that follow from its hyper-parameters come from the classmethod ``view_overrides(arguments)``,
  which reads the constructor's arguments, never attributes (it runs inside
  ``Method.__init__``, before the subclass has set any);
- ``encoder_head`` names the head after the backbone whose output the loss uses;
- ``batch_fields`` names the per-sample fields ``training_loss`` takes as keyword arguments,
  from ``BATCH_FIELDS``: ``labels`` (int64 [B], -1 where a sample has none: SupCon) and
  ``indices`` (int64 [B], the samples' global positions in the dataset: memory banks). The
  trainer's loader yields them for every method that declares them; nobody special-cases
  a method;
- a method trained by several optimizers (a GAN's players) returns one ``(name, parameters)``
  per optimizer from ``optimizer_parts()``, in update order, and the loss of each from
  ``part_loss(views, part, **fields)`` instead of ``training_loss``: the trainer steps one
  optimizer per part, each after the previous one's step (``selfsup.train.module``), and
  ``loss = method(images)`` is their simultaneous update (``Method.training_loss``).
Every ``__init__`` along the chain is wrapped (``__init_subclass__``) to record its arguments, so
``hyperparameters()`` holds every value used, defaults included, without the subclass doing
anything.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.backbones import BACKBONES, Backbone, build_backbone
from selfsup.heads import scaled_width
from selfsup.methods.arguments import json_safe, refuse_markers, refuse_renamed
from selfsup.registry import Registry, keyword_parameters
from selfsup.views.recipes import make_views, recipe_function

# per-sample fields a method may ask for (``Method.batch_fields``); the loader yields exactly these
BATCH_FIELDS = ("labels", "indices")
METHODS: Registry[Method] = Registry("method")  # type: ignore[name-defined]  # noqa: F821
_ARGUMENTS = "_constructor_arguments"  # instance-dict key while the constructor chain runs
_EXPLICIT = "_explicit_arguments"  # names the caller passed (in the record; never a hyper-param)
_RENAMED_BACKBONE_KWARGS = {
    "feature_dim": ("feature_size", "a method argument: the D of your module's [B, D] output")
}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: ``@register("simclr")`` adds a Method subclass to ``METHODS``."""

    def add(cls: type) -> type:
        recipe = getattr(cls, "view_recipe", None)
        if recipe is None:
            raise ValueError(f"method '{name}' must name its view_recipe (in VIEW_RECIPES)")
        recipe_function(recipe)  # an unknown recipe fails here, listing the known ones
        unknown = sorted(set(getattr(cls, "batch_fields", ())) - set(BATCH_FIELDS))
        if unknown:
            raise ValueError(
                f"method '{name}': unknown batch_fields {unknown} (known: {BATCH_FIELDS})"
            )
        cls.method_name = name
        METHODS.register(name)(cls)
        return cls

    return add


def _recording(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap a Method ``__init__`` so its arguments (defaults filled in) are recorded on entry.

    An outer ``__init__`` of the chain records a name first, so a value is the caller's, or the
    default of the outermost constructor naming it. After the outermost ``__init__`` returns,
    the record becomes ``hyperparameters()``.
    """
    signature = inspect.signature(init)
    parameters = list(signature.parameters.values())[1:]  # without self
    named = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    var_keyword = next((p.name for p in parameters if p.kind is p.VAR_KEYWORD), None)

    @functools.wraps(init)
    def init_recording_arguments(self: Method, *args: Any, **kwargs: Any) -> None:
        outermost = _ARGUMENTS not in self.__dict__
        name = type(self).method_name
        if outermost:
            refuse_renamed(name, type(self).renamed_arguments, kwargs)
        bound = signature.bind(self, *args, **kwargs)
        record = self.__dict__.setdefault(_ARGUMENTS, {})
        if outermost:
            record[_EXPLICIT] = {*bound.arguments, *bound.arguments.get(var_keyword or "", {})}
        bound.apply_defaults()
        given = {n: bound.arguments[n] for n in named}
        for key, value in given.items():
            record.setdefault(key, value)
        if outermost:
            refuse_markers(name, {**given, **bound.arguments.get(var_keyword or "", {})})
        init(self, *args, **kwargs)
        if outermost:
            self._seal_hyperparameters(self.__dict__.pop(_ARGUMENTS))

    return init_recording_arguments


@dataclass
class LossOutput:
    """What ``training_loss`` returns: the scalar loss and detached scalars to log."""

    loss: Tensor
    logs: dict[str, Tensor | float] = field(default_factory=dict)


class Method(nn.Module):
    """Base class: owns the backbone and the default views; subclasses add heads and a loss.

    ``backbone``: a registered name (``selfsup.backbones``) or your own ``nn.Module`` mapping
    images to features [B, D], with ``feature_size`` = D (PySSL's argument; not needed when the
    module has a ``feature_dim`` attribute). ``mean``/``std`` set the normalisation of natural
    views (default: ImageNet's for RGB, 0.5 otherwise). ``views``: a recipe name, a dict of
    recipe parameters on top of the method's own, or a callable batch -> list of views.
    ``backbone_kwargs`` configure a registered backbone; one that takes an ``image_size`` (a
    ViT's position embedding) gets the method's ``image_size`` unless they set another.
    ``head_widths``: "scaled" (default) caps every head width the caller did not set at
    ``heads.HEAD_WIDTH_FACTOR`` (16) x the backbone's feature size; "paper" keeps the papers'.
    """

    method_name: ClassVar[str] = "method"
    view_recipe: ClassVar[str]  # set by every registered method
    encoder_head: ClassVar[str] = "projector"
    batch_fields: ClassVar[tuple[str, ...]] = ()  # per-sample fields training_loss takes
    # BatchNorm statistics over all GPUs on multi-GPU runs (the papers' SyncBN); a method whose
    # BatchNorm must stay per device (MoCo's shuffled BN) sets it False
    sync_batchnorm: bool = True
    # the paper's optimizer where it differs from the trainer's SGD (PretrainConfig fields:
    # optimizer, lr, weight_decay, ...); selfsup pretrain uses each the user did not set
    optimizer_defaults: ClassVar[dict[str, Any]] = {}
    # old keyword -> (new keyword, what it is), refused with a message naming the new one
    renamed_arguments: ClassVar[dict[str, tuple[str, str]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in vars(cls):
            cls.__init__ = _recording(cls.__init__)  # type: ignore[method-assign]

    @_recording
    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        in_channels: int = 3,
        image_size: int = 224,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        views: Any = None,
        view_style: str = "natural",
        backbone_kwargs: dict[str, Any] | None = None,
        head_widths: str = "scaled",
    ) -> None:
        super().__init__()
        scaled_width(1, 1, head_widths)  # an unknown mode fails before the backbone is built
        self.head_widths = head_widths
        backbone_kwargs = dict(backbone_kwargs or {})
        refuse_renamed(self.method_name, _RENAMED_BACKBONE_KWARGS, backbone_kwargs)
        self.in_channels = in_channels  # of the data; the views may encode it (wafer fail_mask)
        self.image_size = image_size
        self.view_style = view_style
        self.views = self._resolve_views(views, {"mean": mean, "std": std})
        self.backbone: Backbone = build_backbone(
            backbone,
            getattr(self.views, "out_channels", in_channels),
            feature_dim=feature_size,
            **_with_image_size(backbone, backbone_kwargs, image_size),
        )
        self.feature_dim = self.backbone.feature_dim
        self.current_epoch = 0  # set by on_train_epoch_start

    def head_sizes(self, **widths: int) -> dict[str, int]:
        """The head ``widths`` to build (name -> the constructor's value). Those the caller did
        not set follow ``head_widths``: "scaled" caps them at ``HEAD_WIDTH_FACTOR`` x
        ``feature_dim`` (``heads.scaled_width``), "paper" keeps the paper's. The widths used
        are recorded, so ``hyperparameters()`` (and a checkpoint) rebuild the same heads."""
        record = self.__dict__[_ARGUMENTS]
        for name, width in widths.items():
            if name not in record[_EXPLICIT]:
                widths[name] = scaled_width(width, self.feature_dim, self.head_widths)
            record[name] = widths[name]
        return widths

    def _seal_hyperparameters(self, arguments: dict[str, Any]) -> None:
        names, _ = keyword_parameters(type(self))
        recorded = {name: arguments[name] for name in names if name in arguments}
        if isinstance(recorded.get("backbone"), nn.Module):
            recorded["feature_size"] = self.feature_dim  # the size used, however it was given
        self._hyperparameters: dict[str, Any] = json_safe(recorded)

    def hyperparameters(self) -> dict[str, Any]:
        """Every constructor argument of this method (defaults included) as JSON-safe data:
        ``type(method)(**method.hyperparameters())`` rebuilds it. A user's module or views
        callable is a marker (``{"custom_module": "MyNet"}``) that must be passed again."""
        return copy.deepcopy(self._hyperparameters)

    # -- views ---------------------------------------------------------------------------------
    def _resolve_views(self, views: Any, normalisation: dict[str, Any]) -> Callable:
        given = {k: v for k, v in normalisation.items() if v is not None}
        if views is not None and not isinstance(views, (str, dict)):
            if not callable(views):
                raise ValueError(
                    f"views must be a recipe name, a dict of recipe parameters or a callable, "
                    f"got {type(views)}"
                )
            if given:
                raise ValueError("mean/std set a view recipe's normalisation, not your views'")
            return views
        # a dict holds recipe parameters on top of the method's own (e.g. regrid_p)
        extra = views if isinstance(views, dict) else {}
        derived = {**type(self).view_overrides(self.__dict__[_ARGUMENTS]), **given}
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

    @classmethod
    def data_defaults(cls, num_images: int, global_batch: int) -> dict[str, Any]:
        """Hyper-parameter defaults that follow from the training data: ``selfsup pretrain``
        uses them for the arguments the user did not set, and logs each (e.g. a queue no
        longer than the training set, SwAV's prototypes no more than the batch spreads over).
        A classmethod of the data: it runs before the method is built. None by default."""
        return {}

    @classmethod
    def paper_default(cls, name: str) -> Any:
        """The constructor's default of argument ``name`` (the paper's value)."""
        parameters, _ = keyword_parameters(cls)
        return parameters[name].default

    @classmethod
    def view_overrides(cls, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Recipe parameters that follow from the constructor ``arguments`` (e.g. the number of
        views). A classmethod of the arguments: it runs before the subclass sets attributes."""
        return {}

    # -- training ------------------------------------------------------------------------------
    def forward(self, images: Tensor, **fields: Tensor) -> Tensor:
        """Default views on a raw batch, then the loss: ``loss = method(images)``; a method
        with ``batch_fields`` also takes them: ``loss = supcon(images, labels=labels)``."""
        return self.training_loss(self.views(images), **self.select_fields(fields)).loss

    def select_fields(self, fields: Mapping[str, Tensor | None]) -> dict[str, Tensor]:
        """The entries of ``fields`` this method declares in ``batch_fields`` (those given).
        A field the method does not take is refused by name, so it is never silently ignored."""
        unknown = sorted(set(fields) - set(self.batch_fields))
        if unknown:
            takes = ", ".join(self.batch_fields) or "no per-sample fields"
            raise ValueError(f"{self.method_name} takes {takes}; got {', '.join(unknown)}")
        return {k: v for k, v in fields.items() if v is not None}

    def training_loss(self, views: list[Tensor], **fields: Tensor) -> LossOutput:
        """The loss of one batch of ``views`` (plus the ``batch_fields`` as keywords).

        Every method with one optimizer part implements it. For a method with several parts
        this default is their simultaneous update: the sum over parts of ``part_loss``, each
        computed with only its own part trainable, so one backward gives every parameter the
        gradient of its own part's loss, all at the same parameters (simultaneous gradient
        steps, the BiGAN code's default). ``loss = method(images)`` with one optimizer over all
        parameters therefore trains such a method correctly; the value is the sum of the parts'
        losses (to watch, not an objective any part minimises), each also in ``logs``.
        """
        parts = checked_parts(self)
        if len(parts) == 1:
            raise NotImplementedError(f"{self.method_name} must implement training_loss")
        total: Tensor | None = None
        logs: dict[str, Tensor | float] = {}
        for name, parameters in parts:
            with only_trainable(self, parameters):
                out = self.part_loss(views, name, **fields)
            total = out.loss if total is None else total + out.loss
            logs.update(out.logs)
            logs[f"loss_{name}"] = out.loss.detach()
        return LossOutput(total, logs)  # type: ignore[arg-type]

    # -- several optimizers --------------------------------------------------------------------
    def optimizer_parts(self) -> list[tuple[str, list[nn.Parameter]]]:
        """The parameters each optimizer trains, in update order: ``[(name, parameters)]``.

        Default: one part, "all", holding every trainable parameter: one optimizer on
        ``training_loss``. A method with several parts (BiGAN: "discriminator", then
        "generator_encoder") puts every trainable parameter in exactly one of them and gives
        each part its loss in ``part_loss``; the trainer builds one optimizer and LR schedule
        per part from the same settings (``selfsup.train.module.PretrainModule``).
        """
        return [("all", [p for p in self.parameters() if p.requires_grad])]

    @property
    def several_optimizers(self) -> bool:
        """Whether ``optimizer_parts`` has more than one part (one optimizer each)."""
        return len(self.optimizer_parts()) > 1

    def part_loss(self, views: list[Tensor], part: str, **fields: Tensor) -> LossOutput:
        """The loss of optimizer part ``part`` (a name from ``optimizer_parts``) on one batch
        of ``views``, for methods with several parts. The trainer calls it once per part in
        update order, each call after the previous part's optimizer step, with only ``part``'s
        parameters trainable (``only_trainable``: the other parts' outputs carry no graph)."""
        raise NotImplementedError(
            f"{self.method_name} trains one optimizer on training_loss; part_loss is for "
            "methods with several optimizer_parts"
        )

    def on_train_epoch_start(self, epoch: int) -> None:
        """Called at the start of every training epoch (0-based; again after a resume)."""
        self.current_epoch = int(epoch)

    def before_optimizer_step(self) -> None:
        """Called after backward (gradients unscaled), before the optimizer step: the place
        to edit gradients, e.g. SwAV's prototypes frozen in the first epoch (grad = None)."""

    def on_train_step_end(self, progress: float) -> None:
        """Called after each optimizer step with ``progress`` = step / total steps in [0, 1].
        Sets the schedules (``set_progress``); subclasses add what follows a step (EMA)."""
        self.set_progress(progress)

    def set_progress(self, progress: float) -> None:
        """Set the values scheduled over training (EMA rate, temperatures) for ``progress``.
        The trainer also calls it when training starts, so a resumed run continues with the
        values of its step, not those of step 0. Holds no state of its own: override it for
        every value a method schedules."""

    # -- features ------------------------------------------------------------------------------
    @property
    def encoder(self) -> nn.Sequential:
        """The backbone followed by the head ``encoder_head`` (the trained one; for momentum
        methods the student / query side): images as the views give them -> what the loss uses."""
        return nn.Sequential(self.backbone, getattr(self, self.encoder_head))

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


def _with_image_size(
    backbone: str | nn.Module, backbone_kwargs: dict[str, Any], image_size: int
) -> dict[str, Any]:
    """``backbone_kwargs``, plus the views' ``image_size`` for a registered backbone that takes
    one (a ViT learns its position embedding for it) and was not given one in them. Not
    recorded in ``backbone_kwargs``: it follows the method's own ``image_size``."""
    if isinstance(backbone, str) and backbone in BACKBONES and "image_size" not in backbone_kwargs:
        if "image_size" in keyword_parameters(BACKBONES.get(backbone))[0]:
            return {**backbone_kwargs, "image_size": image_size}
    return backbone_kwargs


# --- helpers shared by several methods -----------------------------------------------------------


def checked_parts(method: Method) -> list[tuple[str, list[nn.Parameter]]]:
    """``method.optimizer_parts()``, checked: names unique, no part empty, every trainable
    parameter in exactly one part (ValueError naming the method and the parameters)."""
    parts = method.optimizer_parts()
    names = [name for name, _ in parts]
    if not parts or len(set(names)) != len(names):
        raise ValueError(
            f"{method.method_name}: optimizer_parts() must name each part once, got {names}"
        )
    owner: dict[int, str] = {}
    for name, parameters in parts:
        if not parameters:
            raise ValueError(f"{method.method_name}: optimizer part '{name}' holds no parameters")
        for p in parameters:
            if id(p) in owner:
                raise ValueError(
                    f"{method.method_name}: a parameter is in optimizer parts '{owner[id(p)]}' "
                    f"and '{name}'; each belongs to one"
                )
            owner[id(p)] = name
    missing = [n for n, p in method.named_parameters() if p.requires_grad and id(p) not in owner]
    if missing:
        raise ValueError(
            f"{method.method_name}: trainable parameters in no optimizer part: {missing[:5]}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    return parts


@contextlib.contextmanager
def only_trainable(module: nn.Module, parameters: Iterable[nn.Parameter]) -> Iterator[None]:
    """Within the block, ``module``'s trainable parameters other than ``parameters`` have
    ``requires_grad`` off (restored after): what is computed from them carries no graph, so a
    backward reaches ``parameters`` only and leaves no gradient on the others."""
    keep = {id(p) for p in parameters}
    frozen = [p for p in module.parameters() if p.requires_grad and id(p) not in keep]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def check_positive(method: str, **values: float) -> None:
    """ValueError naming the method and the first of ``values`` that is not > 0."""
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{method}: {name} must be > 0, got {value}")


def check_non_negative(method: str, **values: float) -> None:
    """ValueError naming the method and the first of ``values`` that is not >= 0 (nan too)."""
    for name, value in values.items():
        if not value >= 0:
            raise ValueError(f"{method}: {name} must be >= 0, got {value}")


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
    """target <- momentum * target + (1 - momentum) * online, for parameters and float buffers
    (integer buffers, e.g. BatchNorm's batch count, are copied). One fused multi-tensor lerp
    per group instead of two kernels per tensor."""
    pairs = list(zip(target.parameters(), online.parameters(), strict=True))
    pairs += [
        (t, o)
        for t, o in zip(target.buffers(), online.buffers(), strict=True)
        if t.dtype.is_floating_point
    ]
    if pairs:
        targets, onlines = zip(*pairs, strict=True)
        torch._foreach_lerp_(list(targets), list(onlines), 1.0 - momentum)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        if not t.dtype.is_floating_point:
            t.copy_(o)


def cosine_schedule(progress: float, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` (progress 0) to ``end`` (progress 1), as BYOL's tau."""
    progress = min(max(progress, 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2
