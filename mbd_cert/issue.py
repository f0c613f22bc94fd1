"""Delete a modality from a trained model and write a signed certificate.

The steps follow SPEC.md, section 6: structural removal, saliency mask, masked update,
clip, calibrated Gaussian noise, then the released model, the audit bundle and the
certificate, all written to a temporary directory that replaces the output directory
only when everything is complete.

Stability: public (:func:`issue`, :class:`IssueOptions`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbd_cert import _safetensors, accounting, certificate, chain, errors, mechanism
from mbd_cert._issue_checks import check_evaluation_set, check_labels, check_probe_size
from mbd_cert._json_values import SAFE_INTEGER_MAX
from mbd_cert._numbers import exact_number
from mbd_cert._paths import reject_output_over_inputs
from mbd_cert._utility_loss import utility_losses, utility_pair
from mbd_cert._work_limits import MAX_UPDATE_STEPS
from mbd_cert.checkpoint import load_probe_set, read_config

logger = logging.getLogger(__name__)

SENSITIVITY_METHODS = ("clip-bound", "reference-retrain", "declared")


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
    threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


# Per option: the command-line flag, and a hint with a typical value and its unit.
# Messages name both, because library callers know the field and CLI users the flag.
_OPTION_HELP = {
    "epsilon": ("--epsilon", "the privacy loss of this deletion, in natural-log units, "
                "such as 1"),
    "delta": ("--delta", "a probability well below 1 / (number of samples), such as 1e-5"),
    "top_k_fraction": ("--top-k", "the share of eligible entries in the mask, such as 0.02"),
    "learning_rate": ("--learning-rate", "the update's step size per preconditioned "
                      "gradient, in parameter units, such as 0.001"),
    "damping": ("--damping", "added to sqrt(Fisher) in the preconditioner, such as 0.001"),
    "clip_norm": ("--clip-norm", "the L2 bound on the update, in parameter units, "
                  "such as 0.001"),
    "sensitivity": ("--sensitivity", "an L2 norm in parameter units, at least 2 x clip_norm "
                    "for the clip bound"),
    "max_epsilon": ("--max-epsilon", "the cumulative epsilon budget of the model's chain, "
                    "in natural-log units, such as 4"),
}


def _require_positive(name: str, value: float, *, upper: float | None = None) -> None:
    flag, typical = _OPTION_HELP[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise errors.InputError(
            f"{name} ({flag}) must be a number, got {value!r}",
            hint=f"pass {typical}", code="E_PARAMETER_INVALID",
        )
    if not math.isfinite(value) or value <= 0 or (upper is not None and value > upper):
        bound = f"in (0, {upper}]" if upper is not None else "finite and > 0"
        raise errors.InputError(
            f"{name} ({flag}) must be {bound}, got {value!r}",
            hint=f"pass {typical}", code="E_PARAMETER_INVALID",
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
            f"delta (--delta) must be in (0, 1), got {options.delta!r}",
            hint=f"pass {_OPTION_HELP['delta'][1]}", code="E_PARAMETER_INVALID",
        )
    _require_positive("top_k_fraction", options.top_k_fraction, upper=1.0)
    _require_positive("learning_rate", options.learning_rate)
    _require_positive("damping", options.damping)
    _require_positive("clip_norm", options.clip_norm)
    if isinstance(options.steps, bool) or not isinstance(options.steps, int) or not (
            0 <= options.steps <= MAX_UPDATE_STEPS):
        raise errors.InputError(
            f"steps (--steps) must be an integer in [0, {MAX_UPDATE_STEPS}], "
            f"got {options.steps!r}",
            hint="level 2 replays every step, so verifiers cap them (SPEC.md, section 10)",
            code="E_PARAMETER_INVALID",
        )
    if options.sensitivity_method not in SENSITIVITY_METHODS:
        raise errors.InputError(
            f"sensitivity method must be one of {', '.join(SENSITIVITY_METHODS)}, "
            f"got {options.sensitivity_method!r}",
            code="E_PARAMETER_INVALID",
        )
    if options.sensitivity is not None and options.sensitivity_method != "declared":
        # Ignoring it would calibrate the noise for another sensitivity than the user gave.
        raise errors.InputError(
            f"a sensitivity value ({options.sensitivity!r}) applies only to the 'declared' "
            f"method, not to {options.sensitivity_method!r}",
            hint="add --sensitivity-method declared, or drop --sensitivity",
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
    if options.max_epsilon is not None:
        _require_positive("max_epsilon", options.max_epsilon)
    if options.sensitivity_method == "reference-retrain":
        from mbd_cert.sensitivity import check_parameters

        check_parameters(options.reference_runs, options.safety_factor)
    seed = options.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SAFE_INTEGER_MAX:
        # The certificate records it as a JSON integer, which must be exact as a double.
        raise errors.InputError(
            f"seed (--seed) must be an integer in [0, 2**53 - 1], got {seed!r}",
            hint="pass a non-negative integer such as 0",
            code="E_PARAMETER_INVALID",
        )
    threads = options.threads
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 1024:
        raise errors.InputError(
            f"threads (--threads) must be an integer in [1, 1024], got {threads!r}",
            hint="pass 1, or the number of CPU cores for a large model",
            code="E_PARAMETER_INVALID",
        )
    size = options.proxy_sample_size
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= 10_000:
        raise errors.InputError(
            f"proxy_sample_size (--proxy-sample) must be an integer in [0, 10000], "
            f"got {size!r}",
            hint="pass 64, or 0 to skip the proxy-quality check",
            code="E_PARAMETER_INVALID",
        )


def sensitivity_for(options: IssueOptions) -> float:
    """Return the L2 sensitivity Delta the noise is calibrated for (SPEC.md, R-PRIV-2)."""
    if options.sensitivity_method == "clip-bound":
        return 2.0 * options.clip_norm
    if options.sensitivity_method == "reference-retrain":
        # Measured later; mu = sensitivity / sigma does not depend on it, so the
        # budget check before any work is exact with a unit sensitivity.
        return 1.0
    assert options.sensitivity is not None
    return float(options.sensitivity)


# Doublings of the step by which calibrated_sigma raises a first deletion's sigma. The
# mu-GDP conversion lands at most a few hundred units in the last place above epsilon
# (344 over a grid of 630 epsilons, deltas and sensitivities), far below 2**40 of them.
_SIGMA_STEP_DOUBLINGS = 40


def calibrated_sigma(
    previous: Sequence[chain.ChainLink], options: IssueOptions, sensitivity: float
) -> float:
    """Return the analytic Gaussian sigma for the deletion (SPEC.md, R-PRIV-3, R-CHAIN-11).

    A first deletion states its epsilon as the chain's cumulative epsilon. The mu-GDP
    conversion of the analytic sigma returns that epsilon up to rounding, sometimes a
    few units in the last place above it, so sigma is raised by the smallest doubling
    step that brings the conversion to epsilon or below. The added noise is below one
    part in 10**12 of sigma.
    """
    sigma = mechanism.analytic_gaussian_sigma(options.epsilon, options.delta, sensitivity)
    if previous:
        return sigma
    step = math.ulp(sigma)
    candidate = sigma
    for _ in range(_SIGMA_STEP_DOUBLINGS):
        entry = accounting.ChainEntry(options.epsilon, options.delta, candidate, sensitivity)
        if accounting.account_chain([entry], options.delta).epsilon <= options.epsilon:
            return candidate
        candidate = sigma + step
        step *= 2.0
    # Not reached on any tested input. chain_account then states the conversion, which
    # is valid but above epsilon.
    return sigma


def chain_account(
    previous: list[chain.ChainLink], options: IssueOptions, sigma: float, sensitivity: float
) -> accounting.ChainAccount:
    """Compose the earlier deletions and this one, and enforce ``max_epsilon``.

    Raises:
        IssuanceError: The cumulative epsilon at ``options.delta`` would exceed
            ``options.max_epsilon`` (``E_BUDGET_EXCEEDED``).
    """
    entries = [
        accounting.ChainEntry(
            link.doc["privacy"]["epsilon"],
            link.doc["privacy"]["delta"],
            link.doc["privacy"]["sigma"],
            link.doc["privacy"]["sensitivity"],
        )
        for link in previous
    ]
    entries.append(accounting.ChainEntry(options.epsilon, options.delta, sigma, sensitivity))
    account = accounting.account_chain(entries, options.delta)
    if not previous and account.epsilon < options.epsilon:
        # One Gaussian mechanism calibrated for (epsilon, delta) is exactly mu-GDP, so
        # the conversion returns epsilon itself up to rounding, often one unit in the
        # last place below it (0.9999999999999999 for 1). With calibrated_sigma's sigma
        # it is never above, so epsilon is a valid bound (R-ACC-2) and the one asked for.
        account = dataclasses.replace(account, epsilon=options.epsilon)
    if options.max_epsilon is not None and account.epsilon > options.max_epsilon:
        raise errors.IssuanceError(
            f"deletion {account.count} would raise the cumulative epsilon to "
            f"{exact_number(account.epsilon)} at delta {exact_number(options.delta)}, above "
            f"the budget --max-epsilon {exact_number(options.max_epsilon)} (earlier "
            f"deletions: {len(previous)})",
            hint="issue with a smaller --epsilon, or raise the budget; nothing was written",
            code="E_BUDGET_EXCEEDED",
        )
    return account


def previous_chain(checkpoint_dir: Path, options: IssueOptions) -> list[chain.ChainLink]:
    """Load the chain this deletion continues, oldest first; empty for a first deletion.

    The previous certificate is ``options.previous`` or, when the checkpoint directory is
    the output of an earlier ``issue``, its ``cert.json``. Its own earlier links are
    looked up beside it (the ``chain-NNNNN.json`` copies the issuer writes).

    Raises:
        InputError: The previous certificate is missing or malformed.
        VerificationFailed: Its chain is broken (``E_CHAIN_*``).
        IssuanceError: The checkpoint's model is not the model the previous
            certificate released (``E_CHAIN_BROKEN``).
    """
    path = options.previous
    if path is None and (checkpoint_dir / "cert.json").is_file():
        path = checkpoint_dir / "cert.json"
    if path is None:
        return []
    doc = certificate.load_certificate(path)
    links = chain.walk_chain(doc, Path(path).parent)
    model_path = checkpoint_dir / "model.safetensors"
    if not model_path.exists():
        raise errors.FileMissing(f"model not found: {model_path}")
    digests = _safetensors.digest_file(model_path)
    released = doc["subject_model"]["post_deletion"]
    if digests.manifest_digest != released["manifest_digest"]:
        raise errors.IssuanceError(
            f"{model_path} has manifest digest {digests.manifest_digest}, but the previous "
            f"certificate {path} released {released['manifest_digest']}",
            hint="continue a chain from the model the previous deletion released",
            code="E_CHAIN_BROKEN",
        )
    return links


def config_from_certificate(doc: dict[str, Any]) -> dict[str, Any]:
    """Rebuild a checkpoint ``config.json`` from a certificate's released architecture."""
    architecture = doc["subject_model"]["architecture"]
    return {
        "architecture": architecture["name"],
        "architecture_version": architecture["version"],
        "config": dict(architecture["config"]),
    }


def draw_noise(
    shapes: dict[str, tuple[int, ...]], sigma: float, noise_seed: int | None
) -> dict[str, np.ndarray]:
    """Draw N(0, sigma^2) float64 noise per tensor.

    The default seed comes from :mod:`secrets` and is never stored, because anyone who
    knew it could subtract the noise and undo the privacy guarantee.
    """
    seed = noise_seed if noise_seed is not None else secrets.randbits(128)
    generator = np.random.default_rng(seed)
    return {
        name: generator.normal(0.0, sigma, size=shape) for name, shape in sorted(shapes.items())
    }


def _warn_other_issuers(previous: Sequence[chain.ChainLink], private_key: Any) -> None:
    """Warn when earlier certificates of the chain were signed with other keys.

    Such a chain is valid, but a verifier must then trust every issuer key of it.
    """
    from mbd_cert import signing

    own_key_id = signing.key_id(private_key.public_key())
    others = sorted({link.doc["issuer"]["key_id"] for link in previous} - {own_key_id})
    if others:
        logger.warning(
            "earlier certificates of this chain were signed with other keys (%s). "
            "Verifiers will need --key for each of them as well as for this key %s",
            ", ".join(others), own_key_id)


# Delta is the probability that the epsilon bound fails. The usual advice is a delta
# well below 1/n for n training samples, so above 1e-3 the guarantee is weak whatever
# epsilon is.
WEAK_DELTA = 1e-3
# Epsilon bounds the natural log of the factor by which the released model's
# distribution may change with the deleted data. Above 10 the factor exceeds e^10,
# about 22,000, so an observer's odds on any fact about that data may grow that much
# and the bound rules out almost no inference.
WEAK_EPSILON = 10.0


def _warn_weak_settings(options: IssueOptions) -> None:
    """Warn about valid options that make the certified epsilon mean little."""
    bound = 2.0 * options.clip_norm
    if options.sensitivity_method == "declared" and options.sensitivity is not None \
            and options.sensitivity < bound:
        logger.warning(
            "the declared sensitivity %g is below the clip bound 2 * clip_norm = %g, so the "
            "certified epsilon holds only if your own sensitivity analysis is right, and "
            "verifiers cannot check it", options.sensitivity, bound)
    if options.sensitivity_method == "reference-retrain" and options.reference_runs < 4:
        logger.warning(
            "%d reference rerun(s) give a rough estimate of the sensitivity, not a bound. "
            "The clip bound (%g) needs no estimate", options.reference_runs, bound)
    if options.sensitivity_method == "reference-retrain" and options.safety_factor < 2:
        # With factor 1 the estimate is the largest of R distances. Each of level 2's
        # own 4 neighbours is another draw, so one of them is the largest of all R + 4
        # with probability about 4 / (R + 4).
        logger.warning(
            "a safety factor of %g leaves little margin: level 2 also leaves out 4 samples "
            "of its own choosing and fails when one moves the update beyond the stated "
            "sensitivity, which at a factor of 1 with %d run(s) happens in about %d %% of "
            "verifications. Use a factor of 2 or more", options.safety_factor,
            options.reference_runs, round(400 / (options.reference_runs + 4)))
    if options.epsilon > WEAK_EPSILON:
        logger.warning(
            "epsilon %g is large: the guarantee lets an observer's odds on the deleted "
            "data grow by a factor of up to e^%g, so it rules out almost nothing. Use an "
            "epsilon of at most %g, e.g. 1", options.epsilon, options.epsilon, WEAK_EPSILON)
    if options.delta > WEAK_DELTA:
        logger.warning(
            "delta %g is large: the epsilon guarantee may fail with that probability. "
            "Use a delta well below 1 / (number of training samples), e.g. 1e-5",
            options.delta)


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
    _warn_other_issuers(previous, private_key)
    _warn_weak_settings(options)
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
    probe_path = checkpoint_dir / "probe.safetensors"
    if not previous:
        config_doc = read_config(checkpoint_dir / "config.json")
    else:
        # The model is the one the previous certificate released (checked above), so
        # its config is the certified one. A config.json beside it may be the training
        # config, which does not list the earlier deletions.
        config_doc = config_from_certificate(previous[-1].doc)
        if (checkpoint_dir / "config.json").exists() and \
                read_config(checkpoint_dir / "config.json") != config_doc:
            logger.warning("%s differs from the config the previous certificate released; "
                           "using the certificate's", checkpoint_dir / "config.json")
        if not probe_path.exists():
            probe_path = checkpoint_dir / previous[-1].doc["audit_bundle"]["probe"]["path"]
    model_path = checkpoint_dir / "model.safetensors"
    if not model_path.exists():
        raise errors.FileMissing(f"model not found: {model_path}")
    # Each input is read in one pass that hashes the bytes it parses, so the digests
    # committed, and the copies written, can be checked against what was used (R-ISS-5).
    # NOTE: a first deletion reads config.json above, on its own. A checkout that
    # replaces it and the model between the two reads pairs the new model with the old
    # config.
    pre_model = _safetensors.load_file(model_path)
    if previous:
        _check_released_model(model_path, pre_model.digests, previous[-1])
    probe, probe_digests = load_probe_set(probe_path)
    # Rules that only the issuer applies (SPEC.md, R-PRB-3 to R-PRB-5).
    check_labels(probe, probe_path)
    check_probe_size(probe, probe_path)
    if eval_set is None and (checkpoint_dir / "eval.safetensors").exists():
        eval_set = checkpoint_dir / "eval.safetensors"
    evaluation = None
    eval_digests = None
    if eval_set is None:
        logger.warning(
            "no evaluation set: the certificate's utility metrics will only state that "
            "none was given, and they are the only sign of a release that lost its "
            "utility. Pass --eval-set with held-out samples in the probe layout "
            "(mbd-cert train writes eval.safetensors)")
    else:
        evaluation, eval_digests = load_probe_set(eval_set, modalities=probe.modalities)
        check_evaluation_set(evaluation, eval_set, options.modality)

    replacing = options.force and (out_dir / "cert.json").is_file()
    doc = _issue_steps.run(
        config_doc=config_doc,
        model_path=model_path,
        pre_model=pre_model,
        probe=probe,
        probe_path=probe_path,
        probe_digests=probe_digests,
        evaluation=evaluation,
        eval_path=eval_set,
        eval_digests=eval_digests,
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


def _check_released_model(model_path: Path, loaded: _safetensors.FileDigests,
                          link: chain.ChainLink) -> None:
    """Check that the model read is still the one the previous certificate released.

    :func:`previous_chain` checked the file before it was read for the deletion, so a
    mismatch here means the file changed in between.

    Raises:
        MalformedSafetensors: ``E_SAFETENSORS_CHANGED`` when the manifest digests differ.
    """
    released = link.doc["subject_model"]["post_deletion"]["manifest_digest"]
    if loaded.manifest_digest != released:
        raise errors.MalformedSafetensors(
            f"{model_path}: file changed while issue was running: it had the manifest "
            f"digest {released} that the previous certificate released, and then "
            f"{loaded.manifest_digest} when it was read for the deletion",
            code="E_SAFETENSORS_CHANGED",
            hint="keep the checkpoint's files unchanged until issue finishes and run issue "
            "again. Nothing was written",
        )


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
