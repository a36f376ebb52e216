"""The method table (BENCHMARKS.md section 1b): every registered method, the same budget.

    python benchmarks/methods.py                                  # every method, 10 min each
    python benchmarks/methods.py --jobs 2                         # 2 at once, 1 core each
    python benchmarks/methods.py --minutes 0.3 --methods simclr byol   # a quick check
    python benchmarks/methods.py --subsample 200 --set backbone_kwargs.width=8   # a smoke run

Each method pretrains in a process of its own (so its peak RSS is its own) through
``selfsup.pretrain`` with the defaults of ``selfsup pretrain`` (built-in wafer maps, train
splits, ``convnet_small``, 32 px, the method's own hyper-parameters) and a time budget of
``--minutes``; the kNN monitor on val (k=5) picks the best epoch, as in every run. Then a linear
probe with the labels of train_10, chosen on val and scored once on test, as
``selfsup eval RUN --protocol linear``. Methods that learn from labels (``batch_fields`` holds
"labels", e.g. supcon) get the labels of the pretraining split and are marked supervised.
Beside them: the same backbone at random init and raw pixels, through the same kNN (the
monitor's bank and queries) and probe. The goal per method is val kNN macro-F1 >= random init
+ 0.15 with no collapse, random init being the run's own (its summary's ``random_init``: the
backbone as that method builds it, e.g. CMC's two encoders); the baseline rows are the first
method's build. Prints a Markdown table and writes every number to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_line  # noqa: E402

import selfsup  # noqa: E402
from selfsup.cli import quiet_lightning  # noqa: E402
from selfsup.config import PretrainConfig, apply_overrides  # noqa: E402
from selfsup.eval.metric_keys import knn_metric_key  # noqa: E402
from selfsup.methods import METHODS  # noqa: E402

GOAL_MARGIN = 0.15  # val kNN macro-F1 above random init (BENCHMARKS.md 1b)
KNN_K = 5  # the published wafer setting
# the time budget ends every run; the epoch count only has to be out of its way
EPOCH_CAP = 10_000
PROBE_SPLITS = {"train": "train_10", "val": "val", "test": "test"}  # 10 % of the labels
TABLE_DEFAULTS = {"backbone": "convnet_small", "image_size": 32, "data": "wafers"}
BASELINES = ("random init", "raw pixels")
COLUMNS = (
    "method", "steps", "epochs", "images/s", f"val kNN k={KNN_K} macro-F1 (best epoch)",
    "linear probe 10 % test macro-F1", "collapsed", "peak RSS (MB)",
    f"goal: >= random init + {GOAL_MARGIN}",
)  # fmt: skip
_KNN_KEY = knn_metric_key(KNN_K)


# --- data ---------------------------------------------------------------------------------------


def subsampled_wafers(n: int, folder: Path, seed: int = 0) -> str:
    """A copy of the built-in wafer file with at most ``n`` maps of every split (seeded), for
    quick runs; returns its path, a data spec ``pretrain`` and ``load_dataset`` read by split."""
    import numpy as np

    from selfsup.data.wafers import packaged_path
    from selfsup.data.wm811k_pickles import WaferMaps, read_wafer_npz, write_wafer_npz

    maps = read_wafer_npz(packaged_path())
    rng = np.random.default_rng(seed)
    keep = np.concatenate([
        rng.permutation(np.flatnonzero(maps.split == split))[:n]
        for split in np.unique(maps.split)
    ])  # fmt: skip
    keep.sort()
    small = WaferMaps(
        [maps.maps[i] for i in keep], maps.labels[keep], class_names=maps.class_names,
        split=maps.split[keep], source=f"{maps.source} ({n} per split)",
        source_index=maps.source_index[keep],
    )  # fmt: skip
    return str(write_wafer_npz(small, folder / f"wafers_{n}_per_split.npz").resolve())


def linear_probe_10(backbone: Any, preprocess: Any, data: str, image_size: int) -> dict[str, Any]:
    """``selfsup eval --protocol linear`` on ``data``: a linear probe of frozen features fitted
    on train_10's labels, chosen on val, test scored once (``selfsup.eval.supervised``)."""
    from selfsup.data import load_dataset
    from selfsup.eval.supervised import FitSettings, fit_and_test

    splits = {
        role: load_dataset(data, image_size=image_size, split=split)
        for role, split in PROBE_SPLITS.items()
    }
    fitted = fit_and_test("linear", backbone, preprocess, {}, splits, FitSettings())
    return {"macro_f1": fitted.metrics["macro_f1"], "test": fitted.metrics, "chosen": fitted.chosen}


# --- one method, in its own process -------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (ru_maxrss: KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def collapse_record(run: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The collapse monitor's record: epochs it flagged and the last ``train/collapse_std``
    logged (None for a method that logs none, e.g. rotnet)."""
    from selfsup.eval.run_curves import read_metrics, series

    _, stds = series(read_metrics(run)[0], "train/collapse_std")
    return {
        "collapsed_epochs": summary.get("collapse_warnings_epochs", []),
        "last_collapse_std": float(stds[-1]) if len(stds) else None,
    }


def method_record(name: str, run: Path, config: dict[str, Any], peak: float) -> dict[str, Any]:
    from selfsup.artifacts import load_trained
    from selfsup.train.runfolder import read_summary

    summary = read_summary(run)
    provenance = json.loads((run / "provenance.json").read_text())
    backbone, preprocess, _ = load_trained(run)  # the exported (best-epoch) backbone
    probe = linear_probe_10(backbone, preprocess, config["data"], config["image_size"])
    return {
        "method": name,
        "supervised": is_supervised(name),
        "run": str(run),
        "precision": provenance.get("precision"),
        "steps": summary["steps"],
        "epochs": summary["epochs_trained"],
        "train_seconds": summary["train_seconds"],
        "images_per_s": summary.get("images_per_s"),
        "knn": summary["pretrained"][_KNN_KEY],
        "knn_epoch": summary["pretrained_epoch"],
        "knn_history": [h[_KNN_KEY] for h in summary.get("knn_history", [])],
        "run_random_init_knn": summary["random_init"][_KNN_KEY],
        **collapse_record(run, summary),
        "probe": probe["macro_f1"],
        "probe_detail": probe,
        "peak_rss_mb": peak,
    }


def worker(name: str, config_path: str, result_path: str) -> None:
    """Pretrain ``name`` with the config in ``config_path``, probe it, write the record."""
    log_to_stderr()
    config = json.loads(Path(config_path).read_text())
    start = time.perf_counter()
    try:
        _, run = selfsup.pretrain(config, method=name)
        record = method_record(name, run, config, peak_rss_mb())  # the peak of pretraining
    except Exception as err:  # the table reports it and goes on with the next method
        logging.getLogger("selfsup").exception("%s failed", name)
        record = {"method": name, "error": f"{type(err).__name__}: {err}"}
    record["seconds"] = time.perf_counter() - start
    Path(result_path).write_text(json.dumps(record, indent=2))


def run_method(
    name: str, config_path: Path, folder: Path, threads: int | None = None
) -> dict[str, Any]:
    """``worker`` in a fresh Python process (on ``threads`` CPU threads if given); its record
    (or the reason there is none)."""
    result = folder / f"{name}.result.json"
    result.unlink(missing_ok=True)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads in the child
    # the child imports the same selfsup as this process, installed or not
    source = str(Path(selfsup.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([source, *filter(None, [env.get("PYTHONPATH")])])
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name,
               "--worker-config", str(config_path), "--worker-result", str(result)]  # fmt: skip
    start = time.perf_counter()
    code = subprocess.run(command, env=env, check=False).returncode
    if result.is_file():
        return json.loads(result.read_text())
    seconds = time.perf_counter() - start
    return {"method": name, "error": f"worker exited with code {code}", "seconds": seconds}


def is_supervised(name: str) -> bool:
    return "labels" in getattr(METHODS.get(name), "batch_fields", ())


# --- baselines ------------------------------------------------------------------------------------


def baseline_records(config: dict[str, Any], method: str) -> dict[str, dict[str, Any]]:
    """Random init and raw pixels: kNN with the runs' monitor bank and queries, and the probe.

    The random-init backbone is the runs' own: ``pretrain`` seeds, then builds the method."""
    import lightning as L
    from torch import nn

    from selfsup.data import load_dataset
    from selfsup.eval.knn import backbone_knn_scores, capped_bank
    from selfsup.runtime.precision import resolve_precision
    from selfsup.train.pretrain import build_method

    cfg = PretrainConfig.from_dict({**config, "method": method})
    train = load_dataset(cfg.data, image_size=cfg.image_size, split=cfg.train_split)
    L.seed_everything(cfg.seed, verbose=False)
    built = build_method(cfg, train)
    bank = capped_bank(train, cfg.knn_max_train, cfg.seed)  # the monitor's first draw
    queries = load_dataset(cfg.data, image_size=cfg.image_size, split=cfg.val_split)
    precision = resolve_precision(cfg.precision, cfg.accelerator)
    knn_precision = "bf16-mixed" if precision == "bf16-mixed" else "32-true"  # as the monitor
    records = {}
    for row, backbone in zip(BASELINES, (built.backbone, nn.Flatten()), strict=True):
        start = time.perf_counter()
        print(f"{row}: kNN and linear probe", flush=True)
        knn = backbone_knn_scores(
            backbone, built.views.preprocess, bank, queries, k=[KNN_K],
            temperature=cfg.knn_temperature, precision=knn_precision,
        )  # fmt: skip
        probe = linear_probe_10(backbone, built.views.preprocess, cfg.data, cfg.image_size)
        records[row] = {
            "method": row,
            "knn": knn[_KNN_KEY],
            "probe": probe["macro_f1"],
            "probe_detail": probe,
            "seconds": time.perf_counter() - start,
        }
    return records


# --- the table ------------------------------------------------------------------------------------


def _number(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def row_cells(record: dict[str, Any], random_knn: float | None) -> list[str]:
    """The table cells of one record (a method's or a baseline's)."""
    name = record["method"] + (" (supervised: train labels)" if record.get("supervised") else "")
    if "error" in record:
        return [name, f"failed: {record['error']}"] + ["–"] * (len(COLUMNS) - 2)
    if record["method"] in BASELINES:
        return [name, "–", "–", "–", _number(record["knn"]), _number(record["probe"])] + ["–"] * 3
    collapsed = record["collapsed_epochs"]
    std = record["last_collapse_std"]
    collapse = (
        f"yes (epoch {collapsed[0]})" if collapsed
        else "n/a (no collapse_std)" if std is None else f"no (std {std:.2f})"
    )  # fmt: skip
    goal = "–"
    # the run's own random init: the method's backbone as it builds it (cmc's two encoders,
    # a ViT for mae), scored by the same monitor; the table's row is the first method's build
    random_knn = record.get("run_random_init_knn", random_knn)
    if random_knn is not None:
        gain = record["knn"] - random_knn
        goal = f"{'yes' if gain >= GOAL_MARGIN else 'no'} ({gain:+.3f})"
    return [
        name, str(record["steps"]), _number(record["epochs"], 2),
        _number(record["images_per_s"], 0), f"{record['knn']:.3f} (epoch {record['knn_epoch']})",
        _number(record["probe"]), collapse, _number(record["peak_rss_mb"], 0), goal,
    ]  # fmt: skip


def table(records: dict[str, dict[str, Any]]) -> str:
    random_knn = records.get(BASELINES[0], {}).get("knn")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for record in records.values():
        lines.append("| " + " | ".join(row_cells(record, random_knn)) + " |")
    return "\n".join(lines)


def settings_line(config: dict[str, Any], minutes: float, records: dict[str, Any]) -> str:
    precisions = sorted({str(r["precision"]) for r in records.values() if r.get("precision")})
    kwargs = ", ".join(f"{k}={v}" for k, v in (config.get("backbone_kwargs") or {}).items())
    return (
        f"{config['backbone']}{f' ({kwargs})' if kwargs else ''}, {config['image_size']} px, "
        f"{minutes:g} min of pretraining per method (the kNN monitor's passes count), data "
        f"{config['data']}; val kNN k={KNN_K}: bank = the train split (capped as the monitor), "
        f"queries = val; probe: train_10 labels, chosen on val, test once; "
        f"precision {', '.join(precisions) or 'n/a'}; {machine_line()}"
    )


# --- main -----------------------------------------------------------------------------------------


def log_to_stderr() -> None:
    """selfsup's INFO lines (a run's start, the kNN monitor each epoch) are the progress;
    Lightning's notices that do not apply here stay out of them, as in the CLI."""
    quiet_lightning()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger("selfsup").addHandler(handler)
    logging.getLogger("selfsup").setLevel(logging.INFO)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered")
    parser.add_argument("--minutes", type=float, default=10.0, help="pretraining per method")
    parser.add_argument("--runs", default="runs/methods", help="folder for the run folders")
    parser.add_argument("--out", default=None, help="JSON of every number (default RUNS/...)")
    parser.add_argument(
        "--subsample", type=int, default=None,
        help="at most this many maps of every wafer split (a quick run; not the benchmark)",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a pretraining config value for every method, as `selfsup pretrain --set`",
    )  # fmt: skip
    parser.add_argument(
        "--jobs", type=int, default=1,
        help="methods trained at once, each on cores / jobs threads: --jobs 2 on 2 cores gives "
        "every method --minutes of one core (CPU-minutes), in half the wall time",
    )  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-config", help=argparse.SUPPRESS)
    parser.add_argument("--worker-result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    if not args.minutes > 0:
        parser.error(f"--minutes must be > 0, got {args.minutes}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.subsample is not None and args.subsample < 2:
        parser.error(f"--subsample must be >= 2, got {args.subsample}")
    known = METHODS.names()
    args.methods = args.methods or list(known)
    unknown = [m for m in args.methods if m not in known]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}")
    try:
        args.config = pretrain_config(args)
    except ValueError as err:
        parser.error(str(err))
    return args


def pretrain_config(args: argparse.Namespace) -> dict[str, Any]:
    """The config every method pretrains with (checked), as JSON-able values."""
    config = apply_overrides({**TABLE_DEFAULTS}, args.set, "--set")
    owned = {"method": "--methods", "max_minutes": "--minutes", "epochs": "--minutes"}
    for key in sorted(set(config) & set(owned)):
        raise ValueError(f"--set {key} is the table's to set: use {owned[key]}")
    for key in ("val_split", "knn_max_val"):
        if key in config:  # the baseline rows must see the monitor's queries
            raise ValueError(f"--set {key}: the table's kNN queries are the whole val split")
    config |= {"max_minutes": args.minutes, "epochs": EPOCH_CAP, "progress_bar": False,
               "out": str(Path(args.runs).resolve())}  # fmt: skip
    PretrainConfig.from_dict(config)  # a bad value fails here, before any run starts
    return config


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run the table; returns {row: record} (also printed and written as JSON)."""
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, args.worker_config, args.worker_result)
        return {}
    start = time.perf_counter()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    config = args.config
    if args.subsample:
        config["data"] = subsampled_wafers(args.subsample, runs)
    config_path = runs / "methods_config.json"
    config_path.write_text(json.dumps(config, indent=2))
    print(f"baselines on {config['data']}", flush=True)
    records = baseline_records(config, args.methods[0])
    random_knn = records[BASELINES[0]]["knn"]
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None

    def one(i: int, name: str) -> dict[str, Any]:
        supervised = " (supervised)" if is_supervised(name) else ""
        print(f"[{i}/{len(args.methods)}] {name}{supervised}: {args.minutes:g} min of "
              "pretraining, then the linear probe", flush=True)  # fmt: skip
        record = run_method(name, config_path, runs, threads)
        print(f"  {name} done: " + " | ".join(row_cells(record, random_knn)), flush=True)
        return record

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {n: pool.submit(one, i, n) for i, n in enumerate(args.methods, 1)}
        records |= {name: future.result() for name, future in futures.items()}
    wall = time.perf_counter() - start
    print("\n" + table(records) + "\n")
    print(settings_line(config, args.minutes, records))
    if threads:
        print(f"{args.jobs} methods at once, each on {threads} thread(s) (OMP_NUM_THREADS)")
    print(f"wall time {wall / 60:.1f} min")
    out = Path(args.out or runs / "methods.json")
    out.write_text(json.dumps({
        "rows": records, "columns": list(COLUMNS), "goal_margin": GOAL_MARGIN,
        "config": config, "minutes": args.minutes, "machine": machine_line(),
        "jobs": args.jobs, "threads_per_method": threads,
        "wall_seconds": wall,
    }, indent=2))  # fmt: skip
    print(f"all numbers: {out}")
    return records


if __name__ == "__main__":
    main()
