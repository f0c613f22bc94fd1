"""Training losses of the Missing-by-Design model.

Five terms, each a non-negative scalar averaged over the samples it applies to:

* task: L1 or mean squared error between prediction and label.
* similarity: 1 - cosine similarity between the batch-centred shared parts s_i and s_j
  of every pair of modalities observed together in a sample. Per-sample alignment
  (rather than matching distributions, as central moment discrepancy does) is what a
  generator must achieve to stand in for a missing modality.
* orthogonality: mean squared entry of the batch cross-correlation matrix [k, q] between
  the shared part s_m and the private part p_m, over the samples where m is observed.
  Columns are centred and scaled to unit L2 norm, so each entry is a Pearson
  correlation in [-1, 1]; the squared Frobenius norm is divided by k * q so that the
  term does not grow with the layer widths.
* reconstruction: squared error between the generator output r_m and the encoder's s_m,
  divided by the batch variance of s_m, so the term reads as 1 - R^2. The target s_m is
  detached so that it does not move towards the generator. The term covers the samples
  where m was really observed, including those hidden by modality dropout.
* preservation: squared difference between the prediction with m switched to its
  reconstruction and the prediction with the real m, the real side detached, over the
  samples where m is observed.

Stability: internal to the trainer; weights and defaults are recorded in
``training.json`` of each run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as functional

from mbd_cert.arch.mbd import MBDModel, Parts
from mbd_cert.errors import InputError

TASK_LOSSES = ("l1", "mse")
LOSS_NAMES = ("task", "similarity", "orthogonality", "reconstruction", "preservation")

# Guards the column normalisation of the cross-correlation against all-zero columns.
_NORM_EPS = 1e-8
# Floor of the reconstruction target's variance, so that a shared part that barely
# varies over the batch does not blow up the relative error.
_VARIANCE_EPS = 1e-4


@dataclass(frozen=True)
class LossWeights:
    """Weight of each loss term in the training objective (dimensionless).

    The defaults keep the task term dominant. Reconstruction is weighted like the task
    because the model relies on the generators whenever a modality is missing.
    """

    task: float = 1.0
    similarity: float = 0.1
    orthogonality: float = 0.1
    reconstruction: float = 1.0
    preservation: float = 0.5

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> LossWeights:
        """Build weights from a mapping, with defaults for absent keys.

        Raises:
            InputError: A key is unknown or a weight is not a finite number >= 0.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(
                f"unknown loss weights {unknown}", hint=f"known weights are {sorted(known)}",
                code="E_PARAMETER_INVALID",
            )
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or value < 0:
                raise InputError(
                    f"loss weight {name!r} must be a finite number >= 0, got {value!r}",
                    code="E_PARAMETER_INVALID",
                )
        return cls(**{name: float(value) for name, value in values.items()})

    def as_dict(self) -> dict[str, float]:
        """Return the weights as a plain dict."""
        return asdict(self)


def task_loss(prediction: torch.Tensor, label: torch.Tensor, kind: str) -> torch.Tensor:
    """Return the mean L1 or squared error between ``prediction`` and ``label``, both [n].

    Raises:
        InputError: ``kind`` is not "l1" or "mse".
    """
    if kind == "l1":
        return functional.l1_loss(prediction, label)
    if kind == "mse":
        return functional.mse_loss(prediction, label)
    raise InputError(f"task loss must be one of {list(TASK_LOSSES)}, got {kind!r}",
                     code="E_PARAMETER_INVALID")


def similarity_loss(model: MBDModel, parts: Parts) -> torch.Tensor:
    """Return the mean of 1 - cos(s_i, s_j) over modality pairs observed together.

    Each shared part is centred on its mean over the rows of the pair first, so that a
    constant offset common to all samples cannot make the parts look aligned. A pair
    observed together in fewer than two rows adds nothing.
    """
    observed = parts["state"] == 0
    names = [m for m in model.modalities if m in parts["shared"]]
    total = parts["prediction"].new_zeros(())
    count = parts["prediction"].new_zeros(())
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            both = observed[:, model.modality_index(names[a])] & \
                observed[:, model.modality_index(names[b])]
            both = both & (both.sum() >= 2)
            weight = both.to(total.dtype).unsqueeze(1)  # [n, 1]
            distance = 1.0 - functional.cosine_similarity(
                _centred(parts["shared"][names[a]], weight),
                _centred(parts["shared"][names[b]], weight),
                dim=1, eps=_NORM_EPS,
            )
            total = total + torch.where(both, distance, torch.zeros_like(distance)).sum()
            count = count + both.sum()
    return total / count.clamp_min(1)


def orthogonality_loss(model: MBDModel, parts: Parts) -> torch.Tensor:
    """Return the mean over modalities of the mean squared correlation of s_m and p_m."""
    observed = parts["state"] == 0
    terms = []
    for name, shared in parts["shared"].items():
        weight = observed[:, model.modality_index(name)].to(shared.dtype).unsqueeze(1)  # [n, 1]
        correlation = _normalised_columns(shared, weight).T @ \
            _normalised_columns(parts["private"][name], weight)  # [k, q]
        terms.append(correlation.pow(2).mean())
    if not terms:
        return parts["prediction"].new_zeros(())
    return torch.stack(terms).mean()


def reconstruction_loss(
    model: MBDModel, parts: Parts, really_present: torch.Tensor
) -> torch.Tensor:
    """Return the squared error of r_m against the detached s_m, relative to its variance.

    Per modality, the mean squared error over the rows with a real s_m is divided by
    the mean per-dimension batch variance of s_m on those rows (detached), so the term
    reads as 1 - R^2 of the reconstruction. Without the division a generator that only
    learns the mean of s_m scores well whenever s_m varies little around a large offset.
    Modalities with fewer than two such rows add nothing.

    Args:
        model: The model that produced ``parts``.
        parts: Output of ``forward_parts`` on the inputs after modality dropout.
        really_present: Bool [n, M], the presence mask before modality dropout. Rows
            where it is True have a real s_m to reconstruct.
    """
    total = parts["prediction"].new_zeros(())
    count = parts["prediction"].new_zeros(())
    for name, shared in parts["shared"].items():
        rows = really_present[:, model.modality_index(name)]
        rows = rows & (rows.sum() >= 2)
        target = shared.detach()
        weight = rows.to(target.dtype).unsqueeze(1)  # [n, 1]
        variance = (_centred(target, weight).pow(2).sum(dim=0)
                    / weight.sum().clamp_min(1)).mean()
        error = (parts["reconstructed"][name] - target).pow(2).mean(dim=1)  # [n]
        error = error / variance.clamp_min(_VARIANCE_EPS)
        total = total + torch.where(rows, error, torch.zeros_like(error)).sum()
        count = count + rows.sum()
    return total / count.clamp_min(1)


def preservation_loss(model: MBDModel, parts: Parts) -> torch.Tensor:
    """Return the mean squared change of the prediction when an observed m is reconstructed."""
    observed = parts["state"] == 0
    target = parts["prediction"].detach()
    total = target.new_zeros(())
    count = target.new_zeros(())
    for name in parts["shared"]:
        index = model.modality_index(name)
        state = model.state_with_reconstruction(parts["state"], name)
        prediction, _ = model.predict_from_parts(parts["shared"], parts["private"], state)
        squared = (prediction - target).pow(2)
        total = total + torch.where(observed[:, index], squared, torch.zeros_like(squared)).sum()
        count = count + observed[:, index].sum()
    return total / count.clamp_min(1)


def training_losses(
    model: MBDModel,
    inputs: Mapping[str, torch.Tensor],
    present: torch.Tensor,
    really_present: torch.Tensor,
    label: torch.Tensor,
    weights: LossWeights,
    task_kind: str = "l1",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run the model and return the weighted total loss with its five terms.

    Args:
        model: The model in training mode.
        inputs: Modality -> [n, T, d] features.
        present: Bool [n, M], the presence mask after modality dropout.
        really_present: Bool [n, M], the presence mask before modality dropout.
        label: [n] sentiment labels.
        weights: Weight of each term.
        task_kind: "l1" or "mse".

    Returns:
        ``(total, terms)``; ``terms`` maps each name of ``LOSS_NAMES`` to its unweighted
        scalar value.
    """
    parts = model.forward_parts(inputs, present)
    terms = {
        "task": task_loss(parts["prediction"], label, task_kind),
        "similarity": similarity_loss(model, parts),
        "orthogonality": orthogonality_loss(model, parts),
        "reconstruction": reconstruction_loss(model, parts, really_present),
        "preservation": preservation_loss(model, parts),
    }
    total = sum((getattr(weights, name) * value for name, value in terms.items()),
                start=parts["prediction"].new_zeros(()))
    return total, terms


def _centred(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # values [n, c], weight [n, 1] of 0/1: subtract the mean of the weighted rows and
    # set the other rows to zero, so they add nothing to later sums.
    mean = (values * weight).sum(dim=0, keepdim=True) / weight.sum().clamp_min(1)
    return torch.where(weight > 0, values - mean, torch.zeros_like(values))


def _normalised_columns(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # Columns centred over the weighted rows and scaled to unit L2 norm. With fewer
    # than two weighted rows every centred column is zero and so is the result.
    centred = _centred(values, weight)
    return torch.div(centred, centred.norm(dim=0, keepdim=True).clamp_min(_NORM_EPS))
