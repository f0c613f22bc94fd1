"""Compare a certificate's utility after the deletion with the model before it.

The fair baseline is the model before the deletion with the deleted modality missing:
the released model cannot use that modality either, so any further loss comes from the
update and the noise. A small epsilon can make the noise dominate the released weights,
and the certificate stays valid, so ``issue`` warns and prints the comparison.

Stability: internal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Losses beyond which ``issue`` warns. They are well above the largest differences the
# utility benchmark measured at epsilon 1 (Acc2 1.25 points on 80 samples, Pearson r
# 0.0035), so the warning marks a release that lost its utility, not noise of the
# evaluation set.
MAX_MAE_INCREASE = 0.10  # relative to the baseline's MAE
MAX_PEARSON_DROP = 0.05
MAX_ACC2_DROP = 0.05  # share of samples: 5 points


def utility_pair(doc: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Return (baseline, released) metrics of a certificate, or None without an eval set."""
    utility = doc.get("metrics", {}).get("utility", {})
    modality = doc.get("deletion", {}).get("modality")
    if utility.get("split") != "eval" or not isinstance(modality, str):
        return None
    baseline = utility.get("before", {}).get(f"missing_{modality}")
    released = utility.get("after", {}).get(f"deleted_{modality}")
    if not isinstance(baseline, dict) or not isinstance(released, dict):
        return None
    return baseline, released


def utility_losses(baseline: Mapping[str, Any], released: Mapping[str, Any]) -> list[str]:
    """Describe each metric whose loss exceeds its limit; an empty list when none does.

    A Pearson r that the baseline has and the release lacks (a constant prediction)
    counts as lost.
    """
    losses = []
    mae_before, mae_after = _value(baseline, "mae"), _value(released, "mae")
    if mae_before is not None and mae_after is not None \
            and mae_after > mae_before * (1.0 + MAX_MAE_INCREASE):
        losses.append(f"MAE rose from {mae_before:.4g} to {mae_after:.4g}")
    r_before, r_after = _value(baseline, "pearson_r"), _value(released, "pearson_r")
    if r_before is not None and r_after is None:
        losses.append(f"Pearson r went from {r_before:.4g} to undefined (constant predictions)")
    elif r_before is not None and r_after is not None and r_before - r_after > MAX_PEARSON_DROP:
        losses.append(f"Pearson r fell from {r_before:.4g} to {r_after:.4g}")
    acc_before = _value(baseline, "acc2_non_negative")
    acc_after = _value(released, "acc2_non_negative")
    if acc_before is not None and acc_after is not None \
            and acc_before - acc_after > MAX_ACC2_DROP:
        losses.append(f"Acc2 fell from {100 * acc_before:.1f} % to {100 * acc_after:.1f} %")
    return losses


def summary_line(doc: Mapping[str, Any]) -> str | None:
    """Return one line comparing the released model with the baseline, or None."""
    pair = utility_pair(doc)
    if pair is None:
        return None
    baseline, released = pair
    modality = doc["deletion"]["modality"]
    n = doc["metrics"]["utility"].get("n")
    return (f"utility on {n} held-out samples: MAE {_show(released.get('mae'))}, Pearson r "
            f"{_show(released.get('pearson_r'))} (before the deletion, {modality} missing: "
            f"MAE {_show(baseline.get('mae'))}, Pearson r {_show(baseline.get('pearson_r'))})")


def _value(metrics: Mapping[str, Any], key: str) -> float | None:
    """Return a metric as float; None when it is absent, undefined or not a finite number."""
    return _finite(metrics.get(key))


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        return None
    return float(value)


def _show(value: Any) -> str:
    number = _finite(value)
    return f"{number:.4g}" if number is not None else "undefined"
