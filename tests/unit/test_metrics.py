"""Tests of mbd_cert.metrics against hand-worked values and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from mbd_cert import metrics
from mbd_cert.errors import InputError


def test_pearson_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.standard_normal(50)
        y = 0.3 * x + rng.standard_normal(50)
        expected = scipy.stats.pearsonr(x, y).statistic
        assert metrics.pearson_r(x, y) == pytest.approx(expected, abs=1e-12)


def test_pearson_undefined_for_constant():
    assert metrics.pearson_r(np.ones(4), np.arange(4.0)) is None


def test_weighted_f1_hand_example():
    # Class True: TP 2, FP 1, FN 1 -> F1 2/3 (support 3).
    # Class False: TP 1, FP 1, FN 1 -> F1 1/2 (support 2).
    # Weighted: (3 * 2/3 + 2 * 1/2) / 5 = 0.6.
    actual = np.array([True, True, True, False, False])
    predicted = np.array([True, True, False, False, True])
    assert metrics.weighted_f1(predicted, actual) == pytest.approx(0.6)


def test_weighted_f1_class_never_predicted():
    # Class 1 is never predicted, so its F1 is 0. Class 0 has TP 2, FP 2 -> 2/3.
    actual = np.array([0, 0, 1, 1])
    predicted = np.array([0, 0, 0, 0])
    assert metrics.weighted_f1(predicted, actual) == pytest.approx(0.5 * 2 / 3)


def test_acc2_conventions_hand_example():
    label = np.array([-1.0, 0.0, 2.0, 0.5, -0.2])
    prediction = np.array([-0.5, 0.3, 1.0, -0.1, 0.0])
    result = metrics.regression_metrics(prediction, label)
    # Negative vs non-negative over all 5: rows 0, 1, 2 agree.
    assert result["acc2_non_negative"] == pytest.approx(0.6)
    # Negative vs positive leaves out the zero label (row 1). A prediction of 0 counts
    # as negative, so rows 0, 2 and 4 agree out of 4.
    assert result["acc2_positive"] == pytest.approx(0.75)
    # Class positive: TP 1, FN 1 -> 2/3. Class negative: TP 2, FP 1 -> 4/5. Weights 2, 2.
    assert result["f1_positive"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert result["n"] == 5
    assert result["n_nonzero"] == 4
    assert result["mae"] == pytest.approx((0.5 + 0.3 + 1.0 + 0.6 + 0.2) / 5)


def test_seven_class_clip_and_round_half_even():
    values = np.array([0.5, 1.5, -2.5, -3.6, 3.7, 2.49, -0.5])
    assert metrics.seven_class(values).tolist() == [0, 2, -2, -3, 3, 2, 0]


def test_acc7_hand_example():
    label = np.array([2.0, 3.0, 0.0, 1.0])
    prediction = np.array([2.5, 3.7, -0.5, 1.6])
    # Classes: predictions 2, 3, 0, 2 against labels 2, 3, 0, 1.
    assert metrics.regression_metrics(prediction, label)["acc7"] == pytest.approx(0.75)


def test_all_zero_labels_leave_positive_undefined():
    result = metrics.regression_metrics(np.array([0.1, -0.2]), np.zeros(2))
    assert result["acc2_positive"] is None
    assert result["f1_positive"] is None
    assert result["pearson_r"] is None


@pytest.mark.parametrize(("prediction", "label"), [
    (np.zeros(0), np.zeros(0)),
    (np.zeros(3), np.zeros(4)),
    (np.zeros((2, 2)), np.zeros((2, 2))),
    (np.array([np.nan, 1.0]), np.zeros(2)),
])
def test_invalid_inputs_rejected(prediction, label):
    with pytest.raises(InputError):
        metrics.regression_metrics(prediction, label)
