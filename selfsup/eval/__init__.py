"""Evaluation of frozen features: extraction, weighted kNN, linear / MLP probes, metrics.

One call runs a whole protocol on a run or a loaded backbone (``selfsup.eval.api``, also
``selfsup.evaluate``): ``evaluate(run, protocol="linear", label_fraction=0.1)``. The pieces:

```
feats = extract_features(backbone, images, preprocess)          # [N, D], eval mode, no grad
knn_evaluate(train_f, train_y, val_f, val_y, k=[5, 200])        # {"knn5_macro_f1": ..., ...}
probe = linear_probe(train_f, train_y, val_f, val_y, num_classes=10)  # selected on val only
probe.evaluate(test_f, test_y)                                  # score test once, at the end
```
"""

from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_classify, knn_evaluate
from selfsup.eval.metrics import (
    classification_metrics,
    confusion_matrix,
    format_metrics_table,
    macro_f1,
    topk_accuracy,
)
from selfsup.eval.probe import ProbeResult, Standardize, linear_probe, mlp_probe

__all__ = [
    "ProbeResult",
    "Standardize",
    "classification_metrics",
    "confusion_matrix",
    "extract_features",
    "format_metrics_table",
    "knn_classify",
    "knn_evaluate",
    "linear_probe",
    "macro_f1",
    "mlp_probe",
    "topk_accuracy",
]
