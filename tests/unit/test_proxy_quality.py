"""Tests for mbd_cert.proxy_quality: proxy scores against true leave-one-out increments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbd_cert.errors import InputError
from mbd_cert.proxy_quality import (
    RELATIVE_TOLERANCE,
    ProxySample,
    measure_proxy_quality,
    summarise,
)


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.a = torch.nn.Parameter(torch.randn(5, 4, generator=generator, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(7, generator=generator, dtype=torch.float64))


def squared_norm(model: torch.nn.Module) -> float:
    # Zeroing entry q changes sum(theta^2) by exactly -theta_q^2.
    return float(sum((p.detach() ** 2).sum() for p in model.parameters()))


def exact_scores(model: Toy, factor: float = 1.0) -> dict[str, np.ndarray]:
    return {name: -factor * p.detach().numpy() ** 2 for name, p in model.named_parameters()}


def full_masks(model: Toy) -> dict[str, np.ndarray]:
    return {name: np.ones(tuple(p.shape), dtype=bool) for name, p in model.named_parameters()}


def test_exact_proxy_gives_rho_one() -> None:
    model = Toy()
    quality = measure_proxy_quality(model, exact_scores(model), full_masks(model), squared_norm,
                                    sample_size=10, seed=3)
    assert quality.spearman_rho == pytest.approx(1.0)
    assert quality.share_within_tolerance == 1.0
    assert len(quality.samples) == 10
    for sample in quality.samples:
        assert sample.true == pytest.approx(sample.proxy, rel=1e-12)


@pytest.mark.parametrize(("factor", "share"), [(1.05, 1.0), (1.1, 0.0)])
def test_share_uses_eight_percent_band(factor: float, share: float) -> None:
    model = Toy()
    quality = measure_proxy_quality(model, exact_scores(model, factor), full_masks(model),
                                    squared_norm, sample_size=27, seed=0)
    assert quality.share_within_tolerance == share
    assert quality.spearman_rho == pytest.approx(1.0)


def test_samples_only_masked_entries_and_restores() -> None:
    model = Toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = {"a": np.zeros((5, 4), dtype=bool), "b": np.zeros(7, dtype=bool)}
    masks["a"][1, 2] = masks["b"][4] = masks["b"][6] = True
    quality = measure_proxy_quality(model, exact_scores(model), masks, squared_norm,
                                    sample_size=64, seed=0)
    assert sorted((s.tensor, s.index) for s in quality.samples) == [("a", 6), ("b", 4), ("b", 6)]
    assert quality.candidates == 3
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])


def test_same_seed_same_sample() -> None:
    model = Toy()
    draws = [measure_proxy_quality(model, exact_scores(model), full_masks(model), squared_norm,
                                   sample_size=5, seed=11).samples for _ in range(2)]
    assert draws[0] == draws[1]


def test_summary_of_hand_made_points() -> None:
    samples = [ProxySample("t", i, proxy, true) for i, (proxy, true) in
               enumerate([(1.0, 1.0), (2.1, 2.0), (2.5, 3.0), (-1.0, -1.07)])]
    quality = summarise(samples, seed=0, candidates=4)
    # |2.5 - 3| = 0.5 > 0.08 * 3; |-1 + 1.07| = 0.07 <= 0.0856.
    assert quality.share_within_tolerance == 0.75
    assert quality.spearman_rho == pytest.approx(1.0)
    assert RELATIVE_TOLERANCE == 0.08


def test_constant_side_has_no_rho() -> None:
    samples = [ProxySample("t", i, 1.0, float(i)) for i in range(4)]
    assert summarise(samples, seed=0, candidates=4).spearman_rho is None


@pytest.mark.parametrize("size", [0, -1, 10_001, True])
def test_bad_sample_size_rejected(size: int) -> None:
    model = Toy()
    with pytest.raises(InputError):
        measure_proxy_quality(model, exact_scores(model), full_masks(model), squared_norm,
                              sample_size=size, seed=0)


def _mbd_case(sample_size: int, **value_options):
    """Return a small MBD model, linear scores, full masks and F (``forget_value``)."""
    from mbd_cert.arch.mbd import forget_objective
    from mbd_cert.proxy_quality import forget_value
    from tests.unit.test_gradient_moments import _batch, _model, _names

    model = _model([])
    batch = _batch(21, seed=9)
    weights = batch["present"][:, 1].to(torch.float64)
    names = _names(model)
    parameters = dict(model.named_parameters())
    scores = {n: np.linspace(0.0, 1.0, parameters[n].numel()).reshape(parameters[n].shape)
              for n in names}
    masks = {n: np.ones(tuple(parameters[n].shape), dtype=bool) for n in names}
    value = forget_value(lambda m, b: forget_objective(m, b, "audio"), batch, weights,
                         **value_options)
    return model, scores, masks, value


@pytest.mark.parametrize("local", [False, True], ids=["copies", "local-parameters"])
def test_vectorised_increments_match_loop(local):
    # 40 entries across several tensors and modules, so several vectorised passes.
    model, scores, masks, value = _mbd_case(40)
    fast = measure_proxy_quality(model, scores, masks, value, sample_size=40, seed=1,
                                 local_parameters=local)
    slow = measure_proxy_quality(model, scores, masks, lambda m: value(m), sample_size=40,
                                 seed=1)
    assert len({s.tensor for s in fast.samples}) > 1
    assert [(s.tensor, s.index) for s in fast.samples] == [(s.tensor, s.index)
                                                          for s in slow.samples]
    true_fast = np.array([s.true for s in fast.samples])
    true_slow = np.array([s.true for s in slow.samples])
    assert np.count_nonzero(true_slow) > 30
    np.testing.assert_allclose(true_fast, true_slow, rtol=1e-9, atol=1e-17)


def test_passes_keep_one_module_each():
    from mbd_cert.proxy_quality import _VARIANTS_PER_PASS, _passes

    entries = ([("fusion.0.weight", i) for i in range(20)] + [("fusion.0.bias", 1)]
               + [("fusion.3.weight", i) for i in range(5)] + [("head.bias", 0)])
    passes = _passes(entries)
    assert sorted(p for positions in passes for p in positions) == list(range(len(entries)))
    modules = [{entries[p][0].rpartition(".")[0] for p in positions} for positions in passes]
    assert all(len(found) == 1 for found in modules)
    assert all(len(positions) <= _VARIANTS_PER_PASS for positions in passes)
    assert [len(positions) for positions in passes] == [11, 10, 5, 1]  # 21 spread evenly


def test_untraceable_objective_loop_fallback(caplog):
    import logging

    from mbd_cert.arch.mbd import forget_objective
    from mbd_cert.proxy_quality import forget_value

    model, scores, masks, value = _mbd_case(5)

    def objective(m, b):
        values = forget_objective(m, b, "audio")
        # .item() on a batched tensor cannot be traced by vmap.
        return values if values.sum().item() >= 0 else -values

    fallback = forget_value(objective, value.batch, value.weights)
    with caplog.at_level(logging.WARNING, logger="mbd_cert.proxy_quality"):
        quality = measure_proxy_quality(model, scores, masks, fallback, sample_size=5, seed=2)
    assert "cannot be vectorised" in caplog.text
    reference = measure_proxy_quality(model, scores, masks, value, sample_size=5, seed=2)
    np.testing.assert_allclose([s.true for s in quality.samples],
                               [s.true for s in reference.samples], rtol=1e-9, atol=1e-17)


def test_dropping_zero_weight_rows_keeps_the_value():
    from mbd_cert.arch.mbd import forget_objective
    from mbd_cert.proxy_quality import forget_value

    model, scores, masks, value = _mbd_case(6)
    assert int((value.weights == 0).sum()) > 0
    dropped = forget_value(lambda m, b: forget_objective(m, b, "audio"), value.batch,
                           value.weights, independent_samples=True)
    assert int(dropped.weights.shape[0]) == int((value.weights != 0).sum())
    assert dropped(model) == pytest.approx(value(model), rel=1e-12)
    full = measure_proxy_quality(model, scores, masks, value, sample_size=6, seed=4)
    kept = measure_proxy_quality(model, scores, masks, dropped, sample_size=6, seed=4)
    np.testing.assert_allclose([s.true for s in kept.samples],
                               [s.true for s in full.samples], rtol=1e-9, atol=1e-17)


@pytest.mark.parametrize("seed", range(6))
def test_spearman_matches_scipy_with_ties(seed: int) -> None:
    from scipy import stats

    from mbd_cert.proxy_quality import spearman_rho

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, size=40).astype(np.float64)  # many ties
    y = x * rng.normal(1.0, 0.5, size=40) + rng.normal(size=40)
    assert spearman_rho(x, y) == pytest.approx(float(stats.spearmanr(x, y).statistic),
                                               abs=1e-12)


@pytest.mark.parametrize("vectorised", [True, False], ids=["vectorised", "one-by-one"])
def test_stopping_event_cancels_the_check(vectorised):
    import threading

    from mbd_cert._background import Cancelled

    model, scores, masks, value = _mbd_case(40)
    evaluate = value if vectorised else (lambda m: value(m))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stopping = threading.Event()
    stopping.set()
    with pytest.raises(Cancelled):
        measure_proxy_quality(model, scores, masks, evaluate, sample_size=40, seed=1,
                              stopping=stopping)
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter.detach(), before[name])
    # An event that is never set changes nothing.
    quiet = measure_proxy_quality(model, scores, masks, evaluate, sample_size=40, seed=1,
                                  stopping=threading.Event())
    plain = measure_proxy_quality(model, scores, masks, evaluate, sample_size=40, seed=1)
    assert quiet == plain


class _TiedHead(torch.nn.Module):
    """A weight tied between two layers, each with its own bias."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(4, 4)
        self.second = torch.nn.Linear(4, 4)
        self.second.weight = self.first.weight
        self.out = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.first(x)) + torch.sin(self.second(x)))


def _pruned() -> torch.nn.Module:
    import torch.nn.utils.prune as prune

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    prune.l1_unstructured(model[0], "weight", amount=0.25)
    return model


def _instance_forward() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    layer = model[0]
    layer.forward = lambda x: torch.nn.functional.linear(2.0 * x, layer.weight, layer.bias)
    return model


def _plain() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def _shared_module() -> torch.nn.Module:
    from tests.unit.test_functional_call import SharedEncoder

    return SharedEncoder()


def _sum_squares(model: torch.nn.Module, batch) -> torch.Tensor:
    return model(batch["x"]).sum(-1) ** 2


def _with_sparsity(model: torch.nn.Module, batch) -> torch.Tensor:
    # Reads the first layer's weight outside that layer, through an op that maps NaN
    # to a finite value: only the slow path is right for such a model.
    return _sum_squares(model, batch) + 0.01 * (model[0].weight != 0).sum()


HOSTILE = {
    "tied-weight": (_TiedHead, ["first.weight", "first.bias", "second.bias", "out.weight"],
                    _sum_squares),
    "pruned": (_pruned, ["0.weight_orig", "0.bias", "2.weight"], _sum_squares),
    "instance-forward": (_instance_forward, ["0.weight", "0.bias"], _sum_squares),
    "read-outside": (_plain, ["0.weight", "2.weight"], _with_sparsity),
    "shared-module": (_shared_module, ["encoder.weight", "encoder.bias", "out.weight"],
                      _sum_squares),
}


# Without local_parameters every model gets the exact copy path. With it, tied, pruned
# and patched layers are still detected. A read outside the layer breaks the
# contract, so only the default path is expected to survive it.
@pytest.mark.parametrize(("case", "local"), [
    *[(case, False) for case in sorted(HOSTILE)],
    ("tied-weight", True), ("pruned", True), ("instance-forward", True),
    ("shared-module", True),
])
def test_fast_paths_match_loop_on_odd_models(case: str, local: bool) -> None:
    from mbd_cert.proxy_quality import forget_value

    build, names, objective = HOSTILE[case]
    torch.manual_seed(0)
    model = build().double().eval()
    parameters = dict(model.named_parameters())
    masks = {n: np.ones(tuple(parameters[n].shape), dtype=bool) for n in names}
    scores = {n: np.ones(tuple(parameters[n].shape)) for n in names}
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    value = forget_value(objective, {"x": x}, torch.ones(8, dtype=torch.float64))
    fast = measure_proxy_quality(model, scores, masks, value, sample_size=40, seed=0,
                                 local_parameters=local)
    slow = measure_proxy_quality(model, scores, masks, lambda m: value(m), sample_size=40,
                                 seed=0)
    np.testing.assert_allclose([s.true for s in fast.samples], [s.true for s in slow.samples],
                               rtol=1e-9, atol=1e-15)
