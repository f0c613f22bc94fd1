"""Hyper-parameters of a training run, with their defaults and validation.

The defaults were chosen on the bundled synthetic corpus (1,200 training samples, seeds
0 and 1), where the best validation MAE came after 15 to 25 epochs. They were not tuned
for the real corpora.

Stability: internal to the trainer; ``training.json`` records every value of a run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from mbd_cert.errors import InputError
from trainer.losses import TASK_LOSSES, LossWeights

# Model config keys a training run may set. The corpus fixes modalities, input_dims
# and seq_len, and only an issued deletion sets deleted_modalities.
MODEL_KEYS = frozenset(
    {"hidden_dim", "shared_dim", "private_dim", "fusion_hidden", "dropout", "output_scale"}
)


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters of :func:`trainer.train.train`.

    Attributes:
        epochs: Maximum number of passes over the training split.
        batch_size: Samples per optimiser step.
        learning_rate: AdamW step size.
        weight_decay: AdamW decoupled weight decay per step, as a fraction of the
            learning rate times the weight.
        modality_dropout: Probability of hiding each observed modality of a sample in a
            training step (one observed modality always stays).
        patience: Epochs without a validation MAE gain before training stops.
        min_improvement: Smallest drop of validation MAE (score units) that counts as
            a gain.
        grad_clip: Maximum global L2 norm of the gradient per step.
        task_loss: "l1" or "mse".
        loss_weights: Weight of each loss term.
        model: Model config overrides (keys of ``MODEL_KEYS``); the rest takes the
            architecture's defaults.
        probe_members: Training samples in ``probe.safetensors`` (at most the train
            split's size). The issuer runs one backward pass per probe sample.
        probe_nonmembers: Held-out test samples in ``probe.safetensors`` (at most the
            test split's size).
    """

    epochs: int = 100
    batch_size: int = 64
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    modality_dropout: float = 0.3
    patience: int = 10
    min_improvement: float = 1e-4
    grad_clip: float = 5.0
    task_loss: str = "l1"
    loss_weights: LossWeights = field(default_factory=LossWeights)
    model: dict[str, Any] = field(default_factory=dict)
    probe_members: int = 200
    probe_nonmembers: int = 200

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TrainingConfig:
        """Build a config from a mapping such as a parsed JSON file.

        ``loss_weights`` may be a mapping of some of the weights; absent keys take the
        defaults.

        Raises:
            InputError: A key is unknown or a value is invalid (names the field).
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(key) for key in values if key not in known)
        if unknown:
            raise InputError(f"unknown training config keys {unknown}",
                             hint=f"known keys are {sorted(known)}",
                             code="E_PARAMETER_INVALID")
        arguments = dict(values)
        weights = arguments.get("loss_weights")
        if isinstance(weights, Mapping):
            arguments["loss_weights"] = LossWeights.from_mapping(weights)
        model = arguments.get("model")
        if isinstance(model, Mapping):
            arguments["model"] = dict(model)
        return cls(**arguments).validated()

    def validated(self) -> TrainingConfig:
        """Return self after checking every field.

        Raises:
            InputError: A value is out of range or of the wrong type (names the field).
        """
        _integer("epochs", self.epochs, 1)
        _integer("batch_size", self.batch_size, 1)
        _integer("patience", self.patience, 1)
        _integer("probe_members", self.probe_members, 1)
        _integer("probe_nonmembers", self.probe_nonmembers, 1)
        _number("learning_rate", self.learning_rate, exclusive_minimum=0.0)
        _number("weight_decay", self.weight_decay, minimum=0.0)
        _number("min_improvement", self.min_improvement, minimum=0.0)
        _number("grad_clip", self.grad_clip, exclusive_minimum=0.0)
        _number("modality_dropout", self.modality_dropout, minimum=0.0)
        if self.modality_dropout >= 1.0:
            raise _invalid("modality_dropout", "must be < 1", self.modality_dropout)
        if self.task_loss not in TASK_LOSSES:
            raise _invalid("task_loss", f"must be one of {list(TASK_LOSSES)}", self.task_loss)
        if not isinstance(self.loss_weights, LossWeights):
            raise _invalid("loss_weights", "must be a mapping of weights", self.loss_weights)
        LossWeights.from_mapping(self.loss_weights.as_dict())
        if not isinstance(self.model, Mapping):
            raise _invalid("model", "must be a mapping", self.model)
        unknown = sorted(set(self.model) - MODEL_KEYS)
        if unknown:
            raise _invalid("model", f"may only set {sorted(MODEL_KEYS)}", unknown)
        return replace(self, model=dict(self.model))

    def as_dict(self) -> dict[str, Any]:
        """Return every value as a JSON-serialisable dict."""
        return asdict(self)


# Fields without a command-line option of their own; the others are set by
# --FIELD-NAME with underscores as hyphens.
_NO_OPTION = ("min_improvement", "loss_weights", "model")


def _invalid(field_name: str, requirement: str, value: object) -> InputError:
    if field_name in _NO_OPTION:
        hint = f"set {field_name} in the config passed to trainer.train.train"
    else:
        hint = (f"pass --{field_name.replace('_', '-')} (or the config key {field_name}) "
                "within the range that 'mbd-cert train --help' gives")
    return InputError(f"training config {field_name} {requirement}, got {value!r}",
                      hint=hint, code="E_PARAMETER_INVALID")


def _integer(field_name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(field_name, "must be an integer", value)
    if value < minimum:
        raise _invalid(field_name, f"must be >= {minimum}", value)


def _number(field_name: str, value: object, *, minimum: float | None = None,
            exclusive_minimum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        raise _invalid(field_name, "must be a finite number", value)
    if minimum is not None and value < minimum:
        raise _invalid(field_name, f"must be >= {minimum}", value)
    if exclusive_minimum is not None and value <= exclusive_minimum:
        raise _invalid(field_name, f"must be > {exclusive_minimum}", value)
