"""Wafer maps as model input: the two encodings the literature uses.

- "codes": 1 channel holding the WM-811K codes 0 off-wafer / 1 pass / 2 fail. This is what the
  built-in data and the wafer view recipe use (die-flip noise swaps 1 <-> 2; the recipe's
  preprocess scales the codes to [0, 1]).
- "fail_mask": 2 channels of 0/1, (fail die, on-wafer die), as WaPIRL feeds its ResNet
  (Kahng & Kim, IEEE T-SM 34(1), 2021). The mask channel tells a pass die from the background
  without relying on an intermediate grey level. Die-flip noise written for codes does not
  apply to it.

The table of encodings and the encoding itself live in ``selfsup.views.wafer`` (the views end
with the same step); this module applies them to stored maps, numpy or torch.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from selfsup.views.wafer import FAIL, WAFER_ENCODINGS, check_encoding, encode_codes

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def encode_wafer(map2d: ArrayT, mode: str = "codes") -> ArrayT:
    """Wafer codes [..., H, W] -> uint8 model input [..., C, H, W] (numpy in, numpy out).

    mode "codes": C = 1, values 0/1/2 unchanged. mode "fail_mask": C = 2, channel 0 = 1 where a
    die failed (code 2), channel 1 = 1 on the wafer (code 1 or 2). Values other than 0/1/2
    raise ValueError: a map scaled to 0/128/255 must be converted back first.
    """
    check_encoding(mode, "encode_wafer: mode")
    if map2d.ndim < 2:
        raise ValueError(f"encode_wafer: need a map [..., H, W], got shape {tuple(map2d.shape)}")
    is_numpy = isinstance(map2d, np.ndarray)
    codes = torch.from_numpy(np.ascontiguousarray(map2d)) if is_numpy else map2d
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > FAIL):
        bad = sorted({int(v) for v in codes.unique().tolist()} - {0, 1, 2})[:5]
        raise ValueError(f"encode_wafer: values must be codes 0/1/2, found {bad}")
    out = encode_codes(codes.to(torch.uint8).unsqueeze(-3), mode)
    return out.numpy() if is_numpy else out


__all__ = ["WAFER_ENCODINGS", "encode_wafer"]
