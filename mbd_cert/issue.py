"""Delete a modality from a trained model and write a signed certificate.

The steps follow SPEC.md, section 6: structural removal, saliency mask, masked update,
clip, calibrated Gaussian noise, then the released model, the audit bundle and the
certificate, all written to a temporary directory that replaces the output directory
only when everything is complete.

Stability: public (:func:`issue`, :class:`IssueOptions`).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbd_cert import errors
from mbd_cert.checkpoint import read_config, read_probe_set, read_tensors

logger = logging.getLogger(__name__)

SENSITIVITY_METHODS = ("clip-bound", "declared")


@dataclass
class IssueOptions:
    """Parameters of one deletion (units in the field comments).

    Attributes:
        modality: The modality to delete, one of the architecture's modalities.
        epsilon: Privacy loss bound of this deletion (natural-log units), > 0.
        delta: Failure probability of the bound, in (0, 1).
        sensitivity_method: ``clip-bound`` (sensitivity = 2 * clip_norm, because two
            clipped displacements lie in the same L2 ball of radius clip_norm) or
            ``declared`` (the issuer states ``sensitivity`` and answers for it).
        sensitivity: Required with ``declared``; L2 norm in parameter units.
        top_k_fraction: Share of eligible parameter entries in the mask, in (0, 1].
        eligible_groups: Tensor name prefixes the mask may select from; None selects
            the architecture default (fusion and the modality's generator).
        steps: Descent steps K of the masked update.
        learning_rate: Step size of the masked update.
        damping: Added to sqrt(Fisher) in the preconditioner.
        clip_norm: L2 bound C on the total displacement, in parameter units.
        seed: Recorded seed for any sampling in the saliency step.
        noise_seed: Only for tests: makes the noise reproducible. Never recorded;
            None draws the noise from the operating system's randomness.
        force: Replace an existing output directory.
        issuer_name: Free text recorded as ``issuer.name``.
    """

    modality: str
    epsilon: float
    delta: float
    sensitivity_method: str = "clip-bound"
    sensitivity: float | None = None
    top_k_fraction: float = 0.02
    eligible_groups: list[str] | None = None
    steps: int = 20
    learning_rate: float = 1e-3
    damping: float = 1e-3
    clip_norm: float = 1e-3
    seed: int = 0
    noise_seed: int | None = None
    force: bool = False
    issuer_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _require_positive(name: str, value: float, *, upper: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise errors.InputError(f"{name} must be a number, got {value!r}", code="E_PARAMETER_INVALID")
    if not math.isfinite(value) or value <= 0 or (upper is not None and value > upper):
        bound = f"in (0, {upper}]" if upper is not None else "finite and > 0"
        raise errors.InputError(
            f"{name} must be {bound}, got {value!r}", code="E_PARAMETER_INVALID"
        )


def validate_options(options: IssueOptions) -> None:
    """Check the numeric options before any work (SPEC.md, R-ISS-1).

    Raises:
        InputError: A value is out of range; the message names it and the bound.
    """
    _require_positive("epsilon", options.epsilon)
    _require_positive("delta", options.delta)
    if options.delta >= 1:
        raise errors.InputError(
            f"delta must be in (0, 1), got {options.delta!r}", code="E_PARAMETER_INVALID"
        )
    _require_positive("top_k_fraction", options.top_k_fraction, upper=1.0)
    _require_positive("learning_rate", options.learning_rate)
    _require_positive("damping", options.damping)
    _require_positive("clip_norm", options.clip_norm)
    if isinstance(options.steps, bool) or not isinstance(options.steps, int) or options.steps < 0:
        raise errors.InputError(
            f"steps must be an integer >= 0, got {options.steps!r}", code="E_PARAMETER_INVALID"
        )
    if options.sensitivity_method not in SENSITIVITY_METHODS:
        raise errors.InputError(
            f"sensitivity method must be one of {', '.join(SENSITIVITY_METHODS)}, "
            f"got {options.sensitivity_method!r}",
            code="E_PARAMETER_INVALID",
        )
    if options.sensitivity_method == "declared":
        if options.sensitivity is None:
            raise errors.InputError(
                "the 'declared' sensitivity method needs a sensitivity value",
                hint="pass --sensitivity, an L2 norm in parameter units",
                code="E_PARAMETER_INVALID",
            )
        _require_positive("sensitivity", options.sensitivity)


def sensitivity_for(options: IssueOptions) -> float:
    """Return the L2 sensitivity Delta the noise is calibrated for (SPEC.md, R-PRIV-2)."""
    if options.sensitivity_method == "clip-bound":
        return 2.0 * options.clip_norm
    assert options.sensitivity is not None
    return float(options.sensitivity)


def draw_noise(
    shapes: dict[str, tuple[int, ...]], sigma: float, noise_seed: int | None
) -> dict[str, np.ndarray]:
    """Draw N(0, sigma^2) float64 noise per tensor.

    The default seed comes from :mod:`secrets` and is never stored: whoever knew it
    could subtract the noise and undo the privacy guarantee.
    """
    seed = noise_seed if noise_seed is not None else secrets.randbits(128)
    generator = np.random.default_rng(seed)
    return {name: generator.normal(0.0, sigma, size=shape) for name, shape in sorted(shapes.items())}


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
            ``probe.safetensors`` (as ``mbd-cert train`` writes it).
        out_dir: Output directory; it receives ``model.safetensors``, ``cert.json``,
            ``diff.safetensors`` and ``probe.safetensors``.
        options: The deletion parameters.
        private_key: The issuer's Ed25519 private key.
        eval_set: Held-out samples in the probe layout for utility metrics; defaults to
            ``checkpoint_dir/eval.safetensors`` when that file exists.
        progress: Called as ``progress(stage, done, total)`` during long stages.

    Returns:
        The signed certificate.

    Raises:
        InputError: Bad options or unusable checkpoint files.
        IssuanceError: The deletion cannot be certified (for example the output exists
            and ``force`` is not set, or the diff cannot be made exact).
    """
    from mbd_cert import _issue_steps

    validate_options(options)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not options.force:
        raise errors.IssuanceError(
            f"output directory {out_dir} exists and is not empty",
            hint="choose another --out or pass --force to replace it",
            code="E_OUTPUT_EXISTS",
        )
    checkpoint_dir = Path(checkpoint_dir)
    config_doc = read_config(checkpoint_dir / "config.json")
    model_path = checkpoint_dir / "model.safetensors"
    if not model_path.exists():
        raise errors.FileMissing(f"model not found: {model_path}")
    pre_tensors = read_tensors(model_path)
    probe_path = checkpoint_dir / "probe.safetensors"
    probe = read_probe_set(probe_path)
    if eval_set is None and (checkpoint_dir / "eval.safetensors").exists():
        eval_set = checkpoint_dir / "eval.safetensors"
    evaluation = read_probe_set(eval_set, modalities=probe.modalities) if eval_set else None

    return _issue_steps.run(
        config_doc=config_doc,
        model_path=model_path,
        pre_tensors=pre_tensors,
        probe=probe,
        probe_path=probe_path,
        evaluation=evaluation,
        out_dir=out_dir,
        options=options,
        private_key=private_key,
        progress=progress,
    )
