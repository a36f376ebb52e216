"""Time and score the README's main job: `selfsup pretrain` with every default.

    python benchmarks/default_pretrain.py [--out runs/bench]

Prints the kNN table (validation split of the built-in wafer maps, pretrained vs random init),
the wall time and the machine.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_line  # noqa: E402

import selfsup  # noqa: E402
from selfsup.eval.report import knn_comparison_table  # noqa: E402
from selfsup.train.runfolder import read_summary  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args()
    # the per-epoch kNN monitor lines are the job's progress (the step bar is off in logs)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.getLogger("selfsup").addHandler(handler)
    logging.getLogger("selfsup").setLevel(logging.INFO)
    start = time.perf_counter()
    _, run_dir = selfsup.pretrain(out=args.out, progress_bar=False)
    wall = time.perf_counter() - start
    summary = read_summary(run_dir)
    print(knn_comparison_table(summary))
    print(
        f"\nwall time {wall / 60:.1f} min (training {summary['train_seconds'] / 60:.1f} min, "
        f"{summary['steps']} steps, {summary.get('images_per_s', 0):.0f} images/s); "
        f"{machine_line()}"
    )


if __name__ == "__main__":
    main()
