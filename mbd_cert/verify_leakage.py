"""Level-3 verification: leakage probes on the released model (SPEC.md, section 8.2).

Three probes, each also run on the pre-deletion model (rebuilt as ``post - diff``) for
reference, so the report shows what the deletion removed:

* functional: the released model's outputs must not change when the deleted
  modality's input is zeroed, shuffled across samples, replaced by noise, or its
  presence flag flipped;
* membership inference: the per-sample absolute error of the model scores members of
  the probe set against non-members; the empirical epsilon lower bound from the test's
  Clopper-Pearson rates must not exceed the certified epsilon;
* representation: a logistic-regression probe on the fusion input tries to recover
  the deleted modality's private attribute; its balanced accuracy must not exceed
  chance with confidence.

Stability: :func:`run_level3` is called by :func:`mbd_cert.verify.verify`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import optimize

from mbd_cert import stats
from mbd_cert._numbers import exact_number
from mbd_cert._torch_model import build_model, predict, probe_batch
from mbd_cert.report import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    SKIPPED,
    CheckResult,
    VerificationReport,
    stage_counter,
)
from mbd_cert.verify_recompute import Bundle, load_bundle, rebuild_pre

logger = logging.getLogger(__name__)

# Confidence of the probes' intervals (two-sided 95 %).
PROBE_ALPHA = 0.05
# False-positive rates at which the membership test is read: a low-FPR operating point,
# where membership attacks are judged, and a moderate one.
TARGET_FPRS = (0.01, 0.10)
# Fewer samples per group (members, non-members, attribute classes) leave the probes
# unable to detect anything, so they report inconclusive instead of a hollow pass.
MIN_GROUP = 10
# Folds of the representation probe's cross-validation, and its L2 penalty (per sample).
FOLDS = 5
L2_PENALTY = 1e-2
# Seed of the functional probe's shuffle and noise draw (reported in its detail).
FUNCTIONAL_SEED = 0

CODE_FUNCTIONAL_LEAK = "E_FUNCTIONAL_LEAK"
CODE_OUTPUT_NONFINITE = "E_OUTPUT_NONFINITE"
CODE_MEMBERSHIP_LEAK = "E_MEMBERSHIP_LEAK"
CODE_REPRESENTATION_LEAK = "E_REPRESENTATION_LEAK"
CODE_INCONCLUSIVE = "E_INCONCLUSIVE"


def _functional_probe(bundle: Bundle) -> CheckResult:
    model = build_model(bundle.architecture, bundle.config_post, bundle.post)
    batch = probe_batch(bundle.probe)
    reference = predict(model, batch)
    modality = bundle.modality
    column = bundle.probe.modalities.index(modality)
    original = batch["inputs"][modality]
    generator = torch.Generator().manual_seed(FUNCTIONAL_SEED)
    variants = {
        "zeroed": torch.zeros_like(original),
        "shuffled": original[torch.randperm(original.shape[0], generator=generator)],
        "replaced by noise": torch.randn(original.shape, generator=generator, dtype=original.dtype)
        * (original.std() + 1.0),
    }
    flipped = batch["present"].clone()
    flipped[:, column] = ~flipped[:, column]
    outputs = {"the inputs unchanged": reference}
    for label, inputs in variants.items():
        changed = {**batch, "inputs": {**batch["inputs"], modality: inputs}}
        outputs[f"{modality} {label}"] = predict(model, changed)
    outputs[f"the {modality} presence flag flipped"] = predict(model, {**batch, "present": flipped})
    n = bundle.probe.size
    # max() skips a NaN difference, and an infinite output gives inf - inf = NaN, so a
    # non-finite output fails the probe: no output change can be measured from it.
    nonfinite = {label: int(np.count_nonzero(~np.isfinite(values)))
                 for label, values in outputs.items()}
    if any(nonfinite.values()):
        counts = ", ".join(f"{count} with {label}" for label, count in nonfinite.items()
                           if count)
        return CheckResult(
            "functional-probe", FAIL,
            f"the released model's output is NaN or infinite on some of the {n} probe "
            f"samples ({counts}), so the probe cannot measure whether the output depends "
            f"on {modality}",
            code=CODE_OUTPUT_NONFINITE, requirement="R-L3-1",
            value=sum(nonfinite.values()), threshold=0, n=n)
    worst = max(float(np.max(np.abs(values - reference))) for values in outputs.values())
    detail = (f"max |output change| {worst:.3g} over {n} probe samples when {modality} is "
              f"zeroed, shuffled, replaced by noise (seed {FUNCTIONAL_SEED}) or its presence "
              "flag flipped")
    if worst > 0.0:
        return CheckResult("functional-probe", FAIL, detail, code=CODE_FUNCTIONAL_LEAK,
                           requirement="R-L3-1", value=worst, threshold=0.0, n=n)
    return CheckResult("functional-probe", PASS, detail, requirement="R-L3-1", value=worst,
                       threshold=0.0, n=n)


def membership_numbers(scores: np.ndarray, member: np.ndarray, delta: float) -> dict[str, Any]:
    """Return AUC, its interval, TPR at each target FPR and the epsilon lower bound.

    ``scores`` is higher for samples the attack calls members.
    """
    positives, negatives = scores[member], scores[~member]
    auc, interval = stats.auc_with_interval(positives, negatives, PROBE_ALPHA)
    numbers: dict[str, Any] = {"auc": auc, "auc_interval": [interval.lower, interval.upper],
                               "members": int(positives.size),
                               "non_members": int(negatives.size)}
    bound = 0.0
    for target in TARGET_FPRS:
        tp, fp, _ = stats.tpr_at_fpr(positives, negatives, target)
        numbers[f"tpr_at_fpr_{target:g}"] = tp / positives.size
        numbers[f"fpr_at_fpr_{target:g}"] = fp / negatives.size
        bound = max(bound, stats.epsilon_lower_bound(tp, positives.size, fp, negatives.size,
                                                     delta, PROBE_ALPHA))
    numbers["epsilon_lower_bound"] = bound
    return numbers


def _membership(bundle: Bundle, tensors: Mapping[str, np.ndarray], config: Mapping[str, Any],
                ) -> np.ndarray:
    model = build_model(bundle.architecture, config, tensors)
    errors: np.ndarray = np.abs(predict(model, probe_batch(bundle.probe)) - bundle.probe.label)
    return -errors


def _membership_check(doc: Mapping[str, Any], bundle: Bundle, name: str,
                      scores: np.ndarray, reference: bool) -> CheckResult:
    member = bundle.probe.member
    epsilon = float(doc["privacy"]["epsilon"])
    if min(int(member.sum()), int((~member).sum())) < MIN_GROUP:
        return CheckResult(name, INCONCLUSIVE,
                           f"{int(member.sum())} members and {int((~member).sum())} non-members; "
                           f"the probe needs {MIN_GROUP} of each", code=CODE_INCONCLUSIVE,
                           requirement="R-L3-2", n=int(member.size))
    numbers = membership_numbers(scores, member, float(doc["privacy"]["delta"]))
    low, high = numbers["auc_interval"]
    detail = (f"AUC {numbers['auc']:.3f} [{low:.3f}, {high:.3f}], "
              f"TPR {numbers['tpr_at_fpr_0.01']:.3f} at 1 % FPR and "
              f"{numbers['tpr_at_fpr_0.1']:.3f} at 10 % FPR; empirical epsilon "
              f">= {numbers['epsilon_lower_bound']:.3f} (Clopper-Pearson, 95 %)")
    if reference:
        return CheckResult(name, PASS, "before deletion, for reference (never fails): " + detail,
                           requirement="R-L3-2", value=numbers, threshold=None,
                           n=int(member.size))
    failed = numbers["epsilon_lower_bound"] > epsilon
    return CheckResult(name, FAIL if failed else PASS,
                       detail + f"; certified epsilon {exact_number(epsilon)}",
                       code=CODE_MEMBERSHIP_LEAK if failed else None, requirement="R-L3-2",
                       value=numbers, threshold=epsilon, n=int(member.size))


def _fusion_inputs(bundle: Bundle, tensors: Mapping[str, np.ndarray],
                   config: Mapping[str, Any], rows: np.ndarray) -> np.ndarray | None:
    model = build_model(bundle.architecture, config, tensors)
    fusion = getattr(model, "fusion", None)
    if not isinstance(fusion, torch.nn.Module):
        return None
    captured: list[torch.Tensor] = []
    handle = fusion.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    try:
        predict(model, probe_batch(bundle.probe))
    finally:
        handle.remove()
    features: np.ndarray = np.asarray(captured[0].detach().numpy())[rows]
    return features


def _logistic_predictions(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return out-of-fold predictions of an L2 logistic regression (stratified folds)."""
    classes = np.unique(labels)
    if classes.size != 2:
        raise ValueError("the representation probe needs a binary attribute")
    y = (labels == classes[1]).astype(np.float64)
    folds = np.zeros(labels.size, dtype=int)
    for value in classes:
        index = np.flatnonzero(labels == value)
        folds[index] = np.arange(index.size) % FOLDS
    predictions = np.empty(labels.size, dtype=labels.dtype)
    for fold in range(FOLDS):
        train, test = folds != fold, folds == fold
        mean = features[train].mean(axis=0)
        scale = features[train].std(axis=0) + 1e-12
        x = np.c_[(features[train] - mean) / scale, np.ones(int(train.sum()))]

        def loss(w: np.ndarray, x: np.ndarray = x, t: np.ndarray = y[train]) -> tuple[float, Any]:
            z = x @ w
            value = np.mean(np.logaddexp(0.0, z) - t * z) + L2_PENALTY * float(w[:-1] @ w[:-1])
            gradient = x.T @ (1 / (1 + np.exp(-z)) - t) / t.size
            gradient[:-1] += 2 * L2_PENALTY * w[:-1]
            return float(value), gradient

        weights = optimize.minimize(loss, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B").x
        x_test = np.c_[(features[test] - mean) / scale, np.ones(int(test.sum()))]
        predictions[test] = np.where(x_test @ weights > 0, classes[1], classes[0])
    return predictions


# Classes a representation-probe message lists before it only counts them.
_LISTED_CLASSES = 5


def _representation_check(bundle: Bundle, name: str, tensors: Mapping[str, np.ndarray],
                          config: Mapping[str, Any], reference: bool) -> CheckResult:
    attribute = f"{bundle.modality}_private"
    if attribute not in bundle.probe.attributes:
        return CheckResult(name, SKIPPED, f"the probe set has no attribute '{attribute}' "
                           f"private to {bundle.modality}", requirement="R-L3-3")
    column = bundle.probe.modalities.index(bundle.modality)
    rows = np.flatnonzero(bundle.probe.present[:, column])
    labels = bundle.probe.attributes[attribute][rows]
    values, counts = np.unique(labels, return_counts=True)
    if values.size != 2 or counts.min() < MIN_GROUP:
        if values.size <= _LISTED_CLASSES:
            found = f"classes {values.tolist()} with counts {counts.tolist()}"
        else:
            # A crafted probe set can hold one class per sample; the message stays short.
            found = (f"{values.size} classes, the first {_LISTED_CLASSES} "
                     f"{values[:_LISTED_CLASSES].tolist()}")
        return CheckResult(name, INCONCLUSIVE, f"attribute '{attribute}' has {found}; the "
                           f"probe needs two classes of {MIN_GROUP} or more",
                           code=CODE_INCONCLUSIVE, requirement="R-L3-3", n=int(rows.size))
    features = _fusion_inputs(bundle, tensors, config, rows)
    if features is None:
        return CheckResult(name, SKIPPED, "the architecture has no 'fusion' module to probe",
                           requirement="R-L3-3")
    result = stats.balanced_accuracy(labels, _logistic_predictions(features, labels),
                                     PROBE_ALPHA)
    detail = (f"balanced accuracy {result.value:.3f} [{result.interval.lower:.3f}, "
              f"{result.interval.upper:.3f}] (Wilson, 95 %) for '{attribute}' from the fusion "
              f"input, {FOLDS}-fold logistic regression; chance {result.chance:g} "
              f"(majority rate {result.majority_rate:.3f})")
    value = {"balanced_accuracy": result.value,
             "interval": [result.interval.lower, result.interval.upper]}
    if reference:
        return CheckResult(name, PASS, "before deletion, for reference (never fails): " + detail,
                           requirement="R-L3-3", value=value, threshold=result.chance,
                           n=result.n)
    leaked = result.interval.lower > result.chance
    return CheckResult(name, FAIL if leaked else PASS, detail,
                       code=CODE_REPRESENTATION_LEAK if leaked else None, requirement="R-L3-3",
                       value=value, threshold=result.chance, n=result.n)


def _pre_matches(doc: Mapping[str, Any], pre: Mapping[str, np.ndarray],
                 bundle: Bundle) -> bool:
    from mbd_cert._level2_bundle_checks import _check_pre_rebuild
    from mbd_cert.errors import VerificationFailed

    try:
        _check_pre_rebuild(doc, pre, bundle)
    except VerificationFailed:
        return False
    return True


def run_level3(doc: Mapping[str, Any], model_path: Path, bundle_dir: Path,
               report: VerificationReport, options: Any) -> None:
    """Run the level-3 probes and append them to ``report`` (SPEC.md, section 8.2).

    Raises:
        InputError: The bundle files are missing or malformed.
    """
    started = time.monotonic()
    step = stage_counter(getattr(options, "progress", None), "level 3 probes", 6)
    bundle = load_bundle(doc, model_path, bundle_dir)
    pre = rebuild_pre(bundle)
    pre_ok = _pre_matches(doc, pre, bundle)
    step()

    # Step 1 (SPEC §8.2, R-L3-1): the deleted input has no effect on the outputs.
    report.run("functional-probe", "R-L3-1", lambda: _functional_probe(bundle))
    step()

    # Step 2 (R-L3-2): membership inference after, and for reference before, deletion.
    post_scores = _membership(bundle, bundle.post, bundle.config_post)
    report.run("membership-inference", "R-L3-2",
               lambda: _membership_check(doc, bundle, "membership-inference", post_scores,
                                         reference=False))
    step()
    # Step 3 (R-L3-3): the deleted modality's private attribute in the representation.
    report.run("representation-probe", "R-L3-3",
               lambda: _representation_check(bundle, "representation-probe", bundle.post,
                                             bundle.config_post, reference=False))
    step()
    if pre_ok:
        pre_scores = _membership(bundle, pre, bundle.config_pre)
        report.run("membership-inference-pre", "R-L3-2",
                   lambda: _membership_check(doc, bundle, "membership-inference-pre",
                                             pre_scores, reference=True))
        step()
        report.run("representation-probe-pre", "R-L3-3",
                   lambda: _representation_check(bundle, "representation-probe-pre", pre,
                                                 bundle.config_pre, reference=True))
    else:
        for name in ("membership-inference-pre", "representation-probe-pre"):
            report.skip(name, "R-L3-2", "the pre-deletion model could not be rebuilt "
                        "(post - diff does not match the committed digests)")
        step()
    step()
    logger.info("level 3 took %.1f s", time.monotonic() - started)
