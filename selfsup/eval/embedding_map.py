"""Pictures of an embedding: 2-D maps (PCA, t-SNE) coloured by class, retrieval grids, and
the confusion matrix of predictions made from it.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot): PNGs render through Agg
whatever backend the caller's session uses, and no global figure state is touched.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

# WM-811K codes 0 off-wafer, 1 pass die, 2 fail die
WAFER_COLORS = ("#eeeeee", "#8fb8de", "#c0262d")
WAFER_CODE_NAMES = ("off-wafer", "pass", "fail")
MATCH_COLOR, MISMATCH_COLOR = "#1a7f37", "#c0262d"
MAX_LEGEND_CLASSES = 30
TSNE_INPUT_DIMS = 50  # PCA to 50 dims before t-SNE: van der Maaten & Hinton 2008, Sec. 5
# Barnes-Hut trade-off (van der Maaten 2014): 0.8 instead of 0.5 costs ~25 % less time for a
# map that is only looked at, which keeps a 3000-point report within seconds on 2 cores
TSNE_ANGLE = 0.8


def new_figure(width: float, height: float, *, constrained: bool = True) -> Any:
    """A pyplot-free figure (``constrained``: automatic spacing, slow with many axes)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained" if constrained else None)


def save_figure(fig: Any, path: Path) -> Path:
    """Render ``fig`` to a PNG through a temporary file and a rename (no half-written PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def class_colors(num_classes: int) -> list[Any]:
    """One distinguishable colour per class (tab10, tab20, then an evenly spaced hue wheel)."""
    from matplotlib import colormaps

    if num_classes <= 10:
        return [colormaps["tab10"](i) for i in range(num_classes)]
    if num_classes <= 20:
        return [colormaps["tab20"](i) for i in range(num_classes)]
    return [colormaps["hsv"](i / num_classes) for i in range(num_classes)]


def pca(features: Tensor, dims: int = 2) -> tuple[Tensor, Tensor]:
    """Projection [N, dims] onto the top principal axes and their explained-variance ratios.

    Eigen-decomposition of the D x D scatter matrix of the centred features [N, D] (float64).
    Each axis' sign is fixed so its largest-magnitude loading is positive, so the map does not
    mirror from one report to the next.
    """
    x = features.double()
    x = x - x.mean(dim=0, keepdim=True)
    variances, vectors = torch.linalg.eigh(x.T @ x)  # ascending order
    variances, vectors = variances.flip(0).clamp_min(0), vectors.flip(1)
    dims = min(dims, vectors.shape[1])
    axes = vectors[:, :dims].T
    signs = torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)))
    axes = axes * torch.where(signs == 0, torch.ones_like(signs), signs)
    ratio = variances[:dims] / variances.sum().clamp_min(1e-300)
    return (x @ axes.T).float(), ratio.float()


def tsne(features: Tensor, *, seed: int = 0, max_iter: int = 500) -> np.ndarray | str:
    """t-SNE coordinates [N, 2] with scikit-learn, or the reason it could not run.

    scikit-learn is optional: without it this returns a message instead of failing. Input is
    first reduced to 50 PCA dims; perplexity is 30, lowered for very small N; ``max_iter``
    includes scikit-learn's 250 early-exaggeration iterations.
    """
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        return "scikit-learn is not installed (pip install scikit-learn), so no t-SNE map"
    n = features.shape[0]
    if n < 5:
        return f"t-SNE needs at least 5 points, got {n}"
    x = pca(features, min(TSNE_INPUT_DIMS, features.shape[1]))[0].numpy()
    perplexity = float(min(30.0, (n - 1) / 3))
    kwargs: dict[str, Any] = dict(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        learning_rate="auto",
        angle=TSNE_ANGLE,
        random_state=seed,
    )
    try:
        model = TSNE(max_iter=max_iter, **kwargs)
    except TypeError:  # scikit-learn < 1.5 calls it n_iter
        model = TSNE(n_iter=max_iter, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return model.fit_transform(x)


def nearest_neighbours(bank: Tensor, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(cosine similarities [Q, k], bank indices [Q, k]) of each query's k nearest bank rows."""
    sims = F.normalize(queries.float(), dim=1) @ F.normalize(bank.float(), dim=1).T
    return sims.topk(min(k, bank.shape[0]), dim=1)


def plot_embedding_map(
    coords: Any,
    labels: Tensor,
    class_names: Sequence[str],
    path: Path,
    *,
    title: str,
    axis_labels: tuple[str, str] = ("1", "2"),
) -> Path:
    """Scatter of 2-D ``coords`` [N, 2], one colour per class, legend outside the axes."""
    coords = np.asarray(coords)
    labels_np = labels.cpu().numpy()
    fig = new_figure(8.0, 6.0)
    ax = fig.subplots()
    colors = class_colors(len(class_names))
    # big classes first, so small ones stay visible on top
    order = sorted(range(len(class_names)), key=lambda c: -int((labels_np == c).sum()))
    handles: dict[int, Any] = {}
    for c in order:
        mask = labels_np == c
        if mask.any():
            handles[c] = ax.scatter(
                coords[mask, 0], coords[mask, 1], s=6, alpha=0.7, color=colors[c], linewidths=0
            )
    ax.set_title(title)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    if len(handles) <= MAX_LEGEND_CLASSES:
        shown = sorted(handles)
        ax.legend(
            [handles[c] for c in shown],
            [f"{class_names[c]} ({int((labels_np == c).sum())})" for c in shown],
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            markerscale=3,
            fontsize="small",
            title="class (points)",
        )
    return save_figure(fig, path)


def plot_confusion(
    cm: np.ndarray, class_names: Sequence[str], path: Path, xlabel: str, title: str
) -> Path:
    """Rows = true class, columns = prediction; colour = row share (recall), text = counts."""
    totals = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, totals, out=np.zeros(cm.shape, float), where=totals > 0)
    n = len(class_names)
    side = max(4.5, 0.55 * n + 2.5)
    fig = new_figure(side + 1.0, side)
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize="small")
    ax.set_yticks(range(n), class_names, fontsize="small")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("true class")
    ax.set_title(title)
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    color = "white" if share[i, j] > 0.5 else "black"
                    ax.text(
                        j, i, str(int(cm[i, j])), ha="center", va="center", color=color, fontsize=7
                    )
    return save_figure(fig, path)


def show_image(ax: Any, image: Tensor, style: str) -> None:
    """Draw one uint8 image [C, H, W]: wafer maps with the 3-code colour map, else as pixels."""
    from matplotlib.colors import ListedColormap

    array = image.cpu().numpy()
    if style == "wafer":
        ax.imshow(
            array[0],
            cmap=ListedColormap(WAFER_COLORS),
            vmin=-0.5,
            vmax=2.5,
            interpolation="nearest",
        )
    elif array.shape[0] == 1:
        ax.imshow(array[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(array[:3].transpose(1, 2, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_retrieval_grid(
    query_images: Tensor,
    query_labels: Tensor,
    neighbour_images: Tensor,
    neighbour_labels: Tensor,
    similarities: Tensor,
    class_names: Sequence[str],
    path: Path,
    *,
    style: str = "natural",
) -> Path:
    """One row per query: the query, then its neighbours (titles: class, cosine similarity).

    query_images: uint8 [Q, C, H, W]; neighbour_images: uint8 [Q, K, C, H, W]; labels [Q] and
    [Q, K]; similarities [Q, K]. A neighbour's title is green when its class is the query's.
    """
    q, k = neighbour_labels.shape
    height = 1.45 * q + 0.9
    fig = new_figure(1.35 * (k + 1) + 0.3, height, constrained=False)
    fig.subplots_adjust(
        left=0.02,
        right=0.98,
        top=1 - 0.75 / height,
        bottom=(0.5 if style == "wafer" else 0.15) / height,
        hspace=0.55,
        wspace=0.1,
    )
    axes = np.asarray(fig.subplots(q, k + 1, squeeze=False))
    for row in range(q):
        show_image(axes[row, 0], query_images[row], style)
        axes[row, 0].set_title(f"query\n{class_names[int(query_labels[row])]}", fontsize=8)
        for col in range(k):
            ax = axes[row, col + 1]
            show_image(ax, neighbour_images[row, col], style)
            label = int(neighbour_labels[row, col])
            same = label == int(query_labels[row])
            ax.set_title(
                f"{class_names[label]}\ncos {float(similarities[row, col]):.3f}",
                fontsize=8,
                color=MATCH_COLOR if same else MISMATCH_COLOR,
            )
    fig.suptitle(
        f"query (left) and its {k} nearest neighbours in the labelled bank (cosine)",
        fontsize=10,
        y=1 - 0.15 / height,
    )
    if style == "wafer":
        from matplotlib.patches import Patch

        patches = [
            Patch(facecolor=c, edgecolor="#999999", label=n)
            for c, n in zip(WAFER_COLORS, WAFER_CODE_NAMES, strict=True)
        ]
        fig.legend(handles=patches, loc="lower center", ncols=3, fontsize=8, frameon=False)
    return save_figure(fig, path)
