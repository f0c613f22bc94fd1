"""Regression metrics of multimodal sentiment analysis, in the field's conventions.

Labels and predictions are sentiment scores in [-3, 3] (CMU-MOSI / CMU-MOSEI style).
Papers in this field report:

* ``acc2_non_negative`` / ``f1_non_negative``: two classes, negative (< 0) vs
  non-negative (>= 0), over all samples.
* ``acc2_positive`` / ``f1_positive``: negative (< 0) vs positive (> 0), over the
  samples whose label is not zero. A prediction of exactly 0 counts as negative there,
  as in the MMSA evaluation code.
* ``acc7``: seven classes after clipping to [-3, 3] and rounding to the nearest integer.
  Rounding follows ``numpy.round`` (half to even), as the published evaluation scripts
  do, so 0.5 becomes 0 and 1.5 becomes 2.
* ``mae`` and ``pearson_r``.

F1 is the support-weighted mean of the per-class F1 over the classes that occur in
the labels (scikit-learn's ``average="weighted"``).

Stability: internal; the key names appear in ``metrics.json`` and in certificates.
"""

from __future__ import annotations

import math

import numpy as np

from mbd_cert.errors import InputError


def regression_metrics(prediction: np.ndarray, label: np.ndarray) -> dict[str, float | int | None]:
    """Compute every metric for one set of predictions.

    Args:
        prediction: Float array [n] of predicted scores.
        label: Float array [n] of true scores.

    Returns:
        A dict with ``n``, ``n_nonzero``, ``mae``, ``pearson_r``, ``acc2_non_negative``,
        ``f1_non_negative``, ``acc2_positive``, ``f1_positive`` and ``acc7``. A value is
        None where it is undefined: ``pearson_r`` when either array is constant, the
        ``*_positive`` pair when every label is zero.

    Raises:
        InputError: The arrays are empty, differ in shape, are not 1-D, or hold NaN or
            infinite values.
    """
    prediction = np.asarray(prediction, dtype=np.float64)
    label = np.asarray(label, dtype=np.float64)
    if prediction.ndim != 1 or prediction.shape != label.shape:
        raise InputError(
            f"prediction has shape {list(prediction.shape)} and label "
            f"{list(label.shape)}; expected two arrays of shape [n]",
            code="E_PARAMETER_INVALID",
        )
    if prediction.size == 0:
        raise InputError("cannot compute metrics on zero samples", code="E_PARAMETER_INVALID")
    if not (np.all(np.isfinite(prediction)) and np.all(np.isfinite(label))):
        raise InputError("prediction or label contains NaN or infinite values",
                         code="E_PARAMETER_INVALID")

    nonzero = label != 0
    result: dict[str, float | int | None] = {
        "n": int(label.size),
        "n_nonzero": int(nonzero.sum()),
        "mae": mean_absolute_error(prediction, label),
        "pearson_r": pearson_r(prediction, label),
        "acc2_non_negative": accuracy(prediction >= 0, label >= 0),
        "f1_non_negative": weighted_f1(prediction >= 0, label >= 0),
        "acc2_positive": None,
        "f1_positive": None,
        "acc7": accuracy(seven_class(prediction), seven_class(label)),
    }
    if nonzero.any():
        result["acc2_positive"] = accuracy(prediction[nonzero] > 0, label[nonzero] > 0)
        result["f1_positive"] = weighted_f1(prediction[nonzero] > 0, label[nonzero] > 0)
    return result


def mean_absolute_error(prediction: np.ndarray, label: np.ndarray) -> float:
    """Return mean(|prediction - label|)."""
    return float(np.mean(np.abs(np.asarray(prediction, np.float64) - label)))


def pearson_r(prediction: np.ndarray, label: np.ndarray) -> float | None:
    """Return the Pearson correlation, or None when either array has zero variance."""
    x = np.asarray(prediction, np.float64) - np.mean(prediction)
    y = np.asarray(label, np.float64) - np.mean(label)
    denominator = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    if denominator == 0.0:
        return None
    # Rounding can push |r| a hair above 1 for (anti-)collinear inputs.
    return float(np.clip(np.dot(x, y) / denominator, -1.0, 1.0))


def seven_class(scores: np.ndarray) -> np.ndarray:
    """Return integer classes -3..3: clip to [-3, 3], then round half to even."""
    return np.round(np.clip(np.asarray(scores, np.float64), -3.0, 3.0)).astype(np.int64)


def accuracy(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Return the share of positions where the two class arrays agree."""
    return float(np.mean(np.asarray(predicted) == np.asarray(actual)))


def weighted_f1(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Return the support-weighted mean F1 over the classes present in ``actual``.

    Per class c: F1 = 2 TP / (2 TP + FP + FN), taken as 0 when the denominator is 0.
    """
    predicted = np.asarray(predicted)
    actual = np.asarray(actual)
    classes, support = np.unique(actual, return_counts=True)
    total = 0.0
    for cls, count in zip(classes, support, strict=True):
        true_positive = int(np.sum((predicted == cls) & (actual == cls)))
        false_positive = int(np.sum((predicted == cls) & (actual != cls)))
        false_negative = int(np.sum((predicted != cls) & (actual == cls)))
        denominator = 2 * true_positive + false_positive + false_negative
        f1 = 2 * true_positive / denominator if denominator else 0.0
        total += f1 * int(count)
    return total / int(support.sum())
