"""Command verify-repo of the ``mbd-cert`` CLI, for CI pipelines.

``verify-repo`` verifies every certificate in a repository under the repository's
policy file and writes one JUnit file, so that a CI job needs one command. Which files
it finds and how it pairs a certificate with its model is fixed in
:mod:`mbd_cert._repo_search` and documented in SPEC.md, section "Verifying a
repository"; the checks across certificates are in :mod:`mbd_cert._repo_checks`:

* a certificate is a regular file named ``cert.json`` or ``<name>.cert.json``;
* ``<dir>/cert.json`` certifies ``<dir>/model.safetensors``, and
  ``<dir>/<name>.cert.json`` certifies ``<dir>/<name>.safetensors``;
* directories whose names start with ``.`` (``.git``, ``.venv``) and symbolic links
  are skipped;
* at level 2 and 3 the audit bundle is read from the certificate's directory, from the
  sealed file when an auditor key is given and the certificate records one;
* a confidential audit bundle (``diff.safetensors``, ``probe.safetensors``) or
  evaluation set found beside its certificate, under its own name or another
  (:mod:`mbd_cert._confidential_files`), adds a warning but leaves the exit code as it is;
* a ``*.safetensors`` file that no certificate accounts for adds a run-level warning;
* in strict mode (policy ``strict = true`` or ``--strict``) every warning fails the run
  instead (:mod:`mbd_cert._repo_strict`);
* each model that the policy's ``models`` table pins must be there, with a certificate
  whose chain deleted the pinned modalities (:mod:`mbd_cert._repo_pins`).

The exit code is the worst of the per-certificate results (0 < 1 < 2 < 3), so one
unusable certificate makes the job fail with 2 even when the others are valid.

Stability: internal; the command line is documented in docs/user-guide.md.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mbd_cert import errors
from mbd_cert._cli_commands import (
    GuardFactory,
    error_record,
    failed_checks,
    write_json_document,
)
from mbd_cert._confidential_files import (
    CERTIFICATE_NAME,
    CERTIFICATE_SUFFIX,
    ScanCache,
    published_confidential_files,
)
from mbd_cert._interrupts import Interrupted
from mbd_cert._repo_checks import check_forks, check_published_pre_deletion
from mbd_cert._repo_pins import check_pinned_models
from mbd_cert._repo_results import RepoResult, junit_for, render_table
from mbd_cert._repo_search import find_certificates, model_for
from mbd_cert._repo_strict import (
    fail_warnings,
    run_level_result,
    uncertified_model_warning,
    uncertified_models,
    uncertified_models_check,
)

if TYPE_CHECKING:
    from mbd_cert.chain import ChainFileCache

logger = logging.getLogger(__name__)

# 1.1 adds "warnings" to each result. 1.2 adds "error", set when the run stopped
# before verifying any certificate, was interrupted by Ctrl-C, or could not write its
# JUnit file. Readers of 1.0 can ignore both. 1.3 adds "verifier" (R-REP-5), and 1.4
# the run-level "warnings" and "checks" (models without a certificate, R-REPO-10;
# missing pinned models, R-REPO-11).
REPO_REPORT_VERSION = "1.4"
CODE_NO_CERTIFICATES = "E_NO_CERTIFICATES"


def key_base(root: Path, policy_file: Path | None) -> tuple[Path, str]:
    """Return the directory that the policy's ``trusted_keys`` paths are relative to.

    The repository root, unless the policy file lies outside the repository: then the
    policy file's own directory. A policy kept out of a pull request (a CI checks out
    the base branch's copy) must not take its keys from the pull request's tree, which
    could replace them (SPEC.md, section 16). Also returns the words that name it.

    Where the directory lies is decided after symbolic links, as the files are read:
    a path that passes through a link in the repository to a folder outside it names
    an outside policy, and a root given through a link still contains its policy.
    """
    if policy_file is not None:
        # realpath of the file itself: ".." after a link leaves the link's target, as
        # the open() that read the policy did, where abspath would drop the link.
        real_dir = Path(os.path.realpath(policy_file)).parent
        repository = Path(os.path.realpath(root))
        if repository != real_dir and repository not in real_dir.parents:
            return real_dir, "the policy file's directory"
    return root, "the repository root"


def _trusted_keys(root: Path, policy: Any, key_paths: Sequence[Path],
                  policy_file: Path | None = None) -> list[Any]:
    from mbd_cert import _paths, signing

    keys = [signing.load_public_key(path) for path in key_paths]
    base, base_name = key_base(root, policy_file)
    for index, relative in enumerate(policy.trusted_keys):
        field = f"policy trusted_keys[{index}]"
        path = _paths.resolve_artefact(base, relative, field=field)
        try:
            keys.append(signing.load_public_key(path))
        except errors.FileMissing as missing:
            # The path is the policy's, relative to its base, not to the cwd.
            missing.message = (f"{missing.message} ({field} = {relative!r}, resolved "
                               f"against {base_name} {str(base)!r})")
            missing.hint = (f"correct the path in the policy file, relative to {base_name}, "
                            "or put the key file there")
            raise
    if not keys:
        raise errors.InputError(
            "no trusted issuer key was given",
            hint="list key files in the policy's trusted_keys or pass --key",
            code="E_KEY_MISSING",
        )
    return keys


def _echo_failure(result: RepoResult) -> None:
    """Print one stderr line for a certificate that did not verify, naming the reason."""
    from mbd_cert._terminal import terminal_text

    if result.exit_code == 0:
        return
    name = terminal_text(result.certificate)
    if result.error is not None:
        click.echo(f"error [{result.error['code']}]: {name}: "
                   f"{terminal_text(result.error['message'])}", err=True)
        if result.error.get("hint"):
            click.echo(f"  hint: {terminal_text(result.error['hint'])}", err=True)
        return
    checks = result.report.checks if result.report is not None else []
    click.echo(f"verification failed: {name}: {failed_checks(checks)}", err=True)


def verify_one(root: Path, certificate: Path, policy: Any, keys: Sequence[Any],
               auditor_key: Any = None, scan_cache: ScanCache | None = None,
               chain_file_cache: ChainFileCache | None = None) -> RepoResult:
    """Verify one certificate under the policy, recording unusable input and bugs in the result.

    With ``auditor_key`` (an X25519 private key) and a policy level of 2 or 3, a
    certificate whose audit bundle was sealed is verified with the sealed file beside
    it. Other certificates read the plain bundle files from their directory. The two
    caches are shared by the calls of one run, so that a directory holding many
    certificates is scanned once.
    """
    from mbd_cert._terminal import terminal_text
    from mbd_cert.verify import VerifyOptions, verify

    model = model_for(certificate)
    result = RepoResult(certificate.relative_to(root).as_posix(),
                        model.relative_to(root).as_posix(), exit_code=0)
    methods = policy.required_sensitivity_methods
    needs_bundle = policy.required_level >= 2
    options = VerifyOptions(
        trusted_keys=keys,
        level=policy.required_level,
        bundle_dir=certificate.parent if needs_bundle else None,
        max_epsilon=policy.max_cumulative_epsilon,
        max_delta=policy.max_delta,
        # verify() applies the methods to every certificate of the chain (R-POLF-2).
        accepted_sensitivity_methods=methods,
        allow_inconclusive=policy.allow_inconclusive,
        auditor_private_key=auditor_key if needs_bundle and _is_sealed(certificate) else None,
        chain_file_cache=chain_file_cache,
    )
    try:
        if model.is_symlink():
            # A link can point outside the repository, and CI would then report a model
            # the repository does not contain as verified.
            raise errors.InputError(
                f"model of {result.certificate} is a symbolic link: {result.model}",
                hint="commit the model file itself beside the certificate",
                code="E_UNSAFE_PATH",
            )
        if not model.exists():
            raise errors.FileMissing(
                f"model not found for {result.certificate}: expected {result.model}",
                hint="put the released model beside the certificate: cert.json pairs with "
                "model.safetensors, NAME.cert.json with NAME.safetensors",
            )
        report = verify(certificate, model, options)
        result.report = report
        result.exit_code = 0 if report.verified else 1
    except errors.MbdCertError as error:
        result.exit_code = error.exit_code
        result.error = {"code": error.code, "message": error.message, "hint": error.hint}
    # A bug while verifying one certificate must not hide the results of the others;
    # it still makes the run exit 3.
    except Exception as exc:
        logger.debug("internal error on %s", result.certificate, exc_info=True)
        result.exit_code = 3
        result.error = {"code": "E_INTERNAL",
                        "message": f"internal error: {type(exc).__name__}: {exc}",
                        "hint": "this is a bug in mbd-cert; rerun with -vv and report it"}
    from mbd_cert.certificate import load_certificate

    try:
        result.certificate_doc = load_certificate(certificate)
    except errors.MbdCertError:
        pass  # verification above reports it
    if result.certificate_doc is not None:
        published = published_confidential_files(root, certificate, scan_cache,
                                                  result.certificate_doc)
    else:
        published = []
    result.confidential_files = list(published)
    if published:
        # Escaped here, because JUnit's system-err and the JSON report carry the text
        # as it is, and a file name with a line break could fake another warning line.
        names = ", ".join(terminal_text(name) for name in published)
        result.warnings.append(
            f"{names}: confidential files of the issuer (the audit bundle "
            "rebuilds the pre-deletion model, and the probe and evaluation sets contain "
            "data samples); publish them only where auditors alone can read them, or "
            "publish audit-bundle.sealed instead and pass --auditor-private-key. Once "
            "committed, they stay in the version history after you delete them")
    return result


def _repo_inputs(root: Path, certificates: Sequence[Path], policy: Any,
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


def _reject_certificate_name(root: Path, junit_path: Path) -> None:
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


def _setup_junit_target(junit_path: Path | None, root: Path, policy_path: Path | None,
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


def _write_setup_junit(path: Path, record: dict[str, Any]) -> None:
    """Write a JUnit file with one test case: the error that stopped the whole run."""
    from mbd_cert import _paths

    result = RepoResult("verify-repo", "", exit_code=record["exit_code"], error={
        "code": record["code"], "message": record["message"], "hint": record["hint"]})
    try:
        _paths.atomic_write_bytes(path, junit_for([result]), overwrite=True, shared=True)
    except (OSError, errors.MbdCertError) as failure:
        # The error that stopped the run matters more; it is raised after this.
        logger.warning("could not write the JUnit file %s: %s", path, failure)


def _interrupted(junit_path: Path | None, message: str) -> Interrupted:
    """Return the Ctrl-C error of the run, after writing it to the JUnit file if one is asked for.

    A cancelled CI job still uploads the JUnit file, so the file records the
    interruption. The CLI writes the same error to the ``--json`` document.
    """
    stopped = Interrupted(message, "run verify-repo again to completion")
    if junit_path is not None:
        _write_setup_junit(junit_path, error_record(stopped))
    return stopped


def _is_sealed(certificate: Path) -> bool:
    """Return whether the certificate records a sealed audit bundle (False if unreadable)."""
    from mbd_cert.certificate import load_certificate

    try:
        bundle = load_certificate(certificate)["audit_bundle"]
    except errors.MbdCertError:
        return False  # verify() reports the unreadable certificate
    return isinstance(bundle, dict) and "sealed" in bundle


def _repo_report(root: Path | None, policy_file: Path | None, exit_code: int,
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


def _error_document(arguments: Any, code: str, message: str, hint: str,
                    exit_code: int) -> dict[str, Any]:
    # A run that stopped before any certificate: the same document as a finished run,
    # so a CI step parses one shape, with no results and the error that stopped it.
    # A usage error comes before the arguments are parsed: root and policy are null.
    from mbd_cert.policy import find_policy

    error = {"code": code, "message": message, "hint": hint}
    if "root" not in arguments:
        return _repo_report(None, None, exit_code, [], error)
    root = Path(arguments["root"])
    policy_file = arguments.get("policy_path")
    if policy_file is None:
        try:
            policy_file = find_policy(root)
        except Exception:  # noqa: BLE001 - the error being reported may be this one
            policy_file = None
    return _repo_report(root, policy_file, exit_code, [], error)


def register(main: click.Group, guarded: GuardFactory) -> None:
    """Add the verify-repo command to the ``main`` group."""

    # readable=False throughout: the library readers report an unreadable file with its
    # error code, in the report's shape, where click would raise a usage error.
    @main.command("verify-repo")
    @click.argument("root", type=click.Path(path_type=Path, readable=False), default=".")
    @click.option("--policy", "policy_path", type=click.Path(path_type=Path, readable=False),
                  default=None,
                  help="Policy file (TOML) [default: ROOT/.mbd-cert.toml or "
                       "ROOT/mbd-cert-policy.toml; none: level 1 without limits].")
    @click.option("--key", "key_paths", type=click.Path(path_type=Path, readable=False),
                  multiple=True,
                  help="Trusted issuer public key, in addition to the policy's; repeatable.")
    @click.option("--junit", "junit_path", type=click.Path(path_type=Path, readable=False),
                  default=None,
                  help="Write a JUnit XML file with one test suite per certificate.")
    @click.option("--json", "as_json", is_flag=True, help="Write the JSON report to stdout.")
    @click.option("--allow-empty", is_flag=True,
                  help="Exit 0 when the repository contains no certificate (default: exit 2).")
    @click.option("--auditor-private-key", "auditor_key_path",
                  type=click.Path(path_type=Path, readable=False), default=None,
                  help="Auditor's X25519 private key (keep it in a CI secret): under a "
                       "level-2 or level-3 policy, open each certificate's sealed "
                       "audit-bundle.sealed instead of reading a plain bundle.")
    @click.option("--strict", is_flag=True,
                  help="Exit 1 on every warning and on each model file (safetensors, "
                       "whatever its name) that no certificate pairs with, as the "
                       "policy key strict = true does.")
    @guarded(json_flag="as_json", error_document=_error_document)
    def verify_repo(root: Path, policy_path: Path | None, key_paths: tuple[Path, ...],
                    junit_path: Path | None, as_json: bool, allow_empty: bool,
                    auditor_key_path: Path | None = None, strict: bool = False) -> None:
        """Verify every cert.json and *.cert.json below ROOT under the policy.

        Exit 0 all verified, 1 one is not valid, 2 unusable input, 3 internal error,
        130 interrupted.
        """
        from mbd_cert import _paths
        from mbd_cert._terminal import terminal_text
        from mbd_cert.policy import Policy, find_policy, load_policy

        if junit_path is not None:
            # Nowhere to write the error to either.
            _paths.check_output_file(junit_path, "--junit")
            _reject_certificate_name(root, junit_path)
        certificates: list[Path] | None = None
        try:
            policy_file = policy_path if policy_path is not None else find_policy(root)
            policy = load_policy(policy_file) if policy_file is not None else Policy()
            if strict:
                # The flag can only tighten the policy file, never loosen it.
                policy = dataclasses.replace(policy, strict=True)
            certificates = find_certificates(root)
            if not certificates and not allow_empty:
                raise errors.InputError(
                    f"no certificate (cert.json, *.cert.json) found below {root}",
                    hint="check the repository root, or pass --allow-empty",
                    code=CODE_NO_CERTIFICATES,
                )
            keys = _trusted_keys(root, policy, key_paths, policy_file)
            auditor_key = None
            if auditor_key_path is not None:
                from mbd_cert import sealing

                auditor_key = sealing.load_auditor_private_key(auditor_key_path)
        except KeyboardInterrupt as interrupt:
            raise _interrupted(
                _setup_junit_target(junit_path, root, policy_path, key_paths,
                                    auditor_key_path, certificates),
                "interrupted before any certificate was verified") from interrupt
        except Exception as error:
            # CI uploads the JUnit file whatever the exit code, so a run that stops
            # before any certificate still writes one, with this error in it, unless
            # the path names an input (R-SEC-1).
            target = _setup_junit_target(junit_path, root, policy_path, key_paths,
                                         auditor_key_path, certificates)
            if target is not None:
                _write_setup_junit(target, error_record(error))
            raise
        if junit_path is not None:
            # After the search, because the inputs are the files it found, and before
            # any certificate is verified. The JUnit file must not replace one (R-SEC-1).
            inputs, read_dirs = _repo_inputs(root, certificates, policy, policy_file,
                                             key_paths, auditor_key_path)
            _paths.check_not_input(junit_path, "--junit", inputs, read_dirs)
        cache: ScanCache = {}
        from mbd_cert.chain import ChainFileCache

        chain_file_cache = ChainFileCache()
        results = []
        try:
            for path in certificates:
                results.append(verify_one(root, path, policy, keys, auditor_key, cache,
                                          chain_file_cache))
        except KeyboardInterrupt as interrupt:
            raise _interrupted(junit_path, f"interrupted after {len(results)} of "
                               f"{len(certificates)} certificates; none of them counts as "
                               "verified") from interrupt
        # Taken before the checks below add failures to genuine certificates.
        verified = {result.certificate for result in results if result.exit_code == 0}
        check_forks(root, results, policy, chain_file_cache)
        published = check_published_pre_deletion(root, results)
        uncertified = uncertified_models(root, results, published)
        run_warnings: list[str] = []
        run_checks = []
        if policy.strict:
            fail_warnings(results)
            if uncertified:
                run_checks.append(uncertified_models_check(uncertified))
        else:
            run_warnings = [uncertified_model_warning(name) for name in uncertified]
        pins_missing = check_pinned_models(root, results, policy.models, verified)
        if pins_missing is not None:
            run_checks.append(pins_missing)
        run_result = run_level_result(run_checks, policy.required_level)
        exit_code = max((r.exit_code for r in results), default=0)
        if run_result is not None:
            exit_code = max(exit_code, run_result.exit_code)
        junit_results = [*results, *([run_result] if run_result is not None else [])]
        write_error = None
        if junit_path is not None:
            try:
                _paths.atomic_write_bytes(junit_path, junit_for(junit_results),
                                          overwrite=True, shared=True)
            except errors.MbdCertError as error:
                # The results stand; the run still fails, because CI expects the file.
                write_error = error_record(error)
                exit_code = max(exit_code, error.exit_code)
                click.echo(f"error [{error.code}]: {terminal_text(error.message)}", err=True)
        for result in results:
            for warning in result.warnings:
                click.echo(f"warning: {terminal_text(result.certificate)}: "
                           f"{terminal_text(warning)}", err=True)
        for warning in run_warnings:
            click.echo(f"warning: {terminal_text(warning)}", err=True)
        if as_json:
            write_json_document(_repo_report(root, policy_file, exit_code, results,
                                             write_error, run_warnings, run_result))
        else:
            render_table(results, exit_code, policy.required_level, policy_file is not None,
                         run_result)
        # As verify does, each failure's reason and hint also go to stderr, in full: the
        # table shortens long details, and with --json stdout is the document.
        for result in junit_results:
            _echo_failure(result)
        sys.exit(exit_code)
