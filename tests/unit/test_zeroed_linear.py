"""Tests for mbd_cert._zeroed_linear: zeroing linear-layer entries by a column update."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from mbd_cert._zeroed_linear import plan_pass, zeroable_linears
from mbd_cert.proxy_quality import forget_value


class Net(torch.nn.Module):
    """Linear layers with 2-D and 3-D inputs, one without bias, and a LayerNorm."""

    def __init__(self, *, read_outside: bool = False) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.seq = torch.nn.Linear(4, 6)  # applied to [n, T, 4]
        self.norm = torch.nn.LayerNorm(6)
        self.hidden = torch.nn.Linear(6, 5, bias=False)
        self.out = torch.nn.Linear(5, 2)
        self.read_outside = read_outside
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.tanh(self.seq(x)).mean(dim=1)
        hidden = torch.nn.functional.gelu(self.hidden(self.norm(pooled)))
        result = self.out(hidden)
        if self.read_outside:
            # Reads a linear weight outside its layer, which the column update cannot see.
            result = result + 0.1 * self.hidden.weight.sum()
        return result


def objective(model: torch.nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    return (model(batch["x"]) ** 2).sum(dim=1)


def _value(rows: int = 9) -> Any:
    generator = torch.Generator().manual_seed(5)
    batch = {"x": torch.randn(rows, 3, 4, generator=generator, dtype=torch.float64)}
    return forget_value(objective, batch, torch.ones(rows, dtype=torch.float64))


def _loop(model: torch.nn.Module, part: list[tuple[str, int]], value: Any) -> np.ndarray:
    """F with each entry zeroed in place, one evaluation per entry (the reference)."""
    parameters = dict(model.named_parameters())
    results = [value(model)]
    for name, index in part:
        flat = parameters[name].data.view(-1)
        kept = flat[index].clone()
        flat[index] = 0.0
        results.append(value(model))
        flat[index] = kept
    return np.array(results)


PART = [("seq.weight", 5), ("seq.bias", 2), ("hidden.weight", 11), ("norm.weight", 3),
        ("out.bias", 1), ("hidden.weight", 29), ("out.weight", 7)]


def test_linear_route_matches_zeroing_each_entry() -> None:
    model, value = Net(), _value()
    owners = zeroable_linears(model, sorted({name for name, _ in PART}))
    assert set(owners) == {"seq.weight", "seq.bias", "hidden.weight", "out.weight", "out.bias"}
    plan = plan_pass(model, PART, owners)
    assert set(plan.linear) == {"seq", "hidden", "out"}
    assert set(plan.tensors) == {"norm.weight"}

    fast = value.zeroed(model, PART, owners)
    copies = value.zeroed(model, PART, {})
    reference = _loop(model, PART, value)
    np.testing.assert_allclose(fast, reference, rtol=1e-12, atol=0)
    np.testing.assert_allclose(copies, reference, rtol=1e-12, atol=0)
    assert np.all(fast[1:] != fast[0])  # every entry moved F


def test_outside_read_falls_back_to_copies(caplog) -> None:
    model, value = Net(read_outside=True), _value()
    owners = zeroable_linears(model, ["hidden.weight"])
    assert "hidden.weight" in owners  # nothing static shows the outside read
    part = [("hidden.weight", 4), ("hidden.weight", 17)]
    with caplog.at_level(logging.DEBUG, logger="mbd_cert.proxy_quality"):
        result = value.zeroed(model, part, owners)
    assert "copying the varied tensors" in caplog.text
    np.testing.assert_allclose(result, _loop(model, part, value), rtol=1e-12, atol=0)


def test_unusual_layers_take_the_copy_route() -> None:
    class Scaled(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2.0 * super().forward(x)

    model = torch.nn.Module()
    model.first = torch.nn.Linear(3, 3)
    model.second = torch.nn.Linear(3, 3)
    model.second.weight = model.first.weight  # tied
    model.scaled = Scaled(3, 2)
    model.hooked = torch.nn.Linear(3, 3)
    model.hooked.register_forward_pre_hook(lambda module, args: (2.0 * args[0],))
    model.replaced = torch.nn.Linear(3, 3)
    model.replaced.forward = lambda x: x
    model.plain = torch.nn.Linear(3, 3)
    names = ["first.weight", "first.bias", "scaled.weight", "second.bias", "hooked.bias",
             "replaced.weight", "plain.weight", "plain.bias"]
    # A layer with a tied weight leaves the route for its bias too: the patched
    # forward would compute with the weight captured at install time.
    assert zeroable_linears(model, names) == {"plain.weight": ("plain", "weight"),
                                              "plain.bias": ("plain", "bias")}


def test_patch_is_removed_after_the_pass() -> None:
    model, value = Net(), _value()
    owners = zeroable_linears(model, ["out.weight"])
    value.zeroed(model, [("out.weight", 0)], owners)
    assert "forward" not in vars(model.out)
    assert torch.isfinite(model.hidden.weight).all()


@pytest.mark.parametrize("copies", [1, 3])
def test_unchanged_copies_subtract_nothing(copies: int) -> None:
    model, value = Net(), _value()
    owners = zeroable_linears(model, ["out.weight"])
    part = [("out.weight", 0)] * copies
    result = value.zeroed(model, part, owners)
    assert result[0] == value(model)
    assert np.all(result[1:] == result[1])
