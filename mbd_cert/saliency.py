"""Saliency scores and the top-k mask (the "SwiftPrune" second-order proxy).

For an eligible parameter q with value theta_q, the leave-one-out increment of the
forget objective F when q is set to zero is estimated by the second-order Taylor term

    score_q = -g_q * theta_q + 0.5 * H_qq * theta_q**2

where g is the gradient of F and H_qq the diagonal of the empirical Fisher (the mean of
squared per-sample gradients), both on the probe set (Meng et al., "Missing-by-Design",
arXiv:2602.16144). The mask keeps the ``top_k_fraction`` of eligible entries with the
largest |score|, ties broken by score magnitude descending, then by flat index ascending
(SPEC.md, section 6.2). Everything accumulates in float64 whatever the model dtype.

The issuer calls :func:`gradient_moments` for the scores and for the update's Fisher
preconditioner. The verifier recomputes the scores with its own implementation
(:mod:`mbd_cert._recompute`) and compares masks under the certificate's tolerance.

Stability: internal; the score formula and the tie rule are fixed by format 1.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from decimal import ROUND_CEILING, Decimal
from typing import Any, Protocol

import numpy as np
import torch

from mbd_cert._determinism import VmapFailure, run_vmapped, vmap_error
from mbd_cert._functional_call import call_with_tensors
from mbd_cert._linear_per_sample import linear_owners, per_sample_linear_moments

Objective = Callable[[torch.nn.Module, Mapping[str, Any]], torch.Tensor]


class ClosedForm(Protocol):
    """An objective's gradients computed without autograd, for some of its tensors.

    :class:`mbd_cert.arch._mbd_gradients.LateLayerGradients` is the one the issuer uses.
    Both methods read the model's parameters as they are when called. They return None
    when they cannot give finite values, and the caller then takes its generic route.
    """

    def covers(self, names: Sequence[str]) -> bool:
        """Tell whether the two methods can handle every name."""

    def moment_sums(self, names: Sequence[str], weights: torch.Tensor
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
        """Return ``sum_i w_i g_i`` and ``sum_i w_i g_i**2`` (float64) per name."""

    def mean_gradient(self, names: Sequence[str], weights: torch.Tensor
                      ) -> dict[str, torch.Tensor] | None:
        """Return the gradient of ``sum_i w_i L_i / sum_i w_i`` (float64) per name."""

logger = logging.getLogger(__name__)

# Memory for one chunk of per-sample gradients, in bytes, and the most samples per
# chunk: larger chunks stop paying off once the per-op overhead is amortised.
_CHUNK_BYTES = 256 * 1024 * 1024
_MAX_CHUNK = 256
# Maximum samples per chunk on the batched Linear route, which keeps activations, not a
# gradient per sample. Two chunks instead of one cost the CMU-MOSEI probe set (339
# samples) about 3 ms per call in per-op overhead. The verifier's closed form
# (mbd_cert._fisher_linear) takes chunks of about 256 MiB too.
_LINEAR_CHUNK = 4096
# Bytes per sample and per input or output feature of a covered Linear layer on that
# route: float64 values, for two calls of the layer, each kept with its gradient, its
# square and a product with the other call (an estimate, 8 x 2 x 3).
_LINEAR_BYTES_PER_FEATURE = 48
# Bytes the forward pass keeps per byte of a sample's inputs, outside the covered layers:
# an encoder over a sequence, for example. With sequences of 1 to 50 steps and hidden
# widths of 64 to 512, the built-in model's peak memory grew by 1 to 10 times the input
# bytes beyond the estimate above (an estimate).
_LINEAR_BYTES_PER_INPUT_BYTE = 8


def slice_batch(batch: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Return the one-sample batch at ``index`` with every leading dimension kept."""
    sliced: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, Mapping):
            sliced[key] = {k: v[index : index + 1] for k, v in value.items()}
        else:
            sliced[key] = value[index : index + 1]
    return sliced


def gradient_moments(
    model: torch.nn.Module,
    names: Sequence[str],
    objective: Objective,
    batch: Mapping[str, Any],
    weights: torch.Tensor,
    progress: Callable[[int], None] | None = None,
    *,
    vectorize: bool = True,
    independent_samples: bool = False,
    objective_name: str = "the objective",
    hint: str = "remove the random operation, .item() calls and Python branches on "
    "tensor values from the objective and the model's forward pass",
    closed_form: ClosedForm | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Compute the weighted mean gradient and the diagonal empirical Fisher.

    Per-sample gradients are computed in chunks with ``torch.func.vmap``, which does
    one batched backward pass per chunk instead of one pass per sample. An objective
    that ``vmap`` cannot run (data-dependent Python control flow, ``.item()``, a random
    operation) is refused, because level 2 takes its gradients through ``vmap`` too
    and could not verify the result (R-ARCH-7). With ``independent_samples``, the
    gradients of ``nn.Linear`` parameters come from one batched backward pass per
    chunk instead (:mod:`mbd_cert._linear_per_sample`) and only the other names go
    through ``vmap``. All paths accumulate in float64 and agree to float64 rounding;
    only the summation order differs.

    Args:
        model: The model, already in float64 and in eval mode.
        names: Parameter names to differentiate.
        objective: Returns per-sample objective values, shape [n], for a batch. Each
            value must depend only on its own sample.
        batch: The full probe batch.
        weights: Per-sample weights [n]; zero excludes a sample (for example one
            where the deleted modality is absent).
        progress: Called with the number of samples done after each chunk or sample.
        vectorize: False forces the per-sample loop (the reference implementation).
        independent_samples: The objective of sample i depends on sample i's inputs
            alone, even when the batch holds other samples (no batch statistics).
            ``Architecture.independent_samples`` states it for an architecture.
        objective_name: The objective as an error message names it.
        hint: What the user can do when ``vmap`` refuses the objective.
        closed_form: The same objective's gradients written out for this model, used
            when it covers every name and returns finite values (the issuer passes
            one for the built-in architecture).

    Returns:
        ``(gradient, fisher)``: float64 tensors per name, ``sum_i w_i g_i / sum_i w_i``
        and ``sum_i w_i g_i**2 / sum_i w_i``.

    Raises:
        ValueError: Every weight is zero.
        InputError: ``vmap`` rejected the objective: ``E_OBJECTIVE_NONDETERMINISTIC``
            for a random operation, ``E_OBJECTIVE_VMAP_UNSUPPORTED`` otherwise. The
            message names ``objective_name``, and the hint is ``hint``.
    """
    parameters = dict(model.named_parameters())
    targets = [parameters[name] for name in names]
    total_weight = float(weights.sum())
    if total_weight <= 0.0:
        raise ValueError("no probe sample has a non-zero weight for this objective")
    sums = None
    if vectorize and closed_form is not None and closed_form.covers(names):
        sums = closed_form.moment_sums(names, weights)
        if sums is not None and progress is not None:
            progress(int(weights.shape[0]))
    if sums is None:
        try:
            if vectorize and independent_samples:
                sums = _moment_sums_linear(model, names, objective, batch, weights, progress)
            elif vectorize:
                sums = _moment_sums_vmap(model, names, objective, batch, weights, progress)
            else:
                sums = _moment_sums_loop(names, targets, objective, model, batch, weights,
                                         progress)
        except VmapFailure as failure:
            raise vmap_error(failure, objective_name, hint) from failure.__cause__
    gradient, fisher = sums
    for name in names:
        gradient[name].div_(total_weight)
        fisher[name].div_(total_weight)
    return gradient, fisher


def _zeros64(names: Sequence[str], targets: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    pairs = zip(names, targets, strict=True)
    return {name: torch.zeros_like(p, dtype=torch.float64) for name, p in pairs}


def _moment_sums_loop(
    names: Sequence[str],
    targets: Sequence[torch.Tensor],
    objective: Objective,
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    weights: torch.Tensor,
    progress: Callable[[int], None] | None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return ``sum_i w_i g_i`` and ``sum_i w_i g_i**2`` with one backward pass per sample."""
    gradient, fisher = _zeros64(names, targets), _zeros64(names, targets)
    n = int(weights.shape[0])
    for index in range(n):
        weight = float(weights[index])
        if weight == 0.0:
            if progress is not None:
                progress(index + 1)
            continue
        value = objective(model, slice_batch(batch, index)).sum()
        grads = torch.autograd.grad(value, list(targets), allow_unused=True)
        for name, grad in zip(names, grads, strict=True):
            if grad is None:
                continue
            grad64 = grad.detach().to(torch.float64)
            gradient[name].add_(grad64, alpha=weight)
            fisher[name].add_(grad64 * grad64, alpha=weight)
        if progress is not None:
            progress(index + 1)
    return gradient, fisher


class _Bound(torch.nn.Module):
    """Wrap ``objective(model, batch)`` as a module so ``functional_call`` can swap parameters."""

    def __init__(self, model: torch.nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.objective(self.model, batch)


def _moment_sums_vmap(
    model: torch.nn.Module,
    names: Sequence[str],
    objective: Objective,
    batch: Mapping[str, Any],
    weights: torch.Tensor,
    progress: Callable[[int], None] | None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return the same sums as :func:`_moment_sums_loop`, vectorised over samples."""
    from torch.func import grad, vmap

    parameters = dict(model.named_parameters())
    targets = {name: parameters[name].detach() for name in names}
    gradient = _zeros64(names, list(targets.values()))
    fisher = _zeros64(names, list(targets.values()))
    bound = _Bound(model, objective)

    def sample_value(values: dict[str, torch.Tensor], sample: Mapping[str, Any]) -> torch.Tensor:
        # vmap strips the sample dimension; the objective expects a batch of one.
        one = _map_batch(sample, lambda tensor: tensor.unsqueeze(0))
        prefixed = {"model." + name: value for name, value in values.items()}
        value: torch.Tensor = call_with_tensors(bound, prefixed, (one,)).sum()
        return value

    per_sample = vmap(grad(sample_value), in_dims=(None, 0))
    # Samples with weight zero are skipped, as the loop does, so that a non-finite
    # gradient of an excluded sample cannot reach the sums.
    kept = torch.nonzero(weights != 0).flatten()
    chunk = _chunk_size(sum(t.numel() for t in targets.values()))
    n = int(weights.shape[0])
    for start in range(0, int(kept.numel()), chunk):
        index = kept[start : start + chunk]
        sub = _map_batch(batch, functools.partial(_select_rows, index=index))
        chunk_weights = weights.index_select(0, index).to(torch.float64)
        grads = run_vmapped(per_sample, targets, sub)
        with torch.no_grad():
            for name in names:
                grad64 = grads[name].to(torch.float64)
                shape = (-1,) + (1,) * (grad64.ndim - 1)
                weighted = grad64 * chunk_weights.reshape(shape)
                gradient[name].add_(weighted.sum(dim=0))
                fisher[name].add_((weighted * grad64).sum(dim=0))
        if progress is not None:
            done = start + int(index.numel())
            progress(n if done == kept.numel() else int(kept[done - 1]) + 1)
    if progress is not None and kept.numel() == 0:
        progress(n)
    return gradient, fisher


def _moment_sums_linear(
    model: torch.nn.Module,
    names: Sequence[str],
    objective: Objective,
    batch: Mapping[str, Any],
    weights: torch.Tensor,
    progress: Callable[[int], None] | None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return the sums of :func:`_moment_sums_loop`: Linear layers batched, the rest by vmap."""
    owners = linear_owners(model, names)
    if not owners:
        # No name is a Linear parameter, so the batched passes would compute nothing.
        return _moment_sums_vmap(model, names, objective, batch, weights, progress)
    parameters = dict(model.named_parameters())
    gradient = _zeros64(list(owners), [parameters[name] for name in owners])
    fisher = _zeros64(list(owners), [parameters[name] for name in owners])
    rejected: set[str] = set()

    nonzero = torch.nonzero(weights != 0).flatten()
    chunk = _linear_chunk_size(model, owners, batch)
    n = int(weights.shape[0])
    for start in range(0, int(nonzero.numel()), chunk):
        index = nonzero[start : start + chunk]
        sub = _map_batch(batch, functools.partial(_select_rows, index=index))
        sums, squares, chunk_rejected = per_sample_linear_moments(
            model, owners, functools.partial(objective, model, sub),
            weights.index_select(0, index))
        rejected.update(chunk_rejected)
        for name, value in sums.items():
            gradient[name].add_(value)
            fisher[name].add_(squares[name])
        if progress is not None:
            done = start + int(index.numel())
            progress(n if done == nonzero.numel() else int(nonzero[done - 1]) + 1)

    # Tensors that are not Linear parameters, or that a chunk rejected, go through vmap
    # over all samples, so no partial sum of theirs is kept.
    rest = [name for name in names if name not in owners or name in rejected]
    if rejected:
        logger.debug("batched Linear moments rejected for %s (input shape, magnitude or "
                     "self-check); using vmap", sorted(rejected))
    for name in rest:
        gradient.pop(name, None)
        fisher.pop(name, None)
    if rest:
        more_gradient, more_fisher = _moment_sums_vmap(model, rest, objective, batch, weights,
                                                       None)
        gradient.update(more_gradient)
        fisher.update(more_fisher)
    if progress is not None and nonzero.numel() == 0:
        progress(n)
    return gradient, fisher


def _linear_chunk_size(model: torch.nn.Module, owners: Mapping[str, tuple[str, str]],
                       batch: Mapping[str, Any]) -> int:
    """Return how many samples the batched Linear route takes at once (about 256 MiB).

    The estimate counts the covered layers' widths and, for what the rest of the forward
    pass keeps (an encoder's activations over a sequence, for example), a multiple of
    each sample's input bytes.
    """
    modules = dict(model.named_modules())
    features = 0
    for module_name in {module_name for module_name, _ in owners.values()}:
        layer = modules[module_name]
        features += int(getattr(layer, "in_features", 0)) + int(getattr(layer, "out_features", 0))
    per_sample = (_LINEAR_BYTES_PER_FEATURE * max(1, features)
                  + _LINEAR_BYTES_PER_INPUT_BYTE * _bytes_per_sample(batch))
    return max(1, min(_LINEAR_CHUNK, _CHUNK_BYTES // per_sample))


def _bytes_per_sample(batch: Mapping[str, Any]) -> int:
    """Return the bytes of one sample of ``batch``: its tensors' sizes over their rows."""
    tensors = []
    for value in batch.values():
        tensors += list(value.values()) if isinstance(value, Mapping) else [value]
    total = 0
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.dim() > 0 and tensor.shape[0] > 0:
            total += tensor.numel() * tensor.element_size() // int(tensor.shape[0])
    return total


def _select_rows(tensor: torch.Tensor, *, index: torch.Tensor) -> torch.Tensor:
    return tensor.index_select(0, index)


def _map_batch(
    batch: Mapping[str, Any], function: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, Any]:
    mapped: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, Mapping):
            mapped[key] = {k: function(v) for k, v in value.items()}
        else:
            mapped[key] = function(value)
    return mapped


def _chunk_size(parameter_count: int) -> int:
    """Return how many per-sample gradients to hold at once (float64, about 256 MiB)."""
    return max(1, min(_MAX_CHUNK, _CHUNK_BYTES // max(1, 8 * parameter_count)))


def saliency_scores(
    values: Mapping[str, torch.Tensor],
    gradient: Mapping[str, torch.Tensor],
    fisher: Mapping[str, torch.Tensor],
) -> dict[str, np.ndarray]:
    """Return ``-g * theta + 0.5 * H * theta**2`` per tensor as float64 numpy arrays."""
    scores = {}
    for name, value in values.items():
        theta = value.detach().to(torch.float64)
        score = -gradient[name] * theta + 0.5 * fisher[name] * theta * theta
        scores[name] = score.cpu().numpy()
    return scores


def mask_size(eligible_count: int, top_k_fraction: float) -> int:
    """Return k = max(1, ceil(top_k_fraction x eligible_count)) (SPEC.md, R-SAL-2).

    The product is exact on the fraction's shortest decimal form, which is the number
    the certificate writes and level 2 reads. Binary floating point makes 0.3 x 10 a
    little above 3, and subtracting a fixed margin instead would round 0.5000000000001
    x 1000 down to 500, where level 2 expects 501.
    """
    product = Decimal(repr(float(top_k_fraction))) * eligible_count
    return max(1, min(eligible_count, int(product.to_integral_value(rounding=ROUND_CEILING))))


def ranked_indices(scores: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Rank all eligible entries by |score| descending, then flat index ascending.

    The flat index runs over tensors in sorted name order, each in row-major order.

    Returns:
        ``(names, order, magnitude)``: the tensor order used, the flat indices from the
        most to the least salient, and |score| per flat index.
    """
    names = sorted(scores)
    if names:
        magnitude = np.concatenate([np.abs(scores[name]).ravel() for name in names])
    else:
        magnitude = np.zeros(0, dtype=np.float64)
    index = np.arange(magnitude.size)
    # np.lexsort sorts by the last key first: magnitude descending, then index.
    order = np.lexsort((index, -magnitude))
    return names, order, magnitude


def top_k_mask(
    scores: Mapping[str, np.ndarray], top_k_fraction: float
) -> tuple[dict[str, np.ndarray], float]:
    """Return the boolean mask per tensor and the |score| at the cut (the k-th largest).

    Raises:
        ValueError: There is no eligible entry.
    """
    names, order, magnitude = ranked_indices(scores)
    if magnitude.size == 0:
        raise ValueError("no eligible parameter: the eligible groups match no tensor")
    k = mask_size(int(magnitude.size), top_k_fraction)
    flat = np.zeros(magnitude.size, dtype=bool)
    flat[order[:k]] = True
    masks: dict[str, np.ndarray] = {}
    offset = 0
    for name in names:
        size = scores[name].size
        masks[name] = flat[offset : offset + size].reshape(scores[name].shape)
        offset += size
    return masks, float(magnitude[order[k - 1]])
