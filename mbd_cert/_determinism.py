"""Cheap tests that level 2 can recompute an architecture's objective (SPEC.md, R-ARCH-7).

Level 2 recomputes the saliency mask and the update from the architecture's
objectives. An objective that draws random numbers (dropout, sampling, noise from
torch or numpy) therefore gives a verifier another mask or update than the issuer's,
or makes ``torch.func.vmap`` reject the random operation. Level 2 takes per-sample
gradients through ``vmap``, so an objective that ``vmap`` cannot run (``.item()``, a
Python branch on a tensor's value) cannot be verified at all. The issuer and level 2
run :func:`require_deterministic` on both objectives, on a few probe samples, before
any gradient is computed. Where they call ``vmap``, a refusal becomes
:class:`VmapFailure` and then, through :func:`vmap_error`, input error naming the
objective. Testing ``vmap`` up front would import ``torch._dynamo`` (1 s of
start-up measured on 2 cores) in every ``issue`` and level-2 run, also for
architectures whose gradients never take that path.

Stability: internal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from mbd_cert.arch._plugin_calls import is_vmap_rejection
from mbd_cert.errors import InputError

Objective = Callable[[torch.nn.Module, Mapping[str, Any]], torch.Tensor]

CODE_OBJECTIVE_NONDETERMINISTIC = "E_OBJECTIVE_NONDETERMINISTIC"
CODE_OBJECTIVE_VMAP_UNSUPPORTED = "E_OBJECTIVE_VMAP_UNSUPPORTED"
# Samples of the two test evaluations. Two forward passes cost far less than the
# gradients of the whole probe set that follow, and a random draw per sample shows on
# any of them.
PROBE_SAMPLES = 8


def require_deterministic(
    objective: Objective,
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    *,
    objective_name: str,
    hint: str,
) -> None:
    """Evaluate ``objective`` twice on the first probe samples and compare bit for bit.

    Args:
        objective: ``(model, batch)`` -> per-sample values.
        model: The model to evaluate; it is not changed.
        batch: Inputs, presence mask and labels of the probe samples.
        objective_name: The objective as the message names it ("the forget objective
            of 'name'").
        hint: What the user can do about it.

    Raises:
        InputError: ``E_OBJECTIVE_NONDETERMINISTIC``: the two evaluations differ.
    """
    sub = _first_samples(batch)
    count = int(sub["present"].shape[0])
    with torch.no_grad():
        first = objective(model, sub).detach().cpu()
        second = objective(model, sub).detach().cpu()
    if first.shape == second.shape and first.dtype == second.dtype and \
            first.numpy().tobytes() == second.numpy().tobytes():
        return
    differing = (int(torch.count_nonzero(first != second)) if first.shape == second.shape
                 else count)
    raise InputError(
        f"{objective_name} is not deterministic: two evaluations on the same weights and "
        f"{count} probe samples differ in {differing} of {count} values, and R-ARCH-7 "
        "requires the same values for the same weights and batch (no dropout, sampling or "
        "other randomness from torch or numpy)",
        hint=hint, code=CODE_OBJECTIVE_NONDETERMINISTIC)


class VmapFailure(RuntimeError):
    """``torch.func.vmap`` refused to run an objective; ``__cause__`` is torch's error."""


def run_vmapped(function: Callable[..., Any], *args: Any) -> Any:
    """Call a ``vmap``-transformed function; raise :class:`VmapFailure` when vmap refuses.

    Only torch's refusals count: their messages name vmap or a missing batching rule.
    Any other error, a memory error or a bug in mbd-cert's own code, passes through
    unchanged and is not blamed on the objective.
    """
    try:
        return function(*args)
    except RuntimeError as exc:
        if not is_vmap_rejection(exc):
            raise
        raise VmapFailure(str(exc)) from exc


def vmap_error(failure: VmapFailure, objective_name: str, hint: str) -> InputError:
    """Return the input error for an objective that ``vmap`` refused (R-ARCH-7)."""
    cause = failure.__cause__ if isinstance(failure.__cause__, RuntimeError) else failure
    if is_vmap_randomness(cause):
        return random_operation_error(objective_name, hint)
    reason = str(cause).splitlines()[0][:300] if str(cause) else type(cause).__name__
    return InputError(
        f"{objective_name} cannot run under torch.func.vmap ({reason}), and R-ARCH-7 "
        "requires it: per-sample gradients are computed with vmap(grad(...)), which "
        "rejects, among others, .item() and a Python branch on a tensor's value",
        hint=hint, code=CODE_OBJECTIVE_VMAP_UNSUPPORTED)


def _first_samples(batch: Mapping[str, Any]) -> dict[str, Any]:
    """Return the first ``PROBE_SAMPLES`` samples of ``batch`` (all when it has fewer)."""
    rows = torch.arange(min(PROBE_SAMPLES, int(batch["present"].shape[0])))
    return {"inputs": {m: x.index_select(0, rows) for m, x in batch["inputs"].items()},
            "present": batch["present"].index_select(0, rows),
            "label": batch["label"].index_select(0, rows)}


def is_vmap_randomness(exc: RuntimeError) -> bool:
    """Tell whether ``torch.func.vmap`` refused a random operation inside the objective."""
    return "randomness" in str(exc) and "vmap" in str(exc)


def random_operation_error(objective_name: str, hint: str) -> InputError:
    """Return the error for an objective that calls a random operation under ``vmap``.

    R-ARCH-7 forbids it even when the values do not depend on the draw, because level 2
    computes per-sample gradients only through ``vmap`` and could not recompute them.
    """
    return InputError(f"{objective_name} calls a random operation, which R-ARCH-7 forbids "
                      "even when its values do not depend on the draw: level 2 cannot "
                      "recompute its per-sample gradients", hint=hint,
                      code=CODE_OBJECTIVE_NONDETERMINISTIC)
