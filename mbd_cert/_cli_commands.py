"""Commands keygen, issue, verify and inspect of the ``mbd-cert`` CLI.

Stability: internal; the command line itself is documented in README.md and SPEC.md.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mbd_cert import errors


def _require_directory(path: Path, what: str, hint: str) -> None:
    """Raise a clear error unless ``path`` is an existing directory."""
    if not path.exists():
        raise errors.FileMissing(f"{what} not found: {str(path)!r}", hint=hint)
    if not path.is_dir():
        raise errors.InputError(f"{what} {str(path)!r} is a file, not a directory", hint=hint,
                         code="E_PARAMETER_INVALID")


def _progress_bar() -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
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
        if not trust_dir.is_dir():
            raise errors.FileMissing(f"trust directory not found: {trust_dir}")
        for path in sorted(trust_dir.iterdir()):
            if path.suffix in (".pem", ".pub") and path.is_file():
                keys.append(signing.load_public_key(path))
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
        help="Path prefix: writes PREFIX.key (private, mode 600) and PREFIX.pub.",
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
        click.echo(f"wrote {private_path} and {public_path}")

    @main.command()
    @click.option(
        "--checkpoint",
        type=click.Path(path_type=Path),
        required=True,
        help="Checkpoint directory written by 'mbd-cert train'.",
    )
    @click.option("--modality", required=True, help="Modality to delete, e.g. audio.")
    @click.option(
        "--key",
        "key_path",
        type=click.Path(path_type=Path),
        required=True,
        help="Issuer's Ed25519 private key (PEM), from 'mbd-cert keygen'.",
    )
    @click.option(
        "--out",
        "out_dir",
        type=click.Path(path_type=Path),
        required=True,
        help="Output directory for model, certificate and audit bundle.",
    )
    @click.option(
        "--epsilon",
        type=float,
        required=True,
        help="Privacy loss bound epsilon of this deletion (natural log units), > 0.",
    )
    @click.option(
        "--delta",
        type=float,
        default=1e-5,
        show_default=True,
        help="Failure probability delta of the bound, in (0, 1).",
    )
    @click.option(
        "--sensitivity-method",
        type=click.Choice(["clip-bound", "reference-retrain", "declared"]),
        default="clip-bound",
        show_default=True,
        help="How the L2 sensitivity is obtained: 2 x clip norm, measured by "
        "leave-one-out reruns of the update, or stated by you.",
    )
    @click.option(
        "--reference-runs",
        type=int,
        default=4,
        show_default=True,
        help="Leave-one-out reruns for --sensitivity-method reference-retrain.",
    )
    @click.option(
        "--safety-factor",
        type=float,
        default=2.0,
        show_default=True,
        help="Multiplier (>= 1) on the largest reference-retrain distance.",
    )
    @click.option(
        "--sensitivity",
        type=float,
        default=None,
        help="L2 sensitivity in parameter units (only with --sensitivity-method declared).",
    )
    @click.option(
        "--top-k",
        "top_k_fraction",
        type=float,
        default=0.02,
        show_default=True,
        help="Fraction of eligible parameter entries in the saliency mask, in (0, 1].",
    )
    @click.option(
        "--eligible",
        "eligible_groups",
        multiple=True,
        help="Tensor name prefix the mask may select from (repeatable). "
        "Default: fusion and the modality's generator.",
    )
    @click.option(
        "--steps",
        type=int,
        default=20,
        show_default=True,
        help="Steps of the masked update (full batch on the probe set).",
    )
    @click.option(
        "--learning-rate",
        type=float,
        default=1e-3,
        show_default=True,
        help="Step size of the masked update.",
    )
    @click.option(
        "--damping",
        type=float,
        default=1e-3,
        show_default=True,
        help="Added to sqrt(Fisher) in the update's preconditioner.",
    )
    @click.option(
        "--clip-norm",
        type=float,
        default=1e-3,
        show_default=True,
        help="L2 bound on the total update, in parameter units.",
    )
    @click.option("--seed", type=int, default=0, show_default=True, help="Recorded seed.")
    @click.option(
        "--eval-set",
        type=click.Path(path_type=Path),
        default=None,
        help="Held-out samples for utility metrics [default: CHECKPOINT/eval.safetensors].",
    )
    @click.option("--issuer-name", default="", help="Free text recorded as issuer.name.")
    @click.option(
        "--previous",
        type=click.Path(path_type=Path),
        default=None,
        help="Certificate of the previous deletion of this model [default: "
        "CHECKPOINT/cert.json when CHECKPOINT is an earlier issue output].",
    )
    @click.option(
        "--max-epsilon",
        type=float,
        default=None,
        help="Budget: refuse, writing nothing, if the cumulative epsilon of the "
        "chain would exceed this.",
    )
    @click.option(
        "--proxy-sample",
        "proxy_sample_size",
        type=int,
        default=64,
        show_default=True,
        help="Mask entries whose true leave-one-out increment is measured to rate "
        "the saliency proxy (0 skips).",
    )
    @click.option(
        "--auditor-key",
        type=click.Path(path_type=Path),
        default=None,
        help="Auditor's X25519 public key: also write the audit bundle sealed to "
        "it (audit-bundle.sealed).",
    )
    @click.option("--force", is_flag=True, help="Replace an existing output directory.")
    @guarded()
    def issue(
        checkpoint: Path,
        modality: str,
        key_path: Path,
        out_dir: Path,
        epsilon: float,
        delta: float,
        sensitivity_method: str,
        reference_runs: int,
        safety_factor: float,
        sensitivity: float | None,
        top_k_fraction: float,
        eligible_groups: tuple[str, ...],
        steps: int,
        learning_rate: float,
        damping: float,
        clip_norm: float,
        seed: int,
        eval_set: Path | None,
        issuer_name: str,
        previous: Path | None,
        max_epsilon: float | None,
        proxy_sample_size: int,
        auditor_key: Path | None,
        force: bool,
    ) -> None:
        """Delete a modality from a trained model and write a signed certificate.

        CHECKPOINT may be the output of an earlier issue: the deletion then continues
        that model's chain of certificates.
        """
        # Checked before the imports below, which load torch (1 to 2 s).
        _require_directory(checkpoint, "checkpoint directory",
                           "pass the directory that 'mbd-cert train' or an earlier "
                           "'mbd-cert issue' wrote")
        from mbd_cert import sealing, signing
        from mbd_cert.issue import IssueOptions
        from mbd_cert.issue import issue as run_issue

        private_key = signing.load_private_key(key_path)
        recipient = sealing.load_recipient_key(auditor_key) if auditor_key else None
        options = IssueOptions(
            modality=modality,
            epsilon=epsilon,
            delta=delta,
            sensitivity_method=sensitivity_method,
            sensitivity=sensitivity,
            top_k_fraction=top_k_fraction,
            eligible_groups=list(eligible_groups) or None,
            steps=steps,
            learning_rate=learning_rate,
            damping=damping,
            clip_norm=clip_norm,
            seed=seed,
            force=force,
            issuer_name=issuer_name,
            previous=previous,
            max_epsilon=max_epsilon,
            reference_runs=reference_runs,
            safety_factor=safety_factor,
            proxy_sample_size=proxy_sample_size,
            auditor_key=recipient,
        )
        update, close = _progress_bar()
        try:
            doc = run_issue(
                checkpoint, out_dir, options, private_key, eval_set=eval_set, progress=update
            )
        finally:
            close()
        privacy = doc["privacy"]
        click.echo(
            f"deleted {modality}: certificate {doc['certificate_id']} in {out_dir}/cert.json "
            f"(epsilon {privacy['epsilon']}, delta {privacy['delta']}, "
            f"sigma {privacy['sigma']:.6g}, "
            f"{privacy['noise_dimension']} masked entries)"
        )
        account = doc["accounting"]
        click.echo(
            f"deletion {account['sequence_number']} of this model: cumulative epsilon "
            f"{account['cumulative_epsilon']:.6g} at delta {account['delta']:g} "
            f"(RDP {account['rdp_epsilon']:.6g}, naive {account['naive_epsilon']:.6g})"
        )

    @main.command()
    @click.argument("cert", type=click.Path(path_type=Path))
    @click.argument("model", type=click.Path(path_type=Path))
    @click.option(
        "--key",
        "key_paths",
        type=click.Path(path_type=Path),
        multiple=True,
        help="Trusted issuer public key (PEM or raw 32 bytes). Required unless "
        "--trust-dir is given. Repeat it once per issuer when the certificates of a "
        "chain were signed with different keys.",
    )
    @click.option(
        "--trust-dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Directory of trusted public keys (*.pem, *.pub).",
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
        help="Policy: fail when the cumulative epsilon exceeds this value.",
    )
    @click.option(
        "--require-sensitivity-method",
        type=click.Choice(["clip-bound", "reference-retrain", "declared"]),
        default=None,
        help="Policy: fail unless the certificate uses this sensitivity method.",
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
        "(0, 1) [default: update.residual_alpha of the certificate, else 0.01].",
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
        require_sensitivity_method: str | None,
        allow_inconclusive: bool,
        alpha: float | None,
        check_file_digest: bool,
        as_json: bool,
        junit_path: Path | None,
        chain_dir: Path | None = None,
        auditor_private_key: Path | None = None,
    ) -> None:
        """Verify CERT against the released MODEL.

        Exit codes: 0 verified, 1 a check failed (tampering or a false claim), 2 bad
        input (a missing or malformed file or option), 3 internal error (a bug).
        """
        from mbd_cert import _paths
        from mbd_cert.report import to_junit
        from mbd_cert.verify import VerifyOptions
        from mbd_cert.verify import verify as run_verify

        keys = _load_keys(key_paths, trust_dir)
        opener = None
        if auditor_private_key is not None:
            from mbd_cert import sealing

            opener = sealing.load_auditor_private_key(auditor_private_key)
        update, close = _progress_bar()
        try:
            report = run_verify(
                cert,
                model,
                VerifyOptions(
                    trusted_keys=keys,
                    level=level,
                    bundle_dir=bundle_dir,
                    max_epsilon=max_epsilon,
                    required_sensitivity_method=require_sensitivity_method,
                    allow_inconclusive=allow_inconclusive,
                    progress=update,
                    alpha=alpha,
                    check_file_digest=check_file_digest,
                    chain_dir=chain_dir,
                    auditor_private_key=opener,
                ),
            )
        finally:
            close()
        if junit_path is not None:
            _paths.atomic_write_bytes(junit_path, to_junit(report), overwrite=True)
        if as_json:
            click.echo(json.dumps(report.to_json(), indent=2, default=str))
        else:
            _render_table(report)
        if not report.verified:
            # stdout may be a JSON document, so the reason for exit code 1 goes to stderr.
            failed = [
                f"{check.name} [{check.code or check.status}]"
                for check in report.checks
                if check.status in ("fail", "inconclusive")
            ]
            click.echo("verification failed: " + (", ".join(failed) or "see the report"), err=True)
        sys.exit(0 if report.verified else 1)

    @main.command()
    @click.argument("cert", type=click.Path(path_type=Path))
    @click.option("--json", "as_json", is_flag=True, help="Write the summary as JSON.")
    @guarded(json_flag="as_json")
    def inspect(cert: Path, as_json: bool) -> None:
        """Show what a certificate claims, without verifying it."""
        from mbd_cert.certificate import load_certificate

        summary = _inspect_summary(load_certificate(cert))
        if as_json:
            click.echo(json.dumps(summary, indent=2))
            return
        _render_inspect(summary)


# Version of the `inspect --json` document; keys are only ever added.
INSPECT_VERSION = "1.0"


def _inspect_summary(doc: dict[str, Any]) -> dict[str, Any]:
    """Return the claims of a certificate that people check first, as JSON values."""
    from mbd_cert.certificate import certificate_digest

    privacy, account = doc["privacy"], doc["accounting"]
    subject = doc["subject_model"]
    bundle = doc["audit_bundle"]
    return {
        "inspect_version": INSPECT_VERSION,
        "certificate_id": doc["certificate_id"],
        "certificate_digest": certificate_digest(doc),
        "format_version": doc["format_version"],
        "issued_at": doc["issued_at"],
        "issuer_key_id": doc["issuer"]["key_id"],
        "issuer_name": doc["issuer"].get("name"),
        "architecture": {
            "name": subject["architecture"]["name"],
            "version": subject["architecture"]["version"],
        },
        "modality": doc["deletion"]["modality"],
        "removed_tensors": len(doc["deletion"]["removed_tensors"]),
        "epsilon": privacy["epsilon"],
        "delta": privacy["delta"],
        "sigma": privacy["sigma"],
        "sensitivity": privacy["sensitivity"],
        "sensitivity_method": privacy["sensitivity_method"],
        "noise_dimension": privacy["noise_dimension"],
        "cumulative_epsilon": account["cumulative_epsilon"],
        "sequence_number": account["sequence_number"],
        "previous_certificate": account["previous_certificate"],
        "chain": {
            "method": account["method"],
            "sequence_number": account["sequence_number"],
            "previous_certificate": account["previous_certificate"],
            "mu": account["mu"],
            "cumulative_epsilon": account["cumulative_epsilon"],
            "delta": account["delta"],
            "naive_epsilon": account.get("naive_epsilon"),
            "rdp_epsilon": account.get("rdp_epsilon"),
        },
        "model_manifest_digest": subject["post_deletion"]["manifest_digest"],
        "model_file_digest": subject["post_deletion"]["file_digest"],
        "pre_deletion_manifest_digest": subject["pre_deletion"]["manifest_digest"],
        "pre_deletion_file_digest": subject["pre_deletion"]["file_digest"],
        "mask_digest": doc["saliency"]["mask_digest"],
        "audit_bundle": {
            role: {"path": bundle[role]["path"], "file_digest": bundle[role]["file_digest"]}
            for role in ("diff", "probe")
        },
        "verified": False,
    }


def _render_inspect(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    chain = summary["chain"]
    previous = chain["previous_certificate"] or "none (first deletion of this model)"
    rows = [
        ("certificate", summary["certificate_id"]),
        ("certificate digest", summary["certificate_digest"]),
        ("format", summary["format_version"]),
        ("issued at", summary["issued_at"]),
        ("issuer key id", summary["issuer_key_id"]),
        ("issuer name", summary["issuer_name"] or "(not given)"),
        (
            "architecture",
            f"{summary['architecture']['name']} version {summary['architecture']['version']}",
        ),
        (
            "deleted modality",
            f"{summary['modality']} ({summary['removed_tensors']} encoder tensors removed)",
        ),
        ("budget", f"epsilon {summary['epsilon']}, delta {summary['delta']}"),
        (
            "noise",
            f"sigma {summary['sigma']:.7g} on {summary['noise_dimension']} entries, "
            f"sensitivity {summary['sensitivity']:.6g} ({summary['sensitivity_method']})",
        ),
        ("chain", f"deletion {chain['sequence_number']} of this model, previous: {previous}"),
        (
            "cumulative epsilon",
            f"{chain['cumulative_epsilon']:.6g} at delta {chain['delta']} "
            f"({chain['method']}, mu {chain['mu']:.6g})",
        ),
        ("model file digest", summary["model_file_digest"]),
        ("model manifest digest", summary["model_manifest_digest"]),
        ("pre-deletion file digest", summary["pre_deletion_file_digest"]),
        ("mask digest", summary["mask_digest"]),
    ]
    for role, entry in summary["audit_bundle"].items():
        rows.append((f"audit bundle {role}", f"{entry['path']} {entry['file_digest']}"))
    console = Console(soft_wrap=False, width=120)
    table = Table(
        title="certificate claims (NOT VERIFIED: run 'mbd-cert verify' to check them)",
        show_header=False,
    )
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for field, value in rows:
        table.add_row(field, str(value))
    console.print(table)


def _render_table(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=False, width=120)
    table = Table(title=f"certificate {report.certificate_id} (level {report.level})")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    styles = {"pass": "green", "fail": "bold red", "skipped": "yellow", "inconclusive": "magenta"}
    for check in report.checks:
        status = check.status + (f" {check.code}" if check.code else "")
        table.add_row(check.name, f"[{styles.get(check.status, '')}]{status}[/]", check.detail)
    console.print(table)
    console.print("VERIFIED" if report.verified else "NOT VERIFIED", style="bold")
