"""The MBD model's closed-form forget values against the objective of a zeroed copy."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from mbd_cert.arch import get_architecture
from mbd_cert.arch.mbd import forget_objective, zeroed_forget
from mbd_cert.proxy_quality import measure_proxy_quality
from tests.unit.test_gradient_moments import _batch, _model
from tests.unit.test_proxy_quality import _mbd_case


def _zeroed_copy_value(model, batch, name: str, flat_index: int) -> torch.Tensor:
    """Return the forget objective of a copy of ``model`` with one entry set to zero."""
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        dict(zeroed.named_parameters())[name].view(-1)[flat_index] = 0.0
        return forget_objective(zeroed, batch, "audio")


def _entries(model) -> list[tuple[str, int]]:
    """Return entries of every covered tensor, including the first and last of each."""
    parameters = dict(model.named_parameters())
    entries = []
    for name in ("fusion.0.weight", "fusion.0.bias", "fusion.3.weight", "fusion.3.bias",
                 "head.weight", "head.bias", "generators.audio.net.2.weight",
                 "generators.audio.net.2.bias"):
        size = parameters[name].numel()
        entries += [(name, index) for index in sorted({0, size // 3, size - 1})]
    return entries


@pytest.mark.parametrize("deleted", [[], ["vision"]], ids=["none-deleted", "vision-deleted"])
def test_rows_match_zeroed_copies(deleted):
    # With vision deleted earlier in the chain, its slot is always the reconstruction.
    model = _model(deleted)
    batch = _batch(23, seed=4)
    entries = _entries(model)
    values = zeroed_forget(model, batch, "audio", entries)
    assert values is not None
    assert values.shape == (len(entries) + 1, 23)
    torch.testing.assert_close(values[0], forget_objective(model, batch, "audio"),
                               rtol=1e-12, atol=1e-15)
    for row, (name, index) in enumerate(entries, start=1):
        expected = _zeroed_copy_value(model, batch, name, index)
        torch.testing.assert_close(values[row], expected, rtol=1e-10, atol=1e-15,
                                   msg=f"{name}[{index}]")


def test_increments_are_not_trivially_equal():
    # Guards the test above: zeroing these entries changes the forget objective.
    model = _model([])
    batch = _batch(23, seed=4)
    values = zeroed_forget(model, batch, "audio", _entries(model))
    assert values is not None
    changed = (values[1:] - values[0]).abs().sum(dim=1)
    assert bool((changed > 0).all())


def test_uncovered_entries_are_nan_and_others_kept():
    model = _model([])
    batch = _batch(11, seed=2)
    entries = [("generators.audio.net.0.weight", 3), ("fusion.3.weight", 5),
               ("encoders.text.proj.bias", 0), ("generators.text.net.2.bias", 1)]
    values = zeroed_forget(model, batch, "audio", entries)
    assert values is not None
    assert bool(torch.isnan(values[1]).all())
    assert bool(torch.isnan(values[3]).all())
    assert bool(torch.isnan(values[4]).all())
    torch.testing.assert_close(values[2], _zeroed_copy_value(model, batch, "fusion.3.weight", 5),
                               rtol=1e-10, atol=1e-15)


def test_more_entries_than_one_chunk():
    model = _model([])
    batch = _batch(9, seed=5)
    entries = [("fusion.0.weight", index) for index in range(0, 168, 7)]  # of 8 x 21
    assert len(entries) > 16
    values = zeroed_forget(model, batch, "audio", entries)
    assert values is not None
    for row in (1, 17, len(entries)):
        name, index = entries[row - 1]
        torch.testing.assert_close(values[row], _zeroed_copy_value(model, batch, name, index),
                                   rtol=1e-10, atol=1e-15)


def test_model_left_unchanged_and_in_its_mode():
    model = _model([])
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    zeroed_forget(model, _batch(7, seed=1), "audio", _entries(model))
    assert all(module.training for module in model.modules())
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]), name


def test_other_models_are_declined():
    class Subclass(type(_model([]))):
        pass

    model = _model([])
    other = Subclass(model.config, seed=3).to(torch.float64)
    assert zeroed_forget(other, _batch(5, seed=1), "audio", _entries(model)) is None
    assert zeroed_forget(torch.nn.Linear(2, 1), {}, "audio", [("weight", 0)]) is None
    deleted = _model(["audio"])
    assert zeroed_forget(deleted, _batch(5, seed=1), "audio", _entries(model)) is None


def test_builtin_architecture_declares_it():
    architecture = get_architecture("mbd-sentiment")
    assert architecture.zeroed_forget is not None
    model = _model([])
    batch = _batch(6, seed=3)
    entries = [("head.bias", 0)]
    torch.testing.assert_close(architecture.zeroed_forget(model, batch, "audio", entries),
                               zeroed_forget(model, batch, "audio", entries))


@pytest.mark.parametrize("local", [False, True], ids=["copies", "local-parameters"])
def test_proxy_check_same_with_closed_form(local):
    def closed_form(m, b, entries):
        return zeroed_forget(m, b, "audio", entries)

    model, scores, masks, plain = _mbd_case(60, independent_samples=True)
    _, _, _, closed = _mbd_case(60, independent_samples=True, closed_form=closed_form)
    fast = measure_proxy_quality(model, scores, masks, closed, sample_size=60, seed=2,
                                 local_parameters=local)
    slow = measure_proxy_quality(model, scores, masks, plain, sample_size=60, seed=2,
                                 local_parameters=local)
    tensors = {s.tensor for s in fast.samples}
    assert {"fusion.0.weight", "fusion.3.weight"} <= tensors
    assert any(t.startswith("generators.audio.net.2.") for t in tensors)
    assert any(t.startswith("generators.audio.net.0.") for t in tensors)  # generic pass
    np.testing.assert_allclose([s.true for s in fast.samples], [s.true for s in slow.samples],
                               rtol=1e-9, atol=1e-17)
    assert fast.spearman_rho is not None
    assert math.isclose(fast.spearman_rho, slow.spearman_rho or math.nan, rel_tol=1e-12)


def test_moved_row_major_and_exact():
    # The callers pass transposed views, and a result in their permuted layout made the
    # next linear layer copy it first. The row-major result must keep every bit.
    from mbd_cert.arch._mbd_zeroed_forget import _moved

    generator = torch.Generator().manual_seed(3)
    activation = torch.randn(7, 5, dtype=torch.float64, generator=generator)
    change = torch.randn(7, 4, dtype=torch.float64, generator=generator).T  # [c=4, n=7]
    columns = torch.randn(5, 4, dtype=torch.float64, generator=generator).T  # [c=4, F=5]
    moved = _moved(activation, change, columns)
    assert moved.is_contiguous()
    expected = activation.unsqueeze(0) + change.unsqueeze(2) * columns.unsqueeze(1)
    assert torch.equal(moved.view(torch.int64), expected.view(torch.int64))
