"""Wrappers that turn a failing entry-point architecture into an input error.

Exit code 3 means a bug in mbd-cert. An exception raised by a plugin's own function,
or a value of the wrong type it returns, is a fault of the plugin package instead.
Each callable of an entry-point architecture is therefore wrapped to raise
``InputError`` with code ``E_ARCHITECTURE_LOAD_FAILED`` (exit 2), naming the
architecture and the function (SPEC.md, R-ARCH-10). The built-in architecture is
never wrapped, because its exceptions are bugs in mbd-cert.

The wrappers only call through, so they work inside ``torch.func`` transforms and on
worker threads. This module does not import torch at import time (R-ARCH-3).

Stability: internal.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mbd_cert._background import Cancelled
from mbd_cert.errors import InputError, MbdCertError

CODE_ARCHITECTURE_LOAD_FAILED = "E_ARCHITECTURE_LOAD_FAILED"

# Returns a description of what is wrong with a returned value, or None if it is fine.
ResultProblem = Callable[[Any], "str | None"]


def is_vmap_rejection(exc: BaseException) -> bool:
    """Tell whether ``exc`` is ``torch.func.vmap`` rejecting an operation.

    Its messages name vmap or a missing batching rule. mbd-cert catches these to report
    ``E_OBJECTIVE_VMAP_UNSUPPORTED`` or to fall back to a path without vmap.
    """
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("vmap" in text or "atching rule" in text)


def checked_callables(record: Any) -> dict[str, Any]:
    """Return the wrapped callables of an entry-point ``Architecture``, by field name.

    ``validate_config`` is left to the caller, which adds its own check of the config.
    Optional fields that are None stay None.
    """
    name = record.name
    wrapped: dict[str, Any] = {
        "build": guarded(name, "build", record.build, _module_problem),
        "encoder_prefixes": guarded(name, "encoder_prefixes", record.encoder_prefixes,
                                    _prefixes_problem),
        "generator_prefixes": guarded(name, "generator_prefixes",
                                      record.generator_prefixes, _prefixes_problem),
        "forget_objective": guarded(name, "forget_objective", record.forget_objective,
                                    _tensor_problem, objective=True),
        "retain_objective": guarded(name, "retain_objective", record.retain_objective,
                                    _tensor_problem, objective=True),
    }
    optional: dict[str, ResultProblem] = {
        "tensor_shapes": _shapes_problem,
        "activation_entries": _count_problem,
        "forward_operations": _count_problem,
        "zeroed_forget": _optional_tensor_problem,
    }
    for field, problem in optional.items():
        function = getattr(record, field)
        if function is not None:
            # zeroed_forget may call vmap itself, and the proxy-quality check falls
            # back to its generic passes when vmap rejects it.
            wrapped[field] = guarded(name, field, function, problem,
                                     objective=field == "zeroed_forget")
    return wrapped


def guarded(name: str, function_name: str, function: Callable[..., Any],
            problem: ResultProblem | None = None, *, objective: bool = False
            ) -> Callable[..., Any]:
    """Wrap ``function`` so that its exceptions and wrong results raise ``InputError``.

    mbd-cert's own errors, ``KeyboardInterrupt`` and memory errors pass unchanged. With
    ``objective`` set, a ``RuntimeError`` in which vmap rejects the function passes too,
    because the callers turn it into ``E_OBJECTIVE_VMAP_UNSUPPORTED`` or a fallback.
    """
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            result = function(*args, **kwargs)
        except Exception as exc:
            # NOTE: a torch error that only vmap causes but whose message names neither
            # vmap nor a batching rule is blamed on the plugin, not reported as R-ARCH-7.
            if _passes_through(exc) or (objective and is_vmap_rejection(exc)):
                raise
            lines = str(exc).splitlines()
            reason = f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
            raise InputError(
                f"architecture {name!r}: its function {function_name} raised {reason}",
                hint="fix the package that provides the architecture or report the error "
                "to its authors; rerun with -v for the traceback",
                code=CODE_ARCHITECTURE_LOAD_FAILED,
            ) from exc
        found = problem(result) if problem is not None else None
        if found is not None:
            raise InputError(
                f"architecture {name!r}: its function {function_name} returned {found} "
                "(SPEC.md, R-ARCH-10)",
                hint="fix the package that provides the architecture",
                code=CODE_ARCHITECTURE_LOAD_FAILED,
            )
        return result

    return call


def _passes_through(exc: Exception) -> bool:
    if isinstance(exc, (MbdCertError, MemoryError, Cancelled)):
        return True
    # torch's out-of-memory errors (a RuntimeError subclass) are a limit of the
    # machine, not a fault of the plugin. torch is loaded if the plugin could raise one.
    torch = sys.modules.get("torch")
    out_of_memory = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return out_of_memory is not None and isinstance(exc, out_of_memory)


def _module_problem(value: Any) -> str | None:
    import torch

    if isinstance(value, torch.nn.Module):
        return None
    return f"a {type(value).__name__}, not a torch.nn.Module"


def _tensor_problem(value: Any) -> str | None:
    import torch

    if isinstance(value, torch.Tensor):
        return None
    return f"a {type(value).__name__}, not a torch.Tensor"


def _optional_tensor_problem(value: Any) -> str | None:
    return None if value is None else _tensor_problem(value)


def _prefixes_problem(value: Any) -> str | None:
    if isinstance(value, list) and all(isinstance(prefix, str) for prefix in value):
        return None
    return f"a {type(value).__name__}, not a list of str"


def _count_problem(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return None
    return f"{value!r} of type {type(value).__name__}, not a non-negative int"


def _shapes_problem(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return f"a {type(value).__name__}, not a mapping from tensor name to shape"
    for tensor, shape in value.items():
        if not isinstance(tensor, str):
            return f"a tensor name {tensor!r} that is not a str"
        if not isinstance(shape, Sequence) or isinstance(shape, str) or not all(
                isinstance(size, int) and not isinstance(size, bool) and size >= 0
                for size in shape):
            return f"the shape {shape!r} for tensor {tensor!r}, not a sequence of " \
                "non-negative ints"
    return None
