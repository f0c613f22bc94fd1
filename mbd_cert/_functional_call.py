"""``torch.func.functional_call`` that always leaves the module's own tensors in place.

``functional_call`` swaps the given tensors into the module, runs it and swaps the
originals back by name. When one submodule is registered under two names (a shared
encoder reachable as ``encoder`` and as ``encoders.text``, say), torch 2.13 swaps it
twice, and the second swap records the first one's replacement as the "original". The
restore then leaves the replacement in the module: outside ``vmap`` the model keeps the
swapped values, inside it keeps a dead batched tensor that fails on the next call.

The issuer (saliency, proxy-quality check) and the verifier (level-2 recomputation)
both evaluate plugin models this way, so both call :func:`call_with_tensors`. It
contains no part of the deletion method, only this restore.

Stability: internal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def call_with_tensors(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor],
                      args: tuple[Any, ...]) -> Any:
    """Return ``functional_call(module, tensors, args)``, then restore every original tensor.

    Args:
        module: The module to run; its parameters and buffers are the same objects
            afterwards, even if it registers a submodule under two names.
        tensors: Name (as ``module.named_parameters`` or ``named_buffers`` gives it)
            to the tensor used in its place for this call.
        args: Positional arguments of ``module.forward``.
    """
    from torch.func import functional_call

    # modules() lists a submodule once however many names it has, which is the unit
    # whose slots must be put back.
    saved = [(owner, dict(owner._parameters), dict(owner._buffers))
             for owner in module.modules()]
    try:
        return functional_call(module, dict(tensors), args)
    finally:
        for owner, parameters, buffers in saved:
            _put_back(owner._parameters, parameters)
            _put_back(owner._buffers, buffers)


def _put_back(slots: dict[str, Any], originals: Mapping[str, Any]) -> None:
    for name, original in originals.items():
        if slots.get(name) is not original:
            slots[name] = original
