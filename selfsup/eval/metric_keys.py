"""Names of kNN scores: ``knn5_macro_f1`` in results and summaries, ``val/knn5_macro_f1`` as
the training monitor logs it. Built and read back here only, so no caller slices strings.

```
knn_metric_key(5)                          # "knn5_macro_f1"
knn_monitor_key(5, "balanced_accuracy")    # "val/knn5_balanced_accuracy"
parse_knn_metric_key("knn5_top5_accuracy") # (5, "top5_accuracy"); None for other keys
```
"""

from __future__ import annotations

import numbers
import re

KNN_METRICS = ("accuracy", "top5_accuracy", "balanced_accuracy", "macro_f1")
# the score that selects: best.ckpt, early stopping, the end-of-run "pretrained" entry
SELECTION_METRIC = "macro_f1"
# what the kNN monitor puts before its keys in metrics.csv and Lightning's callback metrics
MONITOR_PREFIX = "val/"

_KEY = re.compile(rf"^knn([1-9]\d*)_({'|'.join(KNN_METRICS)})$")


def knn_metric_key(k: int, metric: str = SELECTION_METRIC) -> str:
    """``knn{k}_{metric}``; ValueError for a k below 1 or a metric not in ``KNN_METRICS``."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"kNN metric key: k must be an integer >= 1, got {k!r}")
    if metric not in KNN_METRICS:
        raise ValueError(f"kNN metric key: metric must be one of {KNN_METRICS}, got '{metric}'")
    return f"knn{k}_{metric}"


def knn_monitor_key(k: int, metric: str = SELECTION_METRIC) -> str:
    """The key the training monitor logs: ``val/knn{k}_{metric}``."""
    return MONITOR_PREFIX + knn_metric_key(k, metric)


def parse_knn_metric_key(key: str, *, prefix: str = "") -> tuple[int, str] | None:
    """(k, metric) of ``prefix + knn{k}_{metric}``; None for any other key."""
    if not key.startswith(prefix):
        return None
    found = _KEY.match(key.removeprefix(prefix))
    return (int(found.group(1)), found.group(2)) if found else None
