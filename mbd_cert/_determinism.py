"""A cheap test that an architecture's objective is deterministic (SPEC.md, R-ARCH-7).

Level 2 recomputes the saliency mask and the update from the architecture's
objectives. An objective that draws random numbers (dropout, sampling, noise from
torch or numpy) therefore gives a verifier another mask than the issuer's, or makes
``torch.func.vmap`` reject the random operation. The issuer and level 2 each evaluate
the objective twice on a few probe samples and compare the values bit for bit before
any saliency score is computed.

Stability: internal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from mbd_cert.errors import InputError

CODE_OBJECTIVE_NONDETERMINISTIC = "E_OBJECTIVE_NONDETERMINISTIC"
# Samples of the two test evaluations. Two forward passes of 8 samples cost far less
# than the per-sample gradients that follow, and a random draw per sample shows on
# any of them.
PROBE_SAMPLES = 8


def require_deterministic(
    objective: Callable[[torch.nn.Module, Mapping[str, Any]], torch.Tensor],
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
    count = min(PROBE_SAMPLES, int(batch["present"].shape[0]))
    rows = torch.arange(count)
    sub = {"inputs": {m: x.index_select(0, rows) for m, x in batch["inputs"].items()},
           "present": batch["present"].index_select(0, rows),
           "label": batch["label"].index_select(0, rows)}
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
