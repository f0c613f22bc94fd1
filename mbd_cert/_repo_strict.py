"""Models without a certificate, and verify-repo's strict mode (SPEC.md, R-REPO-10).

A repository can hold a model file that no certificate pairs with. Nothing
in the repository then shows that a deletion was certified for it, and verify-repo
would pass it without a word. This module finds such files and, under the policy's
``strict = true`` (or ``verify-repo --strict``), turns them and every per-certificate
warning into failed checks, so that a CI job fails on them and its JUnit view shows
them as failures.

Stability: internal.
"""

from __future__ import annotations

import os
from collections.abc import Sequence, Set
from pathlib import Path

from mbd_cert import errors
from mbd_cert._published_models import has_safetensors_layout
from mbd_cert._repo_results import RepoResult
from mbd_cert._repo_search import repository_files
from mbd_cert.report import FAIL, CheckResult, VerificationReport

STRICT_WARNING_CHECK = "strict-warning"
UNCERTIFIED_MODEL_CHECK = "uncertified-model"
# Name of the run-level result: its JUnit suite and its line on stderr.
RUN_RESULT_NAME = "verify-repo"
_REQUIREMENT = "R-REPO-10"
_CODE = "E_POLICY_VIOLATION"
_MODEL_SUFFIX = ".safetensors"
# The certificate does not name the evaluation set, which issue writes under this name.
_EVALUATION_SET_NAME = "eval.safetensors"


def uncertified_models(root: Path, results: Sequence[RepoResult],
                       reported: Set[str] = frozenset(),
                       unreadable: dict[Path, str] | None = None) -> list[str]:
    """Return the model files below ``root`` that no found certificate accounts for.

    A model file is one named ``*.safetensors`` or one whose bytes start like a
    safetensors file under any name (``weights.bin``, ``m.SAFETENSORS``). A pull
    request that renamed the pre-deletion model, re-saved with other metadata so that
    R-REPO-9 misses it, would otherwise pass strict mode. Hidden files and directories
    are searched too, except ``.git``: a model under ``.backup/`` is as published as
    one beside the certificate. Symbolic links are skipped, because their target is
    searched where it lies, or is outside the repository.

    A file is accounted for when it is the model of a certificate of ``results``, a
    bundle file that such a certificate names (``audit_bundle.diff.path``,
    ``audit_bundle.probe.path``) or the ``eval.safetensors`` beside it, or a
    confidential file that a certificate's warning names (R-REPO-5). A diff or probe
    ``format`` in the header alone does not account for a file: anyone can write that
    metadata into a model, and outside every certificate's directory no warning would
    name it. The files in ``reported`` (pre-deletion models, R-REPO-9, and files that
    contain a deleted encoder's tensors, R-REPO-12) fail their own check, whose advice
    differs, so they are left out here. Each directory that cannot be listed is added
    to ``unreadable``, when given, with the reason.

    Returns:
        Paths relative to ``root`` with ``/`` separators, sorted.
    """
    accounted = _accounted_files(root, results)
    warned = {name for result in results for name in result.confidential_files}
    found = []
    for path in repository_files(root, hidden=True, unreadable=unreadable):
        name = path.relative_to(root).as_posix()
        if _real_path(path) in accounted or name in warned or name in reported:
            continue
        if path.name.casefold().endswith(_MODEL_SUFFIX) or has_safetensors_layout(path):
            found.append(name)
    return sorted(found)


def _real_path(path: Path) -> Path:
    """Return ``path`` after symbolic links, leaving a link loop unresolved.

    ``Path.resolve`` raises RuntimeError on a loop before Python 3.13, and a model
    linked to itself would then end the run with exit 3. ``verify_one`` reports that
    link already (E_UNSAFE_PATH).
    """
    return Path(os.path.realpath(path))


def _accounted_files(root: Path, results: Sequence[RepoResult]) -> set[Path]:
    """Return the resolved paths of the models and bundle files of the found certificates."""
    from mbd_cert import _paths

    accounted = set()
    for result in results:
        certificate = root / result.certificate
        accounted.add(_real_path(root / result.model))
        accounted.add(_real_path(certificate.parent / _EVALUATION_SET_NAME))
        bundle = (result.certificate_doc or {}).get("audit_bundle")
        if not isinstance(bundle, dict):
            continue
        for part in ("diff", "probe"):
            entry = bundle.get(part)
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                continue
            try:
                path = _paths.resolve_artefact(certificate.parent, entry["path"],
                                               field=f"audit_bundle.{part}.path")
            except errors.MbdCertError:
                continue  # verification reports a bad bundle path
            accounted.add(_real_path(path))
    return accounted


def uncertified_model_warning(name: str) -> str:
    """Return the message for one model file that no certificate pairs with."""
    return (f"{name}: no certificate pairs with this model file (cert.json pairs "
            "with model.safetensors, NAME.cert.json with NAME.safetensors), so nothing "
            "in the repository shows that a deletion was certified for it; commit its "
            "certificate beside it, or remove the file")


def fail_warnings(results: Sequence[RepoResult]) -> None:
    """Turn each warning of a verified or failed certificate into a failed check.

    The warnings move into the report as ``strict-warning`` checks and leave the
    ``warnings`` list, so each is reported once. A certificate whose verification
    stopped on an error has no report and keeps its warnings: its exit code is 2 or 3
    already.
    """
    for result in results:
        if result.report is None or not result.warnings:
            continue
        for warning in result.warnings:
            result.report.record(CheckResult(STRICT_WARNING_CHECK, FAIL, warning, code=_CODE,
                                             requirement=_REQUIREMENT))
        result.warnings.clear()
        result.exit_code = max(result.exit_code, 1)


def uncertified_models_check(names: Sequence[str]) -> CheckResult:
    """Return the run-level check of strict mode: one failed check naming every file."""
    detail = "; ".join(uncertified_model_warning(name) for name in names)
    return CheckResult(UNCERTIFIED_MODEL_CHECK, FAIL, detail, code=_CODE,
                       requirement=_REQUIREMENT, value=len(names), threshold=0)


def run_level_result(checks: Sequence[CheckResult], level: int) -> RepoResult | None:
    """Return the result of the repository as a whole, or None when it has no checks.

    Its checks are failures that belong to no certificate: strict mode's model files
    without a certificate (R-REPO-10) and pinned models that are missing (R-REPO-11).
    """
    if not checks:
        return None
    report = VerificationReport(certificate_id=None, level=level)
    for check in checks:
        report.record(check)
    return RepoResult(RUN_RESULT_NAME, "", exit_code=0 if report.verified else 1,
                      report=report)
