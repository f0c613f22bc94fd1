"""Calibrate the Gaussian noise of an issue and account for it in the model's chain.

:func:`sensitivity_for` gives the L2 sensitivity of the chosen method,
:func:`calibrated_sigma` the analytic Gaussian sigma for it, :func:`chain_account` the
cumulative epsilon with the earlier deletions (enforcing the budget), :func:`draw_noise`
the noise itself and :func:`apply_noise` the released tensors (SPEC.md, section 6.4).

Stability: internal.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from mbd_cert import accounting, chain, errors, mechanism
from mbd_cert._issue_checks import (
    reject_negative_zero,
    reject_noise_below_resolution,
    reject_nonfinite,
)
from mbd_cert._numbers import exact_number

if TYPE_CHECKING:  # mbd_cert.issue imports this module
    from mbd_cert.issue import IssueOptions


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


def apply_noise(
    pre_tensors: Mapping[str, np.ndarray],
    start: Mapping[str, np.ndarray],
    removed: Sequence[str],
    names: Sequence[str],
    masks: Mapping[str, np.ndarray],
    displacement: Mapping[str, np.ndarray],
    noise: Mapping[str, np.ndarray],
    sigma: float,
    sensitivity_method: str,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Add the update and the noise to the masked entries, rounded to each tensor's dtype.

    ``start`` is the checkpoint's model with the ``removed`` tensors zeroed.

    Returns:
        The released model's tensors, and the sorted names of the tensors that changed.

    Raises:
        IssuanceError: A changed entry was negative zero (``E_DIFF_NOT_EXACT``), a noised
            value is not finite (``E_MODEL_NONFINITE``), or the noise is below the
            dtype's resolution (``E_NOISE_BELOW_RESOLUTION``).
    """
    post_tensors = dict(start)
    for name in names:
        before = pre_tensors[name].astype(np.float64)
        moved = before + displacement[name] + np.where(masks[name], noise[name], 0.0)
        # An overflow to infinity is refused below with a hint, not warned about here.
        with np.errstate(over="ignore"):
            post_tensors[name] = np.where(masks[name], moved, before).astype(
                pre_tensors[name].dtype)
    changed = sorted(set(removed) | {n for n in names if masks[n].any()})
    reject_negative_zero(pre_tensors, {n: None if n in removed else masks[n] for n in changed})
    # Noise far beyond the dtype's range (a huge sensitivity) overflows to infinity.
    # This runs first, because the spacing of an infinite value is NaN.
    reject_nonfinite({n: post_tensors[n] for n in names}, "the noised model", hint=(
        f"sigma = {exact_number(sigma)} is too large for the model's dtype; nothing was written: "
        "raise --epsilon or lower the sensitivity (--clip-norm, or --sensitivity when "
        "declared)"))
    reject_noise_below_resolution(post_tensors, {n: masks[n] for n in names}, sigma,
                                  sensitivity_method)
    return post_tensors, changed
