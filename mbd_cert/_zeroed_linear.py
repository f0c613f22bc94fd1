"""Zero one entry of an ``nn.Linear`` per model copy without copying its weight.

The proxy-quality check (:mod:`mbd_cert.proxy_quality`) evaluates the forget objective
for many copies of the model, each with one entry set to zero. Setting W[i, j] of a
linear layer to zero changes its output y = x W^T + b only in column i, by
-W[i, j] * x[..., j]. Setting b[i] to zero changes column i by -b[i]. So instead of a
batched matrix product with one weight copy per model copy, the layer runs once with
the shared weight and each copy subtracts its own term. The result equals the zeroed
layer's output up to rounding. On the MBD checkpoints the increments it feeds agreed
with weight copies to 2e-13 relative, or 3e-16 absolute for increments near zero.

The proxy check uses this route only for architectures that declare
``local_parameters``: a model that reads the tensor outside the layer's forward would
still see the unzeroed values. A tensor takes the route only when it belongs to a
plain ``nn.Linear`` (see :func:`zeroable_linears`). As a further guard, the model
contains NaN in its place during the pass. NaN in the results sends the caller back
to batched weight copies (:func:`zeroed_pass`), though an op such as ``torch.where``
or ``!=`` can hide it, which is why the contract comes first.

Stability: internal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as functional

from mbd_cert._frozen_memo import restore_forwards
from mbd_cert._linear_per_sample import linear_owners

# Per model copy: output index i, input index j (0 for a bias entry), the entry's value
# and 1.0 for a bias entry, 0.0 for a weight entry. A copy that leaves the layer alone
# has value 0.0, so it subtracts nothing.
_Spec = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class PassPlan:
    """The zeroing plan of one vectorised pass.

    Attributes:
        linear: Module name -> per-copy spec of the zeroed entry in that layer.
        tensors: Parameter name -> [copies, *shape] values, for entries outside
            plain linear layers (copied as before).
        sentinels: Names of the linear tensors that hold NaN during the pass.
    """

    linear: dict[str, _Spec]
    tensors: dict[str, torch.Tensor]
    sentinels: frozenset[str]


def zeroable_linears(model: torch.nn.Module,
                     names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Return name -> (module name, "weight" or "bias") for the names that can take this route.

    That is each name in ``names`` owned by a plain ``nn.Linear`` (see
    :func:`mbd_cert._linear_per_sample.linear_owners`) whose own parameters are just
    ``weight`` and ``bias``, shared with no other module, and whose ``forward`` is
    neither replaced on the instance nor preceded by a pre-hook. Otherwise a copy of a
    tensor the layer reads could miss the patched forward, which computes with the
    weights captured when it is installed.
    """
    counts: dict[int, int] = {}
    for _, parameter in model.named_parameters(remove_duplicate=False):
        counts[id(parameter)] = counts.get(id(parameter), 0) + 1
    modules = dict(model.named_modules())
    result = {}
    for name, (module_name, role) in linear_owners(model, names).items():
        module = modules[module_name]
        own = dict(module.named_parameters(recurse=False))
        if set(own) - {"weight", "bias"} or any(counts.get(id(p)) != 1 for p in own.values()):
            continue
        if "forward" in vars(module) or module._forward_pre_hooks:
            continue
        result[name] = (module_name, role)
    return result


def plan_pass(model: torch.nn.Module, part: Sequence[tuple[str, int]],
              owners: Mapping[str, tuple[str, str]], *, use_linear: bool = True) -> PassPlan:
    """Plan a pass with copy 0 unchanged and copy r (from 1) zeroing ``part[r - 1]``.

    Args:
        model: The model; its parameters give the entries' values.
        part: (parameter name, flat index) per copy after the first.
        owners: As :func:`zeroable_linears` returns for ``model``.
        use_linear: False copies every varied tensor (the route without patches).
    """
    parameters = dict(model.named_parameters())
    copies = len(part) + 1
    linear: dict[str, _Spec] = {}
    tensors: dict[str, torch.Tensor] = {}
    sentinels = set()
    for row, (name, flat_index) in enumerate(part, start=1):
        value = parameters[name].detach()
        if use_linear and name in owners:
            module, kind = owners[name]
            if module not in linear:
                dtype = value.dtype
                linear[module] = (torch.zeros(copies, dtype=torch.int64),
                                  torch.zeros(copies, dtype=torch.int64),
                                  torch.zeros(copies, dtype=dtype),
                                  torch.zeros(copies, dtype=dtype))
            rows, columns, values, bias = linear[module]
            if kind == "weight":
                rows[row], columns[row] = divmod(flat_index, value.shape[1])
            else:
                rows[row], bias[row] = flat_index, 1.0
            values[row] = value.reshape(-1)[flat_index]
            sentinels.add(name)
            continue
        if name not in tensors:
            tensors[name] = value.unsqueeze(0).repeat(copies, *([1] * value.dim()))
        tensors[name][row].view(-1)[flat_index] = 0.0
    return PassPlan(linear, tensors, frozenset(sentinels))


@contextlib.contextmanager
def patched_linears(model: torch.nn.Module, plan: PassPlan,
                    current: dict[str, _Spec]) -> Iterator[None]:
    """Make each planned layer subtract its copy's term, read from ``current``.

    The layers compute with their weights as they are on entry, whatever tensors a
    ``functional_call`` swaps in meanwhile.
    """
    modules = dict(model.named_modules())
    patched = []
    for name in plan.linear:
        module = modules[name]
        patched.append((module, module.__dict__.get("forward")))
        module.forward = _zeroing_forward(name, module.weight.detach(),
                                          None if module.bias is None else module.bias.detach(),
                                          current)
    try:
        yield
    finally:
        restore_forwards(patched)


def _zeroing_forward(name: str, weight: torch.Tensor, bias: torch.Tensor | None,
                     current: Mapping[str, _Spec]) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        rows, columns, values, bias_flags = current[name]
        output = functional.linear(x, weight, bias)
        picked = x.index_select(-1, columns.reshape(1))  # x[..., j:j+1]
        term = (picked * (1.0 - bias_flags) + bias_flags) * values  # W_ij x_j, or b_i
        # Adds -term to column i only. Multiplying the term by a one-hot column mask
        # cost about ten times more on the MBD fusion layer (measured).
        index = rows.reshape([1] * term.dim()).expand(term.shape)
        return output.scatter_add(-1, index, -term)

    return forward


def zeroed_pass(
    model: torch.nn.Module,
    plan: PassPlan,
    evaluate: Callable[[dict[str, torch.Tensor], Mapping[str, Any]], torch.Tensor],
) -> torch.Tensor:
    """Run ``evaluate`` over the copies of ``plan`` under ``torch.func.vmap``.

    Args:
        model: The model the plan was made for.
        plan: From :func:`plan_pass`.
        evaluate: ``evaluate(values, specs)`` for one copy: ``values`` maps parameter
            names to the tensors to swap in (the copy's varied tensors and the NaN
            sentinels), ``specs`` the copy's linear specs. Returns a scalar.

    Returns:
        One value per copy. Non-finite values mean the caller must not trust the
        linear route for this pass (see the module docstring).
    """
    from torch.func import vmap

    parameters = dict(model.named_parameters())
    sentinel_values = {name: torch.full_like(parameters[name].detach(), float("nan"))
                       for name in plan.sentinels}
    current: dict[str, _Spec] = {}

    def one(varied: dict[str, torch.Tensor], specs: dict[str, _Spec]) -> torch.Tensor:
        current.clear()
        current.update(specs)
        return evaluate({**sentinel_values, **varied}, specs)

    with patched_linears(model, plan, current):
        result: torch.Tensor = vmap(one)(dict(plan.tensors), dict(plan.linear))
    return result
