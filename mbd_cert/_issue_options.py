"""Validate the options of an issue before any work, and warn about weak ones.

:func:`validate_options` rejects a value out of range with the option's flag and a
typical value. :func:`warn_weak_settings` logs valid settings that make the certified
epsilon mean little, and :func:`default_eligible_groups` gives the mask's default
tensor groups.

Stability: internal.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from mbd_cert import errors
from mbd_cert._json_values import SAFE_INTEGER_MAX
from mbd_cert._work_limits import MAX_UPDATE_STEPS

if TYPE_CHECKING:  # mbd_cert.issue imports this module
    from mbd_cert.issue import IssueOptions

logger = logging.getLogger(__name__)

SENSITIVITY_METHODS = ("clip-bound", "reference-retrain", "declared")

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


def default_eligible_groups(modality: str) -> list[str]:
    """Return the default mask groups: the fusion network and the modality's generator.

    The deleted modality's own encoder is removed outright, and the head and the
    other encoders carry most of the utility, so noise is kept off them.
    """
    return ["fusion", f"generators.{modality}"]



# Delta is the probability that the epsilon bound fails. The usual advice is a delta
# well below 1/n for n training samples, so above 1e-3 the guarantee is weak whatever
# epsilon is.
WEAK_DELTA = 1e-3
# Epsilon bounds the natural log of the factor by which the released model's
# distribution may change with the deleted data. Above 10 the factor exceeds e^10,
# about 22,000, so an observer's odds on any fact about that data may grow that much
# and the bound rules out almost no inference.
WEAK_EPSILON = 10.0


def warn_weak_settings(options: IssueOptions) -> None:
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
