"""Closed-form gradient moments of ``nn.Linear`` parameters for level 2 (SPEC.md, 6.2, 6.3).

The verifier needs, per eligible tensor, the weighted sums over samples of the
per-sample gradient g_i and of g_i**2. For a Linear module called k times per sample
with inputs x_c [n, in] and outputs y_c [n, out] (c = 1..k), the gradient of sample
i's objective with respect to the weight is ``sum_c dy_c[i] x_c[i]^T`` with
dy_c = dL/dy_c, where L is the unweighted sum of the per-sample objectives. Row i of
dy_c belongs to sample i alone when the samples are independent. Hence::

    sum_i w_i g_i      = sum_c (w * dy_c)^T x_c
    sum_i w_i g_i**2   = sum_{c,d} (w * dy_c * dy_d)^T (x_c * x_d)

with elementwise products per row. The c != d terms are the cross terms of a module
that is called more than once. One forward and one backward pass give every dy_c, so
the cost is close to that of a plain gradient, where ``vmap(grad(...))`` materialises
one gradient per sample.

The closed form is exact only if each sample's objective depends on that sample's
inputs alone and every 2-D Linear call gets sample i's features in row i. The
architecture states this with ``Architecture.independent_samples``; this module
cannot check it. Tensors that the formula does not cover come back as ``fallback``
for the exact vmap path in :mod:`mbd_cert._recompute`:

* a parameter not owned by a plain ``nn.Linear`` (subclasses that override
  ``forward`` included);
* a module called with an input that is not ``[n, in]`` (sequence layers);
* a parameter whose autograd gradient differs from ``sum_c dy_c^T x_c``, which means
  the model uses it outside its module's forward (:data:`SELF_CHECK_RTOL`).

Like :mod:`mbd_cert._recompute`, this module does not import :mod:`mbd_cert.saliency`
or :mod:`mbd_cert.update`.

Stability: internal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Relative tolerance of the self-check ||closed form - autograd|| <= rtol x max norm,
# by the dtype the model computes in. Both sides sum the same n products, so only the
# reduction order differs, by an estimated 1e-15 relative in float64 and 1e-7 in
# float32. A parameter used outside its module's forward differs far more.
SELF_CHECK_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}
# Tolerance for any other dtype (float16, bfloat16).
SELF_CHECK_RTOL_OTHER = 1e-2
# Largest |input| and |output gradient| for the closed form (see _moderate): 1e75
# squared is 1e150, far inside float64's range.
_HUGE = 1e75


@dataclass
class LinearMoments:
    """Weighted sums over the samples, not yet divided by the weight total.

    No two values share memory, so a caller may add to them in place.

    Attributes:
        first: Name -> float64 ``sum_i w_i g_i``.
        second: Name -> float64 ``sum_i w_i g_i**2``.
        fallback: Names, in the order given, that the closed form does not cover.
    """

    first: dict[str, torch.Tensor] = field(default_factory=dict)
    second: dict[str, torch.Tensor] = field(default_factory=dict)
    fallback: list[str] = field(default_factory=list)


@dataclass
class _Owner:
    """A Linear module that owns eligible parameters, and its recorded calls."""

    module: nn.Linear
    weight: str | None = None
    bias: str | None = None
    calls: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def names(self) -> list[str]:
        return [n for n in (self.weight, self.bias) if n is not None]


def linear_owners(model: nn.Module, names: Sequence[str]) -> dict[str, _Owner]:
    """Return module prefix -> owner for each plain ``nn.Linear`` owning a name in ``names``."""
    requested = set(names)
    owners: dict[str, _Owner] = {}
    for prefix, module in model.named_modules():
        # A subclass that overrides forward may use its weight in another way.
        if not isinstance(module, nn.Linear) or type(module).forward is not nn.Linear.forward:
            continue
        owner = _Owner(module)
        for kind in ("weight", "bias"):
            full = f"{prefix}.{kind}" if prefix else kind
            if full in requested and getattr(module, kind) is not None:
                setattr(owner, kind, full)
        if owner.names():
            owners[prefix] = owner
    return owners


def linear_moments(
    model: nn.Module,
    names: Sequence[str],
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    weights: torch.Tensor,
) -> LinearMoments:
    """Compute the weighted gradient sums of the Linear parameters in ``names`` in closed form.

    Args:
        model: The module whose submodules ``forward`` runs; forward hooks are added
            to its Linear modules for the duration of the call and removed after.
        names: Parameter names to compute.
        forward: Maps parameter name -> value (leaves that require grad) to the
            per-sample objective [n] of the kept samples, computed with those values.
        weights: float64 [n], the weight of each kept sample.

    Returns:
        The sums for the covered names and the list of names left to the caller.
    """
    owners = linear_owners(model, names)
    covered = {n for owner in owners.values() for n in owner.names()}
    result = LinearMoments(fallback=[n for n in names if n not in covered])
    if not owners:
        return result
    parameters = dict(model.named_parameters())
    chosen = {n: parameters[n].detach().requires_grad_() for n in names if n in covered}
    handles = [owner.module.register_forward_hook(_recorder(owner), with_kwargs=True)
               for owner in owners.values()]
    try:
        values = forward(chosen)
    finally:
        for handle in handles:
            handle.remove()
    rows = int(weights.shape[0])
    if values.shape != (rows,) or not values.requires_grad:
        logger.debug("objective has shape %s for %d samples or no gradient; using vmap",
                     list(values.shape), rows)
        result.fallback = list(names)
        return result

    usable = {}
    skipped: set[str] = set(result.fallback)
    for prefix, owner in owners.items():
        if all(x.dim() == 2 and y.dim() == 2 and x.shape[0] == rows and y.shape[0] == rows
               for x, y in owner.calls):
            usable[prefix] = owner
        else:
            logger.debug("Linear '%s' has an input that is not [n, features]; using vmap",
                         prefix)
            skipped.update(owner.names())
    if usable:
        skipped.update(_closed_form(usable, chosen, values, weights, result))
    result.fallback = [n for n in names if n in skipped]
    return result


def _closed_form(usable: Mapping[str, _Owner], chosen: Mapping[str, torch.Tensor],
                 values: torch.Tensor, weights: torch.Tensor, result: LinearMoments) -> set[str]:
    """Fill ``result`` for the usable owners; return the names that fail the self-check."""
    outputs = [y for owner in usable.values() for _, y in owner.calls]
    targets = [n for owner in usable.values() for n in owner.names()]
    # One backward gives every dL/dy_c and, for the self-check, dL/dtheta.
    gradients = torch.autograd.grad(values.sum(), outputs + [chosen[n] for n in targets],
                                    allow_unused=True)
    output_grads = iter(gradients[: len(outputs)])
    autograd = dict(zip(targets, gradients[len(outputs):], strict=True))
    del gradients
    tolerance = SELF_CHECK_RTOL.get(values.dtype, SELF_CHECK_RTOL_OTHER)
    w = weights.to(torch.float64).unsqueeze(1)
    uniform = bool((w == w[0, 0]).all())
    failed = set()

    def check(name: str, plain: torch.Tensor) -> bool:
        # Popped, so each autograd gradient is freed once its tensor is checked.
        return _agrees(plain, autograd.pop(name), tolerance)

    for owner in usable.values():
        xs = [x.detach().to(torch.float64) for x, _ in owner.calls]
        dys = [_float64_or_zeros(next(output_grads), y) for _, y in owner.calls]
        if not _moderate(xs + dys):
            logger.debug("Linear with inputs or output gradients above %g in magnitude: "
                         "their squares could overflow where the per-sample gradient's "
                         "does not; using vmap", _HUGE)
            failed.update(owner.names())
            continue
        sums = _owner_sums(owner, xs, dys, w, uniform, check)
        for name in owner.names():
            first, second = sums.pop(name, (None, None))
            if first is not None and second is not None and bool(
                    torch.isfinite(first).all() and torch.isfinite(second).all()):
                result.first[name] = first
                result.second[name] = second
            else:
                logger.debug("closed-form gradient of '%s' differs from autograd (relative "
                             "tolerance %g) or is not finite: the parameter is used outside "
                             "its module's forward; using vmap", name, tolerance)
                failed.add(name)
    return failed


def _recorder(owner: _Owner) -> Callable[..., None]:
    def record(module: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any],
               output: torch.Tensor) -> None:
        x = args[0] if args else kwargs["input"]
        owner.calls.append((x, output))

    return record


def _float64_or_zeros(gradient: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    # A call whose output does not reach the objective contributes nothing.
    if gradient is None:
        return torch.zeros(like.shape, dtype=torch.float64)
    return gradient.detach().to(torch.float64)


def _owner_sums(
    owner: _Owner, xs: list[torch.Tensor], dys: list[torch.Tensor], w: torch.Tensor,
    uniform: bool, check: Callable[[str, torch.Tensor], bool],
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Return name -> (weighted first sum, weighted second sum) for the names that pass.

    ``check(name, plain)`` receives the unweighted gradient ``sum_c dy_c^T x_c`` first;
    a name it rejects gets no sums. The unweighted gradient is freed before the second
    sum is formed, so besides its autograd gradient a Linear weight needs at most two
    float64 tensors of its size at a time.
    ``w`` is [n, 1], and ``uniform`` is True when all its entries are equal.
    """
    module = owner.module
    sums = {}
    calls = len(xs)
    if owner.weight is not None:
        shape = module.weight.shape
        if calls == 0:
            # Two tensors, not one twice: the caller adds later chunks in place.
            if check(owner.weight, torch.zeros(shape, dtype=torch.float64)):
                sums[owner.weight] = (torch.zeros(shape, dtype=torch.float64),
                                      torch.zeros(shape, dtype=torch.float64))
        else:
            x_all = torch.cat(xs)
            dy_all = torch.cat(dys)
            plain = dy_all.t() @ x_all
            if check(owner.weight, plain):
                # Equal weights (0/1 presence, or the ones of the update) save a matmul.
                first = (plain * w[0, 0] if uniform else
                         (dy_all * w.repeat(calls, 1)).t() @ x_all)
                del plain
                # All k(k+1)/2 pairs c <= d in one matmul, off-diagonal pairs counted twice.
                left, right = [], []
                for c in range(calls):
                    for d in range(c, calls):
                        factor = 1.0 if c == d else 2.0
                        left.append((factor * w) * dys[c] * dys[d])
                        right.append(xs[c] * xs[d])
                second = torch.cat(left).t() @ torch.cat(right)
                sums[owner.weight] = (first, second)
    if owner.bias is not None:
        out = module.out_features
        per_sample = (torch.stack(dys).sum(dim=0) if calls else
                      torch.zeros(1, out, dtype=torch.float64))
        if check(owner.bias, per_sample.sum(dim=0)):
            first = (w * per_sample).sum(dim=0)
            second = (w * per_sample * per_sample).sum(dim=0)
            sums[owner.bias] = (first, second)
    return sums


def _moderate(tensors: Sequence[torch.Tensor]) -> bool:
    """Return True when no |value| exceeds _HUGE.

    The closed form squares x and dy separately, while the per-sample path squares
    their product. With every |x| and |dy| at most 1e75 the squares stay below 1e150,
    so nothing overflows. A square can still underflow where the product's square
    does not, but then the lost term is below 1e-308 * 1e150 = 1e-158 in absolute value.
    NOTE: the underflow side is not checked, because a minimum over the non-zero
    values added about 10 % to the recomputation. With float32 weights
    (|theta| < 3.4e38) such a term moves a score by less than 1e-81.
    """
    return all(float(t.abs().max()) <= _HUGE for t in tensors if t.numel())


def _agrees(closed: torch.Tensor, reference: torch.Tensor | None, rtol: float) -> bool:
    expected = (torch.zeros_like(closed) if reference is None
                else reference.detach().to(torch.float64))
    scale = max(float(closed.norm()), float(expected.norm()))
    return float((closed - expected).norm()) <= rtol * scale
