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


def register(main: click.Group, guarded: Callable[..., Any]) -> None:
    """Add the commands to the ``main`` group."""

    @main.command()
    @click.option("--out", "out_prefix", type=click.Path(path_type=Path), required=True,
                  help="Path prefix: writes PREFIX.key (private, mode 600) and PREFIX.pub.")
    @click.option("--force", is_flag=True, help="Overwrite existing key files.")
    @guarded()
    def keygen(out_prefix: Path, force: bool) -> None:
        """Create an Ed25519 key pair for signing certificates."""
        from mbd_cert import signing

        private_path, public_path = signing.write_keypair(out_prefix, force=force)
        click.echo(f"wrote {private_path} and {public_path}")

    @main.command()
    @click.option("--checkpoint", type=click.Path(path_type=Path), required=True,
                  help="Checkpoint directory written by 'mbd-cert train'.")
    @click.option("--modality", required=True, help="Modality to delete, e.g. audio.")
    @click.option("--key", "key_path", type=click.Path(path_type=Path), required=True,
                  help="Issuer's Ed25519 private key (PEM), from 'mbd-cert keygen'.")
    @click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
                  help="Output directory for model, certificate and audit bundle.")
    @click.option("--epsilon", type=float, required=True,
                  help="Privacy loss bound epsilon of this deletion (natural log units), > 0.")
    @click.option("--delta", type=float, default=1e-5, show_default=True,
                  help="Failure probability delta of the bound, in (0, 1).")
    @click.option("--sensitivity-method", type=click.Choice(["clip-bound", "declared"]),
                  default="clip-bound", show_default=True,
                  help="How the L2 sensitivity is obtained: 2 x clip norm, or stated by you.")
    @click.option("--sensitivity", type=float, default=None,
                  help="L2 sensitivity in parameter units (only with --sensitivity-method declared).")
    @click.option("--top-k", "top_k_fraction", type=float, default=0.02, show_default=True,
                  help="Fraction of eligible parameter entries in the saliency mask, in (0, 1].")
    @click.option("--eligible", "eligible_groups", multiple=True,
                  help="Tensor name prefix the mask may select from (repeatable). "
                       "Default: fusion and the modality's generator.")
    @click.option("--steps", type=int, default=20, show_default=True,
                  help="Steps of the masked update (full batch on the probe set).")
    @click.option("--learning-rate", type=float, default=1e-3, show_default=True,
                  help="Step size of the masked update.")
    @click.option("--damping", type=float, default=1e-3, show_default=True,
                  help="Added to sqrt(Fisher) in the update's preconditioner.")
    @click.option("--clip-norm", type=float, default=1e-3, show_default=True,
                  help="L2 bound on the total update, in parameter units.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Recorded seed.")
    @click.option("--eval-set", type=click.Path(path_type=Path), default=None,
                  help="Held-out samples for utility metrics [default: CHECKPOINT/eval.safetensors].")
    @click.option("--issuer-name", default="", help="Free text recorded as issuer.name.")
    @click.option("--force", is_flag=True, help="Replace an existing output directory.")
    @guarded()
    def issue(checkpoint: Path, modality: str, key_path: Path, out_dir: Path, epsilon: float,
              delta: float, sensitivity_method: str, sensitivity: float | None,
              top_k_fraction: float, eligible_groups: tuple[str, ...], steps: int,
              learning_rate: float, damping: float, clip_norm: float, seed: int,
              eval_set: Path | None, issuer_name: str, force: bool) -> None:
        """Delete a modality from a trained model and write a signed certificate."""
        from mbd_cert import signing
        from mbd_cert.issue import IssueOptions
        from mbd_cert.issue import issue as run_issue

        private_key = signing.load_private_key(key_path)
        options = IssueOptions(
            modality=modality, epsilon=epsilon, delta=delta,
            sensitivity_method=sensitivity_method, sensitivity=sensitivity,
            top_k_fraction=top_k_fraction, eligible_groups=list(eligible_groups) or None,
            steps=steps, learning_rate=learning_rate, damping=damping, clip_norm=clip_norm,
            seed=seed, force=force, issuer_name=issuer_name,
        )
        update, close = _progress_bar()
        try:
            doc = run_issue(checkpoint, out_dir, options, private_key, eval_set=eval_set,
                            progress=update)
        finally:
            close()
        privacy = doc["privacy"]
        click.echo(
            f"deleted {modality}: certificate {doc['certificate_id']} in {out_dir}/cert.json "
            f"(epsilon {privacy['epsilon']}, delta {privacy['delta']}, sigma {privacy['sigma']:.6g}, "
            f"{privacy['noise_dimension']} masked entries)"
        )

    @main.command()
    @click.argument("cert", type=click.Path(path_type=Path))
    @click.argument("model", type=click.Path(path_type=Path))
    @click.option("--key", "key_paths", type=click.Path(path_type=Path), multiple=True,
                  help="Trusted issuer public key (PEM or raw 32 bytes); repeatable.")
    @click.option("--trust-dir", type=click.Path(path_type=Path), default=None,
                  help="Directory of trusted public keys (*.pem, *.pub).")
    @click.option("--level", type=click.IntRange(1, 3), default=1, show_default=True,
                  help="1 integrity, 2 recompute (needs --bundle), 3 leakage (needs --bundle).")
    @click.option("--bundle", "bundle_dir", type=click.Path(path_type=Path), default=None,
                  help="Audit bundle directory (diff.safetensors, probe.safetensors).")
    @click.option("--max-epsilon", type=float, default=None,
                  help="Policy: fail when the cumulative epsilon exceeds this value.")
    @click.option("--require-sensitivity-method",
                  type=click.Choice(["clip-bound", "reference-retrain", "declared"]), default=None,
                  help="Policy: fail unless the certificate uses this sensitivity method.")
    @click.option("--allow-inconclusive", is_flag=True,
                  help="Let inconclusive statistical checks pass (default: they fail).")
    @click.option("--json", "as_json", is_flag=True, help="Write the JSON report to stdout.")
    @click.option("--junit", "junit_path", type=click.Path(path_type=Path), default=None,
                  help="Also write the report as JUnit XML to this file.")
    @guarded(json_flag="as_json")
    def verify(cert: Path, model: Path, key_paths: tuple[Path, ...], trust_dir: Path | None,
               level: int, bundle_dir: Path | None, max_epsilon: float | None,
               require_sensitivity_method: str | None, allow_inconclusive: bool, as_json: bool,
               junit_path: Path | None) -> None:
        """Verify CERT against the released MODEL. Exit 0 valid, 1 invalid, 2 bad input."""
        from mbd_cert import _paths
        from mbd_cert.report import to_junit
        from mbd_cert.verify import VerifyOptions
        from mbd_cert.verify import verify as run_verify

        keys = _load_keys(key_paths, trust_dir)
        update, close = _progress_bar()
        try:
            report = run_verify(cert, model, VerifyOptions(
                trusted_keys=keys, level=level, bundle_dir=bundle_dir, max_epsilon=max_epsilon,
                required_sensitivity_method=require_sensitivity_method,
                allow_inconclusive=allow_inconclusive, progress=update))
        finally:
            close()
        if junit_path is not None:
            _paths.atomic_write_bytes(junit_path, to_junit(report), overwrite=True)
        if as_json:
            click.echo(json.dumps(report.to_json(), indent=2, default=str))
        else:
            _render_table(report)
        sys.exit(0 if report.verified else 1)

    @main.command()
    @click.argument("cert", type=click.Path(path_type=Path))
    @click.option("--json", "as_json", is_flag=True, help="Write the summary as JSON.")
    @guarded(json_flag="as_json")
    def inspect(cert: Path, as_json: bool) -> None:
        """Show what a certificate claims, without verifying it."""
        from mbd_cert.certificate import certificate_digest, load_certificate

        doc = load_certificate(cert)
        summary = {
            "certificate_id": doc["certificate_id"],
            "certificate_digest": certificate_digest(doc),
            "issued_at": doc["issued_at"],
            "issuer_key_id": doc["issuer"]["key_id"],
            "modality": doc["deletion"]["modality"],
            "epsilon": doc["privacy"]["epsilon"],
            "delta": doc["privacy"]["delta"],
            "sigma": doc["privacy"]["sigma"],
            "sensitivity": doc["privacy"]["sensitivity"],
            "sensitivity_method": doc["privacy"]["sensitivity_method"],
            "cumulative_epsilon": doc["accounting"]["cumulative_epsilon"],
            "sequence_number": doc["accounting"]["sequence_number"],
            "previous_certificate": doc["accounting"]["previous_certificate"],
            "model_manifest_digest": doc["subject_model"]["post_deletion"]["manifest_digest"],
            "model_file_digest": doc["subject_model"]["post_deletion"]["file_digest"],
            "verified": False,
        }
        if as_json:
            click.echo(json.dumps(summary, indent=2))
            return
        click.echo("(not verified: run 'mbd-cert verify' to check these claims)")
        for key, value in summary.items():
            if key != "verified":
                click.echo(f"{key:>24}  {value}")


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
