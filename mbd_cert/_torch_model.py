"""Build torch models and batches from numpy tensors (shared by issuer and verifier).

Stability: internal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from mbd_cert.arch import Architecture, check_tensor_shapes, load_state_dict_strict
from mbd_cert.checkpoint import ProbeSet


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
    """Build the architecture from ``config``, load ``tensors`` strictly, cast, eval mode."""
    check_tensor_shapes(architecture, config, tensors)
    model = architecture.build(config)
    load_state_dict_strict(model, tensors)
    model = model.to(dtype)
    model.eval()
    return model


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
