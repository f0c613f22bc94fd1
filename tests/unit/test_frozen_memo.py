"""The frozen-module memo of the masked update returns what the modules would compute."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from mbd_cert import update
from mbd_cert._frozen_memo import MemoCounts, memoise_frozen
from mbd_cert.arch.mbd import retain_objective
from tests.unit.test_gradient_moments import _batch, _model, _names


class _Drifting(torch.nn.Module):
    """Reads a Python attribute besides its parameters, so equal inputs can give new outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 2).to(torch.float64)
        self.offset = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) + self.offset


def _outer(inner: torch.nn.Module) -> torch.nn.Module:
    model = torch.nn.Module()
    model.inner = inner
    model.moving = torch.nn.Linear(2, 1).to(torch.float64)
    return model


def _frozen_inner() -> tuple[_Drifting, torch.nn.Module]:
    """Return a frozen inner module and its outer model, in eval mode."""
    inner = _Drifting()
    model = _outer(inner)
    for p in inner.parameters():
        p.requires_grad_(False)
    model.eval()
    return inner, model


def test_memo_keeps_update_exact(monkeypatch):
    model = _model(["audio"])
    batch = _batch(17, seed=21)
    names = _names(model)
    parameters = dict(model.named_parameters())
    rng = np.random.default_rng(0)
    masks = {n: rng.random(tuple(parameters[n].shape)) < 0.3 for n in names}
    weights = torch.ones(17, dtype=torch.float64)

    def run() -> update.UpdateResult:
        return update.masked_update(
            model, masks, lambda m, b: retain_objective(m, b, "audio"), batch, weights,
            steps=4, learning_rate=1e-2, damping=1e-3, clip_norm=10.0,
            independent_samples=True)

    hits: list[int] = []
    real = update.memoise_frozen

    @contextlib.contextmanager
    def counted(*args, **kwargs):
        with real(*args, **kwargs) as counts:
            yield counts
        hits.append(counts.hits)

    monkeypatch.setattr(update, "memoise_frozen", counted)
    with_memo = run()
    monkeypatch.setattr(update, "memoise_frozen",
                        lambda *a, **k: contextlib.nullcontext(MemoCounts()))
    without = run()
    assert hits[0] > 0
    for name in names:
        np.testing.assert_array_equal(with_memo.displacement[name], without.displacement[name])
    assert with_memo.norm_before_clip == without.norm_before_clip


def test_impure_module_dropped():
    inner, model = _frozen_inner()
    x = torch.ones(3, 2, dtype=torch.float64)
    with memoise_frozen(model, {"moving.weight", "moving.bias"}) as counts:
        first = inner(x)
        inner.offset = 1.0
        second = inner(x)
        third = inner(x)
    assert counts.dropped == ["inner"]
    assert torch.equal(second, first + 1.0)
    assert torch.equal(third, second)
    # The Linear inside reads only its parameters and input, so it keeps its memo.
    assert counts.hits == 1


def test_hit_needs_same_input_eval():
    inner, model = _frozen_inner()
    x = torch.ones(3, 2, dtype=torch.float64)
    with memoise_frozen(model, {"moving.weight"}) as counts:
        reference = inner(x)
        inner(x)  # first repeat: recomputed and compared
        assert torch.equal(inner(x), reference)
        assert counts.hits == 1
        x.mul_(2.0)  # same object, new version
        assert torch.equal(inner(x), torch.nn.functional.linear(x, inner.layer.weight,
                                                                inner.layer.bias))
        assert counts.hits == 1
        model.train()
        for _ in range(3):
            inner(x)
        assert counts.hits == 1


def test_hit_on_equal_bits_not_on_equal_values():
    inner, model = _frozen_inner()
    x = torch.tensor([[0.0, 1.5], [2.0, -3.0]], dtype=torch.float64)
    with memoise_frozen(model, {"moving.weight"}) as counts:
        reference = inner(x)
        inner(x.clone())  # first repeat: recomputed and compared
        assert inner(x.clone()) is reference
        assert counts.hits == 1
        # 0.0 == -0.0 as numbers, but a module may tell them apart (1 / x, atan2).
        negative_zero = x.clone()
        negative_zero[0, 0] = -0.0
        assert torch.equal(negative_zero, x)
        assert inner(negative_zero) is not reference
        assert counts.hits == 1


def test_no_hit_after_stored_input_changed_in_place():
    inner, model = _frozen_inner()
    x = torch.ones(3, 2, dtype=torch.float64)
    with memoise_frozen(model, {"moving.weight"}) as counts:
        reference = inner(x)
        inner(x.clone())
        x.add_(1.0)  # the stored input no longer matches the stored output
        result = inner(x.clone())
        assert result is not reference
        assert torch.equal(result, torch.nn.functional.linear(x, inner.layer.weight,
                                                              inner.layer.bias))
        assert counts.hits == 0


def _expected(inner: _Drifting, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x, inner.layer.weight, inner.layer.bias)


def test_no_hit_after_frozen_weight_changed():
    # A frozen tensor edited in place after the first repeat was verified: the
    # memo must recompute, not serve the output of the old weight.
    inner, model = _frozen_inner()
    x = torch.ones(3, 2, dtype=torch.float64)
    with memoise_frozen(model, {"moving.weight"}) as counts:
        inner(x)
        inner(x)  # first repeat: recomputed, compared and verified
        with torch.no_grad():
            inner.layer.weight.mul_(3.0)
        assert torch.equal(inner(x), _expected(inner, x))
        assert counts.hits == 0


def test_no_hit_after_weight_replaced():
    inner, model = _frozen_inner()
    x = torch.ones(3, 2, dtype=torch.float64)
    with memoise_frozen(model, {"moving.weight"}) as counts:
        inner(x)
        inner(x)
        inner.layer.weight = torch.nn.Parameter(torch.full((2, 2), 5.0, dtype=torch.float64),
                                                requires_grad=False)
        assert torch.equal(inner(x), _expected(inner, x))
        assert counts.hits == 0


def test_no_hit_after_submodule_replaced():
    inner, model = _frozen_inner()
    x = torch.ones(3, 2, dtype=torch.float64)
    with memoise_frozen(model, {"moving.weight"}) as counts:
        inner(x)
        inner(x)
        replacement = torch.nn.Linear(2, 2).to(torch.float64).requires_grad_(False)
        inner.layer = replacement
        assert torch.equal(inner(x), replacement(x))
        assert counts.hits == 0
        assert counts.dropped == ["inner"]


def test_no_hit_on_transposed_view():
    # functional_call may swap in another view of the same memory: same address and
    # version counter, other strides.
    from torch.func import functional_call

    inner, model = _frozen_inner()
    x = torch.arange(6, dtype=torch.float64).reshape(3, 2)
    weight = inner.layer.weight.detach()
    with memoise_frozen(model, {"moving.weight"}) as counts:
        for _ in range(2):
            functional_call(inner.layer, {"weight": weight}, (x,))
        swapped = functional_call(inner.layer, {"weight": weight.t()}, (x,))
        assert counts.hits == 0
    assert torch.equal(swapped, x @ weight + inner.layer.bias)


def test_no_hit_after_siblings_swapped():
    sequence = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh(),
                                   torch.nn.Linear(2, 2)).to(torch.float64)
    model = _outer(sequence)
    sequence.requires_grad_(False)
    model.eval()
    x = torch.ones(3, 2, dtype=torch.float64)
    with memoise_frozen(model, {"moving.weight"}):
        sequence(x)
        sequence(x)
        sequence._modules["0"], sequence._modules["2"] = (sequence._modules["2"],
                                                          sequence._modules["0"])
        swapped = sequence(x)
    assert torch.equal(swapped, sequence(x))


def test_moving_storage_twin_not_memoised():
    # A second Parameter on a moving tensor's memory moves with it.
    moving = torch.nn.Linear(2, 2).to(torch.float64)
    twin = torch.nn.Linear(2, 2).to(torch.float64)
    twin.weight = torch.nn.Parameter(moving.weight.data, requires_grad=False)
    twin.bias.requires_grad_(False)
    model = torch.nn.Module()
    model.moving, model.twin = moving, twin
    model.eval()
    x = torch.ones(3, 2, dtype=torch.float64)
    with memoise_frozen(model, {"moving.weight", "moving.bias"}):
        twin(x)
        twin(x)
        with torch.no_grad():
            moving.weight.add_(1.0)
        after = twin(x)
    assert torch.equal(after, twin(x))


def test_no_hit_after_buffer_changed():
    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 2).to(torch.float64)
            self.register_buffer("scale", torch.ones(1, dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x) * self.scale

    inner = Scaled()
    model = _outer(inner)
    for p in inner.parameters():
        p.requires_grad_(False)
    model.eval()
    x = torch.ones(3, 2, dtype=torch.float64)
    with memoise_frozen(model, {"moving.weight"}) as counts:
        reference = inner(x)
        inner(x)
        assert inner(x) is reference
        assert counts.hits == 1
        inner.scale.fill_(2.0)
        assert torch.equal(inner(x), 2.0 * reference)
        assert counts.dropped == []


def test_moving_modules_not_memoised():
    inner = _Drifting()
    model = _outer(inner)
    model.eval()
    x = torch.ones(3, 2, dtype=torch.float64)
    with memoise_frozen(model, {"inner.layer.weight"}) as counts:
        for _ in range(3):
            inner(x)
    with memoise_frozen(model, set()) as counts_grad:
        for _ in range(3):
            inner(x)  # parameters still require gradients
    assert counts.hits == 0
    assert counts_grad.hits == 0


def test_forward_is_restored_after_the_block():
    inner = _Drifting()
    model = _outer(inner)
    with memoise_frozen(model, {"moving.weight"}):
        assert "forward" in inner.__dict__
    assert "forward" not in inner.__dict__
    assert "forward" not in inner.layer.__dict__


def test_no_hit_on_other_layout():
    # Equal values in another memory layout, or in a sparse tensor, are recomputed.
    inner, model = _frozen_inner()
    x = torch.tensor([[0.5, 1.5], [2.0, -3.0], [4.0, 0.25]], dtype=torch.float64)
    transposed = x.T.contiguous().T
    assert transposed.stride() != x.stride()
    with memoise_frozen(model, {"moving.weight"}) as counts:
        inner.layer(x)
        inner.layer(x.clone())  # first repeat: recomputed and compared
        inner.layer(x.clone())
        assert counts.hits == 1
        inner.layer(transposed)
        assert counts.hits == 1
    sparse_model = _outer(_SparseInput())
    sparse_model.eval()
    dense = torch.eye(3, dtype=torch.float64)
    with memoise_frozen(sparse_model, {"moving.weight"}) as counts:
        results = [sparse_model.inner(dense.to_sparse()) for _ in range(3)]
    assert counts.hits == 0
    for result in results:
        assert torch.equal(result, results[0])


class _SparseInput(torch.nn.Module):
    """A frozen module that accepts a sparse input."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3, 2, dtype=torch.float64),
                                         requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(x, self.weight)


def test_alternating_inputs_both_hit():
    # The forget objective calls each generator with the real and with the
    # reconstructed modality in turn; both inputs keep their own entry.
    inner, model = _frozen_inner()
    real = torch.ones(3, 2, dtype=torch.float64)
    reconstructed = torch.full((3, 2), 0.5, dtype=torch.float64)
    with memoise_frozen(model, {"moving.weight"}) as counts:
        outputs = [(inner(real), inner(reconstructed)) for _ in range(4)]
    assert counts.hits == 4  # rounds 3 and 4; round 2 verified both entries
    assert outputs[3][0] is outputs[0][0]
    assert outputs[3][1] is outputs[0][1]
    assert not torch.equal(outputs[0][0], outputs[0][1])


def test_oldest_entry_is_replaced():
    inner, model = _frozen_inner()
    inputs = [torch.full((2, 2), float(i), dtype=torch.float64) for i in range(6)]
    with memoise_frozen(model, {"moving.weight"}) as counts:
        first = inner(inputs[0])
        for x in inputs[1:]:
            inner(x)
        assert inner(inputs[0]) is not first  # pushed out by the four after it
        inner(inputs[5])  # still stored: the first repeat compares
        assert inner(inputs[5].clone()) is not None
    assert counts.hits == 1


def test_batched_tensors_inside_vmap_are_not_stored():
    from torch.func import vmap

    inner, model = _frozen_inner()
    x = torch.ones(3, 2, dtype=torch.float64)
    scales = torch.tensor([1.0, 2.0], dtype=torch.float64)
    with memoise_frozen(model, {"moving.weight"}) as counts:
        plain = [inner(x) for _ in range(3)]  # plain input: stored and hit
        batched = [vmap(lambda s: inner(x * s))(scales) for _ in range(3)]
        after = vmap(lambda s: inner(x) * s)(scales)  # plain input inside vmap: hit
    assert counts.hits == 2
    assert plain[2] is plain[0]
    for result in batched:
        assert torch.equal(result[1], torch.nn.functional.linear(
            2.0 * x, inner.layer.weight, inner.layer.bias))
    assert torch.equal(after[0], plain[0])


def test_tied_weight_under_another_name_is_moving():
    # Only "moving.weight" is named as moving, but inner.layer has the same tensor.
    inner, model = _frozen_inner()
    model.moving = torch.nn.Linear(2, 2).to(torch.float64)
    inner.layer.weight = model.moving.weight
    model.moving.weight.requires_grad_(False)
    model.eval()
    x = torch.ones(3, 2, dtype=torch.float64)
    with memoise_frozen(model, {"moving.weight"}) as counts:
        first = [inner(x) for _ in range(3)]  # stored, verified, then served if memoised
        with torch.no_grad():
            model.moving.weight.add_(1.0)
        latest = inner(x)
    assert counts.hits == 0
    assert not torch.equal(latest, first[0])


def test_update_without_masked_entries_is_zero():
    model = _model(["audio"])
    batch = _batch(9, seed=4)
    names = _names(model)
    parameters = dict(model.named_parameters())
    masks = {n: np.zeros(tuple(parameters[n].shape), dtype=bool) for n in names}
    result = update.masked_update(
        model, masks, lambda m, b: retain_objective(m, b, "audio"), batch,
        torch.ones(9, dtype=torch.float64), steps=3, learning_rate=1e-2, damping=1e-3,
        clip_norm=1.0, independent_samples=True)
    assert result.norm_before_clip == 0.0
    assert all(not d.any() for d in result.displacement.values())
    assert set(result.displacement) == set(names)
