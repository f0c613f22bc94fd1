"""The --junit file of verify-repo: which paths it may replace, and the file of a stopped run.

A JUnit path must not name a file that the run reads (SPEC.md, R-SEC-1). A run that
stops before its results, on an error or on Ctrl-C, still writes a JUnit file with
one test case for that error, because CI uploads the file whatever the exit code.

Stability: internal; :mod:`mbd_cert._cli_ci` calls it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mbd_cert import errors
from mbd_cert._cli_commands import error_record
from mbd_cert._confidential_files import CERTIFICATE_NAME, CERTIFICATE_SUFFIX
from mbd_cert._interrupts import Interrupted
from mbd_cert._repo_keys import key_base
from mbd_cert._repo_results import RepoResult, junit_for
from mbd_cert._repo_search import model_for

logger = logging.getLogger(__name__)


def repo_inputs(root: Path, certificates: Sequence[Path], policy: Any,
                 policy_file: Path | None, key_paths: Sequence[Path],
                 auditor_key_path: Path | None) -> tuple[list[Path], set[Path]]:
    """Return the files a verify-repo run reads by name, and the directories it reads.

    The files are the certificates, models, policy and keys. The directories are those
    of the certificates and of the keys, where a new ``.json`` or ``.pub`` file would be
    taken for an input (SPEC.md, R-SEC-1).
    """
    from mbd_cert import _paths

    keys = [*key_paths]
    base, _ = key_base(root, policy_file)
    keys.extend(_paths.resolve_artefact(base, relative, field=f"policy trusted_keys[{index}]")
                for index, relative in enumerate(policy.trusted_keys))
    if auditor_key_path is not None:
        keys.append(auditor_key_path)
    inputs = [*certificates, *(model_for(certificate) for certificate in certificates),
              *keys]
    if policy_file is not None:
        inputs.append(policy_file)
    directories = {certificate.parent for certificate in certificates}
    directories.update(key.parent for key in keys)
    return inputs, directories


def reject_certificate_name(root: Path, junit_path: Path) -> None:
    """Reject a --junit path below ``root`` that the certificate search would find.

    Written once, such a file is read as a certificate from the next run on, and that
    run ends with a parse error.

    Raises:
        InputError: ``E_OUTPUT_IS_INPUT``.
    """
    name = junit_path.name
    if name != CERTIFICATE_NAME and not name.endswith(CERTIFICATE_SUFFIX):
        return
    parent = os.path.realpath(junit_path.parent)
    top = os.path.realpath(root)
    if parent == top or parent.startswith(top.rstrip(os.sep) + os.sep):
        raise errors.InputError(
            f"--junit names {junit_path}, a certificate file name below {root}, which "
            "verify-repo reads as a certificate on its next run",
            hint="write the --junit file to a new path, outside the files the command "
            "reads", code="E_OUTPUT_IS_INPUT")


def setup_junit_target(junit_path: Path | None, root: Path, policy_path: Path | None,
                        key_paths: Sequence[Path], auditor_key_path: Path | None,
                        certificates: list[Path] | None) -> Path | None:
    """Return ``junit_path`` if the run may write its setup error there, else None.

    The run stopped before the usual input check, so this one uses what can still be
    known: the certificates found below ``root`` (None when the search did not end),
    their models and directories, the policy files and the keys on the command line.
    """
    from mbd_cert import _paths
    from mbd_cert.policy import DEFAULT_FILE_NAMES

    if junit_path is None:
        return None
    if certificates is None:
        # The search itself stopped: any file below the root with an input suffix may
        # be an input (a certificate, a model, a chain link or a key).
        top = os.path.realpath(root).rstrip(os.sep) + os.sep
        if (os.path.lexists(junit_path) and junit_path.suffix in _paths.INPUT_SUFFIXES
                and os.path.realpath(junit_path).startswith(top)):
            logger.warning("not writing the JUnit file: %s may be an input", junit_path)
            return None
        certificates = []
    policies = [policy_path] if policy_path is not None else [
        root / name for name in DEFAULT_FILE_NAMES]
    keys = [*key_paths, *([auditor_key_path] if auditor_key_path is not None else [])]
    inputs = [*certificates, *(model_for(path) for path in certificates), *keys, *policies]
    try:
        _paths.check_not_input(junit_path, "--junit", inputs,
                               {path.parent for path in [*certificates, *keys]})
    except errors.InputError as refused:
        logger.warning("not writing the JUnit file: %s", refused.message)
        return None
    return junit_path


def write_setup_junit(path: Path, record: dict[str, Any]) -> None:
    """Write a JUnit file with one test case: the error that stopped the whole run."""
    from mbd_cert import _paths

    result = RepoResult("verify-repo", "", exit_code=record["exit_code"], error={
        "code": record["code"], "message": record["message"], "hint": record["hint"]})
    try:
        _paths.atomic_write_bytes(path, junit_for([result]), overwrite=True, shared=True)
    except (OSError, errors.MbdCertError) as failure:
        # The error that stopped the run matters more; it is raised after this.
        logger.warning("could not write the JUnit file %s: %s", path, failure)


def record_interruption(junit_path: Path | None, message: str) -> Interrupted:
    """Return the Ctrl-C error of the run, after writing it to the JUnit file if one is asked for.

    A cancelled CI job still uploads the JUnit file, so the file records the
    interruption. The CLI writes the same error to the ``--json`` document.
    """
    stopped = Interrupted(message, "run verify-repo again to completion")
    if junit_path is not None:
        write_setup_junit(junit_path, error_record(stopped))
    return stopped
