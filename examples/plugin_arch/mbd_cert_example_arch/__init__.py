"""The "late-fusion-linear" architecture, registered with mbd-cert as a plugin.

This module must import without torch, because mbd-cert looks architectures up during
level-1 verification, which runs without torch. The model and the objectives live in
:mod:`mbd_cert_example_arch.model` and are imported on first use.

Tensor names, per modality m: ``encoders.<m>.weight|bias`` (the encoder that deletion
zeroes), ``generators.<m>.weight|bias`` (reconstructs m's embedding from the mean of
the other observed embeddings), ``heads.<m>.weight|bias`` (one score per modality),
and ``fusion.weight|bias`` (linear fusion of the scores). The default saliency groups
of ``mbd-cert issue`` (``fusion`` and ``generators.<m>``) therefore exist here too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mbd_cert.arch import Architecture
from mbd_cert.errors import InputError

NAME = "late-fusion-linear"
VERSION = "1"
DEFAULTS: dict[str, Any] = {
    "modalities": ["text", "audio", "vision"],
    "embed_dim": 8,
    "deleted_modalities": [],
    "output_scale": 3.0,
}
REQUIRED = ("input_dims",)
_MODALITY = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# A certificate's config is untrusted input and the verifier builds the model from it,
# so widths are capped before anything is allocated.
MAX_WIDTH = 4096


def _invalid(field: str, message: str) -> InputError:
    return InputError(f"config.{field} {message}", hint="fix the architecture config",
                      code="E_CONFIG_INVALID")


def _positive_int(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WIDTH:
        raise _invalid(field, f"must be an integer in [1, {MAX_WIDTH}], got {value!r}")
    return value


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check a config and return it with defaults filled in.

    Raises:
        InputError: ``E_CONFIG_INVALID`` naming the field.
    """
    if not isinstance(config, Mapping):
        raise _invalid("", f"must be an object, got {type(config).__name__}")
    unknown = sorted(set(config) - set(DEFAULTS) - set(REQUIRED))
    if unknown:
        raise _invalid(unknown[0], f"is not a key of {NAME!r}")
    for key in REQUIRED:
        if key not in config:
            raise _invalid(key, "is missing")
    result = {**DEFAULTS, **config}

    modalities = result["modalities"]
    if (
        not isinstance(modalities, list)
        or not 2 <= len(modalities) <= 16
        or not all(isinstance(m, str) and _MODALITY.match(m) for m in modalities)
        or len(set(modalities)) != len(modalities)
    ):
        raise _invalid("modalities",
                       f"must be 2 to 16 distinct lowercase names, got {modalities!r}")
    dims = result["input_dims"]
    if not isinstance(dims, Mapping) or sorted(dims) != sorted(modalities):
        raise _invalid("input_dims", f"must map each modality to its width, got {dims!r}")
    result["input_dims"] = {m: _positive_int(f"input_dims.{m}", dims[m]) for m in modalities}
    result["embed_dim"] = _positive_int("embed_dim", result["embed_dim"])
    deleted = result["deleted_modalities"]
    if not isinstance(deleted, list) or any(m not in modalities for m in deleted):
        raise _invalid("deleted_modalities", f"must list modalities of the model, got {deleted!r}")
    if len(set(deleted)) != len(deleted) or len(deleted) >= len(modalities):
        raise _invalid("deleted_modalities", "must be distinct and leave one modality")
    result["deleted_modalities"] = sorted(deleted)
    scale = result["output_scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 1e6:
        raise _invalid("output_scale", f"must be a number in (0, 1e6], got {scale!r}")
    result["output_scale"] = float(scale)
    result["modalities"] = list(modalities)
    return result


def encoder_prefixes(config: Mapping[str, Any], modality: str) -> list[str]:
    """Return the tensor-name prefixes that deleting ``modality`` zeroes."""
    return [f"encoders.{modality}"]


def generator_prefixes(config: Mapping[str, Any], modality: str) -> list[str]:
    """Return the tensor-name prefixes of the generator that reconstructs ``modality``."""
    return [f"generators.{modality}"]


def tensor_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Return the name and shape of every tensor of the model, without torch.

    Level 1 compares a released model with this listing, so a tensor outside the
    architecture (a copy of a deleted encoder, say) fails verification.
    """
    config = validate_config(config)
    width = config["embed_dim"]
    shapes: dict[str, tuple[int, ...]] = {}
    for m in config["modalities"]:
        shapes[f"encoders.{m}.weight"] = (width, config["input_dims"][m])
        shapes[f"encoders.{m}.bias"] = (width,)
        shapes[f"generators.{m}.weight"] = (width, width)
        shapes[f"generators.{m}.bias"] = (width,)
        shapes[f"heads.{m}.weight"] = (1, width)
        shapes[f"heads.{m}.bias"] = (1,)
    shapes["fusion.weight"] = (1, len(config["modalities"]))
    shapes["fusion.bias"] = (1,)
    return shapes


def _build(config: Mapping[str, Any]) -> Any:
    from mbd_cert_example_arch import model

    return model.LateFusionModel(validate_config(config))


def _forget(module: Any, batch: Any, modality: str) -> Any:
    from mbd_cert_example_arch import model

    return model.forget_objective(module, batch, modality)


def _retain(module: Any, batch: Any, modality: str) -> Any:
    from mbd_cert_example_arch import model

    return model.retain_objective(module, batch, modality)


ARCHITECTURE = Architecture(
    name=NAME,
    version=VERSION,
    validate_config=validate_config,
    build=_build,
    encoder_prefixes=encoder_prefixes,
    generator_prefixes=generator_prefixes,
    forget_objective=_forget,
    retain_objective=_retain,
    tensor_shapes=tensor_shapes,
    # Every tensor is float32 (nn.Linear's default); level 1 rejects any other dtype.
    weight_dtype="F32",
)

__all__ = ["ARCHITECTURE", "NAME", "VERSION", "tensor_shapes", "validate_config"]
