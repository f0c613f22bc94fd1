"""Models pinned by the policy's ``models`` table (SPEC.md, R-REPO-11).

Each other check of verify-repo passes on any genuine release of a trusted issuer.
A pull request that replaces a model and its certificate with an older release of
the chain, or with one from another branch of deletions, passes them all. The policy, kept
outside the pull request, names per model path the modalities its certificate's chain
must have deleted and the smallest sequence number. This module checks every
certificate paired with a pinned model against its pin, and reports a pinned model
whose file or certificate is missing as a failed check of the run.

Stability: internal.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path, PurePosixPath

from mbd_cert._confidential_files import CERTIFICATE_NAME, CERTIFICATE_SUFFIX
from mbd_cert._repo_results import RepoResult
from mbd_cert._repo_search import MODEL_NAME
from mbd_cert.policy import ModelPin
from mbd_cert.report import FAIL, PASS, CheckResult

PINNED_MODEL_CHECK = "pinned-model"
_REQUIREMENT = "R-REPO-11"
_CODE = "E_POLICY_VIOLATION"
_SWAP_HINT = ("the repository may hold an older release of the chain, or one from "
              "another branch of deletions, in place of the pinned one: restore the "
              "pinned release, or, if the change is intended, update the pin in the "
              "policy kept outside the pull request")


def _certificate_names(model: str) -> list[str]:
    """Return the certificate paths that verify-repo pairs with ``model``."""
    path = PurePosixPath(model)
    stem = path.name[: -len(".safetensors")]
    names = [str(path.with_name(stem + CERTIFICATE_SUFFIX))]
    if path.name == MODEL_NAME:
        names.insert(0, str(path.with_name(CERTIFICATE_NAME)))
    return names


def _missing_detail(root: Path, pin: ModelPin, paired: Sequence[RepoResult]) -> str | None:
    """Return why ``pin`` names nothing the run verified, or None when its files are there."""
    problems = []
    # lexists: a linked model is there, and its certificate's E_UNSAFE_PATH names it.
    if not os.path.lexists(root / pin.path):
        problems.append("the model file is missing")
    if not paired:
        problems.append(f"no certificate pairs with it (expected "
                        f"{' or '.join(_certificate_names(pin.path))})")
    if not problems:
        return None
    return f"{pin.path}: pinned by the policy, but {' and '.join(problems)}"


def _check_pin(result: RepoResult, pin: ModelPin) -> CheckResult:
    """Hold one verified certificate's chain against the pin of its model."""
    doc = result.certificate_doc
    assert doc is not None and result.report is not None
    # The chain's deletions, one modality per link. After verification they equal
    # the released config's deleted_modalities (R-CHAIN-9), whose encoders R-DEL-1
    # found zero in the model.
    links = [*result.report.earlier_links, doc]
    deleted = sorted({link["deletion"]["modality"] for link in links})
    sequence_number = doc["accounting"]["sequence_number"]
    violations = []
    missing = [modality for modality in pin.deleted_modalities if modality not in deleted]
    if missing:
        violations.append(f"its chain has not deleted {missing}: it deleted {deleted}, "
                          f"the policy pins {list(pin.deleted_modalities)}")
    minimum = pin.min_sequence_number
    if minimum is not None and sequence_number < minimum:
        violations.append(f"its accounting.sequence_number is {sequence_number}, below the "
                          f"policy's min_sequence_number {minimum}")
    if violations:
        return CheckResult(
            PINNED_MODEL_CHECK, FAIL,
            f"{pin.path}: {'; '.join(violations)} ({_SWAP_HINT})",
            code=_CODE, requirement=_REQUIREMENT, value=sequence_number, threshold=minimum)
    return CheckResult(
        PINNED_MODEL_CHECK, PASS,
        f"{pin.path}: its chain deleted {deleted} (pinned: {list(pin.deleted_modalities)}) "
        f"at sequence number {sequence_number}"
        + ("" if minimum is None else f" (pinned minimum: {minimum})"),
        requirement=_REQUIREMENT, value=sequence_number, threshold=minimum)


def check_pinned_models(root: Path, results: Sequence[RepoResult],
                        pins: Sequence[ModelPin], verified: Collection[str]) -> CheckResult | None:
    """Hold the certificates of pinned models against their pins (R-REPO-11).

    Each certificate paired with a pinned model that verified gets a ``pinned-model``
    check. One that did not verify gets none: its claims are not trusted, and its
    exit code is 1 or more already.

    Args:
        root: The repository root.
        results: The run's results; the checks are recorded in their reports.
        pins: The policy's ``models`` table.
        verified: The certificates (paths relative to ``root``) that verify() passed,
            taken before the checks across the repository added their failures.

    Returns:
        The run's failed ``pinned-model`` check naming each pinned model whose file or
        certificate is missing, or None when none is.
    """
    absent = []
    for pin in pins:
        paired = [result for result in results if result.model == pin.path]
        detail = _missing_detail(root, pin, paired)
        if detail is not None:
            absent.append(detail)
            continue
        for result in paired:
            if result.certificate not in verified or result.certificate_doc is None:
                continue
            check = _check_pin(result, pin)
            result.report.record(check)
            if check.status == FAIL:
                result.exit_code = max(result.exit_code, 1)
    if not absent:
        return None
    return CheckResult(
        PINNED_MODEL_CHECK, FAIL,
        "; ".join(absent) + " (a pull request may have removed it: restore the model and "
        "its certificate, or remove the pin from the policy kept outside the pull request)",
        code=_CODE, requirement=_REQUIREMENT, value=len(absent), threshold=0)
