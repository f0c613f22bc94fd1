"""The mixed-precision training path, run on CPU.

On CUDA the trainer trains under bf16 autocast, or fp16 autocast with a GradScaler.
This machine has no GPU, so these tests force the same two settings on the CPU, where
torch supports autocast for both dtypes. They exercise the code path (autocast around
the forward pass, scaled backward, unscale before the clip), not GPU numerics.
"""

from __future__ import annotations

import math

import pytest
import torch
from mbd_factories import build_corpus

from trainer import _distributed
from trainer.train import train

FAST = {"epochs": 4, "batch_size": 32, "learning_rate": 3e-3, "patience": 4,
        "probe_members": 20, "probe_nonmembers": 20,
        "model": {"hidden_dim": 16, "shared_dim": 8, "private_dim": 4, "fusion_hidden": 16}}


@pytest.mark.parametrize(("dtype", "scaled", "name"),
                         [(torch.bfloat16, False, "bf16"), (torch.float16, True, "fp16")])
def test_forced_precision_trains(tmp_path, monkeypatch, dtype, scaled, name):
    monkeypatch.setattr(_distributed, "resolve_precision",
                        lambda requested, device: _distributed.Precision(dtype, scaled))
    result = train(build_corpus(seed=1), FAST, tmp_path / "model", seed=0, progress=False)
    training = result.training
    assert training["precision"] == name
    history = training["history"]
    assert all(math.isfinite(epoch["valid_mae"]) for epoch in history)
    assert training["best_valid_mae"] < history[0]["valid_mae"] or len(history) == 1
    # Autocast computes in the low dtype; the parameters stay float32.
    assert {p.dtype for p in result.model.parameters()} == {torch.float32}


def test_autocast_lowers_matmul_dtype_on_cpu():
    precision = _distributed.Precision(torch.bfloat16, False)
    layer = torch.nn.Linear(4, 2)
    with _distributed.autocast(precision, torch.device("cpu")):
        output = layer(torch.ones(3, 4))
    assert output.dtype == torch.bfloat16
    with _distributed.autocast(_distributed.Precision(None, False), torch.device("cpu")):
        assert layer(torch.ones(3, 4)).dtype == torch.float32


def test_scaler_is_active_only_for_fp16():
    cpu = torch.device("cpu")
    assert _distributed.grad_scaler(_distributed.Precision(torch.float16, True), cpu).is_enabled()
    assert not _distributed.grad_scaler(_distributed.Precision(torch.bfloat16, False),
                                        cpu).is_enabled()
