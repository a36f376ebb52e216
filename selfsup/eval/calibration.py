"""Calibrated probabilities: temperature scaling fitted on validation logits, and the expected
calibration error that says whether it helped.

Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017:
temperature scaling divides every logit by one scalar T > 0 chosen to minimise the negative
log-likelihood of the validation labels, p = softmax(z / T). T > 1 softens an over-confident
model, T < 1 sharpens an under-confident one; the predicted class never changes. The expected
calibration error (sec. 2, eq. 3) bins the samples by their top-1 confidence:
    ECE = sum_b (|B_b| / N) |accuracy(B_b) - confidence(B_b)|,
with M equal-width bins over (0, 1] (M = 15 as the paper).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

ECE_BINS = 15
# log T is searched in [-LOG_T_BOUND, LOG_T_BOUND]: T between 0.01 and 100
LOG_T_BOUND = 4.6


def _check_logits(logits: Tensor, labels: Tensor, name: str) -> tuple[Tensor, Tensor]:
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(
            f"{name}: logits must be [N, C] and labels [N], got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError(f"{name}: no samples")
    return logits.detach().float().cpu(), labels.detach().long().cpu()


def fit_temperature(logits: Tensor, labels: Tensor, *, max_iter: int = 100) -> float:
    """The temperature T minimising the mean NLL of ``softmax(logits / T)`` on ``labels``.

    logits: [N, C] (validation set, unscaled), labels: [N] class indices. The NLL is convex in
    1/T, hence unimodal in log T: a golden-section search over log T in [-4.6, 4.6] finds the
    optimum to 1e-6 (T within [0.01, 100]). Returns a Python float.
    """
    z, y = _check_logits(logits, labels, "fit_temperature")

    def nll(log_t: Tensor) -> Tensor:
        return F.cross_entropy(z / log_t.exp(), y)

    # golden-section search on log T: robust whatever the starting calibration
    lo, hi = -LOG_T_BOUND, LOG_T_BOUND
    ratio = (5**0.5 - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = float(nll(torch.tensor(a))), float(nll(torch.tensor(b)))
    for _ in range(max_iter):
        if hi - lo < 1e-6:
            break
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = float(nll(torch.tensor(a)))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = float(nll(torch.tensor(b)))
    return float(torch.tensor((lo + hi) / 2).exp())


def expected_calibration_error(
    probabilities: Tensor, labels: Tensor, bins: int = ECE_BINS
) -> float:
    """ECE of class probabilities [N, C] against labels [N] (Guo et al. 2017, eq. 3): the
    top-1 confidences in ``bins`` equal-width bins over (0, 1], each bin's |accuracy -
    mean confidence| weighted by its share of the samples. 0 is perfectly calibrated."""
    p, y = _check_logits(probabilities, labels, "expected_calibration_error")
    if bins < 1:
        raise ValueError(f"expected_calibration_error: bins must be >= 1, got {bins}")
    confidence, predicted = p.max(dim=1)
    correct = (predicted == y).float()
    # bin b holds confidences in (b/M, (b+1)/M]; a confidence of exactly 0 joins the first
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    count = torch.bincount(index, minlength=bins).float()
    gap = torch.bincount(index, weights=correct - confidence, minlength=bins).abs()
    return float(gap.sum() / count.sum())


def calibrate(
    val_logits: Tensor,
    val_labels: Tensor,
    test_logits: Tensor | None = None,
    test_labels: Tensor | None = None,
) -> tuple[float, dict[str, Any]]:
    """(temperature, record): T fitted on the validation logits, and the ECE and NLL before
    (T = 1) and after on val and, when given, on test (scored, never fitted on)."""
    temperature = fit_temperature(val_logits, val_labels)
    record: dict[str, Any] = {"method": "temperature scaling (Guo et al. 2017), fitted on val",
                              "temperature": temperature, "ece_bins": ECE_BINS}  # fmt: skip
    splits = {"val": (val_logits, val_labels)}
    if test_logits is not None and test_labels is not None:
        splits["test"] = (test_logits, test_labels)
    for split, (logits, labels) in splits.items():
        z, y = _check_logits(logits, labels, f"calibrate ({split})")
        for when, t in (("before", 1.0), ("after", temperature)):
            record[f"{split}_ece_{when}"] = expected_calibration_error((z / t).softmax(1), y)
            record[f"{split}_nll_{when}"] = float(F.cross_entropy(z / t, y))
    return temperature, record
