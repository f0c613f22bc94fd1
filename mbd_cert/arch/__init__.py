"""Model architectures that certificates name, and the registry that finds them.

A certificate records an architecture name, version and config. The verifier looks the
name up with :func:`get_architecture` and rebuilds the model from the config. The
built-in architecture is "mbd-sentiment" (:mod:`mbd_cert.arch.mbd`). Other packages add
architectures through the entry-point group ``mbd_cert.architectures``; each entry
point names an :class:`Architecture` object.

This module does not import torch at import time, because level-1 verification runs
without it. The built-in record delays importing torch until a callable that needs it
(``build`` or an objective) is called.

Stability: :class:`Architecture`, :func:`get_architecture` and the entry-point group are
a public interface for downstream packages.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from mbd_cert.arch import _plugin_calls, _state_loading
from mbd_cert.arch._state_loading import check_tensor_shapes, load_state_dict_strict
from mbd_cert.errors import InputError, MalformedData

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mbd_cert.architectures"
BUILTIN_NAME = "mbd-sentiment"
_BUILTIN_ENTRY_POINT = "mbd_cert.arch.mbd:ARCHITECTURE"

CODE_ARCHITECTURE_UNKNOWN = "E_ARCHITECTURE_UNKNOWN"
CODE_ARCHITECTURE_LOAD_FAILED = _plugin_calls.CODE_ARCHITECTURE_LOAD_FAILED
CODE_MODEL_TENSORS_MISMATCH = _state_loading.CODE_MODEL_TENSORS_MISMATCH


class Batch(TypedDict):
    """Model inputs of n samples, as the objectives take them.

    Attributes:
        inputs: Modality -> float tensor [n, T, d], zeros where the modality is absent.
        present: Bool tensor [n, M], True where the modality was observed, columns in
            the order of the config's modalities.
        label: Float tensor [n], the sentiment score.
    """

    inputs: dict[str, torch.Tensor]
    present: torch.Tensor
    label: torch.Tensor


@dataclass(frozen=True)
class Architecture:
    """A model architecture that certificates can name.

    Attributes:
        name: Registry name, such as ``"mbd-sentiment"``.
        version: Version of the architecture's definition; a certificate records it.
        validate_config: Function that checks a config and returns it with defaults
            filled in. It raises ``InputError`` naming the field.
        build: Function that builds a ``torch.nn.Module`` from a validated config,
            with one tensor per name: no tied or shared parameters, no buffer that is
            a view of a parameter, no tensor on the meta device. The issuer,
            ``evaluate`` and levels 2 and 3 reject any other.
        encoder_prefixes: ``(config, modality)`` -> tensor-name prefixes that are zero
            once the modality is deleted.
        generator_prefixes: ``(config, modality)`` -> tensor-name prefixes of the
            generator that reconstructs the modality.
        forget_objective: ``(model, batch, modality)`` -> per-sample values [n] that
            measure how much the output depends on the real modality.
        retain_objective: ``(model, batch, modality)`` -> per-sample task loss [n] of
            the model with the modality deleted. Both objectives must be
            deterministic and run under ``torch.func.vmap`` (no ``.item()``, no Python
            branch on a tensor's value); the issuer and level 2 reject any other.
        independent_samples: True only if each sample's objective value depends on
            that sample's inputs alone (no batch statistics such as BatchNorm in
            training mode, no attention across samples) and every ``nn.Linear``
            called on a 2-D input gets sample i's features in row i. The issuer and
            level 2 then compute the per-sample gradient moments of ``nn.Linear``
            tensors from one batched backward pass, each with its own code. False
            (the default) keeps the exact per-sample path for every tensor.
        local_parameters: True only if the values of every parameter are read only
            inside the ``forward`` of the module that registers it (no tied weights,
            no reads in a parent's forward or in the objectives, no pruning or
            parametrization) and every module's output depends only on its
            parameters, buffers and inputs. The issuer's proxy-quality check then
            reuses the outputs of modules it does not vary and zeroes ``nn.Linear``
            entries by a column update. False (the default) keeps the slower path,
            which copies the varied tensors and recomputes every module.
        tensor_shapes: ``config`` -> name and shape of every tensor of the model,
            computed without torch. Level 1 holds the released model against it, so
            that no tensor outside the architecture (a copy of a deleted encoder, for
            example) passes unseen. None (the default) reports that check as skipped.
        zeroed_forget: ``(model, batch, modality, entries)`` -> per-sample forget
            values [len(entries) + 1, n] of the model with each (parameter name, flat
            index) entry set to zero in turn. Row 0 is the unchanged model, and the
            rows of entries it does not cover are NaN. It returns None for a model it
            does not know. The values must equal the forget objective of the zeroed
            model up to rounding. The issuer's proxy-quality check uses it when given
            and runs its generic passes for the other entries; None (the default)
            keeps the generic passes for every entry.
        activation_entries: ``config`` -> how many values one sample's forward pass
            computes, summed over the layers, an upper estimate computed without torch.
            The issuer and level 2 reject a probe set whose size times this count
            exceeds ``_work_limits.MAX_ACTIVATION_ENTRIES``, because the config, not
            the probe file, sets that memory. None (the default) leaves it uncapped.
        forward_operations: ``config`` -> how many arithmetic operations one sample
            costs in either objective, an upper estimate computed without torch, in
            which a multiply-add counts as one. The issuer and level 2 reject a replay
            whose passes times probe samples times this count exceed
            ``_work_limits.MAX_REPLAY_OPERATIONS``, because wide layers over long
            sequences make each sample slow. None (the default) leaves it uncapped.
        weight_dtype: The safetensors dtype of every tensor of the model, buffers
            included, such as ``"F32"``, when the architecture fixes it. Issue and
            level 1 then reject any other. None (the default) holds each tensor to the
            dtype the signed pre-deletion commitment records for it.
    """

    name: str
    version: str
    validate_config: Callable[[Mapping[str, Any]], dict[str, Any]]
    build: Callable[[Mapping[str, Any]], torch.nn.Module]
    encoder_prefixes: Callable[[Mapping[str, Any], str], list[str]]
    generator_prefixes: Callable[[Mapping[str, Any], str], list[str]]
    forget_objective: Callable[[torch.nn.Module, Batch, str], torch.Tensor]
    retain_objective: Callable[[torch.nn.Module, Batch, str], torch.Tensor]
    independent_samples: bool = False
    local_parameters: bool = False
    tensor_shapes: Callable[[Mapping[str, Any]], dict[str, tuple[int, ...]]] | None = None
    weight_dtype: str | None = None
    activation_entries: Callable[[Mapping[str, Any]], int] | None = None
    zeroed_forget: Callable[[torch.nn.Module, Batch, str, Sequence[tuple[str, int]]],
                            torch.Tensor | None] | None = None
    # Last, so that records built with positional arguments keep their meaning.
    forward_operations: Callable[[Mapping[str, Any]], int] | None = None


def get_architecture(name: str) -> Architecture:
    """Return the architecture registered under ``name``.

    The built-in "mbd-sentiment" always wins over an entry point of the same name, so an
    installed package cannot replace the model a certificate of this project describes.

    Args:
        name: The architecture name from ``config.json`` or a certificate.

    Returns:
        The architecture record.

    Raises:
        InputError: No architecture has that name (code ``E_ARCHITECTURE_UNKNOWN``), or
            its entry point is ambiguous, fails to load or does not name an
            ``Architecture`` of that name (code ``E_ARCHITECTURE_LOAD_FAILED``).

    An entry-point architecture comes back with each callable wrapped: an exception it
    raises, other than mbd-cert's own errors, or a result of the wrong type, raises
    ``InputError`` with code ``E_ARCHITECTURE_LOAD_FAILED`` when that callable is
    called (:mod:`mbd_cert.arch._plugin_calls`).
    """
    if not isinstance(name, str):
        raise InputError(
            f"architecture name must be a string, got {type(name).__name__}",
            code=CODE_ARCHITECTURE_UNKNOWN,
        )
    if name == BUILTIN_NAME:
        return _builtin_mbd()

    matches = [ep for ep in _entry_points() if ep.name == name]
    if not matches:
        raise InputError(
            f"unknown architecture {name!r}",
            hint=f"known architectures: {available_architectures()}; install the package "
            f"that registers {name!r} in the entry-point group {ENTRY_POINT_GROUP!r}",
            code=CODE_ARCHITECTURE_UNKNOWN,
        )
    targets = sorted({ep.value for ep in matches})
    if len(targets) > 1:
        raise InputError(
            f"architecture {name!r} is registered by several entry points: {targets}",
            hint="uninstall all but one of the packages that register it",
            code=CODE_ARCHITECTURE_LOAD_FAILED,
        )
    entry_point = matches[0]
    try:
        loaded = entry_point.load()
    # A plugin can fail to import in many ways (ImportError, SyntaxError, an exception
    # at module level). Each one makes that architecture unusable and is no bug here.
    except Exception as exc:
        raise InputError(
            f"architecture entry point {name!r} ({entry_point.value}) failed to load: "
            f"{type(exc).__name__}: {exc}",
            hint="reinstall or fix the package that provides it",
            code=CODE_ARCHITECTURE_LOAD_FAILED,
        ) from exc
    if not isinstance(loaded, Architecture) or loaded.name != name:
        raise InputError(
            f"architecture entry point {name!r} ({entry_point.value}) must name an "
            f"Architecture called {name!r}, got {type(loaded).__name__}",
            hint="fix the package that provides it",
            code=CODE_ARCHITECTURE_LOAD_FAILED,
        )
    validate = _plugin_calls.guarded(name, "validate_config", loaded.validate_config)
    return replace(loaded, validate_config=_contract_checked(name, validate),
                   **_plugin_calls.checked_callables(loaded))


def _contract_checked(name: str, validate: Callable[[Mapping[str, Any]], Any]
                      ) -> Callable[[Mapping[str, Any]], Any]:
    """Wrap a plugin's ``validate_config`` with the checks of what it returns (R-ARCH-4).

    The issuer and the verifier read ``modalities`` and ``deleted_modalities`` from the
    validated config, so a plugin that leaves them out would end a command with a
    KeyError (exit 3) instead of an error naming the plugin.
    """
    def checked(config: Mapping[str, Any]) -> Any:
        validated = validate(config)
        problem = _config_contract_problem(validated)
        if problem is not None:
            raise InputError(
                f"architecture {name!r}: validate_config returned a config that {problem} "
                "(SPEC.md, R-ARCH-4)",
                hint="fix the package that provides the architecture",
                code=CODE_ARCHITECTURE_LOAD_FAILED,
            )
        return validated

    return checked


def _config_contract_problem(config: Any) -> str | None:
    if not isinstance(config, Mapping):
        return f"is a {type(config).__name__}, not a mapping"
    modalities = config.get("modalities")
    if not isinstance(modalities, list) or not modalities \
            or not all(isinstance(m, str) for m in modalities) \
            or len(set(modalities)) != len(modalities):
        return "has no 'modalities' list of distinct names"
    deleted = config.get("deleted_modalities")
    if not isinstance(deleted, list) or not all(isinstance(m, str) for m in deleted) \
            or not set(deleted) <= set(modalities):
        return "has no 'deleted_modalities' list within 'modalities'"
    return None


def available_architectures() -> list[str]:
    """Return the sorted names of the built-in and entry-point architectures."""
    return sorted({BUILTIN_NAME} | {ep.name for ep in _entry_points()})


def batch_from_arrays(
    inputs: Mapping[str, np.ndarray],
    present: np.ndarray,
    label: np.ndarray,
    device: str | torch.device | None = None,
) -> Batch:
    """Convert numpy arrays into a :class:`Batch` of torch tensors.

    Values keep their dtype: inputs and label must already be float32 or float64,
    because a silent cast would change the values the objectives compute with.

    Args:
        inputs: Modality -> float array [n, T, d], in the column order of ``present``.
        present: Bool or 0/1 uint8 array [n, M].
        label: Float array [n].
        device: Torch device for the tensors; None keeps them on the CPU.

    Returns:
        The batch; ``present`` becomes a bool tensor.

    Raises:
        MalformedData: A shape, dtype or row count does not match, or a value is NaN
            or infinite.
    """
    import torch

    present_array = np.asarray(present)
    if present_array.ndim != 2 or present_array.shape[1] != len(inputs):
        raise MalformedData(
            f"present has shape {list(present_array.shape)}, expected [n, {len(inputs)}] "
            "with one column per input modality"
        )
    if present_array.dtype == np.uint8:
        if np.any(present_array > 1):
            raise MalformedData("present must hold only 0 and 1")
        present_array = present_array.astype(bool)
    elif present_array.dtype != np.bool_:
        raise MalformedData(f"present has dtype {present_array.dtype}, expected bool or uint8")
    rows = int(present_array.shape[0])

    label_array = np.asarray(label)
    _check_float_array(label_array, "label", ndim=1, rows=rows)
    tensors: dict[str, torch.Tensor] = {}
    for modality, values in inputs.items():
        array = np.asarray(values)
        _check_float_array(array, f"inputs.{modality}", ndim=3, rows=rows)
        tensors[modality] = torch.from_numpy(np.array(array, order="C", copy=True)).to(device)
    return {
        "inputs": tensors,
        "present": torch.from_numpy(np.array(present_array, copy=True)).to(device),
        "label": torch.from_numpy(np.array(label_array, copy=True)).to(device),
    }


def _check_float_array(array: np.ndarray, field: str, *, ndim: int, rows: int) -> None:
    if array.dtype not in (np.float32, np.float64):
        raise MalformedData(f"{field} has dtype {array.dtype}, expected float32 or float64")
    if array.ndim != ndim:
        raise MalformedData(f"{field} has {array.ndim} dimensions, expected {ndim}")
    if array.shape[0] != rows:
        raise MalformedData(f"{field} has {array.shape[0]} rows, present has {rows}")
    if not np.all(np.isfinite(array)):
        raise MalformedData(f"{field} contains NaN or infinite values")


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    found = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    for entry_point in found:
        if entry_point.name == BUILTIN_NAME and entry_point.value != _BUILTIN_ENTRY_POINT:
            logger.warning(
                "ignoring entry point %r (%s): the name is the built-in architecture's",
                entry_point.name,
                entry_point.value,
            )
    return [ep for ep in found if ep.name != BUILTIN_NAME]


def _builtin_mbd() -> Architecture:
    from mbd_cert.arch import _mbd_config

    return Architecture(
        name=_mbd_config.NAME,
        version=_mbd_config.VERSION,
        validate_config=_mbd_config.validate_config,
        build=_build_mbd,
        encoder_prefixes=_mbd_config.encoder_prefixes,
        generator_prefixes=_mbd_config.generator_prefixes,
        forget_objective=_forget_mbd,
        retain_objective=_retain_mbd,
        independent_samples=True,
        local_parameters=True,
        tensor_shapes=_mbd_config.tensor_shapes,
        weight_dtype="F32",
        activation_entries=_mbd_config.activation_entries,
        forward_operations=_mbd_config.forward_operations,
        zeroed_forget=_zeroed_forget_mbd,
    )


# The four wrappers import the torch module on first call, so that looking up the
# built-in architecture stays torch-free.


def _build_mbd(config: Mapping[str, Any]) -> torch.nn.Module:
    from mbd_cert.arch import mbd

    return mbd.ARCHITECTURE.build(config)


def _forget_mbd(model: torch.nn.Module, batch: Batch, modality: str) -> torch.Tensor:
    from mbd_cert.arch import mbd

    return mbd.ARCHITECTURE.forget_objective(model, batch, modality)


def _retain_mbd(model: torch.nn.Module, batch: Batch, modality: str) -> torch.Tensor:
    from mbd_cert.arch import mbd

    return mbd.ARCHITECTURE.retain_objective(model, batch, modality)


def _zeroed_forget_mbd(model: torch.nn.Module, batch: Batch, modality: str,
                       entries: Sequence[tuple[str, int]]) -> torch.Tensor | None:
    from mbd_cert.arch import mbd

    return mbd.zeroed_forget(model, batch, modality, entries)


__all__ = [
    "BUILTIN_NAME",
    "ENTRY_POINT_GROUP",
    "Architecture",
    "Batch",
    "available_architectures",
    "batch_from_arrays",
    "get_architecture",
    "check_tensor_shapes",
    "load_state_dict_strict",
]
