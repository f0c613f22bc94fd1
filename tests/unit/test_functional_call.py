"""Evaluating a model that registers one submodule under two names leaves it intact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import grad, vmap

from mbd_cert import _recompute
from mbd_cert._functional_call import call_with_tensors
from mbd_cert.saliency import gradient_moments


class SharedEncoder(torch.nn.Module):
    """One encoder reachable as ``encoder`` and as ``encoders.text``, as a plugin may do."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(4, 4)
        self.encoders = torch.nn.ModuleDict({"text": self.encoder})
        self.out = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.encoders["text"](x)))


def _objective(model: torch.nn.Module, batch) -> torch.Tensor:
    return model(batch["inputs"]["x"]).sum(-1) ** 2


def _setup() -> tuple[SharedEncoder, dict[str, object], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = SharedEncoder().double().eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    batch = {"inputs": {"x": x}, "present": torch.ones(6, 1, dtype=torch.bool),
             "label": torch.zeros(6, dtype=torch.float64)}
    originals = dict(model.named_parameters(remove_duplicate=False))
    return model, batch, originals


def _assert_intact(model: torch.nn.Module, originals: dict[str, torch.Tensor]) -> None:
    for name, parameter in model.named_parameters(remove_duplicate=False):
        assert parameter is originals[name], name
        assert isinstance(parameter, torch.nn.Parameter), name


def test_plain_torch_call_leaves_replacement() -> None:
    # The torch behaviour the wrapper exists for; if a torch release fixes it, this
    # test fails and the wrapper can go.
    from torch.func import functional_call

    model, batch, originals = _setup()
    functional_call(model, {"encoder.weight": torch.zeros(4, 4, dtype=torch.float64)},
                    (batch["inputs"]["x"],))
    assert model.encoder.weight is not originals["encoder.weight"]


def test_call_restores_shared_module() -> None:
    model, batch, originals = _setup()
    x = batch["inputs"]["x"]
    swapped = call_with_tensors(model, {"encoder.weight": torch.zeros(4, 4, dtype=torch.float64)},
                                (x,))
    expected = model.out(torch.zeros(6, 4, dtype=torch.float64) + torch.tanh(model.encoder.bias))
    torch.testing.assert_close(swapped, expected)
    _assert_intact(model, originals)


def test_vmapped_grad_restores_shared_module() -> None:
    model, batch, originals = _setup()
    x = batch["inputs"]["x"]
    weights = torch.stack([originals["encoder.weight"].detach() * s for s in (0.5, 1.0, 2.0)])

    def value(w: torch.Tensor) -> torch.Tensor:
        return call_with_tensors(model, {"encoder.weight": w}, (x,)).sum()

    per_copy = vmap(grad(value))(weights)
    assert per_copy.shape == (3, 4, 4)
    _assert_intact(model, originals)
    model(x)  # a dead batched tensor left in the model would raise here


def test_issuer_moments_match_loop() -> None:
    model, batch, originals = _setup()
    names = ["encoder.bias", "encoder.weight", "out.weight"]
    weights = torch.ones(6, dtype=torch.float64)
    fast = gradient_moments(model, names, _objective, batch, weights)
    _assert_intact(model, originals)
    slow = gradient_moments(model, names, _objective, batch, weights, vectorize=False)
    for first, second in zip(fast, slow, strict=True):
        for name in names:
            torch.testing.assert_close(first[name], second[name], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("closed_form", [False, True])
def test_verifier_recompute_matches_issuer(closed_form: bool) -> None:
    model, batch, originals = _setup()
    names = ["encoder.bias", "encoder.weight", "out.weight"]
    gradient, fisher = _recompute.gradient_and_fisher(
        model, names, _objective, batch, np.ones(6), closed_form=closed_form)
    _assert_intact(model, originals)
    expected = gradient_moments(model, names, _objective, batch,
                                torch.ones(6, dtype=torch.float64), vectorize=False)
    for name in names:
        torch.testing.assert_close(gradient[name], expected[0][name], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(fisher[name], expected[1][name], rtol=1e-12, atol=1e-15)
    masks = {name: np.ones(tuple(originals[name].shape), dtype=bool) for name in names}
    update = _recompute.masked_update(model, masks, _objective, batch, steps=3,
                                      learning_rate=1e-3, damping=1e-3, clip_norm=1.0)
    _assert_intact(model, originals)
    assert update.raw_norm > 0.0
