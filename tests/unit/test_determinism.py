"""The objective checks that run before any gradient (SPEC.md, R-ARCH-7)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mbd_cert._determinism import (  # noqa: E402
    CODE_OBJECTIVE_NONDETERMINISTIC,
    CODE_OBJECTIVE_VMAP_UNSUPPORTED,
    require_recomputable,
)
from mbd_cert.errors import InputError  # noqa: E402


def _model_and_batch() -> tuple[torch.nn.Module, dict]:
    model = torch.nn.Linear(3, 1).to(torch.float64)
    batch = {"inputs": {"text": torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(4, 1, 3)},
             "present": torch.ones(4, 1, dtype=torch.bool),
             "label": torch.zeros(4, dtype=torch.float64)}
    return model, batch


def _squared(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return model(batch["inputs"]["text"][:, 0, :]).squeeze(1) ** 2


def _check(objective) -> None:
    model, batch = _model_and_batch()
    require_recomputable(objective, model, batch, ["weight", "bias"],
                         objective_name="the test objective", hint="fix it")


def test_plain_objective_passes():
    _check(_squared)


def test_item_call_rejected():
    def scaled(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        values = _squared(model, batch)
        return values * float(values.sum().item() >= 0)

    with pytest.raises(InputError) as caught:
        _check(scaled)
    assert caught.value.code == CODE_OBJECTIVE_VMAP_UNSUPPORTED
    assert "the test objective cannot run under torch.func.vmap" in str(caught.value)
    assert caught.value.hint == "fix it"


def test_unused_random_draw_rejected():
    # The values do not depend on the draw, so only the vmap test sees it.
    def drawing(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        values = _squared(model, batch)
        return values + 0.0 * torch.rand(values.shape, dtype=values.dtype)

    with pytest.raises(InputError) as caught:
        _check(drawing)
    assert caught.value.code == CODE_OBJECTIVE_NONDETERMINISTIC
    assert "calls a random operation" in str(caught.value)


def test_model_unchanged_by_checks():
    model, batch = _model_and_batch()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    require_recomputable(_squared, model, batch, ["weight"], objective_name="the test "
                         "objective", hint="fix it")
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])
    assert dict(model.named_parameters())["weight"] is model.weight
