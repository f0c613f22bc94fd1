"""The vectorised per-sample gradient moments agree with the per-sample loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbd_cert.arch.mbd import MBDModel, forget_objective, retain_objective
from mbd_cert.errors import InputError
from mbd_cert.saliency import gradient_moments

CONFIG = {
    "modalities": ["text", "audio", "vision"],
    "input_dims": {"text": 6, "audio": 5, "vision": 4},
    "seq_len": {"text": 3, "audio": 4, "vision": 2},
    "hidden_dim": 8,
    "shared_dim": 4,
    "private_dim": 3,
    "fusion_hidden": 8,
    "dropout": 0.1,
}


def _batch(n: int, seed: int) -> dict[str, object]:
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        m: torch.randn(n, CONFIG["seq_len"][m], CONFIG["input_dims"][m], generator=generator,
                       dtype=torch.float64)
        for m in CONFIG["modalities"]
    }
    inputs["audio"][0, -1] = 0.0  # one padding step
    present = torch.rand(n, 3, generator=generator) > 0.3
    present[:, 0] = True
    return {"inputs": inputs, "present": present,
            "label": torch.randn(n, generator=generator, dtype=torch.float64)}


def _model(deleted: list[str]) -> MBDModel:
    model = MBDModel({**CONFIG, "deleted_modalities": deleted}, seed=3).to(torch.float64)
    model.eval()
    return model


def _names(model: torch.nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters()
            if n.startswith(("fusion.", "generators.audio.", "head."))]


def _assert_close(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert sorted(left) == sorted(right)
    for name in left:
        assert left[name].dtype == torch.float64
        torch.testing.assert_close(left[name], right[name], rtol=1e-12, atol=1e-15,
                                   msg=f"tensor {name}")


def test_forget_moments_match_loop():
    model = _model([])
    batch = _batch(37, seed=1)
    weights = batch["present"][:, 1].to(torch.float64)
    assert 0 < int(weights.sum()) < 37  # zero weights are exercised

    def objective(m, b):
        return forget_objective(m, b, "audio")

    loop = gradient_moments(model, _names(model), objective, batch, weights, vectorize=False)
    fast = gradient_moments(model, _names(model), objective, batch, weights)
    _assert_close(fast[0], loop[0])
    _assert_close(fast[1], loop[1])
    assert any(float(g.abs().max()) > 0 for g in fast[1].values())


def test_retain_moments_match_loop_with_weights():
    model = _model(["audio"])
    batch = _batch(23, seed=2)
    weights = torch.linspace(0.5, 2.0, 23, dtype=torch.float64)

    def objective(m, b):
        return retain_objective(m, b, "audio")

    loop = gradient_moments(model, _names(model), objective, batch, weights, vectorize=False)
    fast = gradient_moments(model, _names(model), objective, batch, weights)
    _assert_close(fast[0], loop[0])
    _assert_close(fast[1], loop[1])


def test_moments_chunked_match_loop(monkeypatch):
    from mbd_cert import saliency

    monkeypatch.setattr(saliency, "_MAX_CHUNK", 4)  # 23 samples: five full chunks and one partial
    model = _model(["audio"])
    batch = _batch(23, seed=4)
    weights = torch.ones(23, dtype=torch.float64)
    done: list[int] = []

    def objective(m, b):
        return retain_objective(m, b, "audio")

    loop = gradient_moments(model, _names(model), objective, batch, weights, vectorize=False)
    fast = gradient_moments(model, _names(model), objective, batch, weights, done.append)
    _assert_close(fast[1], loop[1])
    assert done == [4, 8, 12, 16, 20, 23]


def test_float32_model_accumulates_float64():
    model = _model(["audio"]).to(torch.float32)
    batch = _batch(9, seed=5)
    batch["inputs"] = {m: x.to(torch.float32) for m, x in batch["inputs"].items()}
    weights = torch.ones(9, dtype=torch.float64)

    def objective(m, b):
        return retain_objective(m, b, "audio")

    gradient, fisher = gradient_moments(model, _names(model), objective, batch, weights)
    assert all(t.dtype == torch.float64 for t in [*gradient.values(), *fisher.values()])


def test_untraceable_objective_rejected():
    """Level 2 takes per-sample gradients through vmap, so the issuer may not fall back."""
    model = _model(["audio"])
    batch = _batch(6, seed=6)
    weights = torch.ones(6, dtype=torch.float64)

    def objective(m, b):
        values = retain_objective(m, b, "audio")
        # Data-dependent Python control flow cannot be traced by vmap.
        return values * 2.0 if float(values.detach().sum()) > -1.0 else values

    with pytest.raises(InputError) as caught:
        gradient_moments(model, _names(model), objective, batch, weights)
    assert caught.value.code == "E_OBJECTIVE_VMAP_UNSUPPORTED"
    # The per-sample loop, the reference implementation, still runs it.
    gradient_moments(model, _names(model), objective, batch, weights, vectorize=False)


def test_all_zero_weights_rejected():
    model = _model(["audio"])
    batch = _batch(3, seed=7)
    with pytest.raises(ValueError, match="non-zero weight"):
        gradient_moments(model, _names(model), lambda m, b: retain_objective(m, b, "audio"),
                         batch, torch.zeros(3, dtype=torch.float64))


def test_nonfinite_gradient_of_excluded_sample_ignored():
    model = _model([])
    batch = _batch(8, seed=8)
    excluded = int(torch.nonzero(batch["present"][:, 1])[0])

    def objective(m, b):
        values = forget_objective(m, b, "audio")
        # The excluded sample alone gets an infinite value, and so a non-finite gradient.
        factor = torch.where(b["label"] == batch["label"][excluded], np.inf, 1.0)
        return values * factor.to(values.dtype)

    weights = torch.ones(8, dtype=torch.float64)
    _, with_spike = gradient_moments(model, _names(model), objective, batch, weights)
    assert not all(bool(torch.isfinite(t).all()) for t in with_spike.values())

    weights[excluded] = 0.0
    gradient, fisher = gradient_moments(model, _names(model), objective, batch, weights)
    assert all(bool(torch.isfinite(t).all()) for t in [*gradient.values(), *fisher.values()])
