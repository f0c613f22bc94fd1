"""The objective rules of R-ARCH-7: determinism up front, vmap where it first runs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mbd_cert._determinism import (  # noqa: E402
    CODE_OBJECTIVE_NONDETERMINISTIC,
    CODE_OBJECTIVE_VMAP_UNSUPPORTED,
    VmapFailure,
    require_deterministic,
    run_vmapped,
)
from mbd_cert.errors import InputError  # noqa: E402
from mbd_cert.saliency import gradient_moments  # noqa: E402


def _model_and_batch() -> tuple[torch.nn.Module, dict]:
    model = torch.nn.Linear(3, 1).to(torch.float64)
    batch = {"inputs": {"text": torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(4, 1, 3)},
             "present": torch.ones(4, 1, dtype=torch.bool),
             "label": torch.zeros(4, dtype=torch.float64)}
    return model, batch


def _squared(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return model(batch["inputs"]["text"][:, 0, :]).squeeze(1) ** 2


def _moments(objective) -> None:
    # Without independent samples every gradient goes through vmap, as at level 2.
    model, batch = _model_and_batch()
    gradient_moments(model, ["weight", "bias"], objective, batch,
                     torch.ones(4, dtype=torch.float64), objective_name="the test objective",
                     hint="fix it")


def test_plain_objective_passes():
    model, batch = _model_and_batch()
    require_deterministic(_squared, model, batch, objective_name="the test objective",
                          hint="fix it")
    _moments(_squared)


def test_random_values_rejected_up_front():
    def noisy(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        values = _squared(model, batch)
        return values + torch.rand(values.shape, dtype=values.dtype)

    model, batch = _model_and_batch()
    with pytest.raises(InputError) as caught:
        require_deterministic(noisy, model, batch, objective_name="the test objective",
                              hint="fix it")
    assert caught.value.code == CODE_OBJECTIVE_NONDETERMINISTIC
    assert "is not deterministic" in str(caught.value)


def test_item_call_rejected_where_vmap_runs():
    def scaled(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        values = _squared(model, batch)
        return values * float(values.sum().item() >= 0)

    with pytest.raises(InputError) as caught:
        _moments(scaled)
    assert caught.value.code == CODE_OBJECTIVE_VMAP_UNSUPPORTED
    assert "the test objective cannot run under torch.func.vmap" in str(caught.value)
    assert caught.value.hint == "fix it"


def test_unused_random_draw_rejected_where_vmap_runs():
    # The values do not depend on the draw, so only vmap detects it.
    def drawing(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        values = _squared(model, batch)
        return values + 0.0 * torch.rand(values.shape, dtype=values.dtype)

    model, batch = _model_and_batch()
    require_deterministic(drawing, model, batch, objective_name="the test objective",
                          hint="fix it")
    with pytest.raises(InputError) as caught:
        _moments(drawing)
    assert caught.value.code == CODE_OBJECTIVE_NONDETERMINISTIC
    assert "calls a random operation" in str(caught.value)


def test_only_vmap_refusals_are_vmap_failures():
    def exhausted() -> None:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                           "allocate 10 bytes")

    def refused() -> None:
        raise RuntimeError("vmap: It looks like you're calling .item() on a Tensor")

    def own_bug() -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 2x1)")

    for error in (exhausted, own_bug):
        with pytest.raises(RuntimeError) as caught:
            run_vmapped(error)
        assert not isinstance(caught.value, VmapFailure)
    with pytest.raises(VmapFailure):
        run_vmapped(refused)


def test_model_unchanged_by_the_check():
    model, batch = _model_and_batch()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    require_deterministic(_squared, model, batch, objective_name="the test objective",
                          hint="fix it")
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])
    assert dict(model.named_parameters())["weight"] is model.weight
