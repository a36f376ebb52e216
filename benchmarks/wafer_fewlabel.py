"""The few-label wafer benchmark (BENCHMARKS.md section 1).

Pretrain without labels on the maps of the four train splits, then, with the labels of
train_1, train_10 and train_20 in turn: linear probe, MLP probe (hidden 512, as
fastsiam-wafers) and fine-tuning, each selected on val and scored ONCE on test (macro-F1,
balanced accuracy, accuracy, per-class F1). Baselines in the same table: the same backbone at
random init (probes), raw pixels (probes), supervised from scratch (fine-tuning from random
init on the same labels).

    python benchmarks/wafer_fewlabel.py --run RUN_FOLDER           # a finished `selfsup pretrain`
    python benchmarks/wafer_fewlabel.py --pretrain --epochs 9       # pretrain first (defaults)
    python benchmarks/wafer_fewlabel.py --pretrain --method byol --minutes 30 --epochs 100
    python benchmarks/wafer_fewlabel.py --run RUN --subsample 600   # quick smoke run
    python benchmarks/wafer_fewlabel.py --run RUN --splits train_1  # the 1 % cells only
    python benchmarks/wafer_fewlabel.py --run RUN --semi fixmatch --finetune-minutes 30
                                                    # FixMatch rows, 30 min per fine-tuning cell
    python benchmarks/wafer_fewlabel.py --run RUN --protocols finetune --baselines supervised \
        --finetune-views die_flip_p=0                                   # the best rows so far
    python benchmarks/wafer_fewlabel.py --run RUN --protocols finetune \
        --test-time-views dihedral       # logits averaged over each map's 8 turns and mirrors
    python benchmarks/wafer_fewlabel.py --run RUN --protocols finetune \
        --finetune-backbone-lr 0.003 0.01 0.03   # the backbone's learning rate chosen on val
    python benchmarks/wafer_fewlabel.py --run RUN --protocols finetune \
        --finetune-ensemble 5             # 5 fine-tuning seeds, their logits averaged

Writes a JSON with every number (including per-class F1) next to the printed tables.
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

import selfsup  # noqa: E402
from selfsup.artifacts import load_method_from_checkpoint  # noqa: E402
from selfsup.cli.eval import ensemble_size, learning_rate  # noqa: E402
from selfsup.config import apply_overrides  # noqa: E402
from selfsup.data import load_wafer_subset  # noqa: E402
from selfsup.eval import extract_features, linear_probe, mlp_probe  # noqa: E402
from selfsup.eval.ensemble import finetune_ensemble  # noqa: E402
from selfsup.eval.finetune import FINETUNE_BACKBONE_LR, FINETUNE_LR  # noqa: E402
from selfsup.eval.supervised import fixmatch_with  # noqa: E402
from selfsup.eval.test_time import TEST_TIME_VIEWS  # noqa: E402
from selfsup.runtime.precision import resolve_precision  # noqa: E402
from selfsup.runtime.progress import Progress  # noqa: E402

LABEL_SPLITS = ("train_1", "train_10", "train_20")
SPLIT_LABEL = {"train_1": "1 %", "train_10": "10 %", "train_20": "20 %"}


class Cells:
    """Which table cell the benchmark is on, as a progress line:
    ``[3/18] finetune train_20 (pretrained + fine-tune, simclr)``."""

    # a plain class: dataclasses need the module in sys.modules, and tests load this script bare
    def __init__(self, total: int, progress: Progress, method: str) -> None:
        self.total, self.progress, self.method, self.done = total, progress, method, 0

    def start(self, protocol: str, split: str, row: str) -> None:
        self.done += 1
        self.progress.note(f"[{self.done}/{self.total}] {protocol} {split} ({row}, {self.method})")


def subsample(ds: Any, n: int | None, seed: int) -> Any:
    if not n or len(ds) <= n:
        return ds
    return ds.subset(torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n])


def trained_method(args: argparse.Namespace) -> tuple[Any, Path]:
    if args.pretrain:
        overrides = {
            "epochs": args.epochs,
            "max_minutes": args.minutes,
            "method": args.method,
            "progress_bar": False,
        }
        overrides = {k: v for k, v in overrides.items() if v is not None}
        _, run = selfsup.pretrain(out=args.out, **overrides)
    else:
        run = Path(args.run)
    best = run / "checkpoints" / "best.ckpt"
    ckpt = best if best.is_file() else run / "checkpoints" / "last.ckpt"
    return load_method_from_checkpoint(ckpt), ckpt


def scores(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "macro_f1": metrics["macro_f1"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "accuracy": metrics["accuracy"],
        "per_class_f1": {k: v["f1"] for k, v in metrics["per_class"].items()},
    }


def probe_rows(name, feats, data, num_classes, class_names, args, cells) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for protocol in [p for p in args.protocols if p in ("linear", "mlp")]:
        fit = linear_probe if protocol == "linear" else mlp_probe
        for split in args.splits:
            cells.start(f"{protocol} probe", split, name)
            start = time.perf_counter()
            # Full-batch L-BFGS needs ~100-300 iterations on these features; the MLP probe
            # trains with Adam on mini-batches (full-batch L-BFGS was slower and no better).
            settings = (
                {"epochs": args.linear_epochs} if protocol == "linear"
                else {"epochs": args.mlp_epochs, "batch_size": 256, "patience": 10}
            )  # fmt: skip
            result = fit(
                feats[split], data[split].labels, feats["val"], data["val"].labels,
                num_classes=num_classes, seed=args.seed, progress=cells.progress, **settings,
            )  # fmt: skip
            test = result.evaluate(feats["test"], data["test"].labels, class_names=class_names)
            rows.setdefault(f"{name} + {protocol} probe", {})[split] = {
                **scores(test),
                "chosen": result.hyperparameters
                | {"epoch": result.epoch, "weight_decay": result.weight_decay},
                "seconds": time.perf_counter() - start,
            }
            print(f"  {name} {protocol} {split}: test macro-F1 {test['macro_f1']:.3f}", flush=True)
    return rows


def finetune_rows(
    name, backbone, recipe, data, num_classes, class_names, args, cells, head_init="zero",
    unlabeled=None,
) -> dict[str, Any]:  # fmt: skip
    """Fine-tuning rows; with ``unlabeled`` images, FixMatch (``--semi fixmatch``)."""
    rows: dict[str, Any] = {}
    val_sel = subsample(data["val"], args.finetune_val, seed=1)
    views = recipe.with_params(**args.finetune_views)  # the pretraining views unless replaced
    semi = None if unlabeled is None else fixmatch_with(recipe, unlabeled)
    for split in args.splits:
        cells.start("finetune", split, name)
        start = time.perf_counter()
        fitted = finetune_ensemble(
            backbone, data[split].images, data[split].labels, val_sel.images, val_sel.labels,
            seeds=range(args.seed, args.seed + args.finetune_ensemble),
            lrs=args.finetune_lr, backbone_lrs=args.finetune_backbone_lr,
            augment=views.single_view, preprocess=recipe.preprocess, num_classes=num_classes,
            epochs=args.finetune_epochs, min_steps=args.finetune_min_steps,
            batch_size=args.finetune_batch, precision=args.precision,
            head_init=head_init, semi=semi, max_minutes=args.finetune_minutes,
            test_time_views=args.test_time_views, progress=cells.progress,
        )  # fmt: skip
        test = fitted.result.evaluate(
            data["test"].images, data["test"].labels, recipe.preprocess, class_names,
            progress=cells.progress,
        )  # fmt: skip
        chosen = {**fitted.selection_record(), "head_init": head_init, "seed": args.seed,
                  "views": args.finetune_views, "max_minutes": args.finetune_minutes}  # fmt: skip
        if semi is not None:
            chosen["semi"] = {"method": "fixmatch", **semi.settings(),
                              "mask_rate": fitted.result.mask_rates}  # fmt: skip
        rows.setdefault(name, {})[split] = {
            **scores(test),
            "chosen": chosen,
            "seconds": time.perf_counter() - start,
        }
        print(f"  {name} {split}: test macro-F1 {test['macro_f1']:.3f}", flush=True)
    return rows


def table(rows: dict[str, Any], key: str, splits: tuple[str, ...] = LABEL_SPLITS) -> str:
    lines = [f"| {key} | " + " | ".join(SPLIT_LABEL[s] for s in splits) + " |"]
    lines.append("|---|" + "---|" * len(splits))
    for name, per_split in rows.items():
        cells = [f"{per_split[s][key]:.3f}" if s in per_split else "–" for s in splits]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", help="run folder of a finished wafer pretraining")
    parser.add_argument("--pretrain", action="store_true", help="pretrain first")
    parser.add_argument("--method", default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--minutes", type=float, default=None, help="pretraining time budget (with --pretrain)"
    )
    parser.add_argument("--out", default="runs/wafer_fewlabel")
    parser.add_argument("--protocols", nargs="+", default=["linear", "mlp", "finetune"])
    parser.add_argument("--baselines", nargs="+", default=["random", "raw", "supervised"])
    parser.add_argument("--linear-epochs", type=int, default=300, help="L-BFGS iterations")
    parser.add_argument("--mlp-epochs", type=int, default=40)
    parser.add_argument("--finetune-epochs", type=int, default=30)
    parser.add_argument(
        "--finetune-min-steps",
        type=int,
        default=600,
        help="at least this many fine-tuning steps (1 %% = 623 labels)",
    )
    parser.add_argument("--finetune-batch", type=int, default=128)
    parser.add_argument(
        "--finetune-lr", type=learning_rate, nargs="+", default=[FINETUNE_LR],
        help="fine-tuning head learning rate(s); several: each (lr, backbone lr) pair is "
        "fine-tuned and the best on val is scored on test (--finetune-minutes covers them all)",
    )  # fmt: skip
    parser.add_argument(
        "--finetune-ensemble", type=ensemble_size, default=1, metavar="N",
        help="fine-tuning rows: N members (seeds --seed ... --seed + N - 1) whose logits are "
        "averaged, in the val score and the test scores (--finetune-minutes covers them all)",
    )  # fmt: skip
    parser.add_argument(
        "--finetune-backbone-lr", type=learning_rate, nargs="+", default=[FINETUNE_BACKBONE_LR],
        help="fine-tuning backbone learning rate(s), chosen on val as --finetune-lr",
    )  # fmt: skip
    parser.add_argument(
        "--finetune-minutes", type=float, default=None,
        help="wall-clock budget per fine-tuning cell (the schedule ends when it is spent)",
    )  # fmt: skip
    parser.add_argument(
        "--test-time-views", default="none", choices=TEST_TIME_VIEWS,
        help="fine-tuning rows: selection and test scores average the logits over these views "
        "of each map (dihedral: its 8 turns and mirror images)",
    )  # fmt: skip
    parser.add_argument(
        "--finetune-head",
        default="zero",
        choices=["zero", "probe"],
        help="pretrained fine-tuning head start: zero, or probe (LP-FT); supervised starts at zero",
    )
    parser.add_argument(
        "--finetune-views",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fine-tuning view parameter replacing the pretraining recipe's, e.g. die_flip_p=0",
    )
    parser.add_argument(
        "--baselines-only",
        action="store_true",
        help="only the baseline rows (they need the run's architecture only)",
    )
    parser.add_argument("--finetune-val", type=int, default=4000, help="val maps for selection")
    parser.add_argument(
        "--splits", nargs="+", choices=LABEL_SPLITS, default=list(LABEL_SPLITS),
        help="the label fractions to run (default: all three), e.g. --splits train_1",
    )  # fmt: skip
    parser.add_argument(
        "--semi", choices=["fixmatch"],
        help="also FixMatch fine-tuning rows (pretrained and from random init) with the maps of "
        "the four train splits as unlabelled data",
    )  # fmt: skip
    parser.add_argument("--subsample", type=int, default=None, help="cap every split (smoke)")
    parser.add_argument(
        "--seed", type=int, default=0,
        help="fine-tuning seed (head, batches, views) and random-init backbone seed",
    )  # fmt: skip
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json", default=None, help="where to write all numbers")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--progress-seconds", type=float, default=10.0,
        help="at most one progress line per job every this many seconds (0: every update)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not args.run and not args.pretrain:
        parser.error("give --run RUN_FOLDER or --pretrain")
    if not args.progress_seconds >= 0:
        parser.error(f"--progress-seconds must be >= 0, got {args.progress_seconds}")
    args.splits = tuple(s for s in LABEL_SPLITS if s in args.splits)  # table order, once each
    args.precision = resolve_precision(args.precision, "auto")
    try:
        args.finetune_views = apply_overrides({}, args.finetune_views, "--finetune-views")
    except ValueError as err:
        parser.error(str(err))
    return args


def count_cells(args: argparse.Namespace) -> int:
    """Table cells the run will fill: rows x protocols x label splits."""
    probes = [p for p in args.protocols if p in ("linear", "mlp")]
    pretrained = 0 if args.baselines_only else 1
    probe_rows_ = pretrained + sum(b in args.baselines for b in ("random", "raw"))
    finetune_rows_ = (pretrained + ("supervised" in args.baselines)) * (2 if args.semi else 1)
    cells = len(probes) * probe_rows_ + ("finetune" in args.protocols) * finetune_rows_
    return cells * len(args.splits)


def all_rows(
    method: Any, data: dict[str, Any], args: argparse.Namespace, cells: Cells
) -> dict[str, Any]:
    """{row name: {split: scores}}: the pretrained backbone and the baselines, every protocol."""
    recipe = method.views
    class_names = data["test"].class_names
    torch.manual_seed(args.seed)  # the random-init / supervised backbone
    random_method = selfsup.build(**{"name": method.method_name, **method.hyperparameters()})

    def features(backbone, row: str) -> dict[str, torch.Tensor]:
        cells.progress.note(f"features of every split ({row})")
        extract = dict(precision=args.precision, progress=cells.progress)
        return {s: extract_features(backbone, ds.images, recipe.preprocess, **extract)
                for s, ds in data.items()}  # fmt: skip

    probes = [p for p in args.protocols if p in ("linear", "mlp")]
    shared = (len(class_names), class_names, args, cells)
    rows: dict[str, Any] = {}
    if probes and not args.baselines_only:
        rows |= probe_rows("pretrained", features(method.backbone, "pretrained"), data, *shared)
    if probes and "random" in args.baselines:
        feats = features(random_method.backbone, "random init")
        rows |= probe_rows("random init", feats, data, *shared)
    if probes and "raw" in args.baselines:
        raw = {s: recipe.preprocess(ds.images).flatten(1) for s, ds in data.items()}
        rows |= probe_rows("raw pixels", raw, data, *shared)
    if "finetune" in args.protocols and not args.baselines_only:
        name = "pretrained + fine-tune" + (" (LP-FT)" if args.finetune_head == "probe" else "")
        rows |= finetune_rows(name, method.backbone, recipe, data, *shared,
                              head_init=args.finetune_head)  # fmt: skip
    if "finetune" in args.protocols and "supervised" in args.baselines:
        rows |= finetune_rows("supervised from scratch", random_method.backbone, recipe, data,
                              *shared)  # fmt: skip
    if args.semi:
        # FixMatch's unlabelled images: every map of the four train splits (labels unused)
        unlabeled = subsample(load_wafer_subset("train", image_size=recipe.image_size),
                              args.subsample, seed=9).images  # fmt: skip
        if not args.baselines_only:
            rows |= finetune_rows("pretrained + fine-tune + FixMatch", method.backbone, recipe,
                                  data, *shared, head_init=args.finetune_head,
                                  unlabeled=unlabeled)  # fmt: skip
        if "supervised" in args.baselines:
            rows |= finetune_rows("FixMatch from random init", random_method.backbone, recipe,
                                  data, *shared, unlabeled=unlabeled)  # fmt: skip
    return rows


def default_json_name(args: argparse.Namespace) -> str:
    """The numbers' file name in the run folder when ``--json`` is not given: it names the
    rows, the label splits and the seed, so the documented pair of commands run side by side
    on one run (pretrained rows; ``--baselines-only``) write two files, not one twice."""
    rows = "baselines" if args.baselines_only else "pretrained"
    return f"wafer_fewlabel-{rows}-{'-'.join(args.splits)}-seed{args.seed}.json"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns {row name: {split: scores}} (also printed and saved)."""
    args = parse_args(argv)
    start = time.perf_counter()
    method, ckpt = trained_method(args)
    method.eval()
    recipe = method.views
    size = recipe.image_size
    data = {
        s: subsample(load_wafer_subset(s, image_size=size), args.subsample, seed=i)
        for i, s in enumerate((*LABEL_SPLITS, "val", "test"))
    }
    print(f"pretrained backbone from {ckpt}", flush=True)
    progress = Progress(enabled=not args.quiet, every=args.progress_seconds)
    cells = Cells(count_cells(args), progress, method.method_name)
    rows = all_rows(method, data, args, cells)
    wall = time.perf_counter() - start
    summary_path = ckpt.parent.parent / "summary.json"  # absent while the run still trains
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    print()
    for key in ("macro_f1", "balanced_accuracy", "accuracy"):
        print(table(rows, key, args.splits) + "\n")
    print(
        f"backbone {method.backbone.name} ({method.feature_dim}-d), {method.method_name}, "
        f"{size} px, pretraining {summary.get('train_seconds', 0) / 60:.1f} min "
        f"({summary.get('epochs_completed')} epochs), evaluation {wall / 60:.1f} min; "
        f"test maps {len(data['test'])}; {machine_line()}"
    )
    out = Path(args.json or Path(ckpt.parent.parent) / default_json_name(args))
    out.write_text(json.dumps({"rows": rows, "checkpoint": str(ckpt)}, indent=2))
    print(f"all numbers: {out}")
    return rows


if __name__ == "__main__":
    main()
