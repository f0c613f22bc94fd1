"""Configuration of the "mbd-sentiment" architecture, without torch.

Config validation, the tensor-name prefixes of each modality and the parameter count
live here so that level-1 verification can use them on a machine without torch. The
model itself is in :mod:`mbd_cert.arch.mbd`.

Stability: the config keys and their meaning are part of format 1 (a certificate
embeds the config). New keys may be added only with a default that keeps old configs
building the same model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from mbd_cert.errors import InputError, LimitExceeded

NAME = "mbd-sentiment"
VERSION = "1"

# Modality state index, used for the property embedding rows and the `state` output.
STATE_OBSERVED = 0
STATE_RECONSTRUCTED = 1
STATE_DELETED = 2
NUM_STATES = 3

DEFAULTS: dict[str, Any] = {
    "modalities": ["text", "audio", "vision"],
    "hidden_dim": 64,
    "shared_dim": 32,
    "private_dim": 16,
    "fusion_hidden": 64,
    "dropout": 0.1,
    "deleted_modalities": [],
    "output_scale": 3.0,
}
REQUIRED_KEYS = ("input_dims", "seq_len")
KNOWN_KEYS = frozenset(DEFAULTS) | frozenset(REQUIRED_KEYS)

# Modality names become parts of tensor names, so they must not contain dots.
MODALITY_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")

# Caps against a certificate whose config would allocate an absurd model. A verifier
# builds the model from the config before it reads any weights.
MAX_MODALITIES = 16
MAX_LAYER_WIDTH = 65_536
MAX_INPUT_DIM = 1_048_576
MAX_SEQ_LEN = 1_048_576
MAX_PARAMETERS = 1_000_000_000

CODE_CONFIG_INVALID = "E_CONFIG_INVALID"


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check an architecture config and fill in the documented defaults.

    The result is a new plain dict that contains every key of ``DEFAULTS`` and
    ``REQUIRED_KEYS``. Its floats are Python floats, and ``input_dims`` and ``seq_len``
    list the modalities in config order. Validating a validated config returns an
    equal dict.

    Args:
        config: The ``config`` object of ``config.json`` or of a certificate.

    Returns:
        The validated config.

    Raises:
        InputError: A key is unknown or missing, or a value has the wrong type or is
            out of range. The message names the field (``config.<key>``).
        LimitExceeded: The model would have more than ``MAX_PARAMETERS`` parameters.
    """
    if not isinstance(config, Mapping):
        raise _invalid("config", "must be an object", type(config).__name__)
    unknown = sorted(str(key) for key in config if key not in KNOWN_KEYS)
    if unknown:
        raise InputError(
            f"config has unknown keys {unknown} for architecture '{NAME}'",
            hint=f"known keys are {sorted(KNOWN_KEYS)}",
            code=CODE_CONFIG_INVALID,
        )
    for key in REQUIRED_KEYS:
        if key not in config:
            raise InputError(
                f"config.{key} is missing",
                hint="give one integer per modality, as the training corpus defines it",
                code=CODE_CONFIG_INVALID,
            )

    merged = {**DEFAULTS, **config}
    modalities = _modality_list(merged["modalities"], "config.modalities", allow_empty=False)
    if len(modalities) > MAX_MODALITIES:
        raise _invalid("config.modalities", f"must hold at most {MAX_MODALITIES} names",
                       len(modalities))
    result: dict[str, Any] = {"modalities": modalities}
    result["input_dims"] = _per_modality_ints(
        merged["input_dims"], modalities, "config.input_dims", MAX_INPUT_DIM
    )
    result["seq_len"] = _per_modality_ints(
        merged["seq_len"], modalities, "config.seq_len", MAX_SEQ_LEN
    )
    for key in ("hidden_dim", "shared_dim", "private_dim", "fusion_hidden"):
        result[key] = _bounded_int(merged[key], f"config.{key}", MAX_LAYER_WIDTH)

    dropout = _finite_float(merged["dropout"], "config.dropout")
    if not 0.0 <= dropout < 1.0:
        raise _invalid("config.dropout", "must be in [0, 1)", dropout)
    result["dropout"] = dropout

    deleted = _modality_list(
        merged["deleted_modalities"], "config.deleted_modalities", allow_empty=True
    )
    for name in deleted:
        if name not in modalities:
            raise _invalid("config.deleted_modalities", f"must name modalities of {modalities}",
                           name)
    if modalities and len(deleted) == len(modalities):
        raise _invalid("config.deleted_modalities", "must leave at least one modality", deleted)
    result["deleted_modalities"] = deleted

    scale = _finite_float(merged["output_scale"], "config.output_scale")
    if scale <= 0.0:
        raise _invalid("config.output_scale", "must be > 0", scale)
    result["output_scale"] = scale

    count = parameter_count(result)
    if count > MAX_PARAMETERS:
        raise LimitExceeded(
            f"config describes a model with {count} parameters, more than the cap of "
            f"{MAX_PARAMETERS}",
            hint="check config.input_dims and the layer widths",
        )
    return result


def encoder_prefixes(config: Mapping[str, Any], modality: str) -> list[str]:
    """Return the tensor-name prefixes of ``modality``'s encoder.

    These tensors are zero in a model where the modality is deleted.

    Raises:
        InputError: ``modality`` is not one of the config's modalities.
    """
    _check_modality(config, modality)
    return [f"encoders.{modality}."]


def generator_prefixes(config: Mapping[str, Any], modality: str) -> list[str]:
    """Return the tensor-name prefixes of the generator that reconstructs ``modality``.

    Raises:
        InputError: ``modality`` is not one of the config's modalities.
    """
    _check_modality(config, modality)
    return [f"generators.{modality}."]


def tensor_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Return the name and shape of every tensor the model of a validated config has.

    The listing mirrors the layers built by :class:`mbd_cert.arch.mbd.MBDModel`, in its
    ``state_dict`` order, without importing torch; a test compares the two. Level 1
    compares a released model with it.
    """
    modalities = list(config["modalities"])
    hidden = int(config["hidden_dim"])
    shared = int(config["shared_dim"])
    private = int(config["private_dim"])
    fusion = int(config["fusion_hidden"])

    shapes: dict[str, tuple[int, ...]] = {}
    for name in modalities:
        width = int(config["input_dims"][name])
        # LayerNorm, projection, shared head and private head.
        layers = {"norm.weight": (width,), "norm.bias": (width,),
                  "proj.weight": (hidden, width), "proj.bias": (hidden,),
                  "shared.weight": (shared, hidden), "shared.bias": (shared,),
                  "private.weight": (private, hidden), "private.bias": (private,)}
        shapes.update({f"encoders.{name}.{layer}": shape for layer, shape in layers.items()})
    shapes["property_embedding.weight"] = (NUM_STATES * len(modalities), shared)
    generator_in = (len(modalities) - 1) * (shared + 1)
    for name in modalities:
        layers = {"net.0.weight": (hidden, generator_in), "net.0.bias": (hidden,),
                  "net.2.weight": (shared, hidden), "net.2.bias": (shared,)}
        shapes.update({f"generators.{name}.{layer}": shape for layer, shape in layers.items()})
    fusion_in = len(modalities) * (shared + private)
    shapes.update({"fusion.0.weight": (fusion, fusion_in), "fusion.0.bias": (fusion,),
                   "fusion.3.weight": (fusion, fusion), "fusion.3.bias": (fusion,),
                   "head.weight": (1, fusion), "head.bias": (1,)})
    return shapes


def activation_entries(config: Mapping[str, Any]) -> int:
    """Return how many values one sample's forward pass computes, summed over the layers.

    An upper estimate for a validated config, of every tensor a forward pass without
    gradients allocates, the inputs included: every encoder runs, as in the
    pre-deletion model. The memory of a forward pass over n samples grows with n times
    this count, and the config alone sets it, whatever the size of the probe file.
    """
    modalities = list(config["modalities"])
    count = len(modalities)
    hidden = int(config["hidden_dim"])
    shared = int(config["shared_dim"])
    private = int(config["private_dim"])
    fusion = int(config["fusion_hidden"])

    total = 0
    for name in modalities:
        steps = int(config["seq_len"][name])
        width = int(config["input_dims"][name])
        # Each step counts 3 input-wide values (input, padding test, LayerNorm output),
        # 3 hidden-wide ones (projection, GELU, padding mask applied) and 4 scalars
        # (LayerNorm statistics, validity flags). The sum and mean over the steps and
        # the shared and private heads come once per sample.
        total += steps * (3 * width + 3 * hidden + 4) + 2 * hidden + shared + private + 4
    generator_in = (count - 1) * (shared + 1)
    # Per generator its gathered input, the hidden layer and its GELU, and the
    # reconstruction.
    total += count * (2 * generator_in + 2 * hidden + shared)
    # Per modality the real slot, the embedding, the chosen slot and its sum, the
    # private part and its masked copy, the fusion input and the state flags.
    total += count * (5 * shared + 3 * private + 8) + shared
    # The four outputs of the fusion layers, the head and the scaled prediction.
    total += 4 * fusion + 3
    return total


def forward_operations(config: Mapping[str, Any]) -> int:
    """Return how many arithmetic operations one sample costs in either objective.

    An upper estimate for a validated config, in which a multiply-add counts as one
    operation. Every encoder runs once, as in the pre-deletion model. The generators,
    the fusion layers and the head run twice, because the forget objective predicts
    with the real modality and with its reconstruction. Each value that
    :func:`activation_entries` counts adds one operation for the elementwise steps
    (LayerNorm, GELU, masks). The time of a replay over n samples grows with n times
    this count, which wide layers over long sequences make large from small files.
    """
    modalities = list(config["modalities"])
    count = len(modalities)
    hidden = int(config["hidden_dim"])
    shared = int(config["shared_dim"])
    private = int(config["private_dim"])
    fusion = int(config["fusion_hidden"])

    # Per step the projection, per sample the shared and private heads.
    encoders = sum(int(config["seq_len"][name]) * int(config["input_dims"][name]) * hidden
                   for name in modalities) + count * hidden * (shared + private)
    generator_in = (count - 1) * (shared + 1)
    generators = count * (generator_in * hidden + hidden * shared)
    fusion_and_head = count * (shared + private) * fusion + fusion * fusion + fusion
    return encoders + 2 * (generators + fusion_and_head) + activation_entries(config)


def parameter_count(config: Mapping[str, Any]) -> int:
    """Return the number of parameters the model of a validated config has."""
    return sum(math.prod(shape) for shape in tensor_shapes(config).values())


def _check_modality(config: Mapping[str, Any], modality: str) -> None:
    modalities = config.get("modalities", DEFAULTS["modalities"])
    if modality not in modalities:
        raise InputError(
            f"modality {modality!r} is not one of the model's modalities {list(modalities)}",
            hint="name a modality listed in config.modalities",
            code=CODE_CONFIG_INVALID,
        )


def _invalid(field: str, requirement: str, value: object) -> InputError:
    return InputError(
        f"{field} {requirement}, got {value!r}",
        hint="fix the architecture config",
        code=CODE_CONFIG_INVALID,
    )


def _modality_list(value: object, field: str, *, allow_empty: bool) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise _invalid(field, "must be a list of modality names", value)
    if not value and not allow_empty:
        raise _invalid(field, "must not be empty", value)
    names: list[str] = []
    for item in value:
        if not isinstance(item, str) or not MODALITY_NAME.fullmatch(item):
            raise _invalid(
                field, "must hold names of lowercase letters, digits and '_' (max 32)", item
            )
        if item in names:
            raise _invalid(field, "must not repeat a name", item)
        names.append(item)
    return names


def _bounded_int(value: object, field: str, maximum: int) -> int:
    # bool is a subclass of int, and JSON `true` must not pass as the width 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(field, "must be an integer", value)
    if not 1 <= value <= maximum:
        raise _invalid(field, f"must be in [1, {maximum}]", value)
    return int(value)


def _per_modality_ints(
    value: object, modalities: list[str], field: str, maximum: int
) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise _invalid(field, "must be an object with one integer per modality", value)
    keys = sorted(str(key) for key in value)
    if keys != sorted(modalities):
        raise _invalid(field, f"must have exactly the keys {sorted(modalities)}", keys)
    return {name: _bounded_int(value[name], f"{field}.{name}", maximum) for name in modalities}


def _finite_float(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid(field, "must be a number", value)
    number = float(value)
    if not math.isfinite(number):
        raise _invalid(field, "must be finite", value)
    return number
