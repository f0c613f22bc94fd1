"""Checks of the checkpoint, its probe set and the released model that issue runs.

:func:`mbd_cert._issue_inputs.read_inputs` checks the probe set and the evaluation set
as it reads them. :func:`mbd_cert._issue_preflight.check_deletion` calls the other checks
of the checkpoint before any saliency score is computed, and
:func:`mbd_cert._issue_privacy.apply_noise` checks the released model before it is
written.

Stability: internal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mbd_cert._groups import unlisted_zero_encoders
from mbd_cert._level1_checks import dtype_differences
from mbd_cert._numbers import exact_number
from mbd_cert.checkpoint import LABEL_BOUND, MIN_ISSUE_PROBE_SAMPLES, ProbeSet
from mbd_cert.errors import InputError, IssuanceError, MalformedData

logger = logging.getLogger(__name__)

# The largest shift of level 2's variance statistic that rounding to the weights' dtype
# may cause, in standard deviations of that statistic. At a shift of 0.5 the variance
# test rejected 0.78 % of honest releases instead of its 0.33 %. At 0.1 it stayed at
# its level (benchmarks/noise_resolution.py, 20,000 draws of 397 entries per shift).
RESOLUTION_SHIFT = 0.1


def reject_unlisted_deletion(architecture: Any, config: Mapping[str, Any],
                             pre_tensors: Mapping[str, np.ndarray]) -> None:
    """Reject a model with an all-zero encoder that its config does not list (R-CHAIN-9).

    An all-zero encoder is what a certified deletion leaves, and no trained encoder is
    all zero, so such a model comes from a deletion that the chain leaves out.

    Raises:
        IssuanceError: ``E_CHAIN_BROKEN``, naming the modality.
    """
    zeroed = unlisted_zero_encoders(architecture, config, pre_tensors)
    if zeroed:
        raise IssuanceError(
            f"the model's {zeroed[0]} encoder is all zero, as a certified deletion "
            f"leaves it, but its config does not list {zeroed[0]!r} as deleted",
            hint="the model comes from an earlier deletion: pass --previous with that "
            "deletion's certificate, or issue from its output directory",
            code="E_CHAIN_BROKEN",
        )


def reject_weight_dtype(architecture: Any, dtypes: Mapping[str, str]) -> None:
    """Reject a checkpoint whose tensor dtypes level 1 would reject (R-DEL-2).

    The released model keeps every tensor's dtype, buffers included, so a tensor
    that breaks the architecture's ``weight_dtype`` would give a certificate that
    fails its own level 1 (``model-tensors``).

    Args:
        architecture: The checkpoint's architecture.
        dtypes: The safetensors dtype of each checkpoint tensor, such as ``"F32"``.

    Raises:
        InputError: ``E_MODEL_TENSORS_MISMATCH``, naming the first such tensor, its
            dtype and the declared ``weight_dtype``.
    """
    differing = dtype_differences(dtypes, architecture.weight_dtype, dtypes)
    if not differing:
        return
    name, dtype, _ = differing[0]
    more = f" ({len(differing) - 1} more tensors differ)" if len(differing) > 1 else ""
    declared = architecture.weight_dtype
    if declared is None:
        raise InputError(
            f"the checkpoint's tensor '{name}' has the complex dtype {dtype}, and the "
            f"architecture {architecture.name!r} declares no weight_dtype{more}; level 1 "
            "rejects it (R-DEL-2)",
            hint="store the tensor as a real dtype, or declare weight_dtype="
            f"{dtype!r} in the architecture if it really is complex",
            code="E_MODEL_TENSORS_MISMATCH")
    raise InputError(
        f"the checkpoint's tensor '{name}' has dtype {dtype}, but the architecture "
        f"{architecture.name!r} declares weight_dtype={declared!r}, which covers every "
        f"tensor, buffers included{more}; level 1 would reject the released model "
        "(R-DEL-2)",
        hint=f"declare weight_dtype=None in the architecture, or store '{name}' as "
        f"{declared} in the checkpoint",
        code="E_MODEL_TENSORS_MISMATCH")


def reject_nonfinite(tensors: Mapping[str, np.ndarray], model: str, *, hint: str) -> None:
    """Reject NaN or infinite weights, which a verifier rejects at level 1 (R-DEL-3).

    Args:
        tensors: The weights to check.
        model: Which model they belong to, for the message ("the checkpoint's model").
        hint: What the user can do about it.

    Raises:
        IssuanceError: ``E_MODEL_NONFINITE``, naming the first such tensor and the count.
    """
    counts = {name: int(values.size - np.count_nonzero(np.isfinite(values)))
              for name, values in tensors.items() if values.dtype.kind in "fc"}
    bad = sorted(name for name, count in counts.items() if count)
    if bad:
        raise IssuanceError(
            f"{model}: {sum(counts[n] for n in bad)} NaN or infinite entries, "
            f"{counts[bad[0]]} of them in '{bad[0]}'"
            + (f" ({len(bad) - 1} more tensors have some)" if len(bad) > 1 else ""),
            hint=hint,
            code="E_MODEL_NONFINITE",
        )


def reject_negative_zero(pre_tensors: Mapping[str, np.ndarray],
                         changed: Mapping[str, np.ndarray | None]) -> None:
    """Reject -0.0 where the deletion changes a weight, which the diff cannot rebuild.

    ``post - diff`` gives +0.0 wherever the released value is +0.0 or a noised value,
    so a -0.0 there fails the exact rebuild (R-DIFF-2). Pruning by multiplying with a
    zero mask leaves -0.0 for every negative weight it prunes.

    Args:
        pre_tensors: The checkpoint's tensors.
        changed: Tensor name -> boolean mask of the entries the deletion changes, or
            None for every entry (a removed encoder tensor).

    Raises:
        IssuanceError: ``E_DIFF_NOT_EXACT``, with the count and the first tensor.
    """
    counts = {}
    for name, where in changed.items():
        values = pre_tensors[name]
        if values.dtype.kind != "f":
            continue
        signed_zero = np.signbit(values) & (values == 0)
        count = int(np.count_nonzero(signed_zero if where is None else signed_zero & where))
        if count:
            counts[name] = count
    if counts:
        first = sorted(counts)[0]
        raise IssuanceError(
            f"{sum(counts.values())} weights the deletion changes are stored as -0.0 "
            f"({counts[first]} in '{first}'), and the diff cannot rebuild -0.0 exactly",
            hint="store them as +0.0 in the checkpoint (in torch: w[w == 0] = 0, which "
            "leaves the model's outputs unchanged) and issue again",
            code="E_DIFF_NOT_EXACT",
        )


def reject_noise_below_resolution(post: Mapping[str, np.ndarray],
                                  masks: Mapping[str, np.ndarray], sigma: float,
                                  method: str = "clip-bound") -> None:
    """Reject a sigma that rounding to the model's dtype would distort (R-L2-6).

    The released entries are rounded to their dtype, which adds about spacing**2 / 12
    to the variance of each one. Level 2 tests that the residual's variance is sigma**2,
    and its statistic varies by about sqrt(2 / n) relative for n entries. When the
    expected excess reaches :data:`RESOLUTION_SHIFT` times that, level 2 would reject
    honest releases noticeably more often than its stated level, so issue rejects the
    sigma.

    Raises:
        IssuanceError: ``E_NOISE_BELOW_RESOLUTION``, with sigma and the spacing.
    """
    spacing_squared = [np.square(np.spacing(np.abs(post[name][mask])).astype(np.float64))
                       for name, mask in masks.items() if mask.any()]
    if not spacing_squared:
        return
    squares = np.concatenate(spacing_squared)
    excess = float(squares.mean()) / 12.0 / (sigma * sigma)
    if excess * np.sqrt(squares.size / 2.0) > RESOLUTION_SHIFT:
        raise IssuanceError(
            f"sigma = {exact_number(sigma)} is too small for the model's dtype: rounding "
            f"the noised weights (spacing up to {float(np.sqrt(squares.max())):.3g}) would add "
            f"{100 * excess:.3g} % to the noise variance, which level 2 tests",
            hint="raise the sensitivity ("
            + {"declared": "--sensitivity", "reference-retrain": "--safety-factor or "
               "--clip-norm"}.get(method, "--clip-norm")
            + ") or lower --epsilon; nothing was written",
            code="E_NOISE_BELOW_RESOLUTION",
        )


def check_probe_coverage(probe: ProbeSet, modality: str, deleted: Sequence[str]) -> None:
    """Check that the probe set observes ``modality`` and a modality the model keeps.

    The forget objective averages over the probe samples that observe ``modality``, so
    without one there is nothing to unlearn and the deletion is refused. When no sample
    observes any modality that the model keeps, the released model receives no input
    on data like the probe set, which is logged as a warning.

    Args:
        probe: The probe set; its modalities are the model's, in the same order.
        modality: The modality to delete.
        deleted: Modalities that earlier deletions of the chain removed.

    Raises:
        IssuanceError: No probe sample observes ``modality`` (``E_ISSUANCE``); the hint
            names the modalities that the probe set does observe.
    """
    observed = [name for column, name in enumerate(probe.modalities)
                if name not in deleted and bool(probe.present[:, column].any())]
    if modality not in observed:
        if observed:
            hint = (f"the probe set observes only {', '.join(map(repr, observed))}: delete "
                    f"a modality it observes, or issue from a checkpoint whose probe set "
                    f"has samples with {modality!r}")
        else:
            hint = ("the probe set observes none of the modalities the model still uses; "
                    "use the probe set written with this checkpoint by 'mbd-cert train'")
        raise IssuanceError(f"no probe sample has modality {modality!r} observed", hint=hint)

    remaining = [name for name in probe.modalities if name != modality and name not in deleted]
    if not [name for name in observed if name != modality]:
        logger.warning(
            "no probe sample observes any remaining modality (%s) once %r is deleted, so "
            "the released model predicts from no input on such data. Release it only if "
            "a model without input is what you intend",
            ", ".join(map(repr, remaining)), modality)


def check_labels(samples: ProbeSet, path: Path) -> None:
    """Reject labels outside the sentiment scale [-3, 3] (SPEC.md, R-PRB-3).

    Args:
        samples: A probe set or an evaluation set.
        path: The file it was read from, for the message.

    Raises:
        MalformedData: A label lies outside [-3, 3]; the message gives the count and
            the first such row.
    """
    outside = np.flatnonzero(np.abs(samples.label) > LABEL_BOUND)
    if outside.size:
        row = int(outside[0])
        raise MalformedData(
            f"{path}: tensor 'label' has {outside.size} value(s) outside [-{LABEL_BOUND:g}, "
            f"{LABEL_BOUND:g}], the first {float(samples.label[row]):.6g} in row {row}",
            hint="labels are sentiment scores on the CMU scale [-3, 3], the scale of the "
            "corpus loaders, the utility metrics and the built-in model's default output: "
            "rescale them, or use the files 'mbd-cert train' writes",
        )


def check_probe_size(probe: ProbeSet, path: Path) -> None:
    """Reject a probe set too small for level 3 to reach a verdict (SPEC.md, R-PRB-4).

    Level 3's membership probe needs 10 members and 10 non-members, and its
    representation probe two classes of 10 samples, so with fewer than 20 samples
    every statistical probe of level 3 is inconclusive, whatever the split.

    Raises:
        MalformedData: The probe set has fewer than ``MIN_ISSUE_PROBE_SAMPLES`` samples.
    """
    if probe.size < MIN_ISSUE_PROBE_SAMPLES:
        members = int(np.count_nonzero(probe.member))
        raise MalformedData(
            f"{path}: the probe set has {probe.size} sample(s) (rows of tensor 'label': "
            f"{members} members, {probe.size - members} non-members); issue needs at least "
            f"{MIN_ISSUE_PROBE_SAMPLES}, because level 3's membership probe needs "
            f"{MIN_ISSUE_PROBE_SAMPLES // 2} members and {MIN_ISSUE_PROBE_SAMPLES // 2} "
            "non-members (SPEC.md, R-PRB-4)",
            hint=f"train again with --probe-members and --probe-nonmembers of "
            f"{MIN_ISSUE_PROBE_SAMPLES // 2} or more (the default is 200 each), or add "
            "samples to the probe set",
        )


# Below this many held-out samples the utility metrics cannot show a drop of a few
# points: one sample moves Acc2 by more than 5 points, and the standard error of
# Pearson r, about 1 / sqrt(n - 3), is 0.25 or more (SPEC.md, R-PRB-5).
MIN_EVAL_SAMPLES = 20


def check_evaluation_set(evaluation: ProbeSet, path: Path, modality: str) -> None:
    """Check that the evaluation set gives held-out utility for ``modality`` (R-PRB-5).

    The certificate records the metrics as held-out utility, so a training member in
    the set is rejected. A set in which no sample observes ``modality`` is logged as a
    warning: its metrics still describe the released model, but they cannot show what
    losing ``modality`` costs. So is a set of fewer than :data:`MIN_EVAL_SAMPLES`
    samples, whose metrics are too coarse to show a drop.

    Raises:
        MalformedData: A label lies outside [-3, 3], or a sample is a member.
    """
    check_labels(evaluation, path)
    members = int(np.count_nonzero(evaluation.member))
    if members:
        raise MalformedData(
            f"{path}: tensor 'member' marks {members} of {evaluation.size} samples as "
            "training members, but the certificate records the metrics on this set as "
            "held-out utility",
            hint="pass held-out samples (member 0) with --eval-set, such as the "
            "eval.safetensors that 'mbd-cert train' writes, not the probe set",
        )
    if evaluation.size < MIN_EVAL_SAMPLES:
        logger.warning(
            "the evaluation set %s has %d sample(s): with fewer than %d, one sample moves "
            "Acc2 by more than 5 points and Pearson r is too uncertain to show what the "
            "deletion costs. Pass more held-out samples with --eval-set",
            path, evaluation.size, MIN_EVAL_SAMPLES)
    if modality in evaluation.modalities:
        column = evaluation.modalities.index(modality)
        if not evaluation.present[:, column].any():
            logger.warning(
                "no sample of the evaluation set %s observes %r, so its metrics with and "
                "without %r are equal and cannot show what the deletion costs. Pass an "
                "evaluation set with samples that have it, such as the eval.safetensors "
                "that 'mbd-cert train' writes", path, modality, modality)
