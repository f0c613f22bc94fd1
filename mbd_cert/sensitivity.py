"""The ``reference-retrain`` sensitivity: an empirical L2 sensitivity of the masked update.

The noise is calibrated to the L2 sensitivity Delta of the deterministic update: how far
the clipped displacement d(D) can move when the probe set D changes by one sample
(SPEC.md, section 6.4). ``clip-bound`` uses the proof Delta = 2 * clip_norm. The
reference retrain measures it instead:

1. For run r = 1..R, draw one probe sample with the generator seeded by
   ``(seed, r)`` and give it weight 0. This is a neighbouring probe set D_r.
2. Rerun the masked update on the retain objective, that is, retrain the masked
   parameters of the model without the modality, on D_r with the same mask, steps,
   learning rate, damping and clip.
3. Measure ||d(D) - d(D_r)||_2 over the masked entries.

Delta = safety_factor * max_r distance, capped at the clip bound 2 * clip_norm, which
holds for every pair of inputs. The runs, seeds, left-out samples, distances and the
factor are recorded in ``privacy.sensitivity_evidence``.

NOTE: the estimate is a maximum over R neighbours, not over all of them, so it is
evidence rather than a proof. The safety factor is the issuer's margin for the
neighbours it did not try; verifiers that need a proof require ``clip-bound``.

Stability: public (:func:`reference_retrain`, :class:`SensitivityEstimate`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mbd_cert.errors import InputError, IssuanceError

if TYPE_CHECKING:  # torch stays optional: level-1 verification calls check_evidence only
    import torch

    from mbd_cert.saliency import Objective
    from mbd_cert.update import UpdateResult

logger = logging.getLogger(__name__)

METHOD = "reference-retrain"
NEIGHBOUR_RELATION = "remove-one-probe-sample"
DEFAULT_RUNS = 4
DEFAULT_SAFETY_FACTOR = 2.0
# Each run repeats the per-sample Fisher pass of the update, so R is kept small.
MAX_RUNS = 64


@dataclass(frozen=True)
class SensitivityEstimate:
    """Outcome of the reference retrain.

    Attributes:
        sensitivity: The Delta to calibrate for, in parameter units (L2).
        max_distance: Largest distance between the full and a neighbouring update.
        distances: Distance of each run, in run order.
        left_out: Probe sample index left out in each run.
        seeds: The seed pair ``[seed, r]`` of each run.
        safety_factor: Factor applied to ``max_distance``.
        clip_bound: 2 * clip_norm, the cap.
        capped: True when the cap was lower than ``safety_factor * max_distance``.
    """

    sensitivity: float
    max_distance: float
    distances: list[float]
    left_out: list[int]
    seeds: list[list[int]]
    safety_factor: float
    clip_bound: float
    capped: bool

    def evidence(self) -> dict[str, Any]:
        """Return the ``privacy.sensitivity_evidence`` member of the certificate."""
        return {
            "method": METHOD,
            "neighbour_relation": NEIGHBOUR_RELATION,
            "runs": len(self.distances),
            "seeds": self.seeds,
            "left_out": self.left_out,
            "distances": self.distances,
            "max_distance": self.max_distance,
            "safety_factor": self.safety_factor,
            "clip_bound": self.clip_bound,
            "capped_at_clip_bound": self.capped,
        }


def reference_retrain(
    model: torch.nn.Module,
    masks: Mapping[str, np.ndarray],
    objective: Objective,
    batch: Mapping[str, Any],
    full: UpdateResult,
    *,
    runs: int,
    safety_factor: float,
    seed: int,
    steps: int,
    learning_rate: float,
    damping: float,
    clip_norm: float,
    progress: Callable[[int], None] | None = None,
    independent_samples: bool = False,
) -> SensitivityEstimate:
    """Estimate the L2 sensitivity of the masked update by leave-one-out reruns.

    Args:
        model: The float64 model with the modality removed, as passed to
            :func:`mbd_cert.update.masked_update`; restored after each run.
        masks: The saliency mask per tensor.
        objective: The retain objective (per-sample values).
        batch: The full probe batch.
        full: The update on the full probe set.
        runs: Number R of neighbouring probe sets, 1 to :data:`MAX_RUNS`.
        safety_factor: Multiplier >= 1 on the largest distance.
        seed: The recorded seed; run r draws its left-out sample from ``(seed, r)``.
        steps: Descent steps of the update, as in the full run.
        learning_rate: Step size of the update.
        damping: Preconditioner damping of the update.
        clip_norm: The update's L2 clip C; 2 * C caps the estimate.
        progress: Called with the number of runs done.
        independent_samples: Passed to :func:`mbd_cert.update.masked_update`.

    Returns:
        The estimate and its evidence.

    Raises:
        InputError: ``runs`` or ``safety_factor`` is out of range
            (``E_PARAMETER_INVALID``).
        IssuanceError: Every run gave distance 0, so no positive sensitivity can be
            stated (``E_SENSITIVITY_ZERO``).
    """
    import torch

    from mbd_cert.update import masked_update

    check_parameters(runs, safety_factor)
    n = int(batch["label"].shape[0])
    if n < 2:
        raise InputError(
            f"the reference retrain needs at least 2 probe samples, got {n}",
            code="E_PARAMETER_INVALID",
        )
    names = sorted(masks)
    distances: list[float] = []
    left_out: list[int] = []
    seeds: list[list[int]] = []
    for run in range(1, runs + 1):
        index = int(np.random.default_rng([seed, run]).integers(n))
        weights = torch.ones(n, dtype=torch.float64)
        weights[index] = 0.0
        neighbour = masked_update(
            model, masks, objective, batch, weights,
            steps=steps, learning_rate=learning_rate, damping=damping, clip_norm=clip_norm,
            independent_samples=independent_samples,
        )
        squared = sum(
            float(np.sum((full.displacement[name] - neighbour.displacement[name]) ** 2))
            for name in names
        )
        distances.append(math.sqrt(squared))
        left_out.append(index)
        seeds.append([seed, run])
        logger.debug("reference retrain run %d left out sample %d: distance %.6g",
                     run, index, distances[-1])
        if progress is not None:
            progress(run)
    max_distance = max(distances)
    clip_bound = 2.0 * clip_norm
    if max_distance <= 0.0:
        raise IssuanceError(
            f"the reference retrain measured distance 0 in all {runs} runs",
            hint=("with --steps 0 the update is zero for every probe set, so use "
                  "--sensitivity-method clip-bound or more --steps" if steps == 0 else
                  "use --sensitivity-method clip-bound, or more --reference-runs"),
            code="E_SENSITIVITY_ZERO",
        )
    estimate = safety_factor * max_distance
    capped = estimate > clip_bound
    return SensitivityEstimate(
        sensitivity=min(estimate, clip_bound),
        max_distance=max_distance,
        distances=distances,
        left_out=left_out,
        seeds=seeds,
        safety_factor=safety_factor,
        clip_bound=clip_bound,
        capped=capped,
    )


def check_parameters(runs: int, safety_factor: float) -> None:
    """Reject a run count or safety factor outside its range.

    Raises:
        InputError: ``runs`` is not an integer in [1, MAX_RUNS] or ``safety_factor`` is
            not a finite number >= 1 (``E_PARAMETER_INVALID``).
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or not 1 <= runs <= MAX_RUNS:
        raise InputError(
            f"reference runs (--reference-runs) must be an integer in [1, {MAX_RUNS}], "
            f"got {runs!r}",
            hint="pass 4, the default, or more for a tighter measured sensitivity",
            code="E_PARAMETER_INVALID",
        )
    if (
        isinstance(safety_factor, bool)
        or not isinstance(safety_factor, (int, float))
        or not math.isfinite(safety_factor)
        or safety_factor < 1.0
    ):
        raise InputError(
            f"safety factor (--safety-factor) must be a finite number >= 1, "
            f"got {safety_factor!r}",
            hint="a factor below 1 would state less than the measured distance",
            code="E_PARAMETER_INVALID",
        )


def check_evidence(privacy: Mapping[str, Any], clip_norm: float, *, seed: int) -> str:
    """Check the arithmetic of a ``reference-retrain`` certificate (verifier, level 1).

    Args:
        privacy: The certificate's ``privacy`` member.
        clip_norm: ``update.clip_norm``.
        seed: ``saliency.seed``, the first half of each run's seed pair.

    Returns:
        A one-line summary for the report.

    Raises:
        ValueError: The evidence is missing or inconsistent; the message names the
            field. The caller turns it into a failed check.
    """
    evidence = privacy.get("sensitivity_evidence")
    if not isinstance(evidence, Mapping) or evidence.get("method") != METHOD:
        raise ValueError("privacy.sensitivity_evidence with method 'reference-retrain' is missing")
    distances = evidence.get("distances")
    factor = evidence.get("safety_factor")
    if (
        not isinstance(distances, list)
        or not distances
        or not all(isinstance(d, (int, float)) and math.isfinite(d) and d >= 0 for d in distances)
    ):
        raise ValueError(
            "privacy.sensitivity_evidence.distances must be a non-empty list of numbers >= 0"
        )
    if not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor < 1.0:
        raise ValueError(f"privacy.sensitivity_evidence.safety_factor must be >= 1, got {factor!r}")
    required = min(float(factor) * max(distances), 2.0 * clip_norm)
    if privacy["sensitivity"] < required:
        raise ValueError(
            f"privacy.sensitivity is {privacy['sensitivity']!r}, below the stated evidence "
            f"min(safety_factor * max distance, 2 * clip_norm) = {required!r}"
        )
    _check_optional_evidence(evidence, distances, float(factor), clip_norm, seed)
    return (
        f"reference retrain: {len(distances)} runs, max distance {max(distances):.6g}, "
        f"factor {factor}, sensitivity {privacy['sensitivity']:.6g} >= {required:.6g}"
    )


def _is_count(value: Any) -> bool:
    # The certificate parser reads 20.0 as 20, so a JSON integer arrives as an int here.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _same(stated: Any, expected: Any) -> bool:
    """Return whether a stated JSON value equals the expected one, telling bools from numbers."""
    if isinstance(expected, list):
        return (isinstance(stated, list) and len(stated) == len(expected)
                and all(_same(a, b) for a, b in zip(stated, expected, strict=True)))
    # bool is a subclass of int in Python, so true would otherwise equal 1.
    if isinstance(stated, bool) != isinstance(expected, bool):
        return False
    return bool(stated == expected)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_optional_evidence(evidence: Mapping[str, Any], distances: list[Any], factor: float,
                             clip_norm: float, seed: int) -> None:
    """Check that the evidence members R-PRIV-5 makes optional agree with the rest.

    Each member is checked only when present, against the value the issuer writes
    (:meth:`SensitivityEstimate.evidence`).

    Raises:
        ValueError: A present member differs from its expected value. The message
            names the member and the expected value.
    """
    field = "privacy.sensitivity_evidence"
    runs = len(distances)
    max_distance = max(distances)
    clip_bound = 2.0 * clip_norm
    estimate = factor * max_distance
    capped = estimate > clip_bound
    # Member -> (expected value, how the message describes it).
    expected: dict[str, tuple[Any, str]] = {
        "neighbour_relation": (NEIGHBOUR_RELATION, repr(NEIGHBOUR_RELATION)),
        "runs": (runs, f"{runs}, the number of distances"),
        "max_distance": (max_distance, f"{max_distance!r}, the largest distance"),
        "clip_bound": (clip_bound, f"{clip_bound!r}, 2 * update.clip_norm"),
        "capped_at_clip_bound": (capped, f"{capped}, since safety_factor * max distance = "
                                         f"{estimate!r} and clip_bound = {clip_bound!r}"),
        "seeds": ([[seed, run] for run in range(1, runs + 1)],
                  f"[[{seed}, 1], ..., [{seed}, {runs}]], saliency.seed and each run number"),
    }
    for name, (value, description) in expected.items():
        if name in evidence and not _same(evidence[name], value):
            raise ValueError(f"{field}.{name} is {_short(evidence[name])}; expected {description}")
    if "left_out" in evidence:
        left_out = evidence["left_out"]
        if (not isinstance(left_out, list) or len(left_out) != runs
                or not all(_is_count(index) for index in left_out)):
            raise ValueError(f"{field}.left_out is {_short(left_out)}; expected a list of "
                             f"{runs} non-negative integers, the probe sample left out in "
                             "each run")
