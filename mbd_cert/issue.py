"""Delete a modality from a trained model and write a signed certificate.

The steps follow SPEC.md, section 6: structural removal, saliency mask, masked update,
clip, calibrated Gaussian noise, then the released model, the audit bundle and the
certificate, all written to a temporary directory that replaces the output directory
only when everything is complete.

Stability: public (:func:`issue`, :class:`IssueOptions`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mbd_cert import errors
from mbd_cert._issue_inputs import (
    config_from_certificate,
    previous_chain,
    read_inputs,
    warn_other_issuers,
)
from mbd_cert._issue_options import (
    SENSITIVITY_METHODS,
    WEAK_DELTA,
    WEAK_EPSILON,
    validate_options,
    warn_weak_settings,
)
from mbd_cert._issue_privacy import (
    calibrated_sigma,
    chain_account,
    draw_noise,
    sensitivity_for,
)
from mbd_cert._paths import reject_output_over_inputs
from mbd_cert._utility_loss import utility_losses, utility_pair

# The helpers are re-exported because callers and tests import them from here.
__all__ = [
    "SENSITIVITY_METHODS",
    "WEAK_DELTA",
    "WEAK_EPSILON",
    "IssueOptions",
    "calibrated_sigma",
    "chain_account",
    "config_from_certificate",
    "draw_noise",
    "issue",
    "previous_chain",
    "sensitivity_for",
    "validate_options",
]

logger = logging.getLogger(__name__)


@dataclass
class IssueOptions:
    """Parameters of one deletion (units in the field comments).

    Attributes:
        modality: The modality to delete, one of the architecture's modalities.
        epsilon: Privacy loss bound of this deletion (natural-log units), > 0.
        delta: Failure probability of the bound, in (0, 1).
        sensitivity_method: ``clip-bound`` (sensitivity = 2 * clip_norm, because two
            clipped displacements lie in the same L2 ball of radius clip_norm),
            ``reference-retrain`` (measured by leave-one-out reruns of the update, see
            :mod:`mbd_cert.sensitivity`) or ``declared`` (the issuer states
            ``sensitivity`` and is responsible for it).
        sensitivity: Required with ``declared``; L2 norm in parameter units.
        top_k_fraction: Share of eligible parameter entries in the mask, in (0, 1].
        eligible_groups: Tensor name prefixes the mask may select from; None selects
            the architecture default (fusion and the modality's generator).
        steps: Descent steps K of the masked update.
        learning_rate: Step size of the masked update.
        damping: Added to sqrt(Fisher) in the preconditioner.
        clip_norm: L2 bound C on the total displacement, in parameter units.
        seed: Seed of the sample draws that a verifier can repeat: the mask entries
            the proxy-quality check measures, and the probe sample each
            reference-retrain run leaves out. Recorded as ``saliency.seed``. The mask
            itself is deterministic, and the noise never uses this seed.
        noise_seed: Only for tests: makes the noise reproducible. Never recorded;
            None draws the noise from the operating system's randomness.
        force: Replace an existing output directory.
        issuer_name: Free text recorded as ``issuer.name``.
        previous: The certificate of the previous deletion of this model; None takes
            ``cert.json`` of the checkpoint directory when there is one.
        max_epsilon: Budget: refuse the deletion, writing nothing, when the cumulative
            epsilon of the chain would exceed this. None sets no budget.
        reference_runs: Leave-one-out reruns R of the ``reference-retrain`` method.
        safety_factor: Multiplier (>= 1) on the largest ``reference-retrain`` distance.
        proxy_sample_size: Mask entries whose true leave-one-out increment is measured
            for ``saliency.proxy_quality``; 0 skips the measurement.
        auditor_key: An X25519 public key: seal the audit bundle to it.
        threads: Torch intra-op CPU threads while the deletion runs (restored
            afterwards). One suits the bundled model, and a larger model gains from more.
            The proxy-quality check and the update's Fisher run on one more Python
            thread, alongside the saliency scores and the update.
            The certificate does not depend on it beyond floating-point reduction
            order, which level 2 tolerates (SPEC.md, R-SAL-3).
    """

    modality: str
    epsilon: float
    delta: float
    sensitivity_method: str = "clip-bound"
    sensitivity: float | None = None
    top_k_fraction: float = 0.02
    eligible_groups: list[str] | None = None
    steps: int = 3
    learning_rate: float = 1e-3
    damping: float = 1e-3
    clip_norm: float = 1e-3
    seed: int = 0
    noise_seed: int | None = None
    force: bool = False
    issuer_name: str = ""
    previous: Path | None = None
    max_epsilon: float | None = None
    reference_runs: int = 4
    safety_factor: float = 2.0
    proxy_sample_size: int = 64
    auditor_key: Any = None
    # One by default, because the default model's operations are small and threads
    # mostly wait for each other. On a 2-core machine shared with other processes,
    # `mbd-cert issue` on the synthetic checkpoint used 5.3 s of CPU with one thread and
    # 18 to 32 s with two (measured, docs/benchmarks.md). The trainer defaults to one
    # thread as well.
    threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


def issue(
    checkpoint_dir: Path,
    out_dir: Path,
    options: IssueOptions,
    private_key: Any,
    *,
    eval_set: Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Delete ``options.modality`` from the checkpoint and write the certificate.

    Args:
        checkpoint_dir: Directory with ``model.safetensors``, ``config.json`` and
            ``probe.safetensors`` (as ``mbd-cert train`` writes it), or the output
            directory of an earlier ``issue``: the deletion then continues its chain.
        out_dir: Output directory; it receives ``model.safetensors``, ``cert.json``,
            ``diff.safetensors``, ``probe.safetensors``, the copy of the evaluation
            set, ``chain-NNNNN.json`` copies of the earlier certificates and, with an
            auditor key, ``audit-bundle.sealed``.
        options: The deletion parameters.
        private_key: The issuer's Ed25519 private key.
        eval_set: Held-out samples in the probe layout for utility metrics; defaults to
            ``checkpoint_dir/eval.safetensors`` when that file exists.
        progress: Called as ``progress(stage, done, total)`` during long stages.

    Returns:
        The signed certificate.

    Raises:
        InputError: Bad options, unusable checkpoint files (including a probe set of
            fewer than 20 samples, a label outside [-3, 3], or an evaluation set with
            training members: ``E_DATA_MALFORMED``), torch is not installed,
            ``out_dir`` is not empty and ``force`` is not set (``E_OUTPUT_EXISTS``),
            ``out_dir`` is an input or contains one (``E_OUTPUT_IS_INPUT``), or the
            model, probe set or evaluation set changed during the run
            (``E_SAFETENSORS_CHANGED``).
        IssuanceError: The deletion cannot be certified (for example the budget
            ``max_epsilon`` would be exceeded, or the diff cannot be made exact).
        VerificationFailed: The chain of earlier certificates is broken.
    """
    try:
        from mbd_cert import _issue_steps
    except ModuleNotFoundError as missing:
        if missing.name != "torch":
            raise
        # A verification-only install (pip install mbd-cert) has no torch.
        raise errors.InputError(
            "issuing a certificate needs torch, which is not installed",
            hint=errors.TORCH_EXTRA_HINT,
        ) from None

    validate_options(options)
    checkpoint_dir = Path(checkpoint_dir)
    # The outputs replace out_dir as a whole, so it must not contain an input (R-ISS-4).
    reject_output_over_inputs(out_dir, [
        ("--checkpoint", checkpoint_dir), ("--previous", options.previous),
        ("--eval-set", eval_set),
    ])
    previous = previous_chain(checkpoint_dir, options)
    warn_other_issuers(previous, private_key)
    warn_weak_settings(options)
    # Budget (SPEC.md, R-CHAIN-5): refuse before any work, so nothing is written.
    planned = sensitivity_for(options)
    chain_account(
        previous,
        options,
        calibrated_sigma(previous, options, planned),
        planned,
    )
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not options.force:
        raise errors.InputError(
            f"output directory {out_dir} exists and is not empty",
            hint="choose another --out or pass --force to replace it",
            code="E_OUTPUT_EXISTS",
        )
    inputs = read_inputs(checkpoint_dir, previous, eval_set, options.modality)

    replacing = options.force and (out_dir / "cert.json").is_file()
    doc = _issue_steps.run(
        config_doc=inputs.config_doc,
        model_path=inputs.model_path,
        pre_model=inputs.pre_model,
        probe=inputs.probe,
        probe_path=inputs.probe_path,
        probe_digests=inputs.probe_digests,
        evaluation=inputs.evaluation,
        eval_path=inputs.eval_path,
        eval_digests=inputs.eval_digests,
        previous=previous,
        out_dir=out_dir,
        options=options,
        private_key=private_key,
        progress=progress,
    )
    if replacing:
        # Each issue is a separate release: if the replaced model was published, both
        # noisy releases exist and their privacy costs add up outside any chain.
        logger.warning(
            "replaced the certificate in %s: if its model was published, this is a "
            "second release of the same deletion and its epsilon adds to the first. To "
            "delete another modality from a published release, pass that output as "
            "--checkpoint instead", out_dir)
    _warn_utility_loss(doc)
    return doc


def _warn_utility_loss(doc: dict[str, Any]) -> None:
    """Warn when the released model is far worse than the model before, modality missing."""
    pair = utility_pair(doc)
    losses = utility_losses(*pair) if pair else []
    if losses:
        logger.warning(
            "the released model lost much of its utility on the evaluation set (%s) "
            "against the model before the deletion with %s missing. The certificate is "
            "valid, but the noise (sigma %s) may dominate the released weights: "
            "consider a larger epsilon or a smaller --top-k before publishing",
            "; ".join(losses), doc["deletion"]["modality"], doc["privacy"]["sigma"])
