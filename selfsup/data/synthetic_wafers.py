"""Synthetic WM-811K-style wafer maps with the 9 failure patterns, and per-class statistics.

``generate_wafer_maps(n)`` draws square maps of codes 0 off-wafer / 1 pass / 2 fail following
research/wafer.md section 5.2: a round wafer mask, a background of independent fail dies (its
level drawn per map, a little higher at the centre and the edge, as in real ``none`` maps), one
pattern per class (Center disk, Donut annulus, Edge-Ring band with an optional gap, Edge-Loc
arc, Loc blob, Scratch curve, Random and Near-full levels), then die-flip noise of 0-3 %.
Maps of one side length are drawn as one batch of numpy operations: 10,000 maps of sides
26..64 take ~0.4 s on one CPU core.

``wafer_statistics`` measures what the generator is calibrated on: per class, the median
fraction of on-wafer dies that fail and the mean fail rate in 5 radial bins of r/R, where r/R
is the elliptical radius of a die in its map's on-wafer bounding box (so 25x27 maps count too).

Measured with ``wafer_statistics`` (real = the packaged 62,248-map clean subset; synthetic =
``generate_wafer_maps(9000, seed=0)``: 1,000 maps per class, sides 26..64):

| class | median fail fraction | radial profile, real (r/R 0-.2 ... .8-1) | synthetic | max diff |
|---|---|---|---|---|
| Center    | .250 / .243 | .711 .349 .172 .142 .244 | .700 .349 .162 .158 .258 | .016 |
| Donut     | .258 / .265 | .209 .464 .458 .198 .177 | .195 .463 .447 .191 .169 | .014 |
| Edge-Loc  | .156 / .160 | .158 .112 .114 .140 .285 | .151 .101 .098 .121 .263 | .022 |
| Edge-Ring | .140 / .146 | .087 .059 .054 .057 .318 | .084 .059 .057 .056 .314 | .004 |
| Loc       | .142 / .142 | .191 .164 .143 .122 .167 | .194 .157 .132 .110 .165 | .011 |
| Near-full | .878 / .881 | .886 .918 .903 .873 .851 | .887 .906 .894 .877 .850 | .012 |
| Random    | .477 / .474 | .534 .492 .468 .442 .506 | .525 .488 .465 .440 .502 | .009 |
| Scratch   | .092 / .096 | .116 .081 .078 .079 .136 | .106 .080 .076 .073 .134 | .010 |
| none      | .152 / .157 | .168 .117 .111 .114 .193 | .174 .121 .119 .119 .197 | .008 |

Medians agree within 0.007 and radial profiles within 0.022 for every class (seeds 0-2:
within 0.009 and 0.023). With 200 maps per class (n=1800, seeds 0-5) sampling noise widens
that to 0.017 and 0.034. What does not match: the spread within a class is narrower than
real (fail-fraction 10 %/90 % quantiles, real vs synthetic: Center .085/.338 vs .161/.312,
Loc .031/.260 vs .092/.195, Edge-Loc .080/.319 vs .093/.243, Scratch .033/.182 vs
.056/.136; none .061/.216 vs .074/.210); maps are square, 26..64 dies across, while real ones
are often 25x27 and up to 212 across; real background fails cluster and real wafers have flats,
notches and partial edge-exclusion rings, none of which is modelled. The patterns are
hand-written shapes, so a model can find shortcuts real data does not offer: use synthetic
maps for tests, smoke runs and pretraining experiments, and measure on real maps.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from selfsup.data.wm811k_pickles import CLASS_NAMES, WaferMaps

# Class counts of the clean subset (shared/wm811k_clean_subset/README.md), for weights="real".
REAL_CLASS_COUNTS = {
    "Center": 4294,
    "Donut": 555,
    "Edge-Loc": 5189,
    "Edge-Ring": 9680,
    "Loc": 3593,
    "Near-full": 149,
    "Random": 866,
    "Scratch": 1193,
    "none": 36729,
}
RADIAL_BINS = 5
MIN_GENERATED_SIDE = 8

# Background per class: fail level per map ~ triangular(low, mode, high) (a negative low puts
# that share of maps at a clean background), plus a bump at the centre (height, r < ~0.2), an
# uplift towards the edge (height, r > 0.8) and a radial slope (x (r - 0.5)); heights are
# absolute fail probabilities. Fitted by hand to the real subset (module docstring).
BACKGROUND: dict[str, dict[str, Any]] = {
    "none": {"level": (-0.04, 0.145, 0.205), "centre": 0.12, "edge": 0.15},
    "Center": {"level": (0.0, 0.185, 0.26), "centre": 0.0, "edge": 0.19},
    "Donut": {"level": (0.04, 0.145, 0.21), "centre": 0.0, "edge": 0.05},
    "Edge-Ring": {"level": (0.0, 0.035, 0.095), "centre": 0.06, "edge": 0.03},
    "Edge-Loc": {"level": (-0.02, 0.045, 0.24), "centre": 0.12, "edge": 0.10},
    "Loc": {"level": (0.0, 0.09, 0.18), "centre": 0.10, "edge": 0.12},
    "Random": {"level": (0.27, 0.455, 0.67), "centre": 0.04, "edge": 0.16, "slope": -0.12},
    "Near-full": {"level": (0.70, 0.92, 1.12), "centre": -0.10, "edge": -0.02, "slope": -0.10},
    "Scratch": {"level": (-0.03, 0.05, 0.115), "centre": 0.06, "edge": 0.13},
}
DIE_FLIP_MAX = 0.03
GROUP_DIES = 1 << 21  # dies drawn per batch


# --- statistics -----------------------------------------------------------------------------------


def radial_coordinates(on_wafer: np.ndarray) -> np.ndarray:
    """r/R of every die, [N, H, W] float64, from on-wafer masks bool [N, H, W].

    The wafer of each map is taken as the ellipse inscribed in its on-wafer bounding box, so
    non-square maps (25x27) get r/R = 1 at their edge in both directions.
    """
    _, h, w = on_wafer.shape
    rows, cols = on_wafer.any(axis=2), on_wafer.any(axis=1)
    top, bottom = rows.argmax(axis=1), h - 1 - rows[:, ::-1].argmax(axis=1)
    left, right = cols.argmax(axis=1), w - 1 - cols[:, ::-1].argmax(axis=1)
    dy = (np.arange(h)[None] - (top + bottom)[:, None] / 2) / ((bottom - top + 1)[:, None] / 2)
    dx = (np.arange(w)[None] - (left + right)[:, None] / 2) / ((right - left + 1)[:, None] / 2)
    return np.sqrt(dy[:, :, None] ** 2 + dx[:, None, :] ** 2)


def per_map_statistics(
    maps: Sequence[np.ndarray], bins: int = RADIAL_BINS
) -> tuple[np.ndarray, np.ndarray]:
    """(fail fraction [N], radial fail rate [N, bins]) of each map; NaN for an empty bin.

    Fail fraction = fail dies / on-wafer dies. Maps of one shape are measured as one stack.
    """
    n = len(maps)
    fail_fraction = np.full(n, np.nan)
    radial = np.full((n, bins), np.nan)
    if n == 0:
        return fail_fraction, radial
    shapes = np.asarray([m.shape for m in maps])
    unique, group_of = np.unique(shapes, axis=0, return_inverse=True)
    group_of = group_of.reshape(-1)
    for g in range(len(unique)):
        members = np.flatnonzero(group_of == g)
        stack = np.stack([maps[i] for i in members])
        on, fail = stack > 0, stack == 2
        on_count = on.sum(axis=(1, 2))
        has_dies = on_count > 0
        fail_fraction[members[has_dies]] = fail.sum(axis=(1, 2))[has_dies] / on_count[has_dies]
        if not has_dies.any():
            continue
        r = radial_coordinates(on[has_dies])
        on, fail = on[has_dies], fail[has_dies]
        # r/R can reach 1 at bounding-box corners; those dies belong to the outer bin
        which = np.minimum((r * bins).astype(np.int64), bins - 1)
        key = np.arange(len(on))[:, None, None] * bins + which
        dies = np.bincount(key[on], minlength=len(on) * bins).reshape(-1, bins)
        fails = np.bincount(key[fail], minlength=len(on) * bins).reshape(-1, bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            radial[members[has_dies]] = fails / dies
    return fail_fraction, radial


def wafer_statistics(maps: WaferMaps, bins: int = RADIAL_BINS) -> dict[str, dict[str, Any]]:
    """Per class: {"count", "fail_fraction" (median over maps), "fail_fraction_p10", "_p90",
    "radial_profile" (mean over maps of the fail rate in ``bins`` equal-width bins of r/R)}.

    Unlabeled maps (label -1) and classes without maps are left out.
    """
    fail_fraction, radial = per_map_statistics(maps.maps, bins)
    out: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(maps.class_names):
        members = maps.labels == index
        if not members.any():
            continue
        ff = fail_fraction[members]
        ff = ff[~np.isnan(ff)]
        p10, median, p90 = np.quantile(ff, [0.1, 0.5, 0.9]) if len(ff) else (np.nan,) * 3
        with warnings.catch_warnings():  # a bin no map of the class reaches stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            profile = np.nanmean(radial[members], axis=0)
        out[name] = {
            "count": int(members.sum()),
            "fail_fraction": float(median),
            "fail_fraction_p10": float(p10),
            "fail_fraction_p90": float(p90),
            "radial_profile": [float(v) for v in profile],
        }
    return out


# --- generator ------------------------------------------------------------------------------------


def class_counts(n: int, class_weights: Any = None) -> np.ndarray:
    """Maps per class (int64 [9], summing to n): n x weight, rounded by largest remainder.

    class_weights: None (uniform), "real" (the clean subset's mix), a dict name -> weight
    (missing names weigh 0) or 9 numbers in CLASS_NAMES order.
    """
    if class_weights is None:
        weights = np.ones(len(CLASS_NAMES))
    elif isinstance(class_weights, str):
        if class_weights != "real":
            raise ValueError(
                f"class_weights must be None, 'real', a dict or 9 numbers, got '{class_weights}'"
            )
        weights = np.array([REAL_CLASS_COUNTS[c] for c in CLASS_NAMES], dtype=np.float64)
    elif isinstance(class_weights, Mapping):
        unknown = sorted(set(class_weights) - set(CLASS_NAMES))
        if unknown:
            raise ValueError(
                f"class_weights: unknown class {unknown} (classes: {', '.join(CLASS_NAMES)})"
            )
        weights = np.array([float(class_weights.get(c, 0.0)) for c in CLASS_NAMES])
    else:
        weights = np.asarray(class_weights, dtype=np.float64).reshape(-1)
        if weights.shape != (len(CLASS_NAMES),):
            raise ValueError(f"class_weights: need {len(CLASS_NAMES)} numbers, got {len(weights)}")
    if (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
        raise ValueError(f"class_weights must be finite, >= 0 and not all 0, got {weights}")
    exact = n * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


def _side_range(size: int | tuple[int, int]) -> tuple[int, int]:
    low, high = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if not (MIN_GENERATED_SIDE <= low <= high):
        raise ValueError(
            f"size must be an int or a (low, high) range with {MIN_GENERATED_SIDE} <= low <= high,"
            f" got {size!r}"
        )
    return int(low), int(high)


def _uniform(rng: np.random.Generator, low: float, high: float, n: int) -> np.ndarray:
    """n draws shaped [n, 1, 1] to broadcast against [S, S] grids."""
    return rng.uniform(low, high, size=n)[:, None, None]


def _angle_within(theta: np.ndarray, centre: np.ndarray, half_width: np.ndarray) -> np.ndarray:
    return np.abs((theta - centre + np.pi) % (2 * np.pi) - np.pi) <= half_width


class _Grid:
    """Die centres of an S x S map: y, x [S, S] and r, theta in units of the wafer radius R;
    ``centre`` and ``radius`` (R) in die units."""

    def __init__(self, side: int) -> None:
        self.side = side
        self.centre = (side - 1) / 2
        self.radius = side / 2 - 0.2  # so the first and last rows hold a few dies, as real maps
        coords = (np.arange(side) - self.centre) / self.radius
        self.y, self.x = np.meshgrid(coords, coords, indexing="ij")
        self.r = np.hypot(self.y, self.x)
        self.theta = np.arctan2(self.y, self.x)
        self.die = 1.0 / self.radius  # one die in units of R


def _center(rng: np.random.Generator, g: _Grid, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Disk of radius 0.1-0.4 R, centre offset <= 0.1 R, fill 0.7-0.97."""
    offset = np.sqrt(rng.uniform(0, 0.1**2, n)) * np.exp(1j * rng.uniform(0, 2 * np.pi, n))
    distance = np.abs((g.x + 1j * g.y)[None] - offset[:, None, None])
    return distance <= _uniform(rng, 0.1, 0.4, n), _uniform(rng, 0.7, 0.97, n)


def _donut(rng: np.random.Generator, g: _Grid, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Annulus from 0.12-0.3 R to 0.5-0.72 R, fill 0.3-0.7."""
    inner, outer = _uniform(rng, 0.12, 0.3, n), _uniform(rng, 0.5, 0.72, n)
    return (g.r >= inner) & (g.r <= outer), _uniform(rng, 0.3, 0.7, n)


def _edge_ring(rng: np.random.Generator, g: _Grid, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Band r >= R - depth (0.035-0.1 R, at least 1.2 dies), fill 0.52-0.88; half of the rings
    have an angular gap of up to 70 degrees."""
    depth = np.maximum(_uniform(rng, 0.035, 0.1, n), 1.2 * g.die)
    centre = _uniform(rng, -np.pi, np.pi, n)
    gap = np.where(rng.random(n) < 0.5, rng.uniform(0, np.deg2rad(35), n), -1.0)
    region = (g.r >= 1 - depth) & ~_angle_within(g.theta, centre, gap[:, None, None])
    return region, _uniform(rng, 0.52, 0.88, n)


def _edge_loc(rng: np.random.Generator, g: _Grid, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Arc of the edge band, depth 0.1-0.3 R, fill 0.45-0.9. Its angular width, 40-180 degrees
    (half-width 20 + 70 u^2), is wider than section 5.2's 20-90: the real edge-bin fail rate
    (.285) needed it."""
    depth = np.maximum(0.1 + 0.2 * _uniform(rng, 0, 1, n), 1.2 * g.die)
    centre = _uniform(rng, -np.pi, np.pi, n)
    half_width = np.deg2rad(20 + 70 * _uniform(rng, 0, 1, n) ** 2)
    region = (g.r >= 1 - depth) & _angle_within(g.theta, centre, half_width)
    return region, _uniform(rng, 0.45, 0.9, n)


def _loc(rng: np.random.Generator, g: _Grid, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Ellipse with semi-axes 0.1-0.3 R and 0.5-1 x that, any orientation, centred at
    r = 0.15-0.65 R, fill 0.45-0.85."""
    where = rng.uniform(0.15, 0.65, n) * np.exp(1j * rng.uniform(-np.pi, np.pi, n))
    a = rng.uniform(0.1, 0.3, n)[:, None, None]
    b = a * _uniform(rng, 0.5, 1.0, n)
    turn = np.exp(-1j * _uniform(rng, 0, np.pi, n))
    rel = ((g.x + 1j * g.y)[None] - where[:, None, None]) * turn
    return (rel.real / a) ** 2 + (rel.imag / b) ** 2 <= 1, _uniform(rng, 0.45, 0.85, n)


def _scratch(rng: np.random.Generator, g: _Grid, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadratic Bezier curve (start inside r < 0.75 R, any direction, length 0.3-1.2 R, bent
    by up to 0.3 of its length), 1-2 dies wide, fill 0.6-1.

    The curve is sampled every ~0.2 die and each die centre within the half-width (0.5-1
    die) of a sample is marked; only the 3x3 dies around a sample can be that close.
    """
    start = np.sqrt(rng.uniform(0, 0.75**2, n)) * np.exp(1j * rng.uniform(0, 2 * np.pi, n))
    heading = np.exp(1j * rng.uniform(0, 2 * np.pi, n))
    length = rng.uniform(0.3, 1.2, n)
    end = start + heading * length
    bend = (start + end) / 2 + 1j * heading * length * rng.uniform(-0.3, 0.3, n)
    t = np.linspace(0.0, 1.0, int(6 * g.radius) + 2)[None, :]
    curve = (1 - t) ** 2 * start[:, None] + 2 * (1 - t) * t * bend[:, None] + t**2 * end[:, None]
    rows = (curve.imag * g.radius + g.centre)[:, :, None, None]  # [n, K, 1, 1] in die units
    cols = (curve.real * g.radius + g.centre)[:, :, None, None]
    step = np.arange(-1, 2)
    near_rows = np.rint(rows) + step[:, None]  # [n, K, 3, 1]
    near_cols = np.rint(cols) + step[None, :]  # [n, K, 1, 3]
    half_width = rng.uniform(0.5, 1.0, n)[:, None, None, None]
    hit = (near_rows - rows) ** 2 + (near_cols - cols) ** 2 <= half_width**2
    hit &= (near_rows >= 0) & (near_rows < g.side) & (near_cols >= 0) & (near_cols < g.side)
    which = np.broadcast_to(np.arange(n)[:, None, None, None], hit.shape)[hit]
    row_of = np.broadcast_to(near_rows, hit.shape)[hit].astype(np.int64)
    col_of = np.broadcast_to(near_cols, hit.shape)[hit].astype(np.int64)
    region = np.zeros((n, g.side, g.side), dtype=bool)
    region[which, row_of, col_of] = True
    return region, _uniform(rng, 0.6, 1.0, n)


# class -> (rng, grid, n) -> (region bool [n, S, S], fill probability [n, 1, 1]);
# none, Random and Near-full are background only (their level does the work)
PATTERNS = {
    "Center": _center,
    "Donut": _donut,
    "Edge-Ring": _edge_ring,
    "Edge-Loc": _edge_loc,
    "Loc": _loc,
    "Scratch": _scratch,
}


def _draw_group(rng: np.random.Generator, side: int, labels: np.ndarray) -> np.ndarray:
    """Maps of one side length: uint8 [n, S, S] codes for the given class labels."""
    n, g = len(labels), _Grid(side)
    centre_bump = np.exp(-((g.r / 0.15) ** 2))
    edge_ramp = np.clip((g.r - 0.8) / 0.2, 0.0, 1.0)
    prob = np.empty((n, side, side), dtype=np.float32)
    for index, name in enumerate(CLASS_NAMES):
        members = np.flatnonzero(labels == index)
        if len(members) == 0:
            continue
        bg = BACKGROUND[name]
        level = rng.triangular(*bg["level"], size=len(members))[:, None, None]
        shape = bg["centre"] * centre_bump + bg["edge"] * edge_ramp
        p = level + shape + bg.get("slope", 0.0) * (g.r - 0.5)
        if name in PATTERNS:
            region, fill = PATTERNS[name](rng, g, len(members))
            p = np.where(region, np.maximum(p, fill), p)
        prob[members] = p
    fail = rng.random((n, side, side), dtype=np.float32) < prob  # p <= 0 never, p >= 1 always
    flip_rate = rng.uniform(0.0, DIE_FLIP_MAX, size=n).astype(np.float32)[:, None, None]
    fail ^= rng.random((n, side, side), dtype=np.float32) < flip_rate
    return ((g.r <= 1.0) * (1 + fail)).astype(np.uint8)


def generate_wafer_maps(
    n: int,
    *,
    size: int | tuple[int, int] = (26, 64),
    class_weights: Any = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> WaferMaps:
    """``n`` synthetic wafer maps with the 9 WM-811K classes (research/wafer.md section 5.2).

    size: a side length, or an inclusive (low, high) range drawn uniformly per map; maps are
    square, uint8 codes 0 off-wafer / 1 pass / 2 fail. class_weights: None (uniform), "real"
    (the clean subset's mix: 59 % none), a dict class -> weight, or 9 numbers; the class counts
    are exactly n x weight after rounding (``class_counts``), in random order. seed: the whole
    output is a function of (n, size, class_weights, seed). val_fraction, test_fraction: the
    maps of each class put in split "val" and "test" (``assign_splits``), the rest in "train",
    the split names ``selfsup pretrain`` uses (train_split, and val_split for its kNN monitor).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    _check_fractions(val_fraction, test_fraction)
    low, high = _side_range(size)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(CLASS_NAMES)), class_counts(n, class_weights)))
    sides = rng.integers(low, high + 1, size=n)
    maps: list[np.ndarray] = [np.empty((0, 0), np.uint8)] * n
    for side in np.unique(sides):
        members = np.flatnonzero(sides == side)
        per_chunk = max(1, GROUP_DIES // int(side) ** 2)  # bounds the float32 [n, S, S] arrays
        for start in range(0, len(members), per_chunk):
            chunk = members[start : start + per_chunk]
            for k, codes in zip(chunk, _draw_group(rng, int(side), labels[chunk]), strict=True):
                maps[k] = codes
    return WaferMaps(
        maps,
        labels.astype(np.int64),
        class_names=list(CLASS_NAMES),
        split=assign_splits(labels, val_fraction, test_fraction, seed),
        source=f"synthetic wafer maps (n={n}, size={size}, seed={seed})",
    )


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 (some maps must train), got "
            f"{val_fraction} + {test_fraction}"
        )


def assign_splits(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int = 0
) -> np.ndarray:
    """Split names ("train" / "val" / "test") per map, stratified by class: of each class's k
    maps, round(k x val_fraction) go to val and round(k x test_fraction) to test, drawn at
    random (seeded apart from the maps, so the maps do not depend on the fractions)."""
    _check_fractions(val_fraction, test_fraction)
    rng = np.random.default_rng([seed, 1])
    split = np.full(len(labels), "train", dtype="<U5")
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = round(len(members) * val_fraction)
        n_test = round(len(members) * test_fraction)
        split[members[:n_val]] = "val"
        split[members[n_val : n_val + n_test]] = "test"
    return split
