"""``selfsup data``: check a data source, COCO boxes to crops, WM-811K pickles to .npz."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from selfsup.cli.common import FORMATTER


def cmd_data_check(args: argparse.Namespace) -> int:
    from selfsup.data import check_data, format_check

    print(format_check(check_data(args.path, image_size=args.image_size, full=args.full)))
    return 0


def cmd_data_coco_crops(args: argparse.Namespace) -> int:
    from selfsup.data.coco_crops import coco_to_crops, convert_coco_export, format_crop_counts

    ann = Path(args.annotations)
    if ann.is_dir():
        results = convert_coco_export(ann, args.out, min_size=args.min_size, padding=args.padding)
    else:
        results = {
            "all": coco_to_crops(
                ann,
                args.images or ann.parent,
                args.out,
                min_size=args.min_size,
                padding=args.padding,
            )  # fmt: skip
        }
    print(format_crop_counts(results))
    return 0


def cmd_data_wafers_convert(args: argparse.Namespace) -> int:
    from selfsup.data.wm811k_pickles import convert_wafers

    counts = convert_wafers(
        args.src,
        args.dst,
        trust_pickle=args.trust_pickle,
        on_bad="skip" if args.skip_bad else "error",
    )
    print(json.dumps(counts, indent=2, default=str))
    return 0


def add_data_commands(sub: Any) -> None:
    from selfsup.data.spec import SPEC_HELP

    p = sub.add_parser("data", help="data utilities", formatter_class=FORMATTER)
    data_sub = p.add_subparsers(dest="data_command", required=True)
    c = data_sub.add_parser(
        "check", help="counts, sizes, unreadable files", formatter_class=FORMATTER
    )
    c.add_argument("path", help=SPEC_HELP)
    c.add_argument("--image-size", type=int, default=None)
    c.add_argument(
        "--full",
        action="store_true",
        help="decode every image (finds truncated or corrupt files; slower than the header check)",
    )
    c.set_defaults(func=cmd_data_check)
    cc = data_sub.add_parser(
        "coco-crops",
        help="COCO detection boxes -> per-class crop folders",
        formatter_class=FORMATTER,
    )
    cc.add_argument("--annotations", required=True, help="a COCO json or a Roboflow export folder")
    cc.add_argument("--images", help="images of a single json (default: the json's folder)")
    cc.add_argument("--out", required=True)
    cc.add_argument("--min-size", type=float, default=2)
    cc.add_argument("--padding", type=float, default=0.0, help="fraction of box size per side")
    cc.set_defaults(func=cmd_data_coco_crops)
    w = data_sub.add_parser("wafers", help="WM-811K wafer-map files", formatter_class=FORMATTER)
    w_sub = w.add_subparsers(dest="wafers_command", required=True)
    cv = w_sub.add_parser(
        "convert", help="WM-811K pickle(s) -> pickle-free .npz", formatter_class=FORMATTER
    )
    cv.add_argument("src", help="LSWMD.pkl / WM811K.pkl, a clean-subset .pkl.xz, or a folder")
    cv.add_argument("dst", help="output .npz")
    cv.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow unpickling (runs code from the file; only for files you trust)",
    )
    cv.add_argument(
        "--skip-bad", action="store_true", help="skip malformed maps (counted and logged)"
    )
    cv.set_defaults(func=cmd_data_wafers_convert)
