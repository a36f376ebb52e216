"""Temperature scaling and the expected calibration error (selfsup.eval.calibration)."""

import pytest
import torch

from selfsup.eval.calibration import calibrate, expected_calibration_error, fit_temperature


def test_ece_of_a_hand_case():
    # 15 bins of width 1/15. Confidences 0.9 (right) and 0.9 (wrong) share bin 14, (0.8667,
    # 0.9333]: accuracy 0.5, confidence 0.9. 0.58 (right) and 0.55 (wrong) share bin 9,
    # (0.5333, 0.6]: accuracy 0.5, confidence 0.565. Each bin holds half the samples.
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.58, 0.42], [0.45, 0.55]])
    y = torch.tensor([0, 1, 0, 0])
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(0.5 - 0.565)
    assert expected_calibration_error(p, y) == pytest.approx(expected)


def test_ece_is_zero_when_confidence_matches_accuracy():
    p = torch.tensor([[1.0, 0.0]] * 5)
    assert expected_calibration_error(p, torch.zeros(5, dtype=torch.long)) == 0.0


def _overconfident(n=4000, classes=5, true_t=3.0, seed=0):
    """Logits whose calibrated temperature is ``true_t``: labels drawn from softmax(z / true_t),
    the model reports z (over-confident by that factor)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=g) * 4
    y = torch.multinomial((z / true_t).softmax(1), 1, generator=g).squeeze(1)
    return z, y


def test_fit_temperature_recovers_the_true_temperature():
    z, y = _overconfident(n=20000)
    assert fit_temperature(z, y) == pytest.approx(3.0, rel=0.05)


def test_calibration_lowers_the_error_on_an_overconfident_model():
    z, y = _overconfident(seed=1)
    zt, yt = _overconfident(seed=2)
    temperature, record = calibrate(z, y, zt, yt)
    assert temperature > 2
    assert record["val_ece_after"] < record["val_ece_before"] / 3
    # scored on test, fitted on val only: the improvement holds there too
    assert record["test_ece_after"] < record["test_ece_before"] / 3
    assert record["test_nll_after"] < record["test_nll_before"]


def test_an_underconfident_model_is_sharpened():
    z, y = _overconfident(true_t=0.5, seed=3)
    assert fit_temperature(z, y) < 1


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), "logits must be"),
        (torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), "labels"),
        (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), "no samples"),
    ],
)
def test_bad_shapes_are_named(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        fit_temperature(logits, labels)
