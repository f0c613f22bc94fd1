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
* a hidden directory that cannot be listed fails the run, in strict mode or not,
  because the scans for such files and for pre-deletion models could not search it;
* a file that contains a tensor of a deleted encoder, byte for byte, fails that
  deletion's certificate (:mod:`mbd_cert._published_encoders`), and a file too large
  to search fails the run;
* in strict mode (policy ``strict = true`` or ``--strict``) every warning fails the run
  instead (:mod:`mbd_cert._repo_strict`);
* each model that the policy's ``models`` table pins must be there, with a certificate
  whose chain deleted the pinned modalities (:mod:`mbd_cert._repo_pins`).

This module defines the command's options and runs it. The trusted keys come from
:mod:`mbd_cert._repo_keys`, each certificate is verified by
:mod:`mbd_cert._repo_certificate`, the ``--junit`` path is guarded by
:mod:`mbd_cert._repo_junit`, and the ``--json`` document is built by
:mod:`mbd_cert._repo_report`.

The exit code is the worst of the per-certificate results (0 < 1 < 2 < 3), so one
unusable certificate makes the job fail with 2 even when the others are valid.

Stability: internal; the command line is documented in docs/user-guide.md.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from mbd_cert import errors
from mbd_cert._cli_commands import (
    GuardFactory,
    error_record,
    failed_checks,
    write_json_document,
)
from mbd_cert._confidential_files import ScanCache
from mbd_cert._published_encoders import check_published_encoders, unsearched_files_check
from mbd_cert._repo_certificate import verify_one
from mbd_cert._repo_checks import (
    check_forks,
    check_published_pre_deletion,
    unreadable_directories_check,
)
from mbd_cert._repo_junit import (
    record_interruption,
    reject_certificate_name,
    repo_inputs,
    setup_junit_target,
    write_setup_junit,
)
from mbd_cert._repo_keys import trusted_keys
from mbd_cert._repo_pins import check_pinned_models
from mbd_cert._repo_report import error_document, repo_report
from mbd_cert._repo_results import RepoResult, junit_for, render_table
from mbd_cert._repo_search import find_certificates
from mbd_cert._repo_strict import (
    fail_warnings,
    run_level_result,
    uncertified_model_warning,
    uncertified_models,
    uncertified_models_check,
)

CODE_NO_CERTIFICATES = "E_NO_CERTIFICATES"


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
                  help="Trusted issuer public key file (PEM, 64 hex digits or 32 raw bytes), in "
                       "addition to the policy's keys. Repeat it for each key.")
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
    @guarded(json_flag="as_json", error_document=error_document)
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
            reject_certificate_name(root, junit_path)
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
            keys = trusted_keys(root, policy, key_paths, policy_file)
            auditor_key = None
            if auditor_key_path is not None:
                from mbd_cert import sealing

                auditor_key = sealing.load_auditor_private_key(auditor_key_path)
        except KeyboardInterrupt as interrupt:
            raise record_interruption(
                setup_junit_target(junit_path, root, policy_path, key_paths,
                                    auditor_key_path, certificates),
                "interrupted before any certificate was verified") from interrupt
        except Exception as error:
            # CI uploads the JUnit file whatever the exit code, so a run that stops
            # before any certificate still writes one, with this error in it, unless
            # the path names an input (R-SEC-1).
            target = setup_junit_target(junit_path, root, policy_path, key_paths,
                                         auditor_key_path, certificates)
            if target is not None:
                write_setup_junit(target, error_record(error))
            raise
        if junit_path is not None:
            # After the search, because the inputs are the files it found, and before
            # any certificate is verified. The JUnit file must not replace one (R-SEC-1).
            inputs, read_dirs = repo_inputs(root, certificates, policy, policy_file,
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
            raise record_interruption(junit_path, f"interrupted after {len(results)} of "
                               f"{len(certificates)} certificates; none of them counts as "
                               "verified") from interrupt
        # Taken before the checks below add failures to genuine certificates.
        verified = {result.certificate for result in results if result.exit_code == 0}
        check_forks(root, results, policy, chain_file_cache)
        # Directories below ROOT that the two scans could not list, with the reason.
        unreadable: dict[Path, str] = {}
        published = check_published_pre_deletion(root, results, unreadable)
        # Files over the limits of the search for deleted encoders, with the reason.
        unsearched: dict[Path, str] = {}
        encoder_copies = check_published_encoders(root, results, published, unreadable,
                                                  unsearched)
        reported = encoder_copies.union(*published.values())
        uncertified = uncertified_models(root, results, reported, unreadable)
        run_warnings: list[str] = []
        run_checks = []
        for scan_check in (unreadable_directories_check(root, unreadable),
                           unsearched_files_check(root, unsearched)):
            if scan_check is not None:
                run_checks.append(scan_check)
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
            write_json_document(repo_report(root, policy_file, exit_code, results,
                                             write_error, run_warnings, run_result))
        else:
            render_table(results, exit_code, policy.required_level, policy_file is not None,
                         run_result)
        # As verify does, each failure's reason and hint also go to stderr, in full: the
        # table shortens long details, and with --json stdout is the document.
        for result in junit_results:
            _echo_failure(result)
        sys.exit(exit_code)
