"""Test-time views on the wafer maps: how much averaging the logits over each map's symmetric
views adds to a fine-tuned classifier, seed by seed, on val maps no selection saw.

A pretrained run's backbone is fine-tuned on a label split once per seed (the recipe of
`benchmarks/wafer_fewlabel.py`: 30 epochs, at least 600 steps, batch 128, views without die
noise), each selected on the first --select maps of a seeded permutation of val with plain
logits. The remaining val maps (the holdout) are then scored with plain logits and with the
test-time views, for each seed and for the ensemble of all seeds (mean probabilities). The test
split is never read.

    python benchmarks/test_time_views.py --run RUN --split train_1 --seeds 0 1 2 3 4
    python benchmarks/test_time_views.py --run RUN --views hflip       # mirror images only

Prints a table (per seed, the mean, the ensemble) and writes every number to a JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_line  # noqa: E402

from selfsup.artifacts import load_method_from_checkpoint, run_checkpoint  # noqa: E402
from selfsup.data import load_wafer_subset  # noqa: E402
from selfsup.eval.finetune import finetune  # noqa: E402
from selfsup.eval.metrics import macro_f1  # noqa: E402
from selfsup.eval.test_time import TEST_TIME_VIEWS  # noqa: E402
from selfsup.runtime.precision import resolve_precision  # noqa: E402
from selfsup.runtime.progress import Progress  # noqa: E402

SPLITS = ("train_1", "train_10", "train_20")


def selection_and_holdout(n: int, select: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint indices into val: the first ``select`` of a seeded permutation choose the
    fine-tuning step; the rest (the holdout) measure. The permutation of
    ``wafer_fewlabel.subsample`` with the same seed, so its selection maps are these."""
    if not 0 < select < n:
        raise ValueError(f"--select must be between 1 and {n - 1} (val has {n} maps), got {select}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:select], order[select:]


def holdout_scores(
    logits: dict[str, list[torch.Tensor]], labels: torch.Tensor, num_classes: int
) -> dict[str, Any]:
    """{views: {"seeds": [macro-F1 per seed], "mean": ..., "ensemble": macro-F1 of the mean
    probabilities}} from holdout ``logits`` {views: [logits [N, C] per seed]}."""
    out: dict[str, Any] = {}
    for views, per_seed in logits.items():
        seeds = [macro_f1(labels, z.argmax(1), num_classes) for z in per_seed]
        mean_probs = torch.stack([z.softmax(1) for z in per_seed]).mean(0)
        out[views] = {
            "seeds": seeds,
            "mean": sum(seeds) / len(seeds),
            "ensemble": macro_f1(labels, mean_probs.argmax(1), num_classes),
        }
    return out


def table(scores: dict[str, Any], steps: list[int], seeds: list[int], views: str) -> str:
    plain, tta = scores["none"], scores[views]
    lines = [
        f"| fine-tuning seed | chosen step | holdout macro-F1, plain | with {views} views | gain |",
        "|---|---|---|---|---|",
    ]
    for i, seed in enumerate(seeds):
        a, b = plain["seeds"][i], tta["seeds"][i]
        lines.append(f"| {seed} | {steps[i]} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
    for key, name in (("mean", "mean of the seeds"), ("ensemble", f"ensemble of {len(seeds)}")):
        a, b = plain[key], tta[key]
        lines.append(f"| {name} | – | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", required=True, help="run folder of a wafer pretraining")
    parser.add_argument("--split", default="train_1", choices=SPLITS, help="labelled split")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--views", default="dihedral", choices=TEST_TIME_VIEWS[1:])
    parser.add_argument("--select", type=int, default=4000, help="val maps that choose the step")
    parser.add_argument("--select-seed", type=int, default=1, help="seed of the val permutation")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--min-steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--subsample", type=int, default=None, help="cap val (smoke runs)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json", default=None, help="where to write all numbers")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    args.precision = resolve_precision(args.precision, "auto")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; returns {views: {"seeds", "mean", "ensemble"}} (also printed)."""
    args = parse_args(argv)
    start = time.perf_counter()
    ckpt = run_checkpoint(args.run)
    method = load_method_from_checkpoint(ckpt).eval()
    recipe = method.views
    train = load_wafer_subset(args.split, image_size=recipe.image_size)
    val = load_wafer_subset("val", image_size=recipe.image_size)
    if args.subsample:
        val = val.subset(torch.arange(min(args.subsample, len(val))))
    try:
        select, holdout = selection_and_holdout(len(val), args.select, args.select_seed)
    except ValueError as err:
        raise SystemExit(f"test_time_views: {err}") from None
    num_classes = len(val.class_names)
    progress = Progress(enabled=not args.quiet)
    views = recipe.with_params(die_flip_p=0)
    logits: dict[str, list[torch.Tensor]] = {"none": [], args.views: []}
    steps = []
    for i, seed in enumerate(args.seeds):
        progress.note(f"[{i + 1}/{len(args.seeds)}] fine-tune {args.split}, seed {seed}")
        result = finetune(
            method.backbone, train.images, train.labels, val.images[select],
            val.labels[select], augment=views.single_view, preprocess=recipe.preprocess,
            num_classes=num_classes, epochs=args.epochs, min_steps=args.min_steps,
            batch_size=args.batch, precision=args.precision, seed=seed, progress=progress,
        )  # fmt: skip
        steps.append(result.step)
        for kind in logits:  # the same selected model, scored both ways
            result.test_time_views = kind
            logits[kind].append(result.logits(val.images[holdout], recipe.preprocess))
    scores = holdout_scores(logits, val.labels[holdout], num_classes)
    print()
    print(table(scores, steps, args.seeds, args.views))
    print(
        f"\n{method.method_name} run {Path(args.run).name} ({method.backbone.name}, "
        f"{recipe.image_size} px), labels {args.split} ({len(train)} maps), step chosen on "
        f"{len(select)} val maps, scored on the other {len(holdout)}; precision "
        f"{args.precision}; {(time.perf_counter() - start) / 60:.1f} min; {machine_line()}"
    )
    out = Path(args.json or Path(args.run) / f"test_time_views_{args.split}.json")
    record = {"scores": scores, "steps": steps, "seeds": args.seeds, "views": args.views,
              "checkpoint": str(ckpt)}  # fmt: skip
    out.write_text(json.dumps(record, indent=2))
    print(f"all numbers: {out}")
    return scores


if __name__ == "__main__":
    main()
