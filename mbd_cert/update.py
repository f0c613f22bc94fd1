"""The deterministic masked update and its clip (SPEC.md, section 6.3).

Starting from the model with the modality structurally removed (its encoder zeroed and
its slot switched to the generator), K full-batch steps of diagonally preconditioned
gradient descent on the retain objective move only the masked entries:

    theta <- theta - lr * mask * g / (sqrt(F) + damping)

where g is the mean retain gradient at the current theta and F the diagonal empirical
Fisher of the retain objective at the starting point (computed once, so the
preconditioner does not depend on the path). The total displacement d is then scaled
to L2 norm at most ``clip_norm`` over all masked entries together. Everything runs in
float64 on the probe set, so the issuer and the verifier get the same d up to
floating-point reduction order.

Stability: internal; the update rule is fixed by format 1.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mbd_cert._frozen_memo import memoise_frozen
from mbd_cert.saliency import ClosedForm, Objective, gradient_moments

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdateResult:
    """The clipped displacement of the masked update.

    Attributes:
        displacement: float64 numpy array per masked tensor, zero outside the mask.
        norm_before_clip: L2 norm of the raw displacement over all masked entries.
        scale: Factor applied by the clip (1.0 when no clip was needed).
    """

    displacement: dict[str, np.ndarray]
    norm_before_clip: float
    scale: float


def masked_update(
    model: torch.nn.Module,
    masks: Mapping[str, np.ndarray],
    objective: Objective,
    batch: Mapping[str, Any],
    weights: torch.Tensor,
    *,
    steps: int,
    learning_rate: float,
    damping: float,
    clip_norm: float,
    independent_samples: bool = False,
    fisher: Mapping[str, torch.Tensor] | None = None,
    closed_form: ClosedForm | None = None,
    gradient: Mapping[str, torch.Tensor] | None = None,
) -> UpdateResult:
    """Run the masked preconditioned descent and clip the displacement.

    Args:
        model: float64 model with the modality removed; it is modified in place and
            restored to its starting values before returning.
        masks: Boolean mask per tensor name (the saliency mask).
        objective: The retain objective, per-sample values [n].
        batch: The full probe batch.
        weights: Per-sample weights [n] of the retain objective.
        steps: Number of descent steps K (0 gives a zero displacement).
        learning_rate: Step size lr, in parameter units per preconditioned gradient.
        damping: Added to sqrt(F) so the preconditioner stays bounded.
        clip_norm: The L2 bound C on the total displacement.
        independent_samples: Passed to :func:`gradient_moments` for the Fisher.
        fisher: The Fisher F per tensor name, when the caller has already computed it
            with :func:`gradient_moments` on this model, objective, batch and weights
            (the issuer does so while it computes the saliency scores).
        closed_form: The retain objective's gradients written out for this model. The
            steps use it when it covers the moving tensors (see
            :func:`mbd_cert.saliency.gradient_moments`).
        gradient: The mean gradient g at the starting point, from the same
            :func:`gradient_moments` call as ``fisher``. The first step uses it in
            place of computing it again, but only with ``independent_samples``.
            :func:`gradient_moments` averages the gradients of one-sample batches, which
            differ from the steps' full-batch gradient when an objective reads batch
            statistics.

    Returns:
        The clipped displacement.
    """
    names: Sequence[str] = sorted(masks)
    parameters = dict(model.named_parameters())
    start = {name: parameters[name].detach().clone() for name in names}
    mask_t = {name: torch.from_numpy(np.ascontiguousarray(masks[name])) for name in names}

    if fisher is None:
        _, fisher = gradient_moments(model, names, objective, batch, weights,
                                     independent_samples=independent_samples,
                                     closed_form=closed_form)
    precondition = {name: 1.0 / (fisher[name].sqrt() + damping) for name in names}
    # Parameters outside the mask never move, so the steps record no autograd graph
    # for them: 20 % less time per step on the MBD model (docs/benchmarks.md). That
    # includes eligible tensors with no masked entry, whose step is zero throughout.
    moving = [name for name in names if bool(mask_t[name].any())]
    frozen = [p for name, p in parameters.items() if name not in moving and p.requires_grad]

    try:
        for p in frozen:
            p.requires_grad_(False)
        gradients = _Gradients(model, moving, objective, batch, weights, closed_form,
                               gradient if independent_samples else None)
        # The closed form runs the frozen layers once per step on plain tensors, where
        # the memo's bookkeeping would cost more than it saves.
        with contextlib.nullcontext(None) if gradients.closed_form else \
                memoise_frozen(model, set(moving)) as memo:
            displacement = {} if not moving else _descend(
                model, moving, gradients, steps, learning_rate, precondition, mask_t)
        if memo is not None:
            logger.debug("masked update: %d memoised module calls, memo dropped for %s",
                         memo.hits, memo.dropped)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        with torch.no_grad():
            for name in names:
                parameters[name].copy_(start[name])

    for name in names:
        if name not in displacement:
            displacement[name] = np.zeros(tuple(start[name].shape), dtype=np.float64)
    norm = math.sqrt(sum(float(np.sum(d * d)) for d in displacement.values()))
    scale = 1.0 if norm <= clip_norm else clip_norm / norm
    if scale != 1.0:
        displacement = {name: d * scale for name, d in displacement.items()}
    for name in names:
        displacement[name][~masks[name]] = 0.0
    return UpdateResult(displacement=displacement, norm_before_clip=norm, scale=scale)


class _Gradients:
    """The mean retain gradient of the moving tensors at their current values.

    The closed form computes it when it covers every moving tensor. Once it cannot give
    finite values, autograd through the objective takes over for the remaining steps.
    """

    def __init__(self, model: torch.nn.Module, names: Sequence[str], objective: Objective,
                 batch: Mapping[str, Any], weights: torch.Tensor,
                 closed_form: ClosedForm | None,
                 first: Mapping[str, torch.Tensor] | None) -> None:
        self._model, self._names, self._objective = model, names, objective
        self._batch, self._weights = batch, weights
        self._first = first
        self.closed_form = closed_form if closed_form is not None and names and \
            closed_form.covers(names) else None

    def __call__(self) -> list[torch.Tensor | None]:
        if self._first is not None:
            first, self._first = self._first, None
            return [first[name] for name in self._names]
        if self.closed_form is not None:
            found = self.closed_form.mean_gradient(self._names, self._weights)
            if found is not None:
                return [found[name] for name in self._names]
            self.closed_form = None
        parameters = dict(self._model.named_parameters())
        values = self._objective(self._model, self._batch)
        loss = (values * self._weights.to(values.dtype)).sum() / float(self._weights.sum())
        targets = [parameters[name] for name in self._names]
        return list(torch.autograd.grad(loss, targets, allow_unused=True))


def _descend(
    model: torch.nn.Module,
    names: Sequence[str],
    gradients: _Gradients,
    steps: int,
    learning_rate: float,
    precondition: Mapping[str, torch.Tensor],
    mask_t: Mapping[str, torch.Tensor],
) -> dict[str, np.ndarray]:
    """Run the K masked steps in place and return the float64 displacement per tensor."""
    parameters = dict(model.named_parameters())
    start = {name: parameters[name].detach().to(torch.float64).clone() for name in names}
    for _ in range(steps):
        grads = gradients()
        with torch.no_grad():
            for name, grad in zip(names, grads, strict=True):
                if grad is None:
                    continue
                step = learning_rate * grad.to(torch.float64) * precondition[name]
                step = torch.where(mask_t[name], step, torch.zeros_like(step))
                parameters[name].sub_(step.to(parameters[name].dtype))
    return {
        name: (parameters[name].detach().to(torch.float64) - start[name]).cpu().numpy()
        for name in names
    }
