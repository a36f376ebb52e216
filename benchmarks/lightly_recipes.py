"""lightly 1.6's documented recipe per method, paired with the selfsup method it is timed against.

``PAIRINGS`` is the one table ``benchmarks/throughput.py`` reads: selfsup method name ->
``Pairing(sizes, lightly)``. ``sizes(d)`` gives the head widths (and queue / memory-bank /
prototype counts) for a backbone of ``d`` features as selfsup build keywords; the lightly
recipe reads the same numbers, so both sides train heads of the same widths. The widths are
those of lightly's examples for a ResNet-18 (512 features), scaled with ``d`` (BYOL's
``BYOLProjectionHead(512, 1024, 256)`` -> ``proj_hidden_dim=2d, proj_dim=256``); queues and
memory banks hold 4096 entries, as in lightly's examples. Every other hyper-parameter is the
method's default on the selfsup side and lightly's default on the other.

A recipe function ``(backbone, sizes, views, total_steps) -> LightlyRecipe`` builds lightly's
side from lightly's classes (heads, losses, memory banks, transforms, momentum helpers) the
way its example ``examples/pytorch/<method>.py`` does: one backbone call per view. The
transform is the example's lightly class with its parameters set to selfsup's views for the
method (``views``: the selfsup method's ``ViewRecipe``), so both sides make the same
augmentations. Where that class cannot make selfsup's views (e.g. selfsup's VICReg uses
BYOL's asymmetric views, lightly's VICRegTransform one pipeline for both), lightly's most
general per-view pipeline, ``DINOViewTransform``, makes each view instead, and the recipe
says so in ``notes``. lightly is imported inside the functions: the table needs this file only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

QUEUE = 4096  # lightly's examples: NTXentLoss(memory_bank_size=4096), NNMemoryBankModule(4096)
LIGHTLY_CROP_RATIO = (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop default, in every class


@dataclass
class LightlyRecipe:
    """What a lightly training loop needs for one method.

    ``transform``: PIL image -> list of view tensors (run per image in DataLoader workers);
    ``model``: every module (trained ones, momentum copies, loss state such as memory banks),
    the backbone under the key "backbone"; ``loss(views, step)``: the loss of one batch of
    views on the device (momentum updates included, where lightly's examples make them);
    ``notes``: how the transform was chosen when the example's class could not be used.
    """

    transform: Callable[[Any], list[Tensor]]
    model: nn.ModuleDict
    loss: Callable[[list[Tensor], int], Tensor]
    notes: list[str] = field(default_factory=list)


Recipe = Callable[[nn.Module, Mapping[str, int], Any, int], LightlyRecipe]


@dataclass(frozen=True)
class Pairing:
    """A selfsup method and lightly's recipe for it: ``sizes(feature_dim)`` -> the head widths
    both sides use (selfsup build keywords); ``lightly`` builds lightly's side."""

    sizes: Callable[[int], dict[str, int]]
    lightly: Recipe


# --- transforms: lightly's classes set to selfsup's views -----------------------------------------


def _colour(view: Any, views: Any) -> dict[str, Any]:
    """lightly's colour / flip / blur-sigma / normalisation keywords (shared by its view
    transforms) for one selfsup ``NaturalView``; ``cj_strength=1`` keeps selfsup's ranges."""
    return {
        "cj_prob": view.jitter_p,
        "cj_strength": 1.0,
        "cj_bright": view.brightness,
        "cj_contrast": view.contrast,
        "cj_sat": view.saturation,
        "cj_hue": view.hue,
        "random_gray_scale": view.grayscale_p,
        "sigmas": tuple(view.blur_sigma),
        "hf_prob": view.hflip_p,
        "normalize": {"mean": list(views.mean), "std": list(views.std)},
    }


def _crop_and_blur(view: Any, solarize: str | None) -> dict[str, Any]:
    """Keywords of lightly's SimCLR-style view pipelines; ``solarize`` names the class's
    solarize keyword (None: it has none)."""
    kwargs = {
        "input_size": view.size,
        "min_scale": view.crop_scale[0],
        "gaussian_blur": view.blur_p,
    }
    return {**kwargs, solarize: view.solarize_p} if solarize else kwargs


def _misfits(views: Any, *, solarize: bool, crop_range: bool = False) -> list[str]:
    """What a lightly transform cannot make of selfsup's ``views``: rotation, another crop
    aspect ratio, a crop scale not ending at 1 (unless ``crop_range``), solarize (unless
    ``solarize``)."""
    misfits = []
    for i, view in enumerate(views.views, start=1):
        if view.rotation_degrees or tuple(view.crop_ratio) != LIGHTLY_CROP_RATIO:
            misfits.append(f"view {i} rotates or has crop ratio {view.crop_ratio}")
        if view.crop_scale[1] != 1.0 and not crop_range:
            misfits.append(f"view {i} crops at most {view.crop_scale[1]} of the image")
        if view.solarize_p and not solarize:
            misfits.append(f"view {i} solarizes")
    return misfits


def _alike(views: list[Any], what: str) -> list[str]:
    return [] if all(v == views[0] for v in views) else [f"its {what} differ"]


def fitted(name: str, make: Callable[[], Any], misfits: list[str], views: Any):
    """(transform, notes): ``make()`` (lightly's class for the method) when it can make
    selfsup's views, else one ``DINOViewTransform`` per selfsup view and a note why."""
    if not misfits:
        return make(), []
    from lightly.transforms import DINOViewTransform
    from lightly.transforms.multi_view_transform import MultiViewTransform

    per_view = [
        DINOViewTransform(
            crop_size=v.size,
            crop_scale=tuple(v.crop_scale),
            gaussian_blur=v.blur_p,
            solarization_prob=v.solarize_p,
            **_colour(v, views),
        )
        for v in views.views
    ]
    reason = f"{name} cannot make selfsup's views ({'; '.join(misfits)})"
    return MultiViewTransform(per_view), [f"{reason}: DINOViewTransform per view instead"]


def one_pipeline(transform_class: type, views: Any, solarize: str | None = None, **extra: Any):
    """lightly's ``transform_class`` (one pipeline for every view) set to selfsup's views."""
    first = views.views[0]
    misfits = _misfits(views, solarize=solarize is not None) + _alike(views.views, "views")

    def make() -> Any:
        return transform_class(**_crop_and_blur(first, solarize), **_colour(first, views), **extra)

    return fitted(transform_class.__name__, make, misfits, views)


def two_pipelines(views: Any):
    """lightly's ``BYOLTransform`` (a pipeline per view) set to selfsup's two views."""
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform

    misfits = _misfits(views, solarize=True)
    misfits += [] if len(views.views) == 2 else [f"it makes {len(views.views)} views"]

    def make() -> Any:
        first, second = (
            {**_crop_and_blur(v, "solarization_prob"), **_colour(v, views)} for v in views.views
        )
        return BYOLTransform(BYOLView1Transform(**first), BYOLView2Transform(**second))

    return fitted("BYOLTransform", make, misfits, views)


def _multi_crop(views: Any) -> tuple[list[Any], list[Any]]:
    """selfsup's multi-crop views split into (global, local): local crops are the smaller."""
    size = views.views[0].size
    return [v for v in views.views if v.size == size], [v for v in views.views if v.size != size]


def _colours_alike(views: Any) -> list[str]:
    return _alike([_colour(v, views) for v in views.views], "colour settings")


def dino_transform(views: Any):
    """lightly's ``DINOTransform`` set to selfsup's 2 global + N local crops."""
    from lightly.transforms import DINOTransform

    globals_, local = _multi_crop(views)
    local_view = local[0] if local else globals_[0]
    misfits = _misfits(views, solarize=True, crop_range=True) + _colours_alike(views)
    misfits += _alike(local, "local crops") + _alike([g.crop_scale for g in globals_], "crops")
    misfits += [] if len(globals_) == 2 else [f"it makes {len(globals_)} global crops"]
    if globals_[0].solarize_p or any(v.solarize_p for v in local):
        misfits.append("it solarizes other crops than the second global one")

    def make() -> Any:
        first, second = globals_
        return DINOTransform(
            global_crop_size=first.size,
            global_crop_scale=tuple(first.crop_scale),
            local_crop_size=local_view.size,
            local_crop_scale=tuple(local_view.crop_scale),
            n_local_views=len(local),
            gaussian_blur=(first.blur_p, second.blur_p, local_view.blur_p),
            solarization_prob=second.solarize_p,
            **_colour(first, views),
        )

    return fitted("DINOTransform", make, misfits, views)


def swav_transform(views: Any):
    """lightly's ``SwaVTransform`` (one pipeline for every crop) set to selfsup's crops."""
    from lightly.transforms import SwaVTransform

    crops = [group for group in _multi_crop(views) if group]
    first = views.views[0]
    misfits = _misfits(views, solarize=False, crop_range=True) + _colours_alike(views)
    misfits += _alike([v.blur_p for v in views.views], "blur probabilities")
    misfits += [m for group in crops for m in _alike([v.crop_scale for v in group], "crops")]

    def make() -> Any:
        return SwaVTransform(
            crop_sizes=tuple(group[0].size for group in crops),
            crop_counts=tuple(len(group) for group in crops),
            crop_min_scales=tuple(group[0].crop_scale[0] for group in crops),
            crop_max_scales=tuple(group[0].crop_scale[1] for group in crops),
            gaussian_blur=first.blur_p,
            **_colour(first, views),
        )

    return fitted("SwaVTransform", make, misfits, views)


# --- lightly's models -----------------------------------------------------------------------------


def frozen_copy(module: nn.Module) -> nn.Module:
    """A momentum copy as lightly's examples make it: deepcopy + deactivate_requires_grad."""
    from lightly.models.utils import deactivate_requires_grad

    target = copy.deepcopy(module)
    deactivate_requires_grad(target)
    return target


def momentum_update(pairs: list[tuple[nn.Module, nn.Module]], step: int, total: int) -> None:
    """lightly's ``update_momentum`` with its examples' cosine schedule 0.996 -> 1."""
    from lightly.models.utils import update_momentum
    from lightly.utils.scheduler import cosine_schedule

    momentum = cosine_schedule(step, total, 0.996, 1.0)
    for online, target in pairs:
        update_momentum(online, target, m=momentum)


def embed(backbone: nn.Module, head: nn.Module, x: Tensor) -> Tensor:
    return head(backbone(x).flatten(start_dim=1))


def two_views(backbone: nn.Module, head: nn.Module, criterion: nn.Module, transform_notes):
    """The loop of lightly's SimCLR / DCL / Barlow Twins / VICReg examples: each view through
    backbone and head, then ``criterion(z0, z1)``."""
    transform, notes = transform_notes

    def loss(x: list[Tensor], step: int) -> Tensor:
        return criterion(embed(backbone, head, x[0]), embed(backbone, head, x[1]))

    return LightlyRecipe(
        transform, nn.ModuleDict({"backbone": backbone, "head": head}), loss, notes
    )


def simclr(backbone: nn.Module, sizes: Mapping[str, int], views: Any, total: int):
    """examples/pytorch/simclr.py: SimCLRProjectionHead (``num_proj_layers`` 3 for SimCLR v2,
    as its docstring says), NTXentLoss, SimCLRTransform."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    head = SimCLRProjectionHead(
        backbone.feature_dim,
        sizes["proj_hidden_dim"],
        sizes["proj_dim"],
        num_layers=sizes.get("num_proj_layers", 2),
    )
    return two_views(backbone, head, NTXentLoss(), one_pipeline(SimCLRTransform, views))


def _dcl(backbone: nn.Module, sizes: Mapping[str, int], views: Any, criterion: nn.Module):
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    head = SimCLRProjectionHead(backbone.feature_dim, sizes["proj_hidden_dim"], sizes["proj_dim"])
    return two_views(backbone, head, criterion, one_pipeline(SimCLRTransform, views))


def dcl(backbone: nn.Module, sizes: Mapping[str, int], views: Any, total: int):
    """examples/pytorch/dcl.py: SimCLRProjectionHead, DCLLoss, SimCLRTransform."""
    from lightly.loss import DCLLoss

    return _dcl(backbone, sizes, views, DCLLoss())


def dclw(backbone: nn.Module, sizes: Mapping[str, int], views: Any, total: int):
    """examples/pytorch/dcl.py with its weighted loss, DCLWLoss."""
    from lightly.loss import DCLWLoss

    return _dcl(backbone, sizes, views, DCLWLoss())


def barlow_twins(backbone: nn.Module, sizes: Mapping[str, int], views: Any, total: int):
    """examples/pytorch/barlowtwins.py: BarlowTwinsProjectionHead, BarlowTwinsLoss,
    BYOLTransform."""
    from lightly.loss import BarlowTwinsLoss
    from lightly.models.modules import BarlowTwinsProjectionHead

    d, hidden, out = backbone.feature_dim, sizes["proj_hidden_dim"], sizes["proj_dim"]
    head = BarlowTwinsProjectionHead(d, hidden, out)
    return two_views(backbone, head, BarlowTwinsLoss(), two_pipelines(views))


def vicreg(backbone: nn.Module, sizes: Mapping[str, int], views: Any, total: int):
    """examples/pytorch/vicreg.py: VICRegProjectionHead, VICRegLoss, VICRegTransform."""
    from lightly.loss import VICRegLoss
    from lightly.models.modules.heads import VICRegProjectionHead
    from lightly.transforms import VICRegTransform

    d, hidden, out = backbone.feature_dim, sizes["proj_hidden_dim"], sizes["proj_dim"]
    head = VICRegProjectionHead(d, hidden, out, num_layers=sizes["num_proj_layers"])
    transform = one_pipeline(VICRegTransform, views, solarize="solarize_prob")
    return two_views(backbone, head, VICRegLoss(), transform)


def _moco(
    backbone: nn.Module, head: nn.Module, sizes: Mapping[str, int], total: int, transform_notes
):
    """MoCo's loop (examples/pytorch/moco.py): a momentum key encoder and NTXentLoss with a
    memory bank of ``queue_size`` keys."""
    from lightly.loss import NTXentLoss

    transform, notes = transform_notes
    key_backbone, key_head = frozen_copy(backbone), frozen_copy(head)
    criterion = NTXentLoss(memory_bank_size=(sizes["queue_size"], sizes["proj_dim"]))

    def loss(x: list[Tensor], step: int) -> Tensor:
        momentum_update([(backbone, key_backbone), (head, key_head)], step, total)
        query = embed(backbone, head, x[0])
        key = embed(key_backbone, key_head, x[1]).detach()
        return criterion(query, key)

    model = {"backbone": backbone, "head": head, "key_backbone": key_backbone,
             "key_head": key_head, "criterion": criterion}  # fmt: skip
    return LightlyRecipe(transform, nn.ModuleDict(model), loss, notes)


def mocov2(backbone: nn.Module, sizes: Mapping[str, int], views: Any, total: int):
    """examples/pytorch/moco.py: MoCoProjectionHead (2 layers, no BN), MoCoV2Transform."""
    from lightly.models.modules import MoCoProjectionHead
    from lightly.transforms import MoCoV2Transform

    head = MoCoProjectionHead(backbone.feature_dim, sizes["proj_hidden_dim"], sizes["proj_dim"])
    return _moco(backbone, head, sizes, total, one_pipeline(MoCoV2Transform, views))


def mocov1(backbone: nn.Module, sizes: Mapping[str, int], views: Any, total: int):
    """MoCo v1: lightly's MoCoV1Transform and the loop of examples/pytorch/moco.py; lightly
    has no v1 head, so a plain Linear to ``proj_dim`` (v1's fc layer)."""
    from lightly.transforms import MoCoV1Transform

    head = nn.Linear(backbone.feature_dim, sizes["proj_dim"])
    return _moco(backbone, head, sizes, total, one_pipeline(MoCoV1Transform, views))


def mocov3(backbone: nn.Module, sizes: Mapping[str, int], views: Any, total: int):
    """MoCo v3 from lightly's classes (1.6 has no example): MoCoProjectionHead as its
    docstring gives v3 (projector 3 layers, predictor 2, BN everywhere), momentum copies, the
    symmetric NTXentLoss over in-batch keys, BYOLTransform (v3 uses BYOL's augmentations)."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import MoCoProjectionHead

    d, hidden, out = backbone.feature_dim, sizes["proj_hidden_dim"], sizes["proj_dim"]
    head = MoCoProjectionHead(d, hidden, out, num_layers=3, batch_norm=True)
    predictor = MoCoProjectionHead(out, sizes["pred_hidden_dim"], out, batch_norm=True)
    key_backbone, key_head = frozen_copy(backbone), frozen_copy(head)
    criterion = NTXentLoss(temperature=0.2)
    transform, notes = two_pipelines(views)

    def loss(x: list[Tensor], step: int) -> Tensor:
        momentum_update([(backbone, key_backbone), (head, key_head)], step, total)
        q0, q1 = (predictor(embed(backbone, head, v)) for v in x)
        k0, k1 = (embed(key_backbone, key_head, v).detach() for v in x)
        return criterion(q0, k1) + criterion(q1, k0)

    model = {"backbone": backbone, "head": head, "predictor": predictor,
             "key_backbone": key_backbone, "key_head": key_head}  # fmt: skip
    return LightlyRecipe(transform, nn.ModuleDict(model), loss, notes)


def byol(backbone: nn.Module, sizes: Mapping[str, int], views: Any, total: int):
    """examples/pytorch/byol.py: BYOLProjectionHead, BYOLPredictionHead, momentum copies,
    NegativeCosineSimilarity both ways, BYOLTransform."""
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

    d, out = backbone.feature_dim, sizes["proj_dim"]
    head = BYOLProjectionHead(d, sizes["proj_hidden_dim"], out)
    predictor = BYOLPredictionHead(out, sizes["pred_hidden_dim"], out)
    target_backbone, target_head = frozen_copy(backbone), frozen_copy(head)
    criterion = NegativeCosineSimilarity()
    transform, notes = two_pipelines(views)

    def loss(x: list[Tensor], step: int) -> Tensor:
        momentum_update([(backbone, target_backbone), (head, target_head)], step, total)
        p0, p1 = (predictor(embed(backbone, head, v)) for v in x)
        z0, z1 = (embed(target_backbone, target_head, v).detach() for v in x)
        return 0.5 * (criterion(p0, z1) + criterion(p1, z0))

    model = {"backbone": backbone, "head": head, "predictor": predictor,
             "target_backbone": target_backbone, "target_head": target_head}  # fmt: skip
    return LightlyRecipe(transform, nn.ModuleDict(model), loss, notes)


def simsiam(backbone: nn.Module, sizes: Mapping[str, int], views: Any, total: int):
    """examples/pytorch/simsiam.py and fastsiam.py: SimSiamProjectionHead,
    SimSiamPredictionHead, NegativeCosineSimilarity; with 2 views each predicts the other's
    detached projection (SimSiamTransform), with more the mean of the others' (FastSiam,
    FastSiamTransform)."""
    import torch
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead
    from lightly.transforms import FastSiamTransform, SimSiamTransform

    out, n = sizes["proj_dim"], len(views.views)
    head = SimSiamProjectionHead(backbone.feature_dim, sizes["proj_hidden_dim"], out)
    predictor = SimSiamPredictionHead(out, sizes["pred_hidden_dim"], out)
    criterion = NegativeCosineSimilarity()
    if n == 2:
        transform, notes = one_pipeline(SimSiamTransform, views)
    else:
        transform, notes = one_pipeline(FastSiamTransform, views, num_views=n)

    def loss(x: list[Tensor], step: int) -> Tensor:
        zs = [embed(backbone, head, v) for v in x]
        ps = [predictor(z) for z in zs]
        if n == 2:
            return 0.5 * (criterion(zs[0].detach(), ps[1]) + criterion(zs[1].detach(), ps[0]))
        targets = torch.stack([z.detach() for z in zs])
        others = [torch.arange(n) != i for i in range(n)]
        return sum(criterion(ps[i], targets[others[i]].mean(dim=0)) for i in range(n)) / n

    model = {"backbone": backbone, "head": head, "predictor": predictor}
    return LightlyRecipe(transform, nn.ModuleDict(model), loss, notes)


def nnclr(backbone: nn.Module, sizes: Mapping[str, int], views: Any, total: int):
    """examples/pytorch/nnclr.py: NNCLRProjectionHead, NNCLRPredictionHead, the nearest
    neighbour from NNMemoryBankModule, NTXentLoss both ways, SimCLRTransform."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import NNCLRPredictionHead, NNCLRProjectionHead, NNMemoryBankModule
    from lightly.transforms import SimCLRTransform

    d, out = backbone.feature_dim, sizes["proj_dim"]
    head = NNCLRProjectionHead(d, sizes["proj_hidden_dim"], out)
    predictor = NNCLRPredictionHead(out, sizes["pred_hidden_dim"], out)
    bank = NNMemoryBankModule(size=(sizes["queue_size"], out))
    criterion = NTXentLoss()
    transform, notes = one_pipeline(SimCLRTransform, views)

    def loss(x: list[Tensor], step: int) -> Tensor:
        z0, z1 = (embed(backbone, head, v) for v in x)
        p0, p1 = predictor(z0), predictor(z1)
        z0 = bank(z0.detach(), update=False)
        z1 = bank(z1.detach(), update=True)
        return 0.5 * (criterion(z0, p1) + criterion(z1, p0))

    model = {"backbone": backbone, "head": head, "predictor": predictor, "bank": bank}
    return LightlyRecipe(transform, nn.ModuleDict(model), loss, notes)


def dino(backbone: nn.Module, sizes: Mapping[str, int], views: Any, total: int):
    """examples/pytorch/dino.py: DINOProjectionHead, a momentum teacher on the global crops,
    DINOLoss over every (global, other crop) pair, DINOTransform (multi-crop)."""
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad

    d, out = backbone.feature_dim, sizes["out_dim"]
    hidden, bottleneck = sizes["head_hidden_dim"], sizes["bottleneck_dim"]
    head = DINOProjectionHead(d, hidden, bottleneck, out)
    # as the example: a second head, not a deepcopy (its weight_norm cannot be deep-copied)
    teacher_head = DINOProjectionHead(d, hidden, bottleneck, out)
    deactivate_requires_grad(teacher_head)
    teacher_backbone = frozen_copy(backbone)
    criterion = DINOLoss(output_dim=out)
    transform, notes = dino_transform(views)

    def loss(x: list[Tensor], step: int) -> Tensor:
        momentum_update([(backbone, teacher_backbone), (head, teacher_head)], step, total)
        teacher = [embed(teacher_backbone, teacher_head, v) for v in x[:2]]
        student = [embed(backbone, head, v) for v in x]
        return criterion(teacher, student, epoch=0)

    model = {"backbone": backbone, "head": head, "teacher_backbone": teacher_backbone,
             "teacher_head": teacher_head, "criterion": criterion}  # fmt: skip
    return LightlyRecipe(transform, nn.ModuleDict(model), loss, notes)


def swav(backbone: nn.Module, sizes: Mapping[str, int], views: Any, total: int):
    """examples/pytorch/swav.py: SwaVProjectionHead, L2 normalisation, SwaVPrototypes
    (normalised before each step, frozen for the first), SwaVLoss (Sinkhorn) of the 2 high-
    and the low-resolution crops, SwaVTransform (multi-crop)."""
    from lightly.loss import SwaVLoss
    from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes
    from torch.nn import functional as F

    out = sizes["proj_dim"]
    head = SwaVProjectionHead(backbone.feature_dim, sizes["proj_hidden_dim"], out)
    prototypes = SwaVPrototypes(out, sizes["num_prototypes"], n_steps_frozen_prototypes=1)
    criterion = SwaVLoss()
    transform, notes = swav_transform(views)

    def loss(x: list[Tensor], step: int) -> Tensor:
        prototypes.normalize()
        scores = [prototypes(F.normalize(embed(backbone, head, v), dim=1), step) for v in x]
        return criterion(scores[:2], scores[2:])

    model = {"backbone": backbone, "head": head, "prototypes": prototypes}
    return LightlyRecipe(transform, nn.ModuleDict(model), loss, notes)


# --- the table --------------------------------------------------------------------------------


def _simclr_widths(d: int) -> dict[str, int]:
    """SimCLR's, MoCo v2's, DCL's and SwAV's examples: 512 -> 512 -> 128 on a ResNet-18."""
    return {"proj_hidden_dim": d, "proj_dim": 128}


def _predictor_widths(d: int) -> dict[str, int]:
    """BYOL's example (and MoCo v3 here): 512 -> 1024 -> 256, predictor 256 -> 1024 -> 256."""
    return {"proj_hidden_dim": 2 * d, "proj_dim": 256, "pred_hidden_dim": 2 * d}


def _simsiam_widths(d: int) -> dict[str, int]:
    """SimSiam's and FastSiam's examples: 512 -> 512 -> 512 -> 128, predictor 128 -> 64 -> 128."""
    return {"proj_hidden_dim": d, "proj_dim": 128, "pred_hidden_dim": d // 8}


PAIRINGS: dict[str, Pairing] = {
    "simclr": Pairing(_simclr_widths, simclr),
    "simclrv2": Pairing(lambda d: {**_simclr_widths(d), "num_proj_layers": 3}, simclr),
    "mocov1": Pairing(lambda d: {"proj_dim": 128, "queue_size": QUEUE}, mocov1),
    "mocov2": Pairing(lambda d: {**_simclr_widths(d), "queue_size": QUEUE}, mocov2),
    "mocov3": Pairing(_predictor_widths, mocov3),
    "byol": Pairing(_predictor_widths, byol),
    "simsiam": Pairing(_simsiam_widths, simsiam),
    "fastsiam": Pairing(_simsiam_widths, simsiam),
    # Barlow Twins' example 512 -> 2048 -> 2048 -> 2048; VICReg's 512 -> 2048 -> 2048
    "barlow_twins": Pairing(lambda d: {"proj_hidden_dim": 4 * d, "proj_dim": 4 * d}, barlow_twins),
    "vicreg": Pairing(
        lambda d: {"proj_hidden_dim": 4 * d, "proj_dim": 4 * d, "num_proj_layers": 2}, vicreg
    ),
    # DINO's example: DINOProjectionHead(512, 512, 64, 2048)
    "dino": Pairing(
        lambda d: {"head_hidden_dim": d, "bottleneck_dim": d // 8, "out_dim": 4 * d}, dino
    ),
    "swav": Pairing(lambda d: {**_simclr_widths(d), "num_prototypes": 512}, swav),
    # NNCLR's example: 512 -> 512 -> 512 -> 128, predictor 128 -> 512 -> 128, 4096 neighbours
    "nnclr": Pairing(
        lambda d: {**_simclr_widths(d), "pred_hidden_dim": d, "queue_size": QUEUE}, nnclr
    ),
    "dcl": Pairing(_simclr_widths, dcl),
    "dclw": Pairing(_simclr_widths, dclw),
}
