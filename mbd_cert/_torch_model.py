"""Build torch models and batches from numpy tensors (shared by issuer and verifier).

Stability: internal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mbd_cert._groups import eligible_tensors
from mbd_cert.arch import Architecture, check_tensor_shapes, load_state_dict_strict
from mbd_cert.checkpoint import ProbeSet
from mbd_cert.errors import InputError

CODE_TENSORS_SHARED = "E_ARCHITECTURE_TENSORS_SHARED"


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads, then restore the count.

    The issuer and the verifier default to one. On a 2-core machine kept busy by two
    other processes, two intra-op threads made level 2 take 0.6 to 9.6 s against 0.4 s
    with one, while on the idle machine they saved 0.1 s (docs/benchmarks.md).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_model(
    architecture: Architecture,
    config: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    *,
    dtype: torch.dtype = torch.float64,
) -> torch.nn.Module:
    """Build the architecture from ``config``, load ``tensors`` strictly, cast, eval mode.

    Raises:
        InputError: The tensors do not fit the config, or a tensor of the model
            overlaps another or itself in memory, or is on the meta device (SPEC.md,
            R-ARCH-9).
    """
    model = build_unloaded(architecture, config, tensors)
    load_state_dict_strict(model, tensors, dtype=dtype)
    model.eval()
    return model


def build_unloaded(
    architecture: Architecture,
    config: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
) -> torch.nn.Module:
    """Build the architecture from ``config`` without loading ``tensors`` into it.

    ``tensors`` serve only to check names and shapes before the build allocates.

    Raises:
        InputError: The tensors do not fit the config, or a tensor of the model
            overlaps another or itself in memory, or is on the meta device (SPEC.md,
            R-ARCH-9).
    """
    check_tensor_shapes(architecture, config, tensors)
    model = architecture.build(config)
    check_one_tensor_per_name(model, architecture.name)
    return model


def check_one_tensor_per_name(model: torch.nn.Module, architecture: str) -> None:
    """Reject a model whose state or parameters reach one memory region under two names.

    ``load_state_dict`` copies each name in turn into its tensor, so where two names
    overlap in memory the model anyone loads contains the values of the last one, and
    a certificate would describe values that no loaded model has (SPEC.md, R-ARCH-9).
    Views count by the bytes they span: a view of a parameter registered as a buffer
    is an alias, while parameters that are disjoint slices of one flat storage each
    load their own values and pass. A meta tensor has no memory, so loading leaves it
    empty, and a tensor whose entries overlap (an expanded view) cannot be loaded.
    Both are rejected too.

    Raises:
        InputError: Two names overlap in memory, a tensor's entries overlap, or a tensor
            is on the meta device (code ``E_ARCHITECTURE_TENSORS_SHARED``); the message
            lists the names.
    """
    named: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    named.update(model.state_dict(keep_vars=True))
    meta = sorted(name for name, tensor in named.items() if tensor.is_meta)
    if meta:
        listed = ", ".join(repr(name) for name in meta[:5])
        raise InputError(
            f"architecture {architecture!r} builds a model with tensors on the meta "
            f"device ({listed}): they have no memory, so loading the weights would "
            "leave them empty, and mbd-cert needs every tensor to hold its loaded values "
            "(SPEC.md, R-ARCH-9)",
            hint="allocate every parameter and buffer in the architecture's build (no "
            "device='meta')",
            code=CODE_TENSORS_SHARED,
        )
    repeated = sorted(name for name, tensor in named.items() if _entries_may_overlap(tensor))
    if repeated:
        listed = ", ".join(repr(name) for name in repeated[:5])
        raise InputError(
            f"architecture {architecture!r} builds a model with tensors whose entries "
            f"share memory ({listed}), such as an expanded view: loading the weights "
            "cannot give each entry its own value (SPEC.md, R-ARCH-9)",
            hint="give each such tensor memory of its own in the architecture's build "
            "(.clone() an expanded view)",
            code=CODE_TENSORS_SHARED,
        )
    shared = _overlapping_names(named)
    if shared:
        listed = "; ".join(", ".join(repr(name) for name in names) for names in shared[:5])
        raise InputError(
            f"architecture {architecture!r} builds a model that contains one tensor under "
            f"several names ({listed}): mbd-cert needs one tensor per name, because "
            "loading the model copies the last alias over the others (SPEC.md, R-ARCH-9)",
            hint="give each module its own parameters (no tied or shared weights, no "
            "buffer that is a view of a parameter) in the architecture's build",
            code=CODE_TENSORS_SHARED,
        )


def _entries_may_overlap(tensor: torch.Tensor) -> bool:
    """Tell whether two entries of ``tensor`` may share memory (a stride of 0, say).

    Taken in order of stride, each dimension's stride must exceed the largest offset
    that the smaller strides reach. Rare ``as_strided`` layouts fail this test without
    an overlap, and are rejected all the same.
    """
    if tensor.numel() == 0:
        return False
    reach = 0
    for stride, size in sorted((stride, size) for size, stride
                               in zip(tensor.shape, tensor.stride(), strict=True) if size > 1):
        if stride <= reach:
            return True
        reach += (size - 1) * stride
    return False


def _overlapping_names(named: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Return the groups of names whose byte spans overlap, each sorted, in sorted order.

    A tensor's span runs from its first to its last element in memory. Views that
    interleave (the even and the odd entries of one tensor) have overlapping spans, so
    they are reported although they share no element.
    """
    spans = []
    for name, tensor in named.items():
        # An empty tensor has no values to overwrite, and empty tensors can share a
        # null address.
        if tensor.numel() == 0:
            continue
        last = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride(),
                                                                 strict=True))
        first_byte = tensor.data_ptr()
        spans.append((str(tensor.device), first_byte,
                      first_byte + (last + 1) * tensor.element_size(), name))
    groups: list[list[str]] = []
    group: list[str] = []
    device, end = "", 0
    for span_device, first_byte, after_last, name in sorted(spans):
        if span_device == device and first_byte < end:
            group.append(name)
            end = max(end, after_last)
            continue
        if len(group) > 1:
            groups.append(sorted(group))
        group, device, end = [name], span_device, after_last
    if len(group) > 1:
        groups.append(sorted(group))
    return sorted(groups)


def eligible_parameters(model: torch.nn.Module, groups: Sequence[str],
                        removed: Sequence[str]) -> list[str]:
    """Return the model's eligible tensors (SPEC.md, R-SAL-1): parameters, never buffers."""
    return eligible_tensors([name for name, _ in model.named_parameters()], groups, removed)


def probe_batch(probe: ProbeSet, *, dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    """Return the probe set as a batch dict of CPU tensors in ``dtype``."""
    return {
        "inputs": {m: torch.from_numpy(probe.inputs[m]).to(dtype) for m in probe.modalities},
        "present": torch.from_numpy(probe.present.copy()),
        "label": torch.from_numpy(probe.label).to(dtype),
    }


def model_tensors(model: torch.nn.Module, dtype: np.dtype) -> dict[str, np.ndarray]:
    """Return the model's state as numpy arrays of ``dtype`` (contiguous copies)."""
    return {
        name: np.ascontiguousarray(value.detach().cpu().numpy().astype(dtype))
        for name, value in model.state_dict().items()
    }


def predict(model: torch.nn.Module, batch: Mapping[str, Any]) -> np.ndarray:
    """Return the model's predictions [n] as float64 numpy, without gradients."""
    with torch.no_grad():
        output = model(batch["inputs"], batch["present"])
    return np.asarray(output.detach().cpu().to(torch.float64).numpy())
