"""``predict``: a saved classifier (``selfsup.classifier``) on new data, one row per input.

```python
result = selfsup.predict("runs/simclr/eval_finetune_train_10_classifier", "new_maps/")
result.rows[0]        # {"source": "lot7/w03.png", "status": "ok", "prediction": "Scratch", ...}
result.write("predictions.csv")   # or .json
print(result.summary_text())
```

Every input gets a row: its source (a file path relative to the folder, else its index in the
file), the top-k classes with calibrated probabilities (``softmax(logits / T)``, T fitted on the
validation split when the classifier was selected), and ``low_confidence`` when the top
probability is below ``min_confidence``. Files that cannot be read are rows too, with status
``unreadable`` and the reason: nothing is dropped silently. Data with labels (a labelled folder,
a WM-811K split, an array file with labels) adds the true class and the summary its accuracy
and macro-F1.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from selfsup.classifier import ImageClassifier, load_classifier
from selfsup.runtime.progress import Progress, resolve_progress

DEFAULT_TOP_K = 3
DEFAULT_MIN_CONFIDENCE = 0.5
FORMATS = ("csv", "json")
OK, UNREADABLE = "ok", "unreadable"


@dataclass
class PredictionResult:
    """``rows``: one dict per input, in the data's order (unreadable files after the rest);
    ``summary``: counts (predicted, unreadable, low confidence, per class) and, with labels,
    accuracy and macro-F1; ``model`` / ``data``: what was predicted with and on."""

    model: str
    data: str
    top_k: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_csv(self) -> str:
        """The rows as CSV: source, status, prediction, confidence, low_confidence, then
        class_i / probability_i for i = 1..top_k, label (with labelled data), reason."""
        columns = ["source", "status", "prediction", "confidence", "low_confidence"]
        for i in range(1, self.top_k + 1):
            columns += [f"class_{i}", f"probability_{i}"]
        if any("label" in row for row in self.rows):
            columns.append("label")
        columns.append("reason")
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            flat = {k: v for k, v in row.items() if k != "top"}
            for i, (name, p) in enumerate(row.get("top", []), start=1):
                flat[f"class_{i}"], flat[f"probability_{i}"] = name, f"{p:.6f}"
            if isinstance(flat.get("confidence"), float):
                flat["confidence"] = f"{flat['confidence']:.6f}"
            writer.writerow(flat)
        return out.getvalue()

    def to_json(self) -> str:
        record = {"model": self.model, "data": self.data, "summary": self.summary,
                  "predictions": self.rows}  # fmt: skip
        return json.dumps(record, indent=2) + "\n"

    def write(self, path: str | Path, fmt: str | None = None) -> Path:
        """Write the predictions to ``path`` (temporary file + rename: never half a file);
        ``fmt`` csv | json, default from the suffix (csv unless .json)."""
        from selfsup.runtime.files import atomic_write_text

        path = Path(path)
        fmt = fmt or ("json" if path.suffix.lower() == ".json" else "csv")
        if fmt not in FORMATS:
            raise ValueError(f"predict: format must be one of {', '.join(FORMATS)}, got '{fmt}'")
        atomic_write_text(path, self.to_json() if fmt == "json" else self.to_csv())
        return path

    def summary_text(self) -> str:
        """A few lines a person reads: how many were predicted, unreadable, unsure; the
        predicted classes; accuracy and macro-F1 when the data had labels."""
        s = self.summary
        lines = [
            f"predicted {s['predicted']} input(s) from {self.data}; {s['unreadable']} "
            f"unreadable (listed in the output with the reason); {s['low_confidence']} below "
            f"confidence {s['min_confidence']:g}"
        ]
        counts = ", ".join(f"{name} {n}" for name, n in s["predicted_classes"].items())
        lines.append(f"predicted classes: {counts or '-'}")
        if "accuracy" in s:
            lines.append(
                f"against the data's labels ({s['labelled']} inputs): accuracy "
                f"{s['accuracy']:.4f}, macro-F1 {s['macro_f1']:.4f}"
            )
        return "\n".join(lines)


def predict(
    model: str | Path | ImageClassifier,
    data: str,
    *,
    split: str | None = None,
    top_k: int = DEFAULT_TOP_K,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> PredictionResult:
    """Predict every input of ``data`` with a saved classifier; see the module docstring.

    model: a classifier folder (or a file in it), an evaluation record JSON that names one
    (``eval_finetune_train_10.json``), or a loaded ``ImageClassifier``. data: an image folder
    (read without the decode cache, every unreadable file listed), an array file, a converted
    WM-811K file, an IDX folder or "wafers" (``split`` picks a split of data that has them).
    Images are read at the classifier's size and channels. ``top_k`` classes per row (at most
    the number of classes); ``min_confidence`` in [0, 1]; ``device`` default: where the
    classifier is.
    """
    if top_k < 1:
        raise ValueError(f"predict: top_k must be >= 1, got {top_k}")
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"predict: min_confidence must be in [0, 1], got {min_confidence}")
    if batch_size < 1:
        raise ValueError(f"predict: batch_size must be >= 1, got {batch_size}")
    classifier, model_name = _classifier(model)
    if device is not None:
        classifier = classifier.to(device)
    dataset = _load(data, classifier, split)
    top_k = min(top_k, len(classifier.class_names))
    probabilities = _probabilities(classifier, dataset.images, batch_size, progress)
    result = PredictionResult(model_name, str(data), top_k)
    result.rows = _rows(classifier.class_names, dataset, probabilities, top_k, min_confidence)
    result.rows += [
        {"source": name, "status": UNREADABLE,
         "reason": dataset.skip_reasons.get(name, "could not be read")}
        for name in dataset.skipped
    ]  # fmt: skip
    result.summary = _summary(result.rows, classifier, dataset, probabilities, min_confidence)
    return result


def resolve_classifier_path(path: str | Path) -> Path:
    """The classifier folder ``path`` names: itself, the folder of a file in it, or the
    ``classifier`` entry of an evaluation record JSON. FileNotFoundError says what is missing."""
    from selfsup.classifier import CLASSIFIER_META

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"predict: model '{path}' does not exist")
    if path.is_file() and path.suffix == ".json" and path.name != CLASSIFIER_META:
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"predict: '{path}' is not valid JSON: {err}") from None
        name = record.get("classifier") if isinstance(record, dict) else None
        if not name:
            raise FileNotFoundError(
                f"predict: the record '{path}' names no classifier (only linear, mlp and "
                "finetune evaluations save one; run the evaluation again with this selfsup)"
            )
        return path.parent / name
    return path if path.is_dir() else path.parent


def _classifier(model: Any) -> tuple[ImageClassifier, str]:
    if isinstance(model, ImageClassifier):
        return model.eval(), "in-memory classifier"
    folder = resolve_classifier_path(model)
    return load_classifier(folder), str(folder)


def _load(data: str, classifier: ImageClassifier, split: str | None) -> Any:
    """The data at the classifier's size and channels; a folder without the decode cache, so
    every unreadable file comes with its reason."""
    from selfsup.data import load_dataset
    from selfsup.data.spec import spec_kind

    size, channels = classifier.image_size, classifier.in_channels
    if spec_kind(str(data)) == "folder":
        from selfsup.data.folders import load_image_folder

        if split is not None:
            raise ValueError(f"predict: split='{split}' does not apply to the folder '{data}'")
        return load_image_folder(data, size, channels, cache=False)
    return load_dataset(str(data), image_size=size, in_channels=channels, split=split)


def _probabilities(
    classifier: ImageClassifier, images: Tensor, batch_size: int, progress: Progress | None
) -> Tensor:
    task = resolve_progress(progress).task("predict", total=images.shape[0], unit="images")
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        chunks.append(classifier.predict_proba(images[start : start + batch_size], batch_size))
        task.update(min(start + batch_size, images.shape[0]))
    task.close()
    return torch.cat(chunks) if chunks else torch.zeros(0, len(classifier.class_names))


def _rows(
    class_names: list[str], dataset: Any, probabilities: Tensor, top_k: int, min_confidence: float
) -> list[dict[str, Any]]:
    top_p, top_i = probabilities.topk(top_k, dim=1) if len(probabilities) else (None, None)
    sources = dataset.names or [str(i) for i in range(len(dataset))]
    labels = _true_labels_from(dataset, class_names)
    rows = []
    for n, source in enumerate(sources):
        pairs = zip(top_p[n].tolist(), top_i[n].tolist(), strict=True)
        top = [(class_names[i], float(p)) for p, i in pairs]
        row = {"source": source, "status": OK, "prediction": top[0][0], "confidence": top[0][1],
               "low_confidence": top[0][1] < min_confidence, "top": top}  # fmt: skip
        if labels is not None:
            row["label"] = labels[n]
        rows.append(row)
    return rows


def _true_labels_from(dataset: Any, class_names: list[str]) -> list[str | None] | None:
    if dataset.labels is None:
        return None
    names = dataset.class_names or class_names
    return [names[i] if 0 <= i < len(names) else None for i in dataset.labels.tolist()]


def _summary(
    rows: list[dict[str, Any]], classifier: ImageClassifier, dataset: Any,
    probabilities: Tensor, min_confidence: float,
) -> dict[str, Any]:  # fmt: skip
    from selfsup.eval.metrics import macro_f1

    predicted = [r for r in rows if r["status"] == OK]
    counts = Counter(r["prediction"] for r in predicted)
    summary: dict[str, Any] = {
        "predicted": len(predicted),
        "unreadable": len(rows) - len(predicted),
        "low_confidence": sum(r["low_confidence"] for r in predicted),
        "min_confidence": min_confidence,
        "temperature": float(classifier.temperature),
        "predicted_classes": {
            name: counts[name] for name in classifier.class_names if counts[name]
        },
    }
    labelled = [r for r in predicted if r.get("label") in classifier.class_names]
    if labelled:
        index = {name: i for i, name in enumerate(classifier.class_names)}
        y = torch.tensor([index[r["label"]] for r in labelled])
        p = torch.tensor([index[r["prediction"]] for r in labelled])
        summary["labelled"] = len(labelled)
        summary["accuracy"] = float((y == p).float().mean())
        summary["macro_f1"] = float(macro_f1(y, p, len(classifier.class_names)))
    return summary
