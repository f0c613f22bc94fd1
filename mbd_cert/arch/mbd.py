"""The "mbd-sentiment" architecture record: the builder and the two deletion objectives.

The forget objective measures how much a prediction depends on the real modality
beyond what its generator recovers. The retain objective is the task error of the
model without it. :data:`ARCHITECTURE` ties them to the config checks of
:mod:`mbd_cert.arch._mbd_config` and to :class:`MBDModel`, which lives in
:mod:`mbd_cert.arch._mbd_model` and is re-exported here with :class:`Parts`. The
built-in entry point ``mbd_cert.arch.mbd:ARCHITECTURE`` names this record.

Stability: the two objectives are part of certificate format 1, because the verifier
recomputes them. The entry point and the names in ``__all__`` are public.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mbd_cert.arch import Architecture, Batch, _mbd_zeroed_forget
from mbd_cert.arch._mbd_config import (
    NAME,
    VERSION,
    encoder_prefixes,
    generator_prefixes,
    validate_config,
)
from mbd_cert.arch._mbd_model import MBDModel, Parts, eval_mode
from mbd_cert.errors import InputError


def build(config: Mapping[str, Any]) -> MBDModel:
    """Build the model of ``config`` with parameters initialised from seed 0.

    Raises:
        InputError: The config is invalid.
    """
    return MBDModel(config, seed=0)


def forget_objective(model: nn.Module, batch: Batch, modality: str) -> torch.Tensor:
    """Return per-sample (f(x) - f(x with ``modality`` reconstructed))**2, shape [n].

    The value is how much the prediction depends on the real modality beyond what its
    generator recovers from the other modalities. It is zero where the modality is
    absent. The model runs in eval mode (dropout off) whatever its current mode, and
    gradients flow to every parameter.

    Args:
        model: The pre-deletion :class:`MBDModel`.
        batch: Inputs, presence mask and labels.
        modality: The modality to be deleted.

    Raises:
        InputError: ``model`` is not an ``MBDModel``, or ``modality`` is unknown or
            already deleted.
    """
    mbd = _as_mbd(model)
    index = mbd.modality_index(modality)
    if modality in mbd.deleted:
        raise InputError(
            f"modality {modality!r} is already deleted in this model",
            hint="the forget objective is computed on the model before the deletion",
        )
    with eval_mode(mbd):
        parts = mbd.forward_parts(batch["inputs"], batch["present"])
        forced_state = mbd.state_with_reconstruction(parts["state"], modality)
        forced, _ = mbd.predict_from_parts(parts["shared"], parts["private"], forced_state)
    squared = (parts["prediction"] - forced) ** 2
    return torch.where(batch["present"][:, index], squared, torch.zeros_like(squared))


def zeroed_forget(model: nn.Module, batch: Batch, modality: str,
                  entries: Sequence[tuple[str, int]]) -> torch.Tensor | None:
    """Return the forget objective with each entry zeroed in turn, for the late layers.

    Per-sample values [len(entries) + 1, n], row 0 the unchanged model, computed in
    closed form per copy (:mod:`mbd_cert.arch._mbd_zeroed_forget`). The rows of entries
    outside ``fusion.0``, ``fusion.3``, ``head`` and the output layer of ``modality``'s
    generator are NaN. Returns None when ``model`` is not exactly an :class:`MBDModel`
    with the late modules it builds, or ``modality`` is already deleted in it.
    """
    # An already deleted modality has no forget objective: the caller's generic route
    # raises the same error as forget_objective.
    if type(model) is not MBDModel or not _mbd_zeroed_forget.standard_layers(model) or \
            modality in model.deleted:
        return None
    with eval_mode(model):
        return _mbd_zeroed_forget.zeroed_values(model, batch, modality, entries)


def retain_objective(model: nn.Module, batch: Batch, modality: str) -> torch.Tensor:
    """Return the per-sample absolute error |f(x) - y| of the model without ``modality``, [n].

    The model runs in eval mode (dropout off) whatever its current mode.

    Args:
        model: An :class:`MBDModel` whose config lists ``modality`` as deleted.
        batch: Inputs, presence mask and labels.
        modality: The deleted modality.

    Raises:
        InputError: ``model`` is not an ``MBDModel``, or ``modality`` is unknown or not
            deleted in it.
    """
    mbd = _as_mbd(model)
    mbd.modality_index(modality)
    if modality not in mbd.deleted:
        raise InputError(
            f"modality {modality!r} is not deleted in this model",
            hint="build the model with the modality in config.deleted_modalities",
        )
    with eval_mode(mbd):
        prediction = mbd.forward_parts(batch["inputs"], batch["present"])["prediction"]
    return (prediction - batch["label"].to(prediction.dtype)).abs()


def _as_mbd(model: nn.Module) -> MBDModel:
    if not isinstance(model, MBDModel):
        raise InputError(
            f"the {NAME!r} objectives need an MBDModel, got {type(model).__name__}"
        )
    return model


ARCHITECTURE = Architecture(
    name=NAME,
    version=VERSION,
    validate_config=validate_config,
    build=build,
    encoder_prefixes=encoder_prefixes,
    generator_prefixes=generator_prefixes,
    forget_objective=forget_objective,
    retain_objective=retain_objective,
    # Both objectives run in eval mode and the model has no batch statistics.
    independent_samples=True,
    # Outside its own layer, the model reads a weight's dtype only, never its values.
    local_parameters=True,
    zeroed_forget=zeroed_forget,
)

__all__ = ["ARCHITECTURE", "MBDModel", "Parts", "build", "forget_objective", "retain_objective",
           "zeroed_forget"]
