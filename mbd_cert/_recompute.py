"""The verifier's own recomputation of the saliency mask and the masked update.

Level 2 must not share a code path with the issuer that could hide an issuer bug. So
this module re-implements SPEC.md sections 6.2 and 6.3 from the specification alone,
without importing :mod:`mbd_cert.saliency` or :mod:`mbd_cert.update`. Per-sample
gradients come from ``torch.func.vmap(torch.func.grad(...))`` over ``functional_call``
of a module that wraps the objective, the ranking breaks ties by flat index, k is computed
from the decimal value of ``top_k_fraction``, and the update steps are functional
rather than in place. Only the architecture (model and objectives), the file readers
and the torch workaround of :mod:`mbd_cert._functional_call` are shared with the
issuer. For architectures whose samples are independent, the moments of ``nn.Linear``
tensors come in closed form from one batched backward pass per chunk of samples
(:mod:`mbd_cert._fisher_linear`, also verifier-only code).

Stability: internal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

import numpy as np
import torch
from torch.func import grad, vmap

from mbd_cert import _fisher_linear
from mbd_cert._determinism import run_vmapped
from mbd_cert._functional_call import call_with_tensors
from mbd_cert.errors import MalformedData

Objective = Callable[[torch.nn.Module, Mapping[str, Any]], torch.Tensor]

# Maximum samples per vectorised gradient call. A call also returns at most
# CHUNK_BYTES of float64 per-sample gradients, and the sums over them keep about three
# times that. The issuer uses the same 256 MiB (mbd_cert.saliency), so a certificate
# with wide eligible tensors gets one sample per call here too, instead of 64 times
# the issuer's memory.
CHUNK = 64
CHUNK_BYTES = 256 * 1024 * 1024
# Bytes per sample and per input or output feature of a Linear layer that the closed
# form covers: its float64 inputs and output gradients, their concatenations and the
# pairwise products of its calls (an estimate). A 4096-wide fusion called twice per
# sample measured 72, so the closed form takes CHUNK_BYTES of them at a time.
CLOSED_FORM_BYTES_PER_FEATURE = 128


class _ObjectiveModule(torch.nn.Module):
    """Wrap ``objective(model, batch)`` as a module so ``functional_call`` can swap weights."""

    def __init__(self, model: torch.nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(
        self, inputs: dict[str, torch.Tensor], present: torch.Tensor, label: torch.Tensor
    ) -> torch.Tensor:
        batch = {"inputs": inputs, "present": present, "label": label}
        result: torch.Tensor = self.objective(self.model, batch)
        return result


def _prefixed(values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"model." + name: value for name, value in values.items()}


def gradient_and_fisher(
    model: torch.nn.Module,
    names: Sequence[str],
    objective: Objective,
    batch: Mapping[str, Any],
    weights: np.ndarray,
    *,
    closed_form: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return the weighted mean per-sample gradient and mean squared gradient (float64).

    ``sum_i w_i g_i / sum_i w_i`` and ``sum_i w_i g_i**2 / sum_i w_i`` over the samples
    of ``batch``, where g_i is the gradient of the objective of sample i alone.

    Args:
        model: The model; its parameters are not changed.
        names: Parameter names to differentiate.
        objective: ``(model, batch)`` -> per-sample values [n].
        batch: Inputs, presence mask and labels of n samples.
        weights: [n] sample weights; samples of weight zero are skipped.
        closed_form: Compute the tensors of ``nn.Linear`` modules with
            :mod:`mbd_cert._fisher_linear`, one batched backward pass per chunk of
            samples. Exact only
            when the samples are independent (``Architecture.independent_samples``);
            every other tensor takes the per-sample vmap path.

    Raises:
        ValueError: Every weight is zero.
    """
    weight_array = np.asarray(weights, dtype=np.float64)
    total = float(weight_array.sum())
    if total <= 0.0:
        raise ValueError("no sample has a non-zero weight for this objective")
    kept = np.flatnonzero(weight_array)
    wrapper = _ObjectiveModule(model, objective)
    values = {name: param.detach() for name, param in model.named_parameters()}
    first: dict[str, torch.Tensor] = {}
    second: dict[str, torch.Tensor] = {}
    remaining = list(names)
    if closed_form:
        sums = _closed_form_sums(model, wrapper, values, names, batch, weight_array, kept)
        first.update(sums.first)
        second.update(sums.second)
        remaining = sums.fallback
        # Dropped, so first and second keep the only references and the division
        # below frees each sum.
        del sums
    if remaining:
        vmap_first, vmap_second = _vmap_sums(wrapper, values, remaining, batch, weight_array,
                                             kept)
        first.update(vmap_first)
        second.update(vmap_second)
        del vmap_first, vmap_second
    # Each sum is replaced by its mean in turn, so only one extra tensor is alive at a
    # time instead of a second pair of parameter-sized dicts.
    for name in names:
        first[name] = first.pop(name) / total
        second[name] = second.pop(name) / total
    return first, second


def _closed_form_sums(
    model: torch.nn.Module,
    wrapper: _ObjectiveModule,
    values: Mapping[str, torch.Tensor],
    names: Sequence[str],
    batch: Mapping[str, Any],
    weight_array: np.ndarray,
    kept: np.ndarray,
) -> _fisher_linear.LinearMoments:
    """Return the closed-form sums over the ``kept`` samples, taken in chunks.

    Each chunk takes about ``CHUNK_BYTES``, estimated from the widths of the covered
    Linear layers. A tensor that the closed form rejects in any chunk is left to the
    caller for all samples, so no tensor mixes the two paths.
    """
    owners = _fisher_linear.linear_owners(model, names)
    features = sum(owner.module.in_features + owner.module.out_features
                   for owner in owners.values())
    rows_per_call = max(1, CHUNK_BYTES // (CLOSED_FORM_BYTES_PER_FEATURE * max(1, features)))
    total = _fisher_linear.LinearMoments()
    rejected: set[str] = set()
    for start in range(0, kept.size, rows_per_call):
        rows = kept[start : start + rows_per_call]
        arguments = _select_rows(batch, torch.from_numpy(rows))

        def forward(chosen: dict[str, torch.Tensor],
                    arguments: tuple[Any, ...] = arguments) -> torch.Tensor:
            result: torch.Tensor = call_with_tensors(
                wrapper, _prefixed({**values, **chosen}), arguments)
            return result

        sums = _fisher_linear.linear_moments(model, names, forward,
                                             torch.from_numpy(weight_array[rows]))
        rejected.update(sums.fallback)
        # Added in place and popped, so each chunk's sums are freed as they are added
        # and no third copy forms. The totals are the first chunk's own tensors, which
        # linear_moments returns unshared.
        for name in list(sums.first):
            value, square = sums.first.pop(name), sums.second.pop(name)
            if name in total.first:
                total.first[name].add_(value)
                total.second[name].add_(square)
            else:
                total.first[name], total.second[name] = value, square
            del value, square
    total.fallback = [name for name in names if name in rejected]
    for name in total.fallback:
        total.first.pop(name, None)
        total.second.pop(name, None)
    return total


def _select_rows(batch: Mapping[str, Any], rows: torch.Tensor) -> tuple[Any, ...]:
    return ({m: x.index_select(0, rows) for m, x in batch["inputs"].items()},
            batch["present"].index_select(0, rows), batch["label"].index_select(0, rows))


def _vmap_sums(
    wrapper: _ObjectiveModule,
    values: Mapping[str, torch.Tensor],
    names: Sequence[str],
    batch: Mapping[str, Any],
    weight_array: np.ndarray,
    kept: np.ndarray,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return ``sum_i w_i g_i`` and ``sum_i w_i g_i**2`` from one gradient per sample."""
    selected = {name: values[name] for name in names}

    def one_sample(
        chosen: dict[str, torch.Tensor],
        inputs: dict[str, torch.Tensor],
        present: torch.Tensor,
        label: torch.Tensor,
    ) -> torch.Tensor:
        # vmap strips the sample dimension; the model expects a batch of one.
        batch_of_one = ({m: x.unsqueeze(0) for m, x in inputs.items()},
                        present.unsqueeze(0), label.unsqueeze(0))
        value: torch.Tensor = call_with_tensors(
            wrapper, _prefixed({**values, **chosen}), batch_of_one).sum()
        return value

    per_sample = vmap(grad(one_sample), in_dims=(None, 0, 0, 0))
    first = {name: torch.zeros_like(v, dtype=torch.float64) for name, v in selected.items()}
    second = {name: torch.zeros_like(v, dtype=torch.float64) for name, v in selected.items()}
    entries = sum(int(value.numel()) for value in selected.values())
    chunk = max(1, min(CHUNK, CHUNK_BYTES // max(1, 8 * entries)))
    for start in range(0, kept.size, chunk):
        rows = torch.from_numpy(kept[start : start + chunk])
        w = torch.from_numpy(weight_array[rows.numpy()])
        grads = run_vmapped(per_sample, selected, *_select_rows(batch, rows))
        for name, g in grads.items():
            g64 = g.to(torch.float64)
            shape = (-1,) + (1,) * (g64.dim() - 1)
            first[name] += (w.view(shape) * g64).sum(dim=0)
            second[name] += (w.view(shape) * g64 * g64).sum(dim=0)
    return first, second


def saliency_scores(
    model: torch.nn.Module,
    gradient: MutableMapping[str, torch.Tensor],
    fisher: MutableMapping[str, torch.Tensor],
) -> dict[str, np.ndarray]:
    """Return the second-order leave-one-out estimate -g theta + H theta**2 / 2 per entry.

    Empties ``gradient`` and ``fisher``: each tensor's pair is removed once its score
    is formed, so the three never coexist whole (each is one float64 copy of the
    eligible parameters).
    """
    values = dict(model.named_parameters())
    scores = {}
    for name in list(gradient):
        theta = values[name].detach().to(torch.float64)
        score = theta * (0.5 * fisher.pop(name) * theta - gradient.pop(name))
        scores[name] = score.numpy()
    return scores


def mask_count(eligible_count: int, top_k_fraction: float) -> int:
    """Return k = max(1, ceil(top_k_fraction x eligible_count)) (SPEC.md, R-SAL-2).

    The product is taken on the shortest decimal form of the fraction, the number as
    the certificate writes it, so 0.02 x 5000 is 100 and not the 101 that binary
    floating point would round up to.
    """
    product = Decimal(repr(float(top_k_fraction))) * eligible_count
    return max(1, min(eligible_count, int(product.to_integral_value(rounding=ROUND_CEILING))))


@dataclass(frozen=True)
class Ranking:
    """The recomputed top-k selection over the eligible entries.

    Attributes:
        names: Tensor order of the flat index (sorted names, row-major inside each).
        magnitude: |score| per flat index.
        selected: Boolean flat mask of the k entries of largest |score|.
        cut: |score| of the k-th entry.
    """

    names: list[str]
    magnitude: np.ndarray
    selected: np.ndarray
    cut: float


def rank_top_k(scores: MutableMapping[str, np.ndarray], top_k_fraction: float) -> Ranking:
    """Select the k entries of largest |score|, ties by flat index ascending (R-SAL-2).

    Empties ``scores``: each tensor's scores are removed once their |score| is copied
    into the flat ``magnitude``, so the two are never both held whole.

    Raises:
        ValueError: There is no eligible entry.
    """
    names = sorted(scores)
    magnitude = _pop_magnitudes(scores, names)
    if magnitude.size == 0:
        raise ValueError("no eligible parameter entry")
    k = mask_count(int(magnitude.size), top_k_fraction)
    if np.isnan(magnitude).any():
        # A stable sort of -|score| keeps equal magnitudes in flat-index order and ranks
        # NaN last, which np.partition would rank first.
        order = np.argsort(-magnitude, kind="stable")
        selected = np.zeros(magnitude.size, dtype=bool)
        selected[order[:k]] = True
        return Ranking(names, magnitude, selected, float(magnitude[order[k - 1]]))
    # The same selection in linear time: every entry above the k-th largest |score| is
    # in, and entries equal to it fill the remaining places in flat-index order.
    cut = float(np.partition(magnitude, magnitude.size - k)[magnitude.size - k])
    selected = magnitude > cut
    ties = np.flatnonzero(magnitude == cut)
    selected[ties[: k - int(selected.sum())]] = True
    return Ranking(names, magnitude, selected, cut)


def _pop_magnitudes(scores: MutableMapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """Return |score| of ``names`` concatenated in that order, popping each from ``scores``."""
    # The dtype np.concatenate would give, from the distinct dtypes (few in number).
    dtype = np.result_type(*{scores[n].dtype for n in names}) if names else np.float64
    magnitude = np.empty(sum(int(scores[n].size) for n in names), dtype=dtype)
    start = 0
    for name in names:
        values = scores.pop(name).reshape(-1)
        np.abs(values, out=magnitude[start : start + values.size])
        start += values.size
    return magnitude


def tie_band(magnitude: np.ndarray, cut: float, tolerance: float) -> np.ndarray:
    """Return the entries a recomputed mask may swap with the committed one (R-SAL-3).

    The band contains the |scores| within ``tolerance`` (relative) of the k-th |score|
    ``cut``, which absorbs float differences between devices. With a cut of 0 it is
    empty. A score of exactly 0 (a parameter that is 0, or one the forget objective
    does not depend on) is 0 on every device, and a band of all zero scores would let
    the issuer place the rest of the mask anywhere among them. So those entries
    follow the R-SAL-2 order exactly.
    """
    if cut == 0.0:
        return np.zeros(magnitude.shape, dtype=bool)
    # One temporary, its absolute value taken in place.
    distance = magnitude - cut
    np.abs(distance, out=distance)
    band: np.ndarray = distance <= tolerance * cut
    return band


@dataclass(frozen=True)
class Update:
    """The recomputed deterministic update.

    Attributes:
        displacement: float64 array per masked tensor, clipped, zero outside the mask.
        raw_norm: L2 norm before the clip.
        norm: L2 norm after the clip.
    """

    displacement: dict[str, np.ndarray]
    raw_norm: float
    norm: float


def masked_update(
    model: torch.nn.Module,
    masks: Mapping[str, np.ndarray],
    objective: Objective,
    batch: Mapping[str, Any],
    *,
    steps: int,
    learning_rate: float,
    damping: float,
    clip_norm: float,
    closed_form: bool = False,
) -> Update:
    """Recompute K preconditioned masked descent steps and the clip (SPEC.md, section 6.3).

    ``theta <- theta - lr * mask * g / (sqrt(F) + damping)`` with g the full-batch mean
    gradient of the objective and F its diagonal Fisher at the start; the total
    displacement is scaled to L2 norm at most ``clip_norm``. ``model`` is not changed.
    ``closed_form`` is passed to :func:`gradient_and_fisher` for F.

    Raises:
        MalformedData: The batch has no sample.
    """
    names = sorted(masks)
    wrapper = _ObjectiveModule(model, objective)
    fixed = {name: p.detach().to(torch.float64) for name, p in model.named_parameters()}
    start = {name: fixed[name] for name in names}
    mask_t = {name: torch.from_numpy(np.array(masks[name], dtype=bool)) for name in names}
    n = int(batch["label"].shape[0])
    if n == 0:
        # read_probe_set rejects such a file, so this only guards callers that build the batch.
        raise MalformedData(
            "probe set has 0 samples; the masked update needs at least 1 (SPEC.md, R-PRB-1)",
            hint="use the probe set written with the checkpoint by 'mbd-cert train'",
        )
    fisher = gradient_and_fisher(model, names, objective, batch, np.ones(n),
                                 closed_form=closed_form)[1]
    # The Fisher is dropped tensor by tensor as its preconditioner is formed, so the
    # two are never both held whole.
    scale = {}
    for name in names:
        scale[name] = mask_t[name].to(torch.float64) / (fisher.pop(name).sqrt() + damping)

    def mean_objective(moving: dict[str, torch.Tensor]) -> torch.Tensor:
        arguments = (batch["inputs"], batch["present"], batch["label"])
        value: torch.Tensor = call_with_tensors(
            wrapper, _prefixed({**fixed, **moving}), arguments).mean()
        return value

    def gradient_of(moving: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # torch.autograd rather than torch.func.grad: the latter imports torch._dynamo
        # on first use, about 1.5 s of every `verify --level 2` (docs/benchmarks.md).
        leaves = {name: value.detach().requires_grad_(True) for name, value in moving.items()}
        grads = torch.autograd.grad(mean_objective(leaves), list(leaves.values()),
                                    allow_unused=True)
        return {name: torch.zeros_like(leaves[name]) if g is None else g
                for name, g in zip(leaves, grads, strict=True)}

    theta = dict(start)
    for _ in range(steps):
        g = gradient_of(theta)
        # Each new tensor replaces its predecessor at once, and the gradient goes with
        # it, so a step keeps only theta, g and one new tensor alive.
        for name in names:
            theta[name] = theta[name] - learning_rate * g.pop(name) * scale[name]
    del scale
    displacement = {}
    for name in names:
        displacement[name] = (theta.pop(name) - start[name]).numpy()
    raw_norm = math.sqrt(sum(float(np.square(d).sum()) for d in displacement.values()))
    factor = min(1.0, clip_norm / raw_norm) if raw_norm > 0 else 1.0
    clipped = {}
    for name in names:
        clipped[name] = np.where(masks[name], displacement.pop(name) * factor, 0.0)
    norm = math.sqrt(sum(float(np.square(d).sum()) for d in clipped.values()))
    return Update(clipped, raw_norm, norm)
