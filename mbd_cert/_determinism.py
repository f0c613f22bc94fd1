"""Cheap tests that level 2 can recompute an architecture's objective (SPEC.md, R-ARCH-7).

Level 2 recomputes the saliency mask and the update from the architecture's
objectives. An objective that draws random numbers (dropout, sampling, noise from
torch or numpy) therefore gives a verifier another mask or update than the issuer's,
or makes ``torch.func.vmap`` reject the random operation. Level 2 takes per-sample
gradients through ``vmap``, so an objective that ``vmap`` cannot run (``.item()``, a
Python branch on a tensor's value) cannot be verified at all. The issuer and level 2
run :func:`require_recomputable` on both objectives, on a few probe samples, before
any gradient is computed.

Stability: internal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from mbd_cert._functional_call import call_with_tensors
from mbd_cert.errors import InputError

Objective = Callable[[torch.nn.Module, Mapping[str, Any]], torch.Tensor]

CODE_OBJECTIVE_NONDETERMINISTIC = "E_OBJECTIVE_NONDETERMINISTIC"
CODE_OBJECTIVE_VMAP_UNSUPPORTED = "E_OBJECTIVE_VMAP_UNSUPPORTED"
# Samples of the two test evaluations and of the vmap test. Two forward passes and 8
# per-sample gradients cost far less than the gradients of the whole probe set that
# follow, and a random draw per sample shows on any of them.
PROBE_SAMPLES = 8


def require_recomputable(
    objective: Objective,
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    names: Sequence[str],
    *,
    objective_name: str,
    hint: str,
) -> None:
    """Run :func:`require_deterministic`, then :func:`require_vmap_gradients`.

    Raises:
        InputError: ``E_OBJECTIVE_NONDETERMINISTIC`` or ``E_OBJECTIVE_VMAP_UNSUPPORTED``.
    """
    require_deterministic(objective, model, batch, objective_name=objective_name, hint=hint)
    require_vmap_gradients(objective, model, batch, names, objective_name=objective_name,
                           hint=hint)


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


def require_vmap_gradients(
    objective: Objective,
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    names: Sequence[str],
    *,
    objective_name: str,
    hint: str,
) -> None:
    """Compute per-sample gradients of the first probe samples with ``vmap(grad(...))``.

    This is how level 2 computes them, one batch of one sample per ``vmap`` lane, so
    an objective that fails here would end level 2 with a torch error. The issuer's
    per-sample loop would still run it, and sign a certificate that no one can verify.

    Args:
        objective: ``(model, batch)`` -> per-sample values.
        model: The model to differentiate; it is not changed.
        batch: Inputs, presence mask and labels of the probe samples.
        names: Parameters to differentiate, as ``model.named_parameters`` names them.
        objective_name: The objective as the message names it.
        hint: What the user can do about it.

    Raises:
        InputError: ``E_OBJECTIVE_NONDETERMINISTIC``: the objective calls a random
            operation. ``E_OBJECTIVE_VMAP_UNSUPPORTED``: ``vmap`` raised another error.
    """
    from torch.func import grad, vmap

    class _Bound(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, sample: Mapping[str, Any]) -> torch.Tensor:
            result: torch.Tensor = objective(self.model, sample)
            return result

    bound = _Bound()
    parameters = dict(model.named_parameters())
    chosen = {name: parameters[name].detach() for name in names}

    def sample_value(values: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor],
                     present: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        # vmap strips the sample dimension; the objective expects a batch of one.
        one = {"inputs": {m: x.unsqueeze(0) for m, x in inputs.items()},
               "present": present.unsqueeze(0), "label": label.unsqueeze(0)}
        prefixed = {"model." + name: value for name, value in values.items()}
        value: torch.Tensor = call_with_tensors(bound, prefixed, (one,)).sum()
        return value

    sub = _first_samples(batch)
    try:
        vmap(grad(sample_value), in_dims=(None, 0, 0, 0))(
            chosen, sub["inputs"], sub["present"], sub["label"])
    except RuntimeError as exc:
        if is_vmap_randomness(exc):
            raise random_operation_error(objective_name, hint) from exc
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise InputError(
            f"{objective_name} cannot run under torch.func.vmap ({reason}), and R-ARCH-7 "
            "requires it: level 2 computes per-sample gradients with vmap(grad(...)), "
            "which rejects, among others, .item() and a Python branch on a tensor's value",
            hint=hint, code=CODE_OBJECTIVE_VMAP_UNSUPPORTED) from exc


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
