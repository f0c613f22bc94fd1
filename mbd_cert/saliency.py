"""Saliency scores and the top-k mask (the "SwiftPrune" second-order proxy).

For an eligible parameter q with value theta_q, the leave-one-out increment of the
forget objective F when q is set to zero is estimated by the second-order Taylor term

    score_q = -g_q * theta_q + 0.5 * H_qq * theta_q**2

where g is the gradient of F and H_qq the diagonal of the empirical Fisher (the mean of
squared per-sample gradients), both on the probe set (Meng et al., "Missing-by-Design",
arXiv:2602.16144). The mask keeps the ``top_k_fraction`` of eligible entries with the
largest |score|, ties broken by score magnitude descending, then by flat index ascending
(SPEC.md, section 6.2). Everything accumulates in float64 whatever the model dtype.

The issuer and the verifier both call :func:`gradient_moments`; the verifier recomputes
the scores from the files and compares masks under the certificate's tolerance.

Stability: internal; the score formula and the tie rule are fixed by format 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mbd_cert._groups import eligible_names

Objective = Callable[[torch.nn.Module, Mapping[str, Any]], torch.Tensor]


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
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Compute the weighted mean gradient and the diagonal empirical Fisher.

    Args:
        model: The model, already in float64 and in eval mode.
        names: Parameter names to differentiate.
        objective: Returns per-sample objective values, shape [n], for a batch.
        batch: The full probe batch.
        weights: Per-sample weights [n]; zero excludes a sample (for example one
            where the deleted modality is absent).
        progress: Called with the number of samples done after each sample.

    Returns:
        ``(gradient, fisher)``: float64 tensors per name, ``sum_i w_i g_i / sum_i w_i``
        and ``sum_i w_i g_i**2 / sum_i w_i``.

    Raises:
        ValueError: Every weight is zero.
    """
    parameters = dict(model.named_parameters())
    targets = [parameters[name] for name in names]
    total_weight = float(weights.sum())
    if total_weight <= 0.0:
        raise ValueError("no probe sample has a non-zero weight for this objective")
    gradient = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in zip(names, targets)}
    fisher = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in zip(names, targets)}

    # NOTE: one backward pass per sample. Per-sample gradients are what the Fisher
    # diagonal needs; vectorising them with torch.func is a possible speed-up.
    n = int(weights.shape[0])
    for index in range(n):
        weight = float(weights[index])
        if weight == 0.0:
            if progress is not None:
                progress(index + 1)
            continue
        value = objective(model, slice_batch(batch, index)).sum()
        grads = torch.autograd.grad(value, targets, allow_unused=True)
        for name, grad in zip(names, grads):
            if grad is None:
                continue
            grad64 = grad.detach().to(torch.float64)
            gradient[name].add_(grad64, alpha=weight)
            fisher[name].add_(grad64 * grad64, alpha=weight)
        if progress is not None:
            progress(index + 1)
    for name in names:
        gradient[name].div_(total_weight)
        fisher[name].div_(total_weight)
    return gradient, fisher


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
    """Return k = ceil(fraction * count), at least 1 (SPEC.md, R-SAL-2)."""
    return max(1, min(eligible_count, math.ceil(top_k_fraction * eligible_count - 1e-9)))


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
