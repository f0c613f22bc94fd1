from __future__ import annotations

import numpy as np
import pytest
import torch

from mbd_cert._groups import eligible_names
from mbd_cert.saliency import gradient_moments, mask_size, saliency_scores, top_k_mask


def test_eligible_names_respects_dot_boundary():
    names = [
        "fusion.0.weight",
        "fusion2.weight",
        "fusion",
        "head.bias",
        "generators.audio.net.0.bias",
    ]
    assert eligible_names(names, ["fusion"]) == ["fusion", "fusion.0.weight"]
    assert eligible_names(names, ["generators.audio."]) == ["generators.audio.net.0.bias"]


@pytest.mark.parametrize(
    ("count", "fraction", "k"), [(10, 0.25, 3), (10, 0.2, 2), (3, 1e-9, 1), (7, 1.0, 7)]
)
def test_mask_size_is_ceiling_at_least_one(count, fraction, k):
    assert mask_size(count, fraction) == k


@pytest.mark.parametrize(
    ("count", "fraction", "k"),
    [(10, 0.3, 3), (5000, 0.02, 100), (1000, 0.5000000000001, 501), (10, 0.3000000001, 4)],
)
def test_mask_size_uses_fraction_as_written(count, fraction, k):
    """R-SAL-2: k is the ceiling of the product on the decimal fraction in the certificate.

    Level 2 recomputes k from that decimal text (R-L2-2), so an issuer that rounds the
    binary product differently signs a mask size that no verifier accepts.
    """
    from mbd_cert._recompute import mask_count

    assert mask_size(count, fraction) == k
    assert mask_count(count, fraction) == k


def test_top_k_ties_break_by_index():
    """R-SAL-2: the issuer breaks ties of |score| by flat index, tensors in sorted name order."""
    # C24: equal magnitudes are ordered by flat index, tensors in sorted name order.
    scores = {"b": np.array([1.0, -2.0]), "a": np.array([2.0, 0.5, -2.0])}
    masks, cut = top_k_mask(scores, 0.4)  # k = 2 of 5
    assert masks["a"].tolist() == [True, False, True]
    assert masks["b"].tolist() == [False, False]
    assert cut == 2.0


def test_top_k_rejects_empty():
    with pytest.raises(ValueError):
        top_k_mask({}, 0.5)


def test_gradient_moments_match_closed_form():
    # F_i = (w . x_i)^2 / 2 has gradient (w . x_i) x_i per sample.
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    weights = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0], dtype=torch.float64)

    def objective(m, batch):
        return 0.5 * m(batch["x"]).squeeze(-1) ** 2

    gradient, fisher = gradient_moments(model, ["weight"], objective, {"x": x}, weights)
    per_sample = (x @ model.weight.detach().T) * x  # [n, 3]
    keep = weights.bool()
    expected_g = per_sample[keep].mean(0)
    expected_f = (per_sample[keep] ** 2).mean(0)
    assert torch.allclose(gradient["weight"].squeeze(0), expected_g, rtol=1e-12)
    assert torch.allclose(fisher["weight"].squeeze(0), expected_f, rtol=1e-12)
    scores = saliency_scores({"weight": model.weight}, gradient, fisher)
    theta = model.weight.detach().double()
    expected = (-gradient["weight"] * theta + 0.5 * fisher["weight"] * theta**2).numpy()
    assert np.allclose(scores["weight"], expected, rtol=1e-12)


def test_tie_band_is_relative_to_cut():
    from mbd_cert._recompute import tie_band

    magnitude = np.array([1.0, 1.0 + 5e-7, 1.0 - 2e-6, 0.5, 2.0])
    assert tie_band(magnitude, 1.0, 1e-6).tolist() == [True, True, False, False, False]


def test_tie_band_empty_at_zero_cut():
    """R-SAL-3: at a k-th |score| of 0 the band is empty and zeros follow the R-SAL-2 order."""
    # Most scores 0 (a sparse or saturated model): a band of every zero would let the
    # issuer pick the rest of the mask freely, so zeros follow the flat-index order.
    from mbd_cert._recompute import rank_top_k, tie_band

    scores = {"w": np.array([0.0, 3.0, 0.0, 0.0, 0.0, 1.0])}
    ranking = rank_top_k(scores, 0.5)  # k = 3: both non-zero scores and the first zero
    assert ranking.cut == 0.0
    assert ranking.selected.tolist() == [True, True, False, False, False, True]
    assert not tie_band(ranking.magnitude, ranking.cut, 1e-4).any()
