"""Agreement of the saliency proxy with the true leave-one-out increment.

The saliency score of an entry q (:mod:`mbd_cert.saliency`) is a second-order Taylor
estimate of how much the forget objective F changes when q is set to zero. This module
measures the real change on a random sample of candidates (the entries the mask
selected): for each sampled q, set theta_q = 0 in the pre-deletion model, evaluate F on
the probe set, and take F(theta with q zeroed) - F(theta). It reports

* the Spearman rank correlation between proxy and true increment
  (:func:`spearman_rho`, the statistic of ``scipy.stats.spearmanr``), and
* the share of sampled entries whose proxy lies within +-8 % of the true increment,
  |proxy - true| <= 0.08 * |true|.

Meng et al. ("Missing-by-Design", arXiv:2602.16144) report rho = 0.87 and 98 % for
their proxy. The figures here are measurements for the certificate's reader, not a
check: the mask is defined by the proxy whatever its quality.

Stability: public (:func:`measure_proxy_quality`, :class:`ProxyQuality`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mbd_cert._background import Cancelled
from mbd_cert._frozen_memo import memoise_frozen
from mbd_cert._functional_call import call_with_tensors
from mbd_cert._zeroed_linear import plan_pass, zeroable_linears, zeroed_pass
from mbd_cert.errors import InputError

# The band of the paper's "within +-8 %" figure, relative to the true increment.
RELATIVE_TOLERANCE = 0.08
DEFAULT_SAMPLE_SIZE = 64
# Each sampled entry costs one forward pass over the probe set (the layers it feeds).
MAX_SAMPLE_SIZE = 10_000
# Model copies per vectorised pass: bounds the memory of the varied layers'
# activations to this many times one forward pass.
_VARIANTS_PER_PASS = 16

logger = logging.getLogger(__name__)

ForgetValue = Callable[[torch.nn.Module], float]
# (model, batch, entries) -> per-sample forget values [len(entries) + 1, n] with each
# entry zeroed in turn (row 0 unchanged), or None; see Architecture.zeroed_forget.
ClosedForm = Callable[[torch.nn.Module, Mapping[str, Any], Sequence[tuple[str, int]]],
                      torch.Tensor | None]


@dataclass(frozen=True)
class ProxySample:
    """One sampled entry: where it is, its proxy score and its true increment."""

    tensor: str
    index: int
    proxy: float
    true: float


@dataclass(frozen=True)
class ProxyQuality:
    """Agreement of proxy and true leave-one-out increment on a sample.

    Attributes:
        samples: The sampled entries.
        spearman_rho: Rank correlation, or None when either side is constant.
        share_within_tolerance: Share of samples with |proxy - true| <= 0.08 |true|.
        seed: Seed of the sample draw.
        candidates: Number of entries the sample was drawn from (the mask size).
    """

    samples: list[ProxySample]
    spearman_rho: float | None
    share_within_tolerance: float
    seed: int
    candidates: int

    def to_json(self) -> dict[str, Any]:
        """Return the ``saliency.proxy_quality`` member of the certificate."""
        return {
            "candidates": "mask",
            "candidate_count": self.candidates,
            "sample_size": len(self.samples),
            "seed": self.seed,
            "increment": "forget objective with the entry set to zero minus without",
            "spearman_rho": self.spearman_rho,
            "relative_tolerance": RELATIVE_TOLERANCE,
            "share_within_tolerance": self.share_within_tolerance,
            "samples": [
                {"tensor": s.tensor, "index": s.index, "proxy": s.proxy, "true": s.true}
                for s in self.samples
            ],
        }


class ForgetMean:
    """F(model): the weighted mean of the per-sample forget objective on a fixed batch.

    Calling it evaluates F once without gradients. :meth:`zeroed` evaluates F for many
    copies of the model that each have one entry set to zero: by the architecture's
    closed form where it has one (``closed_form``), otherwise in one vectorised pass
    (``torch.func.vmap``). Layers that read no varied tensor run once for all copies,
    for example the encoders when only fusion entries vary, and a zeroed entry of a
    linear layer costs a column update instead of a copy of the weight
    (:mod:`mbd_cert._zeroed_linear`).
    """

    def __init__(
        self,
        objective: Callable[[torch.nn.Module, Mapping[str, Any]], torch.Tensor],
        batch: Mapping[str, Any],
        weights: torch.Tensor,
        *,
        independent_samples: bool = False,
        closed_form: ClosedForm | None = None,
    ) -> None:
        self.objective = objective
        self.closed_form = closed_form
        self.batch = batch
        self.weights = weights.to(torch.float64)
        self.total = float(weights.sum())
        if independent_samples:
            # Rows of weight zero cannot change F when each sample's value depends on
            # its own inputs alone, so they are left out of every evaluation.
            nonzero = torch.nonzero(self.weights != 0).flatten()
            self.batch = _rows(batch, nonzero)
            self.weights = self.weights.index_select(0, nonzero)

    def __call__(self, model: torch.nn.Module) -> float:
        """Return F of ``model`` with its current parameters."""
        with torch.no_grad():
            per_sample = self.objective(model, self.batch).to(torch.float64)
        return float((per_sample * self.weights).sum()) / self.total

    def closed_form_values(self, model: torch.nn.Module,
                           entries: Sequence[tuple[str, int]]) -> np.ndarray | None:
        """Return F unchanged and per zeroed entry from ``closed_form``, or None.

        Returns:
            float64 [len(entries) + 1], element 0 the unchanged model; NaN for the
            entries the closed form does not cover. None without a closed form.
        """
        if self.closed_form is None:
            return None
        with torch.no_grad():
            per_sample = self.closed_form(model, self.batch, entries)
        if per_sample is None:
            return None
        values: np.ndarray = ((per_sample.to(torch.float64) * self.weights).sum(dim=1)
                              / self.total).numpy()
        return values

    def zeroed(self, model: torch.nn.Module, part: Sequence[tuple[str, int]],
               owners: Mapping[str, tuple[str, str]]) -> np.ndarray:
        """Return F of the unchanged model and with each entry of ``part`` set to zero.

        Args:
            model: The model; it is left unchanged.
            part: (parameter name, flat index) per zeroed copy.
            owners: The names that may use the linear-layer route, from
                :func:`mbd_cert._zeroed_linear.zeroable_linears`.

        Returns:
            float64 [len(part) + 1]; element 0 is the unchanged model.
        """
        bound = _Bound(model, self.objective)
        fixed = {"model." + n: p.detach() for n, p in model.named_parameters()}

        def evaluate(values: dict[str, torch.Tensor], specs: Mapping[str, Any]) -> torch.Tensor:
            swapped = {**fixed, **{"model." + n: t for n, t in values.items()}}
            per_sample: torch.Tensor = call_with_tensors(bound, swapped, (self.batch,))
            return (per_sample.to(torch.float64) * self.weights).sum() / self.total

        with torch.no_grad():
            plan = plan_pass(model, part, owners)
            result = zeroed_pass(model, plan, evaluate)
            if plan.linear and not bool(torch.isfinite(result).all()):
                # The NaN placeholders reached F: some code reads a zeroed linear tensor
                # outside its layer, or F is not finite anyway. Copy the tensors instead.
                logger.debug("proxy check: linear-layer route gave non-finite values; "
                             "copying the varied tensors for this pass")
                plan = plan_pass(model, part, owners, use_linear=False)
                result = zeroed_pass(model, plan, evaluate)
        return result.numpy()


class _Bound(torch.nn.Module):
    """``objective(model, batch)`` as a module, so ``functional_call`` can swap tensors."""

    def __init__(self, model: torch.nn.Module,
                 objective: Callable[[torch.nn.Module, Mapping[str, Any]], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.objective(self.model, batch)


def _rows(batch: Mapping[str, Any], index: torch.Tensor) -> dict[str, Any]:
    """Return the rows ``index`` of every tensor in ``batch`` (one level of nesting)."""
    return {key: ({k: v.index_select(0, index) for k, v in value.items()}
                  if isinstance(value, Mapping) else value.index_select(0, index))
            for key, value in batch.items()}


def forget_value(
    objective: Callable[[torch.nn.Module, Mapping[str, Any]], torch.Tensor],
    batch: Mapping[str, Any],
    weights: torch.Tensor,
    *,
    independent_samples: bool = False,
    closed_form: ClosedForm | None = None,
) -> ForgetMean:
    """Return F(model): the weighted mean of the per-sample forget objective, no gradients.

    With ``independent_samples`` (see ``Architecture.independent_samples``) the rows
    of weight zero are dropped before any evaluation. ``closed_form``, when given,
    evaluates the zeroed copies of the entries it covers in place of a vectorised pass.
    """
    return ForgetMean(objective, batch, weights, independent_samples=independent_samples,
                      closed_form=closed_form)


def measure_proxy_quality(
    model: torch.nn.Module,
    scores: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    value: ForgetValue,
    *,
    sample_size: int,
    seed: int,
    stopping: threading.Event | None = None,
    local_parameters: bool = False,
) -> ProxyQuality:
    """Compare proxy scores with true leave-one-out increments on sampled mask entries.

    Args:
        model: The pre-deletion model the scores were computed on; each entry is
            restored after its evaluation.
        scores: Saliency score per eligible tensor (float64 arrays).
        masks: The mask per tensor; the sample is drawn from its True entries.
        value: F(model), for example from :func:`forget_value`.
        sample_size: Number of entries to sample, 1 to :data:`MAX_SAMPLE_SIZE`; fewer
            when the mask is smaller.
        seed: Seed of the draw (recorded).
        stopping: Checked before each forward pass; once it is set the measurement
            stops with :class:`mbd_cert._background.Cancelled`.
        local_parameters: The model keeps the contract of
            ``Architecture.local_parameters``, so the vectorised passes may reuse the
            outputs of unvaried modules and zero ``nn.Linear`` entries by a column
            update. False copies the varied tensors and recomputes every module.

    Returns:
        The measured agreement.

    Raises:
        InputError: ``sample_size`` is out of range or the mask is empty
            (``E_PARAMETER_INVALID``).
        Cancelled: ``stopping`` was set.
    """
    if isinstance(sample_size, bool) or not isinstance(sample_size, int) or not (
        1 <= sample_size <= MAX_SAMPLE_SIZE
    ):
        raise InputError(
            f"proxy sample size must be an integer in [1, {MAX_SAMPLE_SIZE}], got {sample_size!r}",
            code="E_PARAMETER_INVALID",
        )
    names = sorted(masks)
    flat_masks = [np.flatnonzero(np.asarray(masks[name]).ravel()) for name in names]
    counts = np.array([len(f) for f in flat_masks], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        raise InputError("the mask is empty; nothing to sample", code="E_PARAMETER_INVALID")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, size=min(sample_size, total), replace=False))
    offsets = np.concatenate([[0], np.cumsum(counts)])

    entries = []
    for position in chosen.tolist():
        tensor_index = int(np.searchsorted(offsets, position, side="right") - 1)
        entries.append((names[tensor_index],
                        int(flat_masks[tensor_index][position - offsets[tensor_index]])))
    increments = None
    if isinstance(value, ForgetMean):
        try:
            increments = _increments_vectorised(model, entries, value, stopping,
                                                local_parameters)
        except RuntimeError as exc:
            logger.warning("the proxy check cannot be vectorised for this objective (%s); "
                           "using one forward pass per entry", str(exc).splitlines()[0][:200])
    if increments is None:
        increments = _increments_one_by_one(model, entries, value, stopping)
    samples = [
        ProxySample(name, flat_index, float(np.asarray(scores[name]).ravel()[flat_index]),
                    float(increment))
        for (name, flat_index), increment in zip(entries, increments, strict=True)
    ]
    return summarise(samples, seed=seed, candidates=total)


def _check_stopping(stopping: threading.Event | None) -> None:
    if stopping is not None and stopping.is_set():
        raise Cancelled("the proxy-quality check was cancelled")


def _increments_one_by_one(
    model: torch.nn.Module, entries: Sequence[tuple[str, int]], value: ForgetValue,
    stopping: threading.Event | None = None,
) -> list[float]:
    """Zero each entry in place, evaluate F, restore it: one forward pass per entry."""
    parameters = dict(model.named_parameters())
    baseline = value(model)
    increments = []
    for name, flat_index in entries:
        _check_stopping(stopping)
        flat = parameters[name].data.view(-1)
        original = flat[flat_index].clone()
        try:
            flat[flat_index] = 0.0
            increments.append(value(model) - baseline)
        finally:
            flat[flat_index] = original
    return increments


def _increments_vectorised(
    model: torch.nn.Module, entries: Sequence[tuple[str, int]], value: ForgetMean,
    stopping: threading.Event | None = None, local_parameters: bool = False,
) -> list[float]:
    """Evaluate F for up to ``_VARIANTS_PER_PASS`` zeroed entries per vectorised pass.

    Entries that the value's closed form covers (``ForgetMean.closed_form``) take it
    instead, all in one call. Copy 0 of every pass, and of the closed form, is the
    unchanged model, so each increment is the difference of two values computed by the
    same kernels. With ``local_parameters`` the modules that no pass varies keep their
    outputs from one pass to the next (:mod:`mbd_cert._frozen_memo`), and linear
    entries take the column update.
    """
    increments = [0.0] * len(entries)
    remaining = list(range(len(entries)))
    _check_stopping(stopping)
    closed = value.closed_form_values(model, entries)
    if closed is not None and math.isfinite(closed[0]):
        for position in range(len(entries)):
            if math.isfinite(closed[position + 1]):
                increments[position] = float(closed[position + 1] - closed[0])
        remaining = [p for p in remaining if not math.isfinite(closed[p + 1])]
    if not remaining:
        return increments
    rest = [entries[p] for p in remaining]
    varied = sorted({name for name, _ in rest})
    # The memo wraps every module's forward, which costs more than the closed form
    # saves when it covered every entry, so it starts only for the passes.
    memo = memoise_frozen(model, set(varied)) if local_parameters else contextlib.nullcontext()
    with memo:
        owners = zeroable_linears(model, varied) if local_parameters else {}
        for group in _passes(rest):
            positions = [remaining[i] for i in group]
            _check_stopping(stopping)
            values = value.zeroed(model, [entries[i] for i in positions], owners)
            for position, varied_value in zip(positions, values[1:], strict=True):
                increments[position] = float(varied_value - values[0])
    return increments


def _passes(entries: Sequence[tuple[str, int]]) -> list[list[int]]:
    """Split entry positions into passes of at most ``_VARIANTS_PER_PASS``, one module each.

    A pass that varies one module leaves every layer before it unbatched, so it runs
    them once instead of once per copy. Each module's entries are spread evenly over
    as few passes as the limit allows.
    """
    groups: dict[str, list[int]] = {}
    for position, (name, _) in enumerate(entries):
        groups.setdefault(name.rpartition(".")[0], []).append(position)
    passes: list[list[int]] = []
    for positions in groups.values():
        count = -(-len(positions) // _VARIANTS_PER_PASS)
        size = -(-len(positions) // count)
        passes.extend(positions[start : start + size] for start in range(0, len(positions), size))
    return passes


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float:
    """Return Spearman's rank correlation: Pearson's r of the average ranks (ties shared).

    The same statistic as ``scipy.stats.spearmanr``, which the tests use as the
    reference. Importing scipy.stats took 0.42 s on the benchmark machine, more than
    the rest of a warm ``issue``, so the ranks are computed here with numpy.
    """
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float(np.dot(rx, ry) / math.sqrt(float(np.dot(rx, rx)) * float(np.dot(ry, ry))))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Return 1-based ranks, equal values sharing the mean of their positions."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    # Start index of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], ordered.size]
    run_ranks = (starts + ends + 1) / 2.0  # mean of 1-based positions starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, ends - starts)
    return ranks


def summarise(samples: Sequence[ProxySample], *, seed: int, candidates: int) -> ProxyQuality:
    """Compute Spearman rho and the share within tolerance for measured samples."""
    proxy = np.array([s.proxy for s in samples], dtype=np.float64)
    true = np.array([s.true for s in samples], dtype=np.float64)
    rho: float | None = None
    if len(samples) >= 2 and np.ptp(proxy) > 0 and np.ptp(true) > 0:
        result = spearman_rho(proxy, true)
        rho = result if math.isfinite(result) else None
    within = np.abs(proxy - true) <= RELATIVE_TOLERANCE * np.abs(true)
    share = float(np.mean(within)) if len(samples) else 0.0
    return ProxyQuality(
        samples=list(samples),
        spearman_rho=rho,
        share_within_tolerance=share,
        seed=seed,
        candidates=candidates,
    )
