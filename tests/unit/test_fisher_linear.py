"""The closed-form Linear moments agree with the per-sample vmap path, and fall back."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.func import functional_call  # noqa: E402

from mbd_cert import _fisher_linear, _recompute  # noqa: E402
from mbd_cert.arch import Architecture, get_architecture  # noqa: E402
from mbd_cert.arch import mbd as mbd_module  # noqa: E402
from mbd_cert.arch.mbd import forget_objective, retain_objective  # noqa: E402
from tests.unit.test_gradient_moments import _batch as _mbd_batch  # noqa: E402
from tests.unit.test_gradient_moments import _model as _mbd_model  # noqa: E402

# Per tensor, ||closed form - vmap|| <= RTOL x ||vmap||: the two paths sum the same
# float64 products in another order.
RTOL = 1e-12


def _toy_batch(n: int, shape: tuple[int, ...], seed: int) -> dict[str, object]:
    generator = torch.Generator().manual_seed(seed)
    return {"inputs": {"x": torch.randn(n, *shape, generator=generator, dtype=torch.float64)},
            "present": torch.ones(n, 1, dtype=torch.bool),
            "label": torch.randn(n, generator=generator, dtype=torch.float64)}


def _toy_objective(model: nn.Module, batch: dict[str, object]) -> torch.Tensor:
    return (model(batch["inputs"]["x"]) - batch["label"]) ** 2  # type: ignore[index,operator]


def _weights(n: int) -> np.ndarray:
    weights = np.linspace(0.25, 3.0, n)
    weights[::4] = 0.0  # skipped samples
    return weights


def _assert_close(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert list(left) == list(right)
    for name in left:
        assert left[name].dtype == torch.float64
        difference = float((left[name] - right[name]).norm())
        assert difference <= RTOL * float(right[name].norm()), name


def _both(model, names, objective, batch, weights):
    vmap = _recompute.gradient_and_fisher(model, names, objective, batch, weights)
    closed = _recompute.gradient_and_fisher(model, names, objective, batch, weights,
                                            closed_form=True)
    _assert_close(closed[0], vmap[0])
    _assert_close(closed[1], vmap[1])
    return closed, vmap


def _fallback(model, names, objective, batch, weights) -> list[str]:
    """Return the names that linear_moments leaves to the vmap path."""
    kept = torch.from_numpy(np.flatnonzero(weights))
    wrapper = _recompute._ObjectiveModule(model, objective)
    values = {"model." + n: p.detach() for n, p in model.named_parameters()}
    arguments = ({m: x[kept] for m, x in batch["inputs"].items()}, batch["present"][kept],
                 batch["label"][kept])

    def forward(chosen):
        return functional_call(wrapper, {**values, **{"model." + n: v
                                                      for n, v in chosen.items()}}, arguments)

    return _fisher_linear.linear_moments(model, names, forward,
                                         torch.from_numpy(weights[kept.numpy()])).fallback


class _Twice(nn.Module):
    """One Linear applied twice per sample, so its Fisher has cross terms."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = torch.tanh(self.inner(x))
        return self.head(torch.tanh(self.inner(first)) * first).squeeze(-1)


class _WeightOutside(nn.Module):
    """A Linear whose weight also enters a product outside the module's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(self.inner(x)) @ self.inner.weight).sum(dim=-1)


class _Sequence(nn.Module):
    """A Linear over [n, T, d] steps (sequence layer) before a 2-D head."""

    def __init__(self) -> None:
        super().__init__()
        self.step = nn.Linear(3, 5)
        self.head = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.step(x)).mean(dim=1)).squeeze(-1)


def _toy(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(5)
    return cls().to(torch.float64)


def test_mbd_forget_closed_form_matches_vmap():
    model = _mbd_model([])
    batch = _mbd_batch(41, seed=1)
    weights = batch["present"][:, 1].numpy().astype(np.float64) * np.linspace(0.5, 2.0, 41)
    names = [n for n, _ in model.named_parameters()]

    def objective(m, b):
        return forget_objective(m, b, "audio")

    closed, _ = _both(model, names, objective, batch, weights)
    assert float(closed[1]["fusion.0.weight"].abs().max()) > 0
    assert float(closed[1]["generators.audio.net.0.weight"].abs().max()) > 0
    # Encoder projections see [n, T, d] steps, LayerNorm and Embedding are no Linear.
    fallback = _fallback(model, names, objective, batch, weights)
    assert "fusion.0.weight" not in fallback
    assert "encoders.audio.shared.weight" not in fallback
    assert {"encoders.audio.proj.weight", "encoders.audio.norm.weight",
            "property_embedding.weight"} <= set(fallback)
    assert all(".proj." in n or ".norm." in n or n.startswith("property_")
               for n in fallback)


def test_mbd_retain_closed_form_matches_vmap():
    model = _mbd_model(["audio"])
    batch = _mbd_batch(23, seed=2)
    names = [n for n, _ in model.named_parameters()
             if n.startswith(("fusion.", "generators.audio.", "head."))]

    def objective(m, b):
        return retain_objective(m, b, "audio")

    _both(model, names, objective, batch, _weights(23))
    assert _fallback(model, names, objective, batch, _weights(23)) == []


def test_masked_update_closed_form_matches_vmap():
    model = _mbd_model(["audio"])
    batch = _mbd_batch(19, seed=3)
    masks = {n: (np.arange(p.numel()) % 3 == 0).reshape(p.shape)
             for n, p in model.named_parameters() if n.startswith("fusion.")}

    def objective(m, b):
        return retain_objective(m, b, "audio")

    options = {"steps": 3, "learning_rate": 0.01, "damping": 1e-3, "clip_norm": 10.0}
    vmap = _recompute.masked_update(model, masks, objective, batch, **options)
    closed = _recompute.masked_update(model, masks, objective, batch, closed_form=True,
                                      **options)
    assert vmap.raw_norm > 0
    assert closed.raw_norm == pytest.approx(vmap.raw_norm, rel=1e-12)
    for name, value in vmap.displacement.items():
        np.testing.assert_allclose(closed.displacement[name], value, rtol=1e-10, atol=1e-18)


def test_linear_called_twice_includes_cross_terms():
    model = _toy(_Twice)
    batch = _toy_batch(17, (4,), seed=4)
    names = [n for n, _ in model.named_parameters()]
    closed, _ = _both(model, names, _toy_objective, batch, _weights(17))
    assert _fallback(model, names, _toy_objective, batch, _weights(17)) == []
    # Dropping the cross terms of the two calls makes _both fail on inner.weight.
    assert float(closed[1]["inner.weight"].norm()) > 0


def test_weight_used_outside_forward_falls_back(caplog):
    model = _toy(_WeightOutside)
    batch = _toy_batch(13, (3,), seed=5)
    names = ["inner.bias", "inner.weight"]
    with caplog.at_level(logging.DEBUG, logger="mbd_cert._fisher_linear"):
        assert _fallback(model, names, _toy_objective, batch, _weights(13)) == ["inner.weight"]
    assert "'inner.weight' differs from autograd" in caplog.text
    _both(model, names, _toy_objective, batch, _weights(13))


def test_sequence_input_falls_back():
    model = _toy(_Sequence)
    batch = _toy_batch(11, (6, 3), seed=6)
    names = [n for n, _ in model.named_parameters()]
    assert _fallback(model, names, _toy_objective, batch, _weights(11)) == [
        "step.weight", "step.bias"]
    _both(model, names, _toy_objective, batch, _weights(11))


def test_float32_model_passes_self_check():
    model = _toy(_Twice).to(torch.float32)
    batch = _toy_batch(29, (4,), seed=7)
    batch["inputs"] = {"x": batch["inputs"]["x"].to(torch.float32)}
    batch["label"] = batch["label"].to(torch.float32)
    names = [n for n, _ in model.named_parameters()]
    assert _fallback(model, names, _toy_objective, batch, _weights(29)) == []
    vmap = _recompute.gradient_and_fisher(model, names, _toy_objective, batch, _weights(29))
    closed = _recompute.gradient_and_fisher(model, names, _toy_objective, batch, _weights(29),
                                            closed_form=True)
    for name in names:
        assert closed[1][name].dtype == torch.float64
        torch.testing.assert_close(closed[1][name], vmap[1][name], rtol=1e-5, atol=1e-7)


def test_all_zero_weights_rejected_on_closed_form():
    model = _toy(_Twice)
    with pytest.raises(ValueError, match="non-zero weight"):
        _recompute.gradient_and_fisher(model, ["inner.weight"], _toy_objective,
                                       _toy_batch(3, (4,), seed=8), np.zeros(3),
                                       closed_form=True)


def test_independent_samples_flag_defaults():
    field = {f.name: f for f in dataclasses.fields(Architecture)}["independent_samples"]
    assert field.default is False
    record = mbd_module.ARCHITECTURE
    plugin = Architecture(
        name="plugin", version="1", validate_config=record.validate_config,
        build=record.build, encoder_prefixes=record.encoder_prefixes,
        generator_prefixes=record.generator_prefixes,
        forget_objective=record.forget_objective, retain_objective=record.retain_objective)
    assert plugin.independent_samples is False
    assert mbd_module.ARCHITECTURE.independent_samples is True
    assert get_architecture("mbd-sentiment").independent_samples is True
