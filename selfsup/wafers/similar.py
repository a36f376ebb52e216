"""Similarity search over wafer maps: the "similarity ranking" of Wu, Jang & Chen (IEEE T-SM
28(1), 2015), with learned features instead of their hand-made ones.

``SimilarityIndex.build`` embeds every map once with a frozen backbone (eval mode, no
gradient, batched), L2-normalises the features and can cache them in an ``.npz`` keyed by a
checksum of the backbone weights, the images and the preprocess output, so the next build with
the same inputs loads instead of recomputing. ``query`` ranks the maps by cosine similarity
cos(q, f_i) = q . f_i (both unit length). ``save_grid`` draws the query and its neighbours.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.eval.features import extract_features

LOG = logging.getLogger("selfsup.wafers")
CACHE_FORMAT = 1

# RGB of off-wafer / pass / fail dies in grids: pale grey, light blue, dark red
WAFER_COLOURS = np.array([[242, 242, 242], [173, 203, 227], [178, 24, 43]], dtype=np.uint8)
GRID_PANEL = 128  # px per map panel
GRID_TITLE = 30  # px of title strip above each panel (two lines)
GRID_MARGIN = 6  # px between panels and around the grid


def features_checksum(
    backbone: nn.Module, images: Tensor, preprocess: Callable[[Tensor], Tensor] | None
) -> str:
    """sha256 over the backbone's class, parameter and buffer tensors, the images (shape and
    bytes) and ``preprocess`` applied to the first two images (catches a changed normalisation,
    which the weights alone do not)."""
    h = hashlib.sha256(f"v{CACHE_FORMAT}:{type(backbone).__name__}".encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(f"images:{images.dtype}:{tuple(images.shape)}".encode())
    h.update(images.detach().cpu().contiguous().numpy().tobytes())
    if preprocess is not None:
        device = next(iter(backbone.parameters()), torch.empty(0)).device
        with torch.no_grad():
            probe = preprocess(images[:2].to(device)).detach().float().cpu().contiguous()
        h.update(probe.numpy().tobytes())
    return h.hexdigest()


class SimilarityIndex:
    """L2-normalised features [N, D] of a set of images, searchable by cosine similarity.

    Build with ``SimilarityIndex.build``; ``from_cache`` says whether the features came from
    the cache file (which holds them already normalised, so they are kept bit for bit).
    """

    def __init__(
        self,
        features: Tensor,
        backbone: nn.Module | None = None,
        preprocess: Callable[[Tensor], Tensor] | None = None,
        *,
        batch_size: int = 256,
        from_cache: bool = False,
    ) -> None:
        if features.ndim != 2 or features.shape[0] == 0:
            raise ValueError(f"features must be [N, D] with N > 0, got {tuple(features.shape)}")
        self.features = features.float() if from_cache else F.normalize(features.float(), dim=1)
        self.backbone = backbone
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.from_cache = from_cache

    @classmethod
    def build(
        cls,
        backbone: nn.Module,
        preprocess: Callable[[Tensor], Tensor] | None,
        images: Tensor | np.ndarray,
        cache_path: str | Path | None = None,
        *,
        batch_size: int = 256,
    ) -> SimilarityIndex:
        """Embed ``images`` (uint8 [N, C, H, W]) with ``backbone`` after ``preprocess``.

        cache_path: an .npz holding the features and the checksum of (weights, images,
        preprocess); it is used when the checksum matches and (re)written otherwise.
        """
        images = torch.as_tensor(images)
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"images must be [N, C, H, W] with N > 0, got {tuple(images.shape)}")
        key = None
        if cache_path is not None:
            cache_path = Path(cache_path)
            key = features_checksum(backbone, images, preprocess)
            cached = _read_cache(cache_path, key, images.shape[0])
            if cached is not None:
                LOG.info("similarity: features loaded from %s", cache_path)
                return cls(cached, backbone, preprocess, batch_size=batch_size, from_cache=True)
        features = extract_features(backbone, images, preprocess, batch_size=batch_size)
        index = cls(features, backbone, preprocess, batch_size=batch_size)
        if cache_path is not None and key is not None:
            _write_cache(cache_path, key, index.features)
            LOG.info("similarity: features cached in %s", cache_path)
        return index

    def __len__(self) -> int:
        return self.features.shape[0]

    def embed(self, images: Tensor | np.ndarray) -> Tensor:
        """L2-normalised features [B, D] of uint8 images [B, C, H, W] (or one [C, H, W])."""
        if self.backbone is None:
            raise ValueError("this SimilarityIndex has no backbone: it can only query by index")
        images = torch.as_tensor(images)
        if images.ndim == 3:
            images = images.unsqueeze(0)
        feats = extract_features(self.backbone, images, self.preprocess, batch_size=self.batch_size)
        return F.normalize(feats.float(), dim=1)

    def query(
        self, image_or_index: int | Tensor | np.ndarray, k: int = 10, *, exclude_self: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar images: (indices int64 [k], cosine similarities float32 [k]),
        most similar first.

        image_or_index: the index of an image in the index, or an image uint8 [C, H, W] /
        [1, C, H, W] prepared like the indexed ones. An exact copy of the query scores 1.
        exclude_self: with an index, leave that image out of the answer.
        """
        n = len(self)
        if isinstance(image_or_index, (int, np.integer)):
            position = int(image_or_index)
            if not -n <= position < n:
                raise ValueError(f"query index {position} is out of range for {n} images")
            position %= n
            q = self.features[position]
        else:
            position = None
            q = self.embed(image_or_index)
            if q.shape[0] != 1:
                raise ValueError(f"query one image at a time, got {q.shape[0]}")
            q = q[0]
        sims = (self.features @ q).clamp(-1.0, 1.0)
        if exclude_self and position is not None:
            sims[position] = -math.inf
        k = min(int(k), n - (1 if exclude_self and position is not None else 0))
        if k < 1:
            raise ValueError(f"k must be >= 1 and the index must hold another image, got k={k}")
        top = torch.topk(sims, k)
        return top.indices.numpy().astype(np.int64), top.values.numpy().astype(np.float32)


def _read_cache(path: Path, key: str, n: int) -> Tensor | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key or z["features"].shape[0] != n:
                LOG.info("similarity: %s is for other weights or data; recomputing", path)
                return None
            return torch.from_numpy(z["features"].astype(np.float32))
    except (OSError, KeyError, ValueError) as err:
        LOG.warning("similarity: ignoring unreadable cache %s (%s)", path, err)
        return None


def _write_cache(path: Path, key: str, features: Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, features=features.numpy(), key=np.array(key))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- picture ------------------------------------------------------------------------------------


def grid_size(count: int, columns: int = 6, panel: int = GRID_PANEL) -> tuple[int, int]:
    """(width, height) in pixels of a grid of ``count`` maps: ``min(columns, count)`` panels of
    ``panel`` px per row, a GRID_TITLE px title strip above each panel, GRID_MARGIN px gaps."""
    cols = min(columns, count)
    rows = math.ceil(count / cols)
    width = cols * panel + (cols + 1) * GRID_MARGIN
    height = rows * (panel + GRID_TITLE) + (rows + 1) * GRID_MARGIN
    return width, height


def wafer_rgb(map2d: np.ndarray | Tensor) -> np.ndarray:
    """Codes [H, W] (or [1, H, W]) 0/1/2 -> RGB uint8 [H, W, 3] in WAFER_COLOURS."""
    codes = np.asarray(map2d.cpu() if isinstance(map2d, Tensor) else map2d)
    if codes.ndim == 3 and codes.shape[0] == 1:
        codes = codes[0]
    if codes.ndim != 2:
        raise ValueError(f"a wafer map must be [H, W] or [1, H, W], got shape {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() > 2):
        raise ValueError(f"wafer map values must be codes 0/1/2, found {np.unique(codes)[:5]}")
    return WAFER_COLOURS[codes.astype(np.int64)]


def save_grid(
    query_map: np.ndarray | Tensor,
    neighbour_maps: Sequence[np.ndarray | Tensor],
    path: str | Path,
    titles: Sequence[str] | None = None,
    *,
    columns: int = 6,
    panel: int = GRID_PANEL,
) -> Path:
    """A PNG of the query map then its neighbours, left to right, top to bottom.

    Maps are codes 0/1/2 of any size, scaled by nearest neighbour to fit ``panel`` px (aspect
    kept) and coloured off-wafer / pass / fail (WAFER_COLOURS). titles: one per map (query
    first; "\\n" starts the second line); default "query", "1", "2", ... The image size is
    ``grid_size(1 + len(neighbour_maps), columns, panel)``.
    """
    from PIL import Image, ImageDraw, ImageFont

    maps = [query_map, *neighbour_maps]
    if titles is None:
        titles = ["query"] + [str(i + 1) for i in range(len(neighbour_maps))]
    if len(titles) != len(maps):
        raise ValueError(f"save_grid: {len(titles)} titles for {len(maps)} maps")
    if columns < 1 or panel < 8:
        raise ValueError(f"save_grid: need columns >= 1 and panel >= 8, got {columns}, {panel}")
    width, height = grid_size(len(maps), columns, panel)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    cols = min(columns, len(maps))
    for i, (map2d, title) in enumerate(zip(maps, titles, strict=True)):
        row, col = divmod(i, cols)
        left = GRID_MARGIN + col * (panel + GRID_MARGIN)
        top = GRID_MARGIN + row * (panel + GRID_TITLE + GRID_MARGIN)
        rgb = wafer_rgb(map2d)
        scale = panel / max(rgb.shape[0], rgb.shape[1])
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        picture = Image.fromarray(rgb).resize(size, Image.Resampling.NEAREST)
        canvas.paste(
            picture,
            (left + (panel - size[0]) // 2, top + GRID_TITLE + (panel - size[1]) // 2),
        )
        for line_number, line in enumerate(str(title).split("\n")[:2]):
            draw.text((left + 1, top + 1 + 14 * line_number), line, fill=(0, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path
