"""selfsup predict: a saved classifier on new data, every input a row (selfsup.prediction)."""

import csv
import json

import numpy as np
import pytest
import torch
from conftest import tiny_simclr
from PIL import Image

from selfsup.artifacts import backbone_metadata
from selfsup.classifier import ImageClassifier, load_classifier, save_classifier
from selfsup.cli import main
from selfsup.prediction import predict

CLASSES = ["r", "g", "b"]


@pytest.fixture
def saved(tmp_path):
    """A classifier for 16x16 RGB images (tiny convnet, random head) saved in a folder."""
    method = tiny_simclr()
    head = torch.nn.Linear(method.backbone.feature_dim, 3)
    spec = {"kind": "linear", "in_dim": method.backbone.feature_dim, "num_classes": 3}
    clf = ImageClassifier(method.backbone, head, metadata=backbone_metadata(method),
                          class_names=CLASSES, head_spec=spec, temperature=2.0)  # fmt: skip
    return save_classifier(clf.eval(), tmp_path / "clf")


@pytest.fixture
def folder(tmp_path):
    """A labelled image folder (r/, g/) with 4 readable images and one corrupt file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "new"
    for cls in ("r", "g"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    (root / "g" / "broken.png").write_bytes(b"not a png at all")
    return root


def test_every_input_is_a_row_and_unreadable_files_keep_their_reason(saved, folder):
    result = predict(saved, str(folder), top_k=2)
    assert [r["source"] for r in result.rows] == ["g/0.png", "g/1.png", "r/0.png", "r/1.png",
                                                  "g/broken.png"]  # fmt: skip
    bad = result.rows[-1]
    assert bad["status"] == "unreadable" and "cannot identify image file" in bad["reason"]
    assert result.summary["predicted"] == 4 and result.summary["unreadable"] == 1
    # the probabilities are the classifier's, calibrated (T = 2)
    clf = load_classifier(saved)
    images = torch.from_numpy(np.stack([
        np.asarray(Image.open(folder / name)).transpose(2, 0, 1)
        for name in ("g/0.png", "g/1.png", "r/0.png", "r/1.png")
    ]))  # fmt: skip
    with torch.no_grad():
        expected = (clf(images) / 2.0).softmax(1)
    for row, p in zip(result.rows[:4], expected, strict=False):
        assert row["prediction"] == CLASSES[int(p.argmax())]
        assert row["confidence"] == pytest.approx(float(p.max()), abs=1e-6)
        assert [name for name, _ in row["top"]] == [CLASSES[i] for i in p.topk(2).indices]
        assert row["label"] == row["source"][0]  # the folder's first level is the class
    assert "accuracy" in result.summary and result.summary["labelled"] == 4


def test_csv_and_json_outputs(saved, folder, tmp_path):
    result = predict(saved, str(folder), top_k=3, min_confidence=1.0)
    rows = list(csv.DictReader(open(result.write(tmp_path / "p.csv"))))
    assert list(rows[0]) == ["source", "status", "prediction", "confidence", "low_confidence",
                             "class_1", "probability_1", "class_2", "probability_2", "class_3",
                             "probability_3", "label", "reason"]  # fmt: skip
    assert [r["low_confidence"] for r in rows[:4]] == ["True"] * 4  # nothing reaches 1.0
    assert rows[4]["status"] == "unreadable" and rows[4]["prediction"] == ""
    assert sum(float(rows[0][f"probability_{i}"]) for i in (1, 2, 3)) == pytest.approx(1, abs=1e-5)
    record = json.loads(result.write(tmp_path / "p.json").read_text())
    assert record["summary"]["low_confidence"] == 4 and len(record["predictions"]) == 5


def test_array_data_with_labels_and_the_eval_record_as_model(labelled_npz, export):
    from selfsup.eval.api import evaluate

    train, val = labelled_npz
    evaluation = evaluate(export, data=str(train), protocol="linear", test_data=str(val))
    record_path = evaluation.save(export)
    result = predict(record_path, str(val))
    assert result.summary["predicted"] == 48 and result.rows[0]["source"] == "0"
    # the same model on the same test split: the record's accuracy
    assert result.summary["accuracy"] == pytest.approx(evaluation.metrics["accuracy"])


def test_the_cli_writes_the_file_and_prints_a_summary(saved, folder, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(saved), "--data", str(folder), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "predicted 4 input(s)" in printed and "1 unreadable" in printed
    assert f"wrote {out}" in printed and out.is_file()


@pytest.mark.parametrize(
    ("options", "message"),
    [({"top_k": 0}, "top_k"), ({"min_confidence": 1.5}, "min_confidence"),
     ({"batch_size": 0}, "batch_size")],
)  # fmt: skip
def test_bad_arguments_are_named(saved, folder, options, message):
    with pytest.raises(ValueError, match=message):
        predict(saved, str(folder), **options)


def test_a_model_that_is_not_a_classifier_is_named(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        predict(tmp_path / "nothing", str(folder))
    record = tmp_path / "eval_knn_val.json"
    record.write_text(json.dumps({"protocol": "knn"}))
    with pytest.raises(FileNotFoundError, match="names no classifier"):
        predict(record, str(folder))
