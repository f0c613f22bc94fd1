"""Command issue of the ``mbd-cert`` CLI.

Stability: internal; the command line itself is documented in README.md and SPEC.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mbd_cert._cli_commands import GuardFactory, progress_bar, require_directory
from mbd_cert._interrupts import output_left_text
from mbd_cert._paths import reject_output_over_inputs


def register(main: click.Group, guarded: GuardFactory) -> None:
    """Add the issue command to the ``main`` group."""

    @main.command()
    @click.option(
        "--checkpoint",
        type=click.Path(path_type=Path),
        required=True,
        help="Checkpoint directory written by 'mbd-cert train', or the output "
        "directory of an earlier 'mbd-cert issue' to continue its chain.",
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
        # The upper bound is mbd_cert.sensitivity.MAX_RUNS, which imports numpy.
        help="Leave-one-out reruns for --sensitivity-method reference-retrain, "
        "an integer in [1, 64].",
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
        help="L2 sensitivity in parameter units, > 0 (only with --sensitivity-method "
        "declared).",
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
        default=3,
        show_default=True,
        help="Steps of the masked update (full batch on the probe set), in [0, 1000]. "
        "The clip (--clip-norm) scales the update down to its bound. On the bundled "
        "models, at the default learning rate and clip, a single deletion reaches it "
        "within 2 steps (a later deletion of a chain can stop just short), and more "
        "steps then hardly change the direction of the released update. More steps "
        "make a release without the clip easier for level 2 to detect. '-v' logs the "
        "norm before the clip and the scale.",
    )
    @click.option(
        "--learning-rate",
        type=float,
        default=1e-3,
        show_default=True,
        help="Step size of the masked update, in parameter units per "
        "preconditioned gradient, > 0.",
    )
    @click.option(
        "--damping",
        type=float,
        default=1e-3,
        show_default=True,
        help="Added to sqrt(Fisher) in the update's preconditioner, so a step is "
        "at most learning rate / damping per unit of gradient; > 0.",
    )
    @click.option(
        "--clip-norm",
        type=float,
        default=1e-3,
        show_default=True,
        help="L2 bound on the total update, in parameter units, > 0.",
    )
    @click.option(
        "--seed",
        type=int,
        default=0,
        show_default=True,
        help="Seed of the sample draws, an integer in [0, 2**53 - 1], recorded in the "
        "certificate (saliency.seed): "
        "which mask entries the proxy-quality check measures (--proxy-sample) and which "
        "probe sample each reference-retrain run leaves out. It does not set the noise, "
        "which is drawn from fresh operating-system randomness and never recorded, and "
        "the mask does not depend on it.",
    )
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
        "chain (natural log units, at --delta) would exceed this; > 0.",
    )
    @click.option(
        "--proxy-sample",
        "proxy_sample_size",
        type=int,
        default=64,
        show_default=True,
        help="Mask entries whose true leave-one-out increment is measured to rate "
        "the saliency proxy, an integer in [0, 10000] (0 skips).",
    )
    @click.option(
        "--auditor-key",
        type=click.Path(path_type=Path),
        default=None,
        help="Auditor's X25519 public key: also write the audit bundle sealed to "
        "it (audit-bundle.sealed).",
    )
    @click.option(
        "--threads",
        type=click.IntRange(min=1, max=1024),
        default=1,
        show_default=True,
        help="Torch CPU threads per stage while the deletion runs. The proxy-quality "
        "check always runs on one more thread, alongside the update. One suits the "
        "bundled model; raise it for a model with large layers.",
    )
    @click.option("--force", is_flag=True, help="Replace an existing output directory.")
    # True until the output is in place; from then on Ctrl-C is held (mbd_cert._interrupts).
    @guarded(interrupted=output_left_text)
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
        threads: int,
        force: bool,
    ) -> None:
        """Delete a modality from a trained model and write a signed certificate.

        CHECKPOINT may be the output of an earlier issue: the deletion then continues
        that model's chain of certificates.
        """
        # Checked before the imports below, which load torch (1 to 2 s).
        require_directory(checkpoint, "checkpoint directory",
                           "pass the directory that 'mbd-cert train' or an earlier "
                           "'mbd-cert issue' wrote")
        reject_output_over_inputs(out_dir, [
            ("--checkpoint", checkpoint), ("--key", key_path), ("--previous", previous),
            ("--eval-set", eval_set), ("--auditor-key", auditor_key),
        ])
        from mbd_cert import sealing, signing
        from mbd_cert._interrupts import command_window
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
            threads=threads,
        )
        update, close = progress_bar()
        with command_window() as window:
            try:
                doc = run_issue(
                    checkpoint, out_dir, options, private_key, eval_set=eval_set,
                    progress=update,
                )
            finally:
                close()
            _print_summary(doc, modality, out_dir)
        if window.interrupted:
            click.echo(f"Ctrl-C or SIGTERM arrived after the new output was moved into {out_dir}; "
                       "the deletion is complete", err=True)


def _print_summary(doc: dict[str, Any], modality: str, out_dir: Path) -> None:
    from mbd_cert._numbers import exact_number
    from mbd_cert._utility_loss import summary_line

    privacy = doc["privacy"]
    click.echo(
        f"deleted {modality}: certificate {doc['certificate_id']} in {out_dir}/cert.json "
        f"(epsilon {exact_number(privacy['epsilon'])}, delta {exact_number(privacy['delta'])}, "
        f"sigma {exact_number(privacy['sigma'])}, "
        f"{privacy['noise_dimension']} masked entries)"
    )
    account = doc["accounting"]
    # The naive sum holds only at the sum of the deltas of the chain, not at this delta.
    click.echo(
        f"deletion {account['sequence_number']} of this model: cumulative epsilon "
        f"{exact_number(account['cumulative_epsilon'])} at delta "
        f"{exact_number(account['delta'])} (RDP {exact_number(account['rdp_epsilon'])}; "
        f"naive sum {exact_number(account['naive_epsilon'])}, at the sum of the deltas)"
    )
    # The plain audit bundle rebuilds the pre-deletion model and contains training
    # samples (SPEC.md section 12.3). Verifying the chain needs the earlier certificates.
    bundle = doc["audit_bundle"]
    public = ["cert.json", "model.safetensors",
              *(link["path"] for link in account.get("chain", []))]
    if "sealed" in bundle:
        public.append(bundle["sealed"]["path"])
    confidential = [bundle["diff"]["path"], bundle["probe"]["path"]]
    if (out_dir / "eval.safetensors").exists():
        confidential.append("eval.safetensors")
    utility = summary_line(doc)
    if utility is not None:
        click.echo(utility)
    click.echo(f"publish: {', '.join(public)}")
    click.echo(f"confidential, for auditors only: {', '.join(confidential)} (they rebuild "
               "the pre-deletion model and contain training and held-out samples)")
