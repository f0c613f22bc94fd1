"""Commands keygen and verify of the ``mbd-cert`` CLI, and helpers shared by the others.

Stability: internal; the command line itself is documented in README.md and SPEC.md.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from mbd_cert import errors
from mbd_cert._interrupts import CODE_INTERRUPTED, EXIT_INTERRUPTED, interruption
from mbd_cert._terminal import json_output

logger = logging.getLogger(__name__)

# Key in click's Context.meta, which a command's context shares with its parent's. It
# is set once the command has written its --json document, so that a Ctrl-C after that
# point does not make the error handler write a second document.
DOCUMENT_WRITTEN = "mbd_cert.json_document_written"


def failed_checks(checks: Sequence[Any]) -> str:
    """Return the checks that did not pass as ``name [CODE], ...`` for a stderr line."""
    from mbd_cert._terminal import terminal_text

    failed = [terminal_text(f"{check.name} [{check.code or check.status}]")
              for check in checks if check.status in ("fail", "inconclusive")]
    return ", ".join(failed) or "see the report"


def write_json_document(document: Any) -> None:
    """Write the command's ``--json`` document to stdout and record that it was written."""
    click.echo(json_output(document))
    click.get_current_context().meta[DOCUMENT_WRITTEN] = True


def error_record(error: BaseException) -> dict[str, Any]:
    """Return ``{"code", "message", "hint", "exit_code"}`` for an error that stopped a command.

    Ctrl-C (KeyboardInterrupt) is ``E_INTERRUPTED`` with exit code 130, and any error
    that is not an :class:`~mbd_cert.errors.MbdCertError` is a bug, ``E_INTERNAL``.
    """
    if isinstance(error, errors.MbdCertError):
        return {"code": error.code, "message": error.message, "hint": error.hint or "",
                "exit_code": error.exit_code}
    if isinstance(error, KeyboardInterrupt):
        stopped = interruption(error)
        return {"code": CODE_INTERRUPTED, "message": stopped.message, "hint": stopped.hint,
                "exit_code": EXIT_INTERRUPTED}
    return {"code": "E_INTERNAL", "message": f"internal error: {type(error).__name__}: {error}",
            "hint": "this is a bug in mbd-cert; rerun with -v and report the traceback",
            "exit_code": 3}


def require_directory(path: Path, what: str, hint: str) -> None:
    """Raise a clear error unless ``path`` is an existing directory."""
    if not path.exists():
        raise errors.FileMissing(f"{what} not found: {str(path)!r}", hint=hint)
    if not path.is_dir():
        raise errors.InputError(f"{what} {str(path)!r} is a file, not a directory", hint=hint,
                         code="E_PARAMETER_INVALID")


def progress_bar() -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
    """Return (update, close) for a rich progress bar on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not sys.stderr.isatty(),
    )
    tasks: dict[str, Any] = {}
    progress.start()

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=total)
        progress.update(tasks[stage], completed=done, total=total)

    return update, progress.stop


def _load_keys(paths: tuple[Path, ...], trust_dir: Path | None) -> list[Any]:
    from mbd_cert import signing

    keys = [signing.load_public_key(path) for path in paths]
    if trust_dir is not None:
        keys.extend(signing.load_trust_directory(trust_dir))
    return keys


# Type of mbd_cert.cli.guarded: a factory of decorators that map errors to exit codes.
GuardFactory = Callable[..., Callable[[Callable[..., Any]], Callable[..., Any]]]


def register(main: click.Group, guarded: GuardFactory) -> None:
    """Add the commands to the ``main`` group."""

    @main.command()
    @click.option(
        "--out",
        "out_prefix",
        type=click.Path(path_type=Path),
        required=True,
        help="Path prefix: writes PREFIX.key (private, mode 600) and PREFIX.pub. An "
        "existing directory gets issuer.key and issuer.pub (auditor.key and auditor.pub "
        "with --kind x25519).",
    )
    @click.option("--force", is_flag=True, help="Overwrite existing key files.")
    @click.option(
        "--kind",
        type=click.Choice(["ed25519", "x25519"]),
        default="ed25519",
        show_default=True,
        help="ed25519: the issuer's signing key. x25519: an auditor's key, to which "
        "'issue --auditor-key' seals the audit bundle.",
    )
    @guarded()
    def keygen(out_prefix: Path, force: bool, kind: str) -> None:
        """Create an Ed25519 signing key pair, or an X25519 auditor key pair."""
        if kind == "x25519":
            from mbd_cert import sealing

            private_path, public_path = sealing.write_x25519_keypair(out_prefix, force=force)
        else:
            from mbd_cert import signing

            private_path, public_path = signing.write_keypair(out_prefix, force=force)
            key_id = signing.key_id(signing.load_public_key(public_path))
            click.echo(f"wrote {private_path} and {public_path} (key id {key_id})")
            return
        click.echo(f"wrote {private_path} and {public_path}")

    @main.command("key-id")
    @click.argument("keys", nargs=-1, required=True, type=click.Path(path_type=Path))
    @guarded()
    def key_id(keys: tuple[Path, ...]) -> None:
        """Print the key id of each Ed25519 public key, as certificates record it.

        The id is the SHA-256 of the raw 32-byte key (issuer.key_id in a certificate).
        Compare it with the id the issuer gives you by another channel before you
        trust the key.
        """
        from mbd_cert import signing

        for path in keys:
            click.echo(f"{signing.key_id(signing.load_public_key(path))}  {path}")

    @main.command()
    @click.argument("cert", type=click.Path(path_type=Path))
    @click.argument("model", type=click.Path(path_type=Path))
    @click.option(
        "--key",
        "key_paths",
        type=click.Path(path_type=Path),
        multiple=True,
        help="Trusted issuer public key file: PEM, 64 hex digits or 32 raw bytes. "
        "Required unless --trust-dir is given. Repeat it once per issuer when the "
        "certificates of a chain were signed with different keys.",
    )
    @click.option(
        "--trust-dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Directory of trusted issuer public keys (*.pem, *.pub). Public keys of "
        "other algorithms, such as an X25519 auditor key, are skipped with a warning.",
    )
    @click.option(
        "--level",
        type=click.IntRange(1, 3),
        default=1,
        show_default=True,
        help="1 integrity, 2 recompute (needs --bundle), 3 leakage (needs --bundle).",
    )
    @click.option(
        "--bundle",
        "bundle_dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Audit bundle directory (diff.safetensors, probe.safetensors).",
    )
    @click.option(
        "--max-epsilon",
        type=float,
        default=None,
        help="Policy: fail when the cumulative epsilon (accounting.cumulative_epsilon, "
        "natural log units, at accounting.delta) exceeds this value, e.g. 4.",
    )
    @click.option(
        "--max-delta",
        type=float,
        default=None,
        help="Policy: fail when the delta of the cumulative epsilon (accounting.delta, "
        "a probability in (0, 1)) exceeds this value, e.g. 1e-5.",
    )
    @click.option(
        "--require-sensitivity-method",
        type=click.Choice(["clip-bound", "reference-retrain", "declared"]),
        default=None,
        help="Policy: fail unless every certificate of the chain uses this "
        "sensitivity method.",
    )
    @click.option(
        "--allow-inconclusive",
        is_flag=True,
        help="Let inconclusive statistical checks pass (default: they fail).",
    )
    @click.option(
        "--alpha",
        type=float,
        default=None,
        help="Family-wise significance level of the level-2 residual tests, in "
        "(0, 1) [default: 0.01, or the certificate's update.residual_alpha if larger].",
    )
    @click.option(
        "--threads",
        type=click.IntRange(min=1, max=1024),
        default=1,
        show_default=True,
        help="Torch CPU threads while levels 2 and 3 run. One suits the bundled model "
        "and a CI machine shared with other jobs; raise it for a model with large layers.",
    )
    @click.option(
        "--check-file-digest",
        is_flag=True,
        help="Also check the model's whole-file SHA-256, one sequential pass over "
        "the file (always done for format 1.0 certificates).",
    )
    @click.option(
        "--chain",
        "chain_dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Directory holding the earlier certificates of this model's chain "
        "[default: the directory of CERT].",
    )
    @click.option(
        "--auditor-private-key",
        type=click.Path(path_type=Path),
        default=None,
        help="Auditor's X25519 private key: open the sealed audit bundle (found in "
        "--bundle, else beside CERT) and verify with its contents.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Write the JSON report to stdout.")
    @click.option(
        "--junit",
        "junit_path",
        type=click.Path(path_type=Path),
        default=None,
        help="Also write the report as JUnit XML to this file.",
    )
    @guarded(json_flag="as_json")
    def verify(
        cert: Path,
        model: Path,
        key_paths: tuple[Path, ...],
        trust_dir: Path | None,
        level: int,
        bundle_dir: Path | None,
        max_epsilon: float | None,
        max_delta: float | None,
        require_sensitivity_method: str | None,
        allow_inconclusive: bool,
        alpha: float | None,
        threads: int,
        check_file_digest: bool,
        as_json: bool,
        junit_path: Path | None,
        chain_dir: Path | None = None,
        auditor_private_key: Path | None = None,
    ) -> None:
        """Verify CERT against the released MODEL.

        Exit codes: 0 verified, 1 a check failed (tampering or a false claim; the
        level-2 residual tests also reject an honest certificate with probability at
        most alpha, and a reference-retrain sensitivity fails when one of the 4
        neighbours level 2 draws afresh exceeds it), 2 bad input (a missing or malformed
        file or option), 3 internal error (a bug), 130 interrupted.
        """
        from mbd_cert import _paths
        from mbd_cert._interrupts import Interrupted
        from mbd_cert.report import to_junit
        from mbd_cert.verify import VerifyOptions
        from mbd_cert.verify import verify as run_verify

        if junit_path is not None:
            # Checked first, because with an unusable path the error below has nowhere
            # to go (SPEC.md, R-REP-4), and the write must not replace an input (R-SEC-1).
            named = [cert, model, *key_paths]
            if auditor_private_key is not None:
                named.append(auditor_private_key)
            directories = [cert.parent, *(d for d in (chain_dir, bundle_dir, trust_dir) if d)]
            _paths.check_output_file(junit_path, "--junit", inputs=named,
                                     input_dirs=directories)
        try:
            keys = _load_keys(key_paths, trust_dir)
            opener = None
            if auditor_private_key is not None:
                from mbd_cert import sealing

                opener = sealing.load_auditor_private_key(auditor_private_key)
            update, close = progress_bar()
            try:
                report = run_verify(
                    cert,
                    model,
                    VerifyOptions(
                        trusted_keys=keys,
                        level=level,
                        bundle_dir=bundle_dir,
                        max_epsilon=max_epsilon,
                        max_delta=max_delta,
                        required_sensitivity_method=require_sensitivity_method,
                        allow_inconclusive=allow_inconclusive,
                        progress=update,
                        alpha=alpha,
                        check_file_digest=check_file_digest,
                        chain_dir=chain_dir,
                        auditor_private_key=opener,
                        threads=threads,
                    ),
                )
            finally:
                close()
        except KeyboardInterrupt as interrupt:
            stopped = Interrupted(
                "interrupted by Ctrl-C (SIGINT) or SIGTERM before verification finished; the "
                "certificate is not verified", "run mbd-cert verify again to completion")
            if junit_path is not None:
                write_error_junit(junit_path, str(cert), error_record(stopped))
            raise stopped from interrupt
        except Exception as error:
            # CI uploads the JUnit file whatever the exit code, so a run that stops before
            # the checks still writes one, with this error in it (SPEC.md, R-REP-3).
            if junit_path is not None:
                write_error_junit(junit_path, str(cert), error_record(error))
            raise
        if junit_path is not None:
            _paths.atomic_write_bytes(junit_path, to_junit(report, suite=str(cert)),
                                      overwrite=True, shared=True)
        if as_json:
            write_json_document(report.to_json())
        else:
            _render_table(report)
        if not report.verified:
            # stdout may be a JSON document, so the reason for exit code 1 goes to stderr.
            click.echo("verification failed: " + failed_checks(report.checks), err=True)
            if not any(check.status == "fail" for check in report.checks):
                click.echo("  hint: an inconclusive check counts as failed unless "
                           "--allow-inconclusive is given", err=True)
        sys.exit(0 if report.verified else 1)


def write_error_junit(path: Path, suite: str, record: dict[str, Any]) -> None:
    """Write the JUnit file of a ``verify`` run that stopped before its checks.

    ``record`` is an :func:`error_record`. A failure to write the file is logged,
    because the caller raises the error that stopped the run after this.
    """
    from mbd_cert import _paths
    from mbd_cert.report import error_junit

    data = error_junit(record["code"], record["message"], record["hint"], suite=suite)
    try:
        _paths.atomic_write_bytes(path, data, overwrite=True, shared=True)
    except (OSError, errors.MbdCertError) as failure:
        logger.warning("could not write the JUnit file %s: %s", path, failure)


def _render_table(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from mbd_cert._terminal import rich_text

    # Names and details quote tensor names and other strings from the files, so every
    # cell is a Text: rich would read a plain str as markup (SPEC.md, R-SEC-5).
    console = Console(soft_wrap=False, width=120)
    table = Table(title=rich_text(f"certificate {report.certificate_id} (level {report.level})"))
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    styles = {"pass": "green", "fail": "bold red", "skipped": "yellow", "inconclusive": "magenta"}
    for check in report.checks:
        status = check.status + (f" {check.code}" if check.code else "")
        table.add_row(rich_text(check.name), rich_text(status, styles.get(check.status, "")),
                      rich_text(check.detail))
    console.print(table)
    console.print(rich_text("VERIFIED" if report.verified else "NOT VERIFIED", "bold"))
