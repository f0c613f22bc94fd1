"""The ``verify-repo --json`` document, for a finished run and for one that stopped early.

Stability: internal; :mod:`mbd_cert._cli_ci` writes it, and SPEC.md (R-REPO-6)
documents its fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mbd_cert._repo_results import RepoResult

# 1.1 adds "warnings" to each result. 1.2 adds "error", set when the run stopped
# before verifying any certificate, was interrupted by Ctrl-C, or could not write its
# JUnit file. Readers of 1.0 can ignore both. 1.3 adds "verifier" (R-REP-5), and 1.4
# the run-level "warnings" and "checks" (models without a certificate, R-REPO-10;
# missing pinned models, R-REPO-11).
REPO_REPORT_VERSION = "1.4"


def repo_report(root: Path | None, policy_file: Path | None, exit_code: int,
                 results: Sequence[RepoResult],
                 error: dict[str, Any] | None = None, warnings: Sequence[str] = (),
                 run_result: RepoResult | None = None) -> dict[str, Any]:
    """Return the ``verify-repo --json`` document (SPEC.md, R-REPO-6).

    ``warnings`` and ``run_result`` are the run's own, not any certificate's: the
    models without a certificate, as warnings or, in strict mode, as a failed check,
    and the pinned models that are missing, as a failed check.
    """
    from mbd_cert._tool_version import verifier_record

    return {
        "report_version": REPO_REPORT_VERSION,
        "verifier": verifier_record(),
        "root": None if root is None else str(root),
        "policy": None if policy_file is None else str(policy_file),
        "exit_code": exit_code,
        "error": None if error is None else {key: error[key] for key in ("code", "message",
                                                                          "hint")},
        "results": [r.to_json() for r in results],
        "warnings": list(warnings),
        "checks": [] if run_result is None else run_result.report.to_json()["checks"],
    }


def error_document(arguments: Any, code: str, message: str, hint: str,
                   exit_code: int) -> dict[str, Any]:
    """Return the ``verify-repo --json`` document of a run that stopped on ``code``."""
    # A run that stopped before any certificate: the same document as a finished run,
    # so a CI step parses one shape, with no results and the error that stopped it.
    # A usage error comes before the arguments are parsed: root and policy are null.
    from mbd_cert.policy import find_policy

    error = {"code": code, "message": message, "hint": hint}
    if "root" not in arguments:
        return repo_report(None, None, exit_code, [], error)
    root = Path(arguments["root"])
    policy_file = arguments.get("policy_path")
    if policy_file is None:
        try:
            policy_file = find_policy(root)
        except Exception:  # noqa: BLE001 - the error being reported may be this one
            policy_file = None
    return repo_report(root, policy_file, exit_code, [], error)

