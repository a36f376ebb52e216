import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from selfsup.eval import classification_metrics, confusion_matrix, format_metrics_table, macro_f1


@pytest.fixture
def labels():
    """6 declared classes: class 4 is never predicted, class 5 is predicted but never true."""
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, size=200)
    y_pred = rng.choice([0, 1, 2, 3, 5], size=200)
    y_pred[:80] = y_true[:80]  # better than chance
    y_pred[y_pred == 4] = 0
    return y_true, y_pred


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_match_sklearn(labels):
    y_true, y_pred = labels
    present = sorted(set(y_true) | set(y_pred))
    assert 4 not in set(y_pred) and 5 not in set(y_true)
    m = classification_metrics(torch.from_numpy(y_true), torch.from_numpy(y_pred), 6)

    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(
        skm.f1_score(y_true, y_pred, average="macro", labels=present, zero_division=0)
    )
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert m["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=range(6)).tolist()
    p, r, f, s = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=range(6), zero_division=0
    )
    for c in range(6):
        row = m["per_class"][str(c)]
        assert row["precision"] == pytest.approx(p[c])
        assert row["recall"] == pytest.approx(r[c])
        assert row["f1"] == pytest.approx(f[c])
        assert row["support"] == s[c]
    assert m["num_samples"] == 200 and "top5_accuracy" not in m


def test_extra_declared_classes_do_not_change_macro_scores(labels):
    y_true, y_pred = labels
    small = classification_metrics(y_true, y_pred, 6)
    large = classification_metrics(y_true, y_pred, 20)
    assert large["macro_f1"] == pytest.approx(small["macro_f1"])
    assert large["balanced_accuracy"] == pytest.approx(small["balanced_accuracy"])
    assert macro_f1(y_true, y_pred, 20) == pytest.approx(small["macro_f1"])


def test_small_case_by_hand():
    # true 0,0,1,1 ; predicted 0,1,1,1: class 0 P=1 R=.5 F1=2/3, class 1 P=2/3 R=1 F1=.8
    m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], 2, class_names=["ok", "bad"])
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    ok = m["per_class"]["ok"]
    assert ok == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert confusion_matrix(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]), 2).tolist() == [
        [1, 1],
        [0, 2],
    ]


def test_top5_by_hand():
    scores = torch.tensor(
        [
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.0],  # true 4: rank 5 -> hit
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.0],  # true 5: rank 6 -> miss
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],  # true 5: rank 1 -> hit (top-1 too)
        ]
    )
    m = classification_metrics(torch.tensor([4, 5, 5]), None, 6, scores=scores)
    assert m["top5_accuracy"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(1 / 3)  # predictions are the argmax: 0, 0, 5
    four = classification_metrics([0, 1], None, 4, scores=torch.eye(4)[:2])
    assert "top5_accuracy" not in four


def test_errors_name_the_culprit():
    with pytest.raises(ValueError, match="y_pred holds class indices"):
        classification_metrics([0, 1], [0, 3], 3)
    with pytest.raises(ValueError, match="differ in length"):
        classification_metrics([0, 1], [0], 3)
    with pytest.raises(ValueError, match="class_names has 2 entries"):
        classification_metrics([0, 1], [0, 1], 3, class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"scores must have shape"):
        classification_metrics([0, 1], None, 3, scores=torch.zeros(2, 4))


def test_format_metrics_table():
    rows = {
        "simclr": {"accuracy": 0.91234, "macro_f1": 0.8, "per_class": {}},
        "byol": {"accuracy": 0.5},
    }
    assert format_metrics_table(rows) == (
        "| name | accuracy | macro_f1 |\n"
        "|---|---|---|\n"
        "| simclr | 0.9123 | 0.8000 |\n"
        "| byol | 0.5000 | - |"
    )
    table = format_metrics_table(rows, keys=["macro_f1"], name_header="method", digits=2)
    assert table.splitlines()[0] == "| method | macro_f1 |"
    assert table.splitlines()[2] == "| simclr | 0.80 |"
