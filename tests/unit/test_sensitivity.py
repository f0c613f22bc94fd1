"""Tests for mbd_cert.sensitivity: the reference-retrain sensitivity and its evidence check."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from mbd_cert.arch import get_architecture
from mbd_cert.errors import InputError
from mbd_cert.sensitivity import check_evidence, check_parameters, reference_retrain
from mbd_cert.update import masked_update

MODALITIES = ["text", "audio", "vision"]
CONFIG: dict[str, Any] = {
    "modalities": MODALITIES, "input_dims": {"text": 6, "audio": 4, "vision": 5},
    "seq_len": {"text": 4, "audio": 3, "vision": 2}, "hidden_dim": 8, "shared_dim": 4,
    "private_dim": 3, "fusion_hidden": 8, "dropout": 0.0, "deleted_modalities": ["audio"],
}
UPDATE = {"steps": 3, "learning_rate": 0.05, "damping": 1e-3}


def setup(clip_norm: float) -> tuple[torch.nn.Module, dict[str, np.ndarray], Any, dict[str, Any],
                                     Any]:
    architecture = get_architecture("mbd-sentiment")
    torch.manual_seed(0)
    model = architecture.build(architecture.validate_config(CONFIG)).to(torch.float64).eval()
    rng = np.random.default_rng(0)
    n = 12
    batch = {
        "inputs": {m: torch.from_numpy(rng.standard_normal(
            (n, CONFIG["seq_len"][m], CONFIG["input_dims"][m]))) for m in MODALITIES},
        "present": torch.ones(n, 3, dtype=torch.bool),
        "label": torch.from_numpy(rng.uniform(-2, 2, n)),
    }
    parameters = dict(model.named_parameters())
    masks = {name: rng.random(tuple(parameters[name].shape)) < 0.3
             for name in parameters if name.startswith("fusion.")}

    def retain(module: torch.nn.Module, sub: Mapping[str, Any]) -> torch.Tensor:
        return architecture.retain_objective(module, sub, "audio")

    full = masked_update(model, masks, retain, batch, torch.ones(n, dtype=torch.float64),
                         clip_norm=clip_norm, **UPDATE)
    return model, masks, retain, batch, full


def run(clip_norm: float, runs: int = 3, factor: float = 2.0) -> Any:
    model, masks, retain, batch, full = setup(clip_norm)
    return reference_retrain(model, masks, retain, batch, full, runs=runs, safety_factor=factor,
                             seed=7, clip_norm=clip_norm, **UPDATE)


def test_estimate_is_factor_times_max_distance() -> None:
    estimate = run(clip_norm=10.0)
    assert len(estimate.distances) == 3
    assert all(d > 0 for d in estimate.distances)
    assert estimate.max_distance == max(estimate.distances)
    assert not estimate.capped
    assert estimate.sensitivity == pytest.approx(2.0 * estimate.max_distance, rel=1e-15)
    assert estimate.seeds == [[7, 1], [7, 2], [7, 3]]
    assert all(0 <= i < 12 for i in estimate.left_out)


def test_estimate_is_reproducible() -> None:
    assert run(clip_norm=10.0).distances == run(clip_norm=10.0).distances


def test_estimate_capped_at_clip_bound() -> None:
    # A tiny clip: both displacements are clipped to norm C, so they differ by at most 2C.
    estimate = run(clip_norm=1e-6, factor=64.0)
    assert estimate.capped
    assert estimate.sensitivity == 2e-6
    assert estimate.max_distance <= 2e-6 * (1 + 1e-9)


def test_model_restored_after_runs() -> None:
    model, masks, retain, batch, full = setup(10.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reference_retrain(model, masks, retain, batch, full, runs=2, safety_factor=1.0, seed=0,
                      clip_norm=10.0, **UPDATE)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize(("runs", "factor"), [(0, 2.0), (65, 2.0), (True, 2.0), (3, 0.5),
                                              (3, math.nan), (3, math.inf)])
def test_bad_parameters_rejected(runs: Any, factor: Any) -> None:
    with pytest.raises(InputError) as caught:
        check_parameters(runs, factor)
    assert caught.value.code == "E_PARAMETER_INVALID"


def evidence(distances: list[float], factor: float, sensitivity: float) -> dict[str, Any]:
    return {"sensitivity": sensitivity, "sensitivity_evidence": {
        "method": "reference-retrain", "distances": distances, "safety_factor": factor}}


def test_evidence_check_accepts_consistent_claim() -> None:
    assert "3 runs" in check_evidence(evidence([0.1, 0.3, 0.2], 2.0, 0.6), clip_norm=1.0, seed=0)
    # Capped at the clip bound 2 * clip_norm = 0.2.
    assert check_evidence(evidence([0.1, 0.3, 0.2], 2.0, 0.2), clip_norm=0.1, seed=0)


@pytest.mark.parametrize(("claim", "match"), [
    (evidence([0.1, 0.3], 2.0, 0.59), "below the stated evidence"),
    (evidence([0.1, 0.3], 0.9, 0.59), "safety_factor must be >= 1"),
    (evidence([], 2.0, 0.59), "non-empty list"),
    ({"sensitivity": 1.0}, "is missing"),
])
def test_evidence_check_rejects(claim: dict[str, Any], match: str) -> None:
    """R-PRIV-5: a sensitivity below min(safety_factor x max distance, 2 x clip_norm) fails."""
    with pytest.raises(ValueError, match=match):
        check_evidence(claim, clip_norm=1.0, seed=0)


def full_evidence(**changes: Any) -> dict[str, Any]:
    """Return evidence with every member the issuer writes (seed 7, clip_norm 1), edited."""
    claim = evidence([0.1, 0.3, 0.2], 2.0, 0.6)
    claim["sensitivity_evidence"].update({
        "neighbour_relation": "remove-one-probe-sample", "runs": 3,
        "seeds": [[7, 1], [7, 2], [7, 3]], "left_out": [4, 0, 9], "max_distance": 0.3,
        "clip_bound": 2.0, "capped_at_clip_bound": False})
    claim["sensitivity_evidence"].update(changes)
    return claim


def test_full_evidence_accepted() -> None:
    assert "3 runs" in check_evidence(full_evidence(), clip_norm=1.0, seed=7)
    # 2 * 0.3 is above the clip bound 2 * 0.25, so the sensitivity is capped at 0.5.
    capped = full_evidence(clip_bound=0.5, capped_at_clip_bound=True)
    capped["sensitivity"] = 0.5
    assert check_evidence(capped, clip_norm=0.25, seed=7)


@pytest.mark.parametrize(("changes", "match"), [
    ({"runs": 17}, r"runs is 17; expected 3, the number of distances"),
    ({"runs": True}, r"runs is True; expected 3"),
    ({"max_distance": 1e-12}, r"max_distance is 1e-12; expected 0\.3, the largest distance"),
    ({"clip_bound": 5.0}, r"clip_bound is 5\.0; expected 2\.0, 2 \* update\.clip_norm"),
    ({"capped_at_clip_bound": True}, r"capped_at_clip_bound is True; expected False"),
    ({"capped_at_clip_bound": 0}, r"capped_at_clip_bound is 0; expected False"),
    ({"neighbour_relation": "replace-one-sample"},
     r"neighbour_relation is 'replace-one-sample'; expected 'remove-one-probe-sample'"),
    ({"seeds": [[99, 1], [99, 2], [99, 3]]},
     r"seeds is .*; expected \[\[7, 1\], \.\.\., \[7, 3\]\]"),
    ({"seeds": [[7, 1], [7, 2]]}, r"seeds is"),
    ({"seeds": [[7, True], [7, 2], [7, 3]]}, r"seeds is"),
    ({"left_out": "4,0,9"}, r"left_out is '4,0,9'; expected a list of 3 non-negative integers"),
    ({"left_out": {"1": 999}}, r"left_out is \{'1': 999\}; expected a list of 3"),
    ({"left_out": [4]}, r"left_out is \[4\]; expected a list of 3"),
    ({"left_out": [4, 0, 9] + [7] * 100_000}, r"left_out is \[4, 0, 9, 7, .*\.\.\.; expected"),
    ({"left_out": [4, -1, 9]}, r"left_out is"),
    ({"left_out": [4, True, 9]}, r"left_out is"),
    ({"left_out": [4, 0.5, 9]}, r"left_out is"),
    ({"left_out": [4, "0", 9]}, r"left_out is"),
])
def test_inconsistent_evidence_member_rejected(changes: dict[str, Any], match: str) -> None:
    """R-PRIV-5: each optional evidence member that is present must agree, or it is named."""
    with pytest.raises(ValueError, match=match) as caught:
        check_evidence(full_evidence(**changes), clip_norm=1.0, seed=7)
    assert str(caught.value).startswith("privacy.sensitivity_evidence.")
