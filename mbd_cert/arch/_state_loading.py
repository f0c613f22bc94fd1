"""Weights loading into a built model, which rejects unexpected names, shapes and dtypes.

:func:`check_tensor_shapes` compares a weights file with an architecture's tensor
listing before the build allocates anything, and :func:`load_state_dict_strict` loads
the weights into the built model. Both are re-exported by :mod:`mbd_cert.arch`.

This module does not import torch at import time, because :mod:`mbd_cert.arch` must
not (R-ARCH-3).

Stability: public through :mod:`mbd_cert.arch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from mbd_cert.errors import InputError

if TYPE_CHECKING:
    import torch

    from mbd_cert.arch import Architecture

CODE_MODEL_TENSORS_MISMATCH = "E_MODEL_TENSORS_MISMATCH"


def check_tensor_shapes(architecture: Architecture, config: Mapping[str, Any],
                        tensors: Mapping[str, np.ndarray]) -> None:
    """Compare tensor names and shapes with the architecture's listing before a build.

    Building the model allocates and initialises every parameter, so a config that
    describes a model near ``MAX_PARAMETERS`` takes gigabytes even when the weights
    file contains a small model. This check rejects that mismatch from the config alone.
    An architecture without ``tensor_shapes`` is left to :func:`load_state_dict_strict`.

    Raises:
        InputError: A tensor is missing, unexpected or of another shape (code
            ``E_MODEL_TENSORS_MISMATCH``), or the config is invalid.
    """
    if architecture.tensor_shapes is None:
        return
    expected = architecture.tensor_shapes(architecture.validate_config(config))
    _check_names(set(expected), set(tensors))
    for name, shape in expected.items():
        actual = tuple(np.shape(tensors[name]))
        if actual != tuple(shape):
            raise InputError(
                f"tensor {name!r} has shape {list(actual)}, the architecture expects "
                f"{list(shape)}",
                hint="the weights file does not match the architecture config",
                code=CODE_MODEL_TENSORS_MISMATCH,
            )


def _check_names(expected: set[str], actual: set[str]) -> None:
    """Raise ``E_MODEL_TENSORS_MISMATCH`` unless both sets of tensor names are equal."""
    missing = sorted(expected - actual)
    unexpected = sorted(actual - expected)
    if missing:
        raise InputError(
            f"model tensors are missing {len(missing)} tensor(s) of the architecture, "
            f"first {missing[:5]}",
            hint="the weights file does not match the architecture config",
            code=CODE_MODEL_TENSORS_MISMATCH,
        )
    if unexpected:
        raise InputError(
            f"model tensors have {len(unexpected)} tensor(s) the architecture does not "
            f"define, first {unexpected[:5]}",
            hint="the weights file does not match the architecture config",
            code=CODE_MODEL_TENSORS_MISMATCH,
        )


def load_state_dict_strict(model: torch.nn.Module, tensors: Mapping[str, np.ndarray], *,
                           dtype: torch.dtype | None = None) -> None:
    """Copy ``tensors`` into ``model``'s parameters and buffers, refusing any mismatch.

    Every name of ``model.state_dict()`` must be present, no other name may be, and each
    array must have exactly the shape and dtype of its model tensor. Nothing is
    broadcast or cast, so the loaded model computes with exactly the committed values.
    With ``dtype``, the floating-point parameters and buffers are then cast to it, as
    ``model.to(dtype)`` does.

    Args:
        model: The freshly built model.
        tensors: Tensor name -> numpy array, as read from a safetensors file.
        dtype: The floating-point dtype the loaded model computes in. None keeps the
            built dtype.

    Raises:
        InputError: A tensor is missing, unexpected, or differs in shape or dtype (code
            ``E_MODEL_TENSORS_MISMATCH``); the message names the tensor and both values.
    """
    import torch

    state = model.state_dict()
    _check_names(set(state), set(tensors))

    converted: dict[str, torch.Tensor] = {}
    for name, target in state.items():
        array = np.asarray(tensors[name])
        if tuple(array.shape) != tuple(target.shape):
            raise InputError(
                f"tensor {name!r} has shape {list(array.shape)}, the architecture expects "
                f"{list(target.shape)}",
                hint="the weights file does not match the architecture config",
                code=CODE_MODEL_TENSORS_MISMATCH,
            )
        try:
            array_dtype = torch.from_numpy(np.empty(0, dtype=array.dtype)).dtype
        except TypeError as exc:
            raise InputError(
                f"tensor {name!r} has dtype {array.dtype}, which torch cannot hold",
                code=CODE_MODEL_TENSORS_MISMATCH,
            ) from exc
        if array_dtype != target.dtype:
            raise InputError(
                f"tensor {name!r} has dtype {array.dtype}, the model expects "
                f"{str(target.dtype).removeprefix('torch.')}",
                hint="convert the weights file or build the model in that dtype",
                code=CODE_MODEL_TENSORS_MISMATCH,
            )
        # A copy makes the array writable and contiguous (memory-mapped safetensors
        # arrays are read-only), and keeps the model independent of the caller's buffer.
        converted[name] = torch.from_numpy(np.array(array, order="C", copy=True))
    parameters = dict(model.named_parameters())
    # A tied parameter is listed once but has a state entry per name.
    if set(parameters) == set(state) and _plain_parameters(model):
        # The same values in one pass over the parameters. torch's load_state_dict and
        # to() each walk every module in Python: together 1.2 ms per build of the
        # MOSEI model (0.69 and 0.47 ms, timed once in one process), while the
        # issuer's two threads wait for the GIL.
        with torch.no_grad():
            for name, parameter in parameters.items():
                value = converted[name]
                if dtype is not None and value.is_floating_point():
                    value = value.to(dtype)
                parameter.data = value
        return
    model.load_state_dict(converted, strict=True)
    if dtype is not None:
        model.to(dtype)


def _plain_parameters(model: torch.nn.Module) -> bool:
    """Tell whether loading ``model`` only sets its parameters, each under its own name.

    A model qualifies when it has no buffers, and its modules keep torch's own loading
    and state-dict code with no hook that renames or changes entries. The caller also
    checks that no parameter is tied under two names. Built models have one tensor per
    name (R-ARCH-9), so no two of their parameters share memory.
    """
    import torch

    base = torch.nn.Module
    for module in model.modules():
        kind = type(module)
        if module._buffers or module._load_state_dict_pre_hooks or \
                module._load_state_dict_post_hooks or module._state_dict_hooks or \
                module._state_dict_pre_hooks or \
                kind._load_from_state_dict is not base._load_from_state_dict or \
                kind._save_to_state_dict is not base._save_to_state_dict or \
                kind.get_extra_state is not base.get_extra_state:
            return False
    return True
