"""Classification metrics in plain torch: accuracy, top-5, balanced accuracy, macro-F1, confusion.

Conventions (they match scikit-learn, which the tests use as the reference):

- **balanced accuracy** is the mean per-class recall over the classes *present in y_true*
  (``sklearn.metrics.balanced_accuracy_score``).
- **macro-F1** is the unweighted mean of per-class F1 over the classes *present in y_true or
  y_pred* (``sklearn.metrics.f1_score(average="macro")``, whose default labels are that union).
  A class that is neither a true label nor a prediction has no defined F1 and is left out, so
  declaring extra ``num_classes`` does not lower the score.
- precision (recall, F1) of a class with no predictions (no true samples, neither) is 0, as
  sklearn's ``zero_division=0``.
- the confusion matrix has one row per true class and one column per predicted class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

# what every evaluation table shows: accuracy alone misleads on imbalanced data (DESIGN.md)
REPORTED_METRICS = ("macro_f1", "balanced_accuracy", "accuracy")


def as_label_tensor(labels: Any, name: str) -> Tensor:
    """Labels (tensor, numpy array or list) as a 1-D int64 tensor; ``name`` is used in errors."""
    t = labels if isinstance(labels, Tensor) else torch.as_tensor(labels)
    if t.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must hold integer class indices, got dtype {t.dtype}")
    return t.long()


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> Tensor:
    """Counts [C, C] (int64): entry (i, j) = samples of true class i predicted as class j."""
    y_true = as_label_tensor(y_true, "y_true")
    y_pred = as_label_tensor(y_pred, "y_pred").to(y_true.device)
    _check_labels(y_true, y_pred, num_classes)
    flat = y_true * num_classes + y_pred
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_scores(cm: Tensor) -> dict[str, Tensor]:
    """Precision, recall, F1 (float64 [C]) and support (int64 [C]) from a confusion matrix.

    Also ``in_true`` (class has true samples) and ``in_either`` (true samples or predictions),
    the masks that balanced accuracy and macro-F1 average over.
    """
    cm = cm.double()
    tp = cm.diagonal()
    support = cm.sum(dim=1)
    predicted = cm.sum(dim=0)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp_min(1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-300), denom * 0)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support.long(),
        "in_true": support > 0,
        "in_either": (support > 0) | (predicted > 0),
    }


def macro_f1(y_true: Any, y_pred: Any, num_classes: int) -> float:
    """Macro-F1 over the classes present in y_true or y_pred (see the module docstring)."""
    s = per_class_scores(confusion_matrix(y_true, y_pred, num_classes))
    return float(s["f1"][s["in_either"]].mean()) if bool(s["in_either"].any()) else 0.0


def topk_accuracy(y_true: Any, scores: Tensor, k: int) -> float:
    """Fraction of samples whose true class is among the ``k`` highest scores. scores: [N, C]."""
    y_true = as_label_tensor(y_true, "y_true").to(scores.device)
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return float((top == y_true[:, None]).any(dim=1).double().mean())


def classification_metrics(
    y_true: Any,
    y_pred: Any | None,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    scores: Tensor | None = None,
) -> dict[str, Any]:
    """Headline and per-class metrics of a classifier's predictions.

    y_true, y_pred: [N] class indices in [0, num_classes). ``y_pred`` may be None when
    ``scores`` [N, C] are given (predictions are then their argmax).

    Returns a JSON-friendly dict:
    ``accuracy`` (top-1), ``top5_accuracy`` (only with ``scores`` and C >= 5),
    ``balanced_accuracy``, ``macro_f1``, ``num_samples``, ``class_names``,
    ``per_class`` {name: {precision, recall, f1, support}} and ``confusion_matrix``
    (list of rows, one per true class).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    y_true = as_label_tensor(y_true, "y_true")
    if scores is not None:
        if scores.ndim != 2 or scores.shape != (y_true.shape[0], num_classes):
            raise ValueError(
                f"scores must have shape [N, num_classes] = [{y_true.shape[0]}, {num_classes}], "
                f"got {tuple(scores.shape)}"
            )
        if y_pred is None:
            y_pred = scores.argmax(dim=1)
    if y_pred is None:
        raise ValueError("classification_metrics needs y_pred or scores")
    y_pred = as_label_tensor(y_pred, "y_pred").to(y_true.device)
    if y_true.numel() == 0:
        raise ValueError("classification_metrics got no samples (y_true is empty)")
    names = _class_names(class_names, num_classes)

    cm = confusion_matrix(y_true, y_pred, num_classes)
    s = per_class_scores(cm)
    out: dict[str, Any] = {"accuracy": float((y_true == y_pred).double().mean())}
    if scores is not None and num_classes >= 5:
        out["top5_accuracy"] = topk_accuracy(y_true, scores, 5)
    out["balanced_accuracy"] = float(s["recall"][s["in_true"]].mean())
    out["macro_f1"] = float(s["f1"][s["in_either"]].mean())
    out["num_samples"] = int(y_true.numel())
    out["class_names"] = names
    out["per_class"] = {
        name: {
            "precision": float(s["precision"][c]),
            "recall": float(s["recall"][c]),
            "f1": float(s["f1"][c]),
            "support": int(s["support"][c]),
        }
        for c, name in enumerate(names)
    }
    out["confusion_matrix"] = cm.cpu().tolist()
    return out


def format_metrics_table(
    rows: Mapping[str, Mapping[str, Any]],
    keys: Sequence[str] | None = None,
    *,
    name_header: str = "name",
    digits: int = 4,
) -> str:
    """A Markdown table: one row per entry of ``rows``, one column per key.

    ``keys`` defaults to every scalar (int/float) key in order of first appearance; a row
    without a key shows "-". Floats are printed with ``digits`` decimals.
    """
    if keys is None:
        keys = []
        for metrics in rows.values():
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    if key not in keys:
                        keys.append(key)
    lines = [
        "| " + " | ".join([name_header, *keys]) + " |",
        "|" + "---|" * (len(keys) + 1),
    ]
    for name, metrics in rows.items():
        cells = [_format_cell(metrics.get(key), digits) for key in keys]
        lines.append("| " + " | ".join([str(name), *cells]) + " |")
    return "\n".join(lines)


def _format_cell(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(c) for c in range(num_classes)]
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} entries but num_classes is {num_classes}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}")
    return names


def _check_labels(y_true: Tensor, y_pred: Tensor, num_classes: int) -> None:
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"y_true and y_pred differ in length: {y_true.shape[0]} vs {y_pred.shape[0]}"
        )
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(
                f"{name} holds class indices in [{int(y.min())}, {int(y.max())}], "
                f"outside [0, num_classes={num_classes})"
            )
