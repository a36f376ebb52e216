"""MAE's speed (issue 16): the encoder on the visible quarter of the patches against the full
sequence, and one MAE training step of selfsup beside lightly 1.6's MAE.

    python benchmarks/mae_speed.py                        # vit_tiny, 32 px, batch 128
    python benchmarks/mae_speed.py --rounds 2 --steps 2   # a quick check

Rows, timed in interleaved rounds (one timing of every row per round; the median over rounds
is reported with the spread), each a forward + backward on the same float batch:

- ``encoder, all tokens``: the ViT on the class token and every patch (what a ViT method
  without masking pays);
- ``encoder, visible tokens``: ``encode_visible`` on the class token and ``1 - mask_ratio`` of
  the patches (a fresh random mask per step), as MAE's training runs it;
- ``selfsup mae step``: ``MAE.training_loss`` (masking, encoder, decoder, normalised-pixel loss
  on the masked patches) + backward + AdamW step;
- ``lightly mae step``: lightly 1.6's torchvision MAE modules (``MAEBackbone.from_vit`` on a
  torchvision ``VisionTransformer`` of the same size, ``MAEDecoder`` of selfsup's decoder
  sizes, ``random_token_mask``; mean squared error on the masked patches, as lightly's
  example) + backward + AdamW step. Skipped, and said so, when lightly is not installed.

The two step rows take the same float batch: the augmentations are not timed (lightly's
recipe makes them per image in loader workers, selfsup on the batch), so these rows compare
the model step alone. Precision fp32; the machine line names the ISA.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_line  # noqa: E402

import selfsup  # noqa: E402
from selfsup.methods.mae import decoder_sizes  # noqa: E402
from selfsup.vit import VIT_SIZES, random_masking  # noqa: E402

ROWS = ("encoder, all tokens", "encoder, visible tokens", "selfsup mae step", "lightly mae step")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="vit_tiny", choices=sorted(VIT_SIZES))
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per row first")
    parser.add_argument("--depth", type=int, default=None, help="override the ViT depth")
    args = parser.parse_args(argv)
    for name in ("image_size", "channels", "batch", "rounds", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.mask_ratio < 1:
        parser.error(f"--mask-ratio must be in (0, 1), got {args.mask_ratio}")
    return args


def selfsup_mae(args: argparse.Namespace) -> Any:
    extra = {} if args.depth is None else {"depth": args.depth}
    return selfsup.build(
        "mae", backbone=args.backbone, in_channels=args.channels, image_size=args.image_size,
        backbone_kwargs=extra, mask_ratio=args.mask_ratio,
    )  # fmt: skip


def encoder_steps(method: Any, x: Tensor, mask_ratio: float) -> dict[str, Callable[[], None]]:
    """Forward + backward of the encoder on every token, and on the visible ones."""
    trunk = method.backbone.trunk
    h, w = trunk.grid(x)

    def full() -> None:
        tokens, _ = trunk.tokens(x)
        tokens.float().square().mean().backward()

    def visible() -> None:
        mask = random_masking(x.shape[0], h * w, mask_ratio, device=x.device)
        trunk.encode_visible(x, mask.visible).float().square().mean().backward()

    return {ROWS[0]: full, ROWS[1]: visible}


def selfsup_step(method: Any, x: Tensor) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(method.parameters(), lr=1.5e-4, betas=(0.9, 0.95))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        method.training_loss([x]).loss.backward()
        optimizer.step()

    return step


def lightly_step(method: Any, x: Tensor, args: argparse.Namespace) -> Callable[[], None] | str:
    """lightly's MAE of the same encoder and decoder sizes, or why there is none."""
    try:
        from lightly.models import utils
        from lightly.models.modules.masked_autoencoder import MAEBackbone, MAEDecoder
    except ImportError as err:
        return f"lightly not installed ({err}); pip install -r requirements-bench.txt"
    from torchvision.models.vision_transformer import VisionTransformer

    trunk = method.backbone.trunk
    size = trunk.build_kwargs
    vit = VisionTransformer(
        size["image_size"], size["patch_size"], size["depth"], size["heads"], size["width"],
        size["mlp_dim"],
    )  # fmt: skip
    if args.channels != 3:
        vit.conv_proj = nn.Conv2d(args.channels, size["width"], size["patch_size"],
                                  stride=size["patch_size"])  # fmt: skip
    dim, depth, heads = decoder_sizes(size["width"], size["depth"])
    patch = size["patch_size"]
    backbone = MAEBackbone.from_vit(vit)
    decoder = MAEDecoder(
        seq_length=vit.seq_length, num_layers=depth, num_heads=heads,
        embed_input_dim=size["width"], hidden_dim=dim, mlp_dim=4 * dim,
        out_dim=patch**2 * args.channels,
    )  # fmt: skip
    mask_token = nn.Parameter(torch.zeros(1, 1, dim))
    parameters = [*backbone.parameters(), *decoder.parameters(), mask_token]
    optimizer = torch.optim.AdamW(parameters, lr=1.5e-4, betas=(0.9, 0.95))
    criterion = nn.MSELoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        batch = x.shape[0]
        keep, masked = utils.random_token_mask(
            size=(batch, vit.seq_length), mask_ratio=args.mask_ratio, device=x.device
        )
        encoded = backbone.encode(x, idx_keep=keep)
        tokens = utils.repeat_token(mask_token, (batch, vit.seq_length))
        tokens = utils.set_at_index(tokens, keep, decoder.embed(encoded).type_as(tokens))
        predicted = decoder.predict(utils.get_at_index(decoder.decode(tokens), masked))
        target = utils.get_at_index(utils.patchify(x, patch), masked - 1)
        criterion(predicted, target).backward()
        optimizer.step()

    return step


def time_rows(rows: dict[str, Callable[[], None]], args: argparse.Namespace) -> dict[str, list]:
    """Seconds per step of every row, one list entry per round, rounds interleaved."""
    for name, step in rows.items():
        for _ in range(args.warmup):
            step()
        print(f"  warmed up: {name}", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in rows}
    for round_ in range(1, args.rounds + 1):
        for name, step in rows.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            seconds[name].append((time.perf_counter() - start) / args.steps)
        print(f"round {round_}/{args.rounds}: " + ", ".join(
            f"{name} {s[-1] * 1000:.0f} ms" for name, s in seconds.items()
        ), flush=True)  # fmt: skip
    return seconds


def table(seconds: dict[str, list[float]], batch: int) -> str:
    reference = statistics.median(seconds[ROWS[0]])
    lines = [
        "| row | ms / step (median, min-max) | images/s | vs encoder on all tokens |",
        "|---|---|---|---|",
    ]
    for name, values in seconds.items():
        median = statistics.median(values)
        lines.append(
            f"| {name} | {median * 1000:.0f} ({min(values) * 1000:.0f}-{max(values) * 1000:.0f})"
            f" | {batch / median:.0f} | {median / reference:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    args = parse_args(argv)
    torch.manual_seed(0)
    method = selfsup_mae(args)
    method.train()
    trunk = method.backbone.trunk
    x = torch.randn(args.batch, args.channels, args.image_size, args.image_size)
    tokens = (args.image_size // trunk.patch_size) ** 2
    visible = tokens - int(tokens * args.mask_ratio)
    print(
        f"{args.backbone} (depth {trunk.depth}, width {trunk.feature_dim}), "
        f"{args.image_size} px, patch {trunk.patch_size}: 1 + {tokens} tokens, 1 + {visible} "
        f"visible at mask ratio {args.mask_ratio}; batch {args.batch}, fp32", flush=True
    )  # fmt: skip
    rows = {**encoder_steps(method, x, args.mask_ratio), ROWS[2]: selfsup_step(method, x)}
    lightly = lightly_step(method, x, args)
    if isinstance(lightly, str):
        print(f"{ROWS[3]}: skipped, {lightly}")
    else:
        rows[ROWS[3]] = lightly
    seconds = time_rows(rows, args)
    print("\n" + table(seconds, args.batch) + "\n")
    dim, depth, heads = decoder_sizes(trunk.feature_dim, trunk.depth)
    print(f"decoder (both sides): {depth} blocks, {dim} wide, {heads} heads; "
          f"{args.rounds} rounds x {args.steps} steps; {torch.get_num_threads()} torch "
          f"thread(s); {machine_line()}")  # fmt: skip
    return seconds


if __name__ == "__main__":
    main()
