"""The issuer's comparison of the released model with the model before the deletion."""

from __future__ import annotations

import math

import pytest

from mbd_cert._utility_loss import summary_line, utility_losses, utility_pair

BASELINE = {"mae": 0.75, "pearson_r": 0.72, "acc2_non_negative": 0.80}


def _doc(released: dict, split: str = "eval") -> dict:
    return {
        "deletion": {"modality": "audio"},
        "metrics": {"utility": {
            "split": split, "n": 300,
            "before": {"all": {"mae": 0.5}, "missing_audio": BASELINE},
            "after": {"deleted_audio": released},
        }},
    }


def test_equal_metrics_lose_nothing():
    assert utility_losses(BASELINE, BASELINE) == []


def test_losses_at_their_limits_pass():
    released = {"mae": 0.75 * 1.10, "pearson_r": 0.72 - 0.05 + 1e-12,
                "acc2_non_negative": 0.80 - 0.05 + 1e-12}
    assert utility_losses(BASELINE, released) == []


@pytest.mark.parametrize(("change", "named"), [
    ({"mae": 0.83}, "MAE rose from 0.75 to 0.83"),
    ({"pearson_r": 0.66}, "Pearson r fell from 0.72 to 0.66"),
    ({"pearson_r": None}, "Pearson r went from 0.72 to undefined"),
    ({"pearson_r": math.nan}, "Pearson r went from 0.72 to undefined"),
    ({"acc2_non_negative": 0.74}, "Acc2 fell from 80.0 % to 74.0 %"),
])
def test_each_loss_named(change, named):
    losses = utility_losses(BASELINE, {**BASELINE, **change})
    assert len(losses) == 1
    assert losses[0].startswith(named)


def test_gains_are_no_loss():
    better = {"mae": 0.5, "pearson_r": 0.9, "acc2_non_negative": 0.95}
    assert utility_losses(BASELINE, better) == []


def test_pair_needs_an_eval_set():
    assert utility_pair(_doc(BASELINE)) == (BASELINE, BASELINE)
    no_eval = {"deletion": {"modality": "audio"},
               "metrics": {"utility": {"split": "none", "note": "no evaluation set"}}}
    assert utility_pair(no_eval) is None
    assert summary_line(no_eval) is None


def test_summary_line_shows_both_models():
    line = summary_line(_doc({"mae": 2.702, "pearson_r": None}))
    assert line == ("utility on 300 held-out samples: MAE 2.702, Pearson r undefined "
                    "(before the deletion, audio missing: MAE 0.75, Pearson r 0.72)")
