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

from mbd_cert.arch._mbd_config import MAX_LAYER_WIDTH
from mbd_cert.checkpoint import MIN_ISSUE_PROBE_SAMPLES
from mbd_cert.errors import InputError
from trainer.losses import TASK_LOSSES, LossWeights

# Largest training seed: numpy's legacy global generator, which train() seeds for
# library code, takes a 32-bit seed.
MAX_SEED = 2**32 - 1

# Model config keys a training run may set. The corpus fixes modalities, input_dims
# and seq_len, and only an issued deletion sets deleted_modalities.
MODEL_KEYS = frozenset(
    {"hidden_dim", "shared_dim", "private_dim", "fusion_hidden", "dropout", "output_scale"}
)


@dataclass(frozen=True)
class Bounds:
    """Valid values of one numeric hyper-parameter.

    :meth:`TrainingConfig.validated` enforces them, and ``mbd-cert train --help`` and
    the error hints state them with :meth:`text`, so the three cannot disagree.

    Attributes:
        integer: Only integers are valid; otherwise any finite number is.
        minimum: Smallest valid value, or None.
        exclusive_minimum: Values must be above this, or None.
        exclusive_maximum: Values must be below this, or None.
        maximum: Largest valid value, or None.
        note: Text appended to :meth:`text`, such as a cap applied at run time.
    """

    integer: bool
    minimum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    maximum: float | None = None
    note: str = ""

    def text(self) -> str:
        """Return the range in words, such as ``an integer >= 1`` or ``a number in [0, 1)``."""
        kind = "an integer" if self.integer else "a number"
        low = self.minimum if self.minimum is not None else self.exclusive_minimum
        high = self.maximum if self.maximum is not None else self.exclusive_maximum
        if low is not None and high is not None:
            opening = "[" if self.minimum is not None else "("
            closing = "]" if self.maximum is not None else ")"
            words = f"{kind} in {opening}{_show(low)}, {_show(high)}{closing}"
        elif low is not None:
            words = f"{kind} {'>=' if self.minimum is not None else '>'} {_show(low)}"
        elif high is not None:
            words = f"{kind} {'<=' if self.maximum is not None else '<'} {_show(high)}"
        else:
            words = kind
        return f"{words} {self.note}" if self.note else words

    def check(self, field_name: str, value: object) -> None:
        """Raise ``E_PARAMETER_INVALID`` naming ``field_name`` when ``value`` is out of range."""
        if self.integer:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _invalid(field_name, "must be an integer", value)
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value):
            raise _invalid(field_name, "must be a finite number", value)
        number = float(value)
        outside = ((self.minimum is not None and number < self.minimum)
                   or (self.exclusive_minimum is not None and number <= self.exclusive_minimum)
                   or (self.exclusive_maximum is not None and number >= self.exclusive_maximum)
                   or (self.maximum is not None and number > self.maximum))
        if outside:
            raise _invalid(field_name, f"must be {self.text()}", value)


def _show(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


_COUNT = Bounds(integer=True, minimum=1)
_WIDTH = Bounds(integer=True, minimum=1, maximum=MAX_LAYER_WIDTH)
_PROBABILITY = Bounds(integer=False, minimum=0.0, exclusive_maximum=1.0)
_POSITIVE = Bounds(integer=False, exclusive_minimum=0.0)
_NON_NEGATIVE = Bounds(integer=False, minimum=0.0)

# Valid values of each numeric hyper-parameter, by field ("model.<key>" and
# "loss_weights.<key>" for the nested ones). The model widths use the cap that the
# architecture's config check applies.
FIELD_BOUNDS: dict[str, Bounds] = {
    "epochs": _COUNT,
    "batch_size": _COUNT,
    "patience": _COUNT,
    # train checks the sum once the split sizes have capped the two counts.
    "probe_members": Bounds(integer=True, minimum=1,
                            note="(capped at the train split's size); with the "
                            f"non-members at least {MIN_ISSUE_PROBE_SAMPLES}, which issue needs"),
    "probe_nonmembers": Bounds(integer=True, minimum=1,
                               note="(capped at the test split's size); with the "
                               f"members at least {MIN_ISSUE_PROBE_SAMPLES}, which issue needs"),
    # AdamW keeps its state in float32, and above about 1e37 the step overflowed into
    # a RuntimeError; no useful rate comes near the cap.
    "learning_rate": Bounds(integer=False, exclusive_minimum=0.0, maximum=1e3),
    "weight_decay": _NON_NEGATIVE,
    "min_improvement": _NON_NEGATIVE,
    "grad_clip": _POSITIVE,
    "modality_dropout": _PROBABILITY,
    "model.hidden_dim": _WIDTH,
    "model.shared_dim": _WIDTH,
    "model.private_dim": _WIDTH,
    "model.fusion_hidden": _WIDTH,
    "model.dropout": _PROBABILITY,
    "model.output_scale": _POSITIVE,
    **{f"loss_weights.{weight.name}": _NON_NEGATIVE for weight in fields(LossWeights)},
}


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
            for name, value in weights.items():
                bounds = FIELD_BOUNDS.get(f"loss_weights.{name}")
                if bounds is not None:
                    bounds.check(f"loss_weights.{name}", value)
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
        for field_name, bounds in FIELD_BOUNDS.items():
            if "." not in field_name:
                bounds.check(field_name, getattr(self, field_name))
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
        # Checked here as well as when the model is built, so that the hint names the
        # train option rather than the architecture config.
        for key, value in self.model.items():
            FIELD_BOUNDS[f"model.{key}"].check(f"model.{key}", value)
        return replace(self, model=dict(self.model))

    def as_dict(self) -> dict[str, Any]:
        """Return every value as a JSON-serialisable dict."""
        return asdict(self)


# Fields without an option of 'mbd-cert train'. The others are set by the option that
# option_name() returns.
_NO_OPTION = frozenset({"min_improvement", "loss_weights", "model", "model.output_scale",
                        "loss_weights.task"})


def option_name(field_name: str) -> str | None:
    """Return the 'mbd-cert train' option that sets ``field_name``, or None.

    ``field_name`` is a :class:`TrainingConfig` field, ``model.<key>`` or
    ``loss_weights.<key>``: ``batch_size`` is ``--batch-size``, ``model.hidden_dim``
    is ``--hidden-dim`` and ``loss_weights.similarity`` is ``--similarity-weight``.
    """
    if field_name in _NO_OPTION:
        return None
    section, _, key = field_name.partition(".")
    if section == "loss_weights":
        return f"--{key}-weight"
    return "--" + (key or section).replace("_", "-")


def _invalid(field_name: str, requirement: str, value: object) -> InputError:
    bounds = FIELD_BOUNDS.get(field_name)
    valid = f" as {bounds.text()}" if bounds is not None else ""
    option = option_name(field_name)
    if option is None:
        hint = f"set {field_name}{valid} in the settings passed to trainer.train.train"
    else:
        hint = f"pass {option}{valid}"
    return InputError(f"training config {field_name} {requirement}, got {value!r}",
                      hint=hint, code="E_PARAMETER_INVALID")
