"""Architectures with the faults a plugin author's trial found, for entry-point tests.

Each is the built-in model under another name with one change. The tests register
them through a faked ``mbd_cert.architectures`` entry point (:func:`register`), so
``issue`` and ``verify`` load them as they would load a downstream package.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from typing import Any

import numpy as np
import pytest
import torch

from mbd_cert import arch
from mbd_cert.arch.mbd import ARCHITECTURE as BASE


def _with_step_buffer(config: Any) -> torch.nn.Module:
    model = BASE.build(config)
    # Like BatchNorm's num_batches_tracked: an integer buffer in a model of F32 weights.
    model.register_buffer("steps_seen", torch.zeros((), dtype=torch.int64))
    return model


def _flat_forget(model: torch.nn.Module, batch: Any, modality: str) -> torch.Tensor:
    # Constant in the weights, as a batch-statistics objective whose per-sample
    # gradients cancel: every saliency score is 0.
    return BASE.forget_objective(model, batch, modality).detach() * 0.0


def _torch_noise(values: torch.Tensor, scale: float = 1e-3) -> torch.Tensor:
    # With scale 0 the values are deterministic, but torch.func.vmap still refuses
    # the random draw.
    return values + scale * torch.rand(values.shape, dtype=values.dtype)


def _numpy_noise(values: torch.Tensor) -> torch.Tensor:
    noise = np.random.default_rng().uniform(size=tuple(values.shape))
    return values + 1e-3 * torch.from_numpy(noise).to(values.dtype)


def _torch_random_forget(model: torch.nn.Module, batch: Any, modality: str) -> torch.Tensor:
    return _torch_noise(BASE.forget_objective(model, batch, modality))


def _numpy_random_forget(model: torch.nn.Module, batch: Any, modality: str) -> torch.Tensor:
    return _numpy_noise(BASE.forget_objective(model, batch, modality))


def _hidden_random_forget(model: torch.nn.Module, batch: Any, modality: str) -> torch.Tensor:
    return _torch_noise(BASE.forget_objective(model, batch, modality), scale=0.0)


def _torch_random_retain(model: torch.nn.Module, batch: Any, modality: str) -> torch.Tensor:
    return _torch_noise(BASE.retain_objective(model, batch, modality))


def _numpy_random_retain(model: torch.nn.Module, batch: Any, modality: str) -> torch.Tensor:
    return _numpy_noise(BASE.retain_objective(model, batch, modality))


def _hidden_random_retain(model: torch.nn.Module, batch: Any, modality: str) -> torch.Tensor:
    return _torch_noise(BASE.retain_objective(model, batch, modality), scale=0.0)


def _branching(values: torch.Tensor) -> torch.Tensor:
    # Deterministic, but a Python branch on a tensor's value, which vmap cannot run.
    if bool(values.sum() >= 0):
        return values
    return -values


def _branching_forget(model: torch.nn.Module, batch: Any, modality: str) -> torch.Tensor:
    return _branching(BASE.forget_objective(model, batch, modality))


def _branching_retain(model: torch.nn.Module, batch: Any, modality: str) -> torch.Tensor:
    return _branching(BASE.retain_objective(model, batch, modality))


def _raising_build(config: Any) -> torch.nn.Module:
    # A plugin bug, as a wrong config key would give.
    raise ValueError("hidden_size must be even\nsecond line")


def _raising_forget(model: torch.nn.Module, batch: Any, modality: str) -> torch.Tensor:
    raise ValueError(f"no fusion input for {modality}")


def _raising_retain(model: torch.nn.Module, batch: Any, modality: str) -> torch.Tensor:
    raise ValueError(f"no fusion input for {modality}")


def _tuple_prefixes(config: Any, modality: str) -> Any:
    return tuple(BASE.encoder_prefixes(config, modality))


def _variant(name: str, **changes: Any) -> arch.Architecture:
    return dataclasses.replace(BASE, name=name, zeroed_forget=None, **changes)


# weight_dtype F32 declared, but the model has an I64 buffer.
INTEGER_BUFFER = _variant("trial-integer-buffer", build=_with_step_buffer,
                          tensor_shapes=None, weight_dtype="F32")
ZERO_SCORES = _variant("trial-zero-scores", forget_objective=_flat_forget)
# One name, three forget objectives: the certificate is issued with the steady one,
# and level 2 then finds a random one installed under that name.
STEADY = _variant("trial-random")
TORCH_RANDOM = _variant("trial-random", forget_objective=_torch_random_forget)
NUMPY_RANDOM = _variant("trial-random", forget_objective=_numpy_random_forget)
# Without independent_samples, level 2 takes every gradient through vmap.
HIDDEN_RANDOM = _variant("trial-random", forget_objective=_hidden_random_forget,
                         independent_samples=False)
# The same faults in the retain objective, and an objective that vmap cannot run.
TORCH_RANDOM_RETAIN = _variant("trial-random", retain_objective=_torch_random_retain)
NUMPY_RANDOM_RETAIN = _variant("trial-random", retain_objective=_numpy_random_retain)
HIDDEN_RANDOM_RETAIN = _variant("trial-random", retain_objective=_hidden_random_retain,
                                independent_samples=False)
BRANCHING_FORGET = _variant("trial-random", forget_objective=_branching_forget,
                            independent_samples=False)
BRANCHING_RETAIN = _variant("trial-random", retain_objective=_branching_retain,
                            independent_samples=False)

# Plugin functions that raise or return the wrong type. One name, so the certificate
# issued with STEADY can be verified with each of them installed in its place.
RAISING_BUILD = _variant("trial-random", build=_raising_build)
RAISING_FORGET = _variant("trial-random", forget_objective=_raising_forget)
RAISING_RETAIN = _variant("trial-random", retain_objective=_raising_retain)
TUPLE_PREFIXES = _variant("trial-random", encoder_prefixes=_tuple_prefixes)


def register(monkeypatch: pytest.MonkeyPatch, name: str, attribute: str) -> None:
    """Make entry point ``name`` name this module's ``attribute``, alone in the group."""
    point = importlib.metadata.EntryPoint(name, f"{__name__}:{attribute}",
                                          arch.ENTRY_POINT_GROUP)

    def entry_points(*, group: str) -> list[importlib.metadata.EntryPoint]:
        return [point] if group == arch.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(arch.importlib.metadata, "entry_points", entry_points)
