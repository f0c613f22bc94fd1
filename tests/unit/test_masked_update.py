"""mbd_cert.update.masked_update with a preconditioner computed ahead of the call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mbd_cert import update
from mbd_cert.arch.mbd import retain_objective
from mbd_cert.saliency import gradient_moments
from tests.unit.test_gradient_moments import _batch, _model, _names


def _case():
    model = _model(["audio"])
    batch = _batch(19, seed=5)
    names = sorted(_names(model))
    parameters = dict(model.named_parameters())
    rng = np.random.default_rng(3)
    masks = {n: rng.random(tuple(parameters[n].shape)) < 0.4 for n in names}
    weights = torch.ones(19, dtype=torch.float64)
    return model, batch, names, masks, weights


def _objective(model, batch):
    return retain_objective(model, batch, "audio")


def _run(model, batch, masks, weights, fisher=None, gradient=None):
    return update.masked_update(model, masks, _objective, batch, weights, steps=3,
                                learning_rate=1e-2, damping=1e-3, clip_norm=10.0,
                                independent_samples=True, fisher=fisher, gradient=gradient)


def test_precomputed_fisher_gives_the_same_update():
    # The issuer computes the Fisher on a second thread before the mask exists, so the
    # update must then match, bit for bit, the one that computes its own Fisher.
    model, batch, names, masks, weights = _case()
    _, fisher = gradient_moments(model, names, _objective, batch, weights,
                                 independent_samples=True)
    own = _run(model, batch, masks, weights)
    precomputed = _run(model, batch, masks, weights, fisher)
    for name in names:
        np.testing.assert_array_equal(own.displacement[name],
                                      precomputed.displacement[name])
    assert own.norm_before_clip == precomputed.norm_before_clip


def test_precomputed_fisher_is_used():
    model, batch, names, masks, weights = _case()
    _, fisher = gradient_moments(model, names, _objective, batch, weights,
                                 independent_samples=True)
    own = _run(model, batch, masks, weights)
    scaled = _run(model, batch, masks, weights, {n: f * 100.0 for n, f in fisher.items()})
    assert scaled.norm_before_clip < own.norm_before_clip


def test_displacement_in_mask_and_clip():
    """R-UPD-1: the displacement is zero outside the mask, and its L2 norm is at most clip_norm."""
    model, batch, names, masks, weights = _case()
    free = _run(model, batch, masks, weights)
    # A clip of a quarter of the raw norm binds, while the clip of 10 in _run does not.
    clip_norm = free.norm_before_clip / 4
    clipped = update.masked_update(model, masks, _objective, batch, weights, steps=3,
                                   learning_rate=1e-2, damping=1e-3, clip_norm=clip_norm,
                                   independent_samples=True)
    assert 0.0 < free.norm_before_clip < 10.0
    assert clipped.norm_before_clip == free.norm_before_clip
    for result, bound in ((free, 10.0), (clipped, clip_norm)):
        for name in names:
            outside = result.displacement[name][~masks[name]]
            assert not np.any(outside), name
        norm = np.sqrt(sum(np.sum(d * d) for d in result.displacement.values()))
        assert norm <= bound * (1 + 1e-12)
    assert np.sqrt(sum(np.sum(d * d) for d in clipped.displacement.values())) == \
        pytest.approx(clip_norm, rel=1e-12)


def test_precomputed_gradient_starts_the_steps():
    # The issuer hands over the mean gradient computed with the Fisher for step one.
    model, batch, names, masks, weights = _case()
    gradient, fisher = gradient_moments(model, names, _objective, batch, weights,
                                        independent_samples=True)
    own = _run(model, batch, masks, weights, fisher)
    handed = _run(model, batch, masks, weights, fisher, gradient)
    assert handed.norm_before_clip == pytest.approx(own.norm_before_clip, rel=1e-12)
    for name in names:
        np.testing.assert_allclose(handed.displacement[name], own.displacement[name],
                                   rtol=1e-10, atol=1e-15)
    # A different starting gradient changes the update: the first step used it.
    doubled = _run(model, batch, masks, weights, fisher,
                   {n: 2.0 * g for n, g in gradient.items()})
    assert doubled.norm_before_clip > 1.05 * own.norm_before_clip


def _batch_mean_objective(model, batch):
    # Each sample's value depends on the batch mean, so the gradient of the batch's
    # mean value is not the mean of the batch-of-one gradients that gradient_moments
    # takes per sample.
    prediction = model(batch["x"]).squeeze(-1)
    return (prediction - prediction.mean()) ** 2


def test_batch_statistics_ignore_precomputed_gradient():
    # Level 2 takes every step from the full-batch gradient. The per-sample mean that
    # gradient_moments returns equals it only for independent samples.
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1).double()
    batch = {"x": torch.randn(8, 3, dtype=torch.float64)}
    weights = torch.ones(8, dtype=torch.float64)
    masks = {"weight": np.ones((1, 3), dtype=bool), "bias": np.ones(1, dtype=bool)}
    gradient, fisher = gradient_moments(model, ["bias", "weight"], _batch_mean_objective,
                                        batch, weights, independent_samples=False)

    def run(**kwargs):
        return update.masked_update(model, masks, _batch_mean_objective, batch, weights,
                                    steps=2, learning_rate=1e-1, damping=1e-3,
                                    clip_norm=10.0, independent_samples=False,
                                    fisher=fisher, **kwargs)

    own = run()
    handed = run(gradient=gradient)
    assert handed.norm_before_clip == own.norm_before_clip
    for name in masks:
        np.testing.assert_array_equal(handed.displacement[name], own.displacement[name])
