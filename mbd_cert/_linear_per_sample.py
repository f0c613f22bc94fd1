"""Per-sample gradients of nn.Linear parameters from activations and output gradients.

For a Linear layer y = x W^T + b called on rows x[i] of sample i, the gradient of
sample i's objective is dW_i = sum_c dy_c[i] x_c[i]^T and db_i = sum_c dy_c[i], where c
runs over the calls of the layer in one forward pass (the MBD forget objective calls
each fusion and generator layer twice) and dy_c = dL/dy_c. One batched forward pass
that records x_c, and one backward pass of sum_i L_i to the outputs y_c, give every dy_c
at once. The weighted sums of dW_i and dW_i**2 then follow from a few matrix products
over the sample axis (:func:`weight_moments`). No per-sample backward pass runs and no
[n, out, in] array is formed. Nor is ``torch.func`` needed: its first ``grad`` call
imports ``torch._dynamo``, about 1.5 s of start-up (docs/benchmarks.md).

This is exact only when sample i's objective depends on sample i's inputs alone, which
an architecture declares with ``Architecture.independent_samples``. The issuer's other
paths in :mod:`mbd_cert.saliency` remain the reference; the verifier has its own
implementation (:mod:`mbd_cert._recompute`).

Stability: internal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

# Relative agreement required between sum_i g_i from the outer products and the
# autograd gradient of sum_i L_i. A parameter read outside its module's forward (weight
# tying, a direct ``layer.weight`` access) breaks the agreement, and its tensor then
# goes to the caller's fallback. The values differ only by summation order, about
# 1e-15 relative in float64 and 1e-6 in float32.
_SELF_CHECK_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}


@dataclass
class _Calls:
    """Inputs and outputs of the calls of one Linear module during a forward pass."""

    inputs: list[torch.Tensor] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)
    usable: bool = True


def linear_owners(model: torch.nn.Module, names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Map each name in ``names`` owned by an ``nn.Linear`` to (module name, "weight"|"bias")."""
    owners: dict[str, tuple[str, str]] = {}
    selected = set(names)
    for module_name, module in model.named_modules():
        if type(module) is not torch.nn.Linear:
            # A subclass may override forward, so only the plain layer qualifies.
            continue
        for role in ("weight", "bias"):
            full = f"{module_name}.{role}" if module_name else role
            if full in selected and getattr(module, role) is not None:
                owners[full] = (module_name, role)
    return owners


def per_sample_linear_moments(
    model: torch.nn.Module,
    owners: Mapping[str, tuple[str, str]],
    value_of: Callable[[], torch.Tensor],
    weights: torch.Tensor,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """Return ``sum_i w_i g_i`` and ``sum_i w_i g_i**2`` (float64) for Linear parameters.

    Args:
        model: The model ``value_of`` runs; its modules are hooked meanwhile.
        owners: Parameter name -> (module name, role), from :func:`linear_owners`.
        value_of: Runs the objective on the chunk's n samples and returns the [n]
            per-sample values.
        weights: [n] per-sample weights of the chunk, all non-zero.

    Returns:
        ``(gradient_sums, fisher_sums, rejected)``: the sums for every covered name,
        and the names the caller must compute another way because a call had an
        input that is not [n, features] or because the self-check failed.
    """
    modules = dict(model.named_modules())
    calls = {module_name: _Calls() for module_name, _ in owners.values()}
    handles = []
    for module_name, record in calls.items():
        handles.append(modules[module_name].register_forward_hook(_recorder(record)))
    try:
        values = value_of()
    finally:
        for handle in handles:
            handle.remove()
    n = int(values.shape[0])
    rejected = {name for name, (module_name, _) in owners.items()
                if not calls[module_name].usable or not calls[module_name].outputs
                or any(x.dim() != 2 or x.shape[0] != n for x in calls[module_name].inputs)}
    covered = [name for name in owners if name not in rejected]
    if not covered:
        return {}, {}, sorted(rejected)
    used = sorted({owners[name][0] for name in covered})
    outputs = [y for module_name in used for y in calls[module_name].outputs]
    parameters = dict(model.named_parameters())
    targets = outputs + [parameters[name] for name in covered]
    try:
        grads = torch.autograd.grad(values.sum(), targets, allow_unused=True)
    except RuntimeError:
        # For example a recorded output or input changed in place after its call.
        return {}, {}, sorted(owners)
    output_grads = dict(zip(map(id, outputs), grads[: len(outputs)], strict=True))
    direct = dict(zip(covered, grads[len(outputs):], strict=True))

    w = weights.to(torch.float64)
    gradient: dict[str, torch.Tensor] = {}
    fisher: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name in covered:
            module_name, role = owners[name]
            record = calls[module_name]
            dys = [_zeros_if_none(output_grads[id(y)], y).to(torch.float64)
                   for y in record.outputs]
            xs = [x.to(torch.float64) for x in record.inputs]
            if not within_square_range(xs + dys):
                rejected.add(name)
                continue
            if role == "weight":
                summed = torch.cat(dys).T @ torch.cat(xs)
                first, second = weight_moments(dys, xs, w)
            else:
                per_sample = torch.stack(dys).sum(dim=0)  # [n, out]
                summed = per_sample.sum(dim=0)
                first, second = w @ per_sample, w @ (per_sample * per_sample)
            reference = direct[name]
            finite = bool(torch.isfinite(first).all() and torch.isfinite(second).all())
            if reference is None or not finite or not _agrees(summed, reference):
                rejected.add(name)
                continue
            gradient[name], fisher[name] = first, second
    return gradient, fisher, sorted(rejected)


def weight_moments(dys: Sequence[torch.Tensor], xs: Sequence[torch.Tensor],
                    w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return sum_i w_i dW_i and sum_i w_i dW_i**2 without forming any dW_i.

    With dW_i = sum_c dy_c[i] x_c[i]^T, the square of entry (o, j) is
    sum_{c, d} dy_c[i, o] dy_d[i, o] x_c[i, j] x_d[i, j], so the weighted sum over i is
    one matrix product per pair (c, d): (w * dy_c * dy_d)^T (x_c * x_d). The pairs
    c != d, counted twice, are the cross terms of a layer called more than once. The
    pairs are stacked along the sample axis into one product.
    """
    first = torch.cat([w[:, None] * dy for dy in dys]).T @ torch.cat(list(xs))
    left, right = [], []
    for c in range(len(dys)):
        for d in range(c, len(dys)):
            factor = w if c == d else 2.0 * w
            left.append(factor[:, None] * dys[c] * dys[d])
            right.append(xs[c] * xs[d])
    second = torch.cat(left).T @ torch.cat(right)
    return first, second


def _recorder(record: _Calls) -> Callable[..., None]:
    def hook(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if len(args) != 1 or not isinstance(args[0], torch.Tensor) \
                or not isinstance(output, torch.Tensor):
            record.usable = False
            return
        record.inputs.append(args[0].detach())
        record.outputs.append(output)

    return hook


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    # An output that does not reach the objective (for example a reconstruction the
    # objective masks out for every sample) has no gradient: it contributes zero.
    return torch.zeros_like(like) if grad is None else grad


def within_square_range(tensors: Sequence[torch.Tensor]) -> bool:
    """Return whether x**2 and dy**2 cannot overflow: every |value| is at most 1e75.

    The batched sums square x and dy separately, the per-sample gradient squares
    their product, so the two could differ where a square overflows. Underflow only
    drops terms below 1e-308 * 1e150 in absolute value, which no score can feel.
    """
    return all(float(t.abs().max()) <= 1e75 for t in tensors if t.numel())


def _agrees(summed: torch.Tensor, reference: torch.Tensor) -> bool:
    rtol = _SELF_CHECK_RTOL.get(reference.dtype, 1e-3)
    expected = reference.detach().to(torch.float64)
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return bool(float((summed - expected).abs().max()) <= rtol * max(scale, 1e-300))
