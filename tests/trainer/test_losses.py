"""Tests of trainer.losses: sign, trivial zeros, hand-computed values, weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from mbd_factories import MODALITIES, random_batch, tiny_config

from mbd_cert.arch.mbd import MBDModel
from mbd_cert.errors import InputError
from trainer import losses
from trainer.losses import LossWeights


def _value(tensor):
    return float(tensor.detach())


def _parts(shared, private=None, reconstructed=None, state=None):
    rows = next(iter(shared.values())).shape[0]
    return {
        "prediction": torch.zeros(rows),
        "shared": shared,
        "private": private if private is not None else
        {m: torch.zeros(rows, 3) for m in shared},
        "reconstructed": reconstructed if reconstructed is not None else shared,
        "state": state if state is not None else torch.zeros(rows, len(MODALITIES),
                                                             dtype=torch.int64),
    }


@pytest.fixture
def model():
    return MBDModel(tiny_config(), seed=0)


def test_all_terms_non_negative(model):
    model.train()
    for seed in range(5):
        batch = random_batch(rows=16, seed=seed)
        total, terms = losses.training_losses(model, batch["inputs"], batch["present"],
                                              batch["present"], batch["label"], LossWeights())
        for name, value in terms.items():
            assert _value(value) >= 0.0, name
        assert _value(total) >= 0.0


def test_task_loss_hand_values():
    prediction = torch.tensor([1.0, -2.0, 0.5])
    label = torch.tensor([0.0, 0.0, 0.5])
    assert _value(losses.task_loss(prediction, label, "l1")) == pytest.approx(1.0)
    assert _value(losses.task_loss(prediction, label, "mse")) == pytest.approx(5.0 / 3.0)
    assert _value(losses.task_loss(label, label, "l1")) == 0.0
    with pytest.raises(InputError, match="task loss"):
        losses.task_loss(prediction, label, "huber")


def test_similarity_zero_for_identical_parts(model):
    shared = torch.randn(6, 4)
    parts = _parts({m: shared.clone() for m in MODALITIES})
    assert _value(losses.similarity_loss(model, parts)) == pytest.approx(0.0, abs=1e-6)


def test_similarity_two_for_opposite_parts(model):
    shared = torch.randn(6, 4)
    parts = _parts({"text": shared, "audio": -shared, "vision": shared})
    # Pairs (text, audio) and (audio, vision) are opposite (distance 2), (text, vision)
    # identical (0): mean over the 3 pairs x 6 rows is 4/3.
    assert _value(losses.similarity_loss(model, parts)) == pytest.approx(4.0 / 3.0, abs=1e-5)


def test_similarity_ignores_common_offset(model):
    # A constant offset shared by every modality must not count as alignment.
    rows = 50
    generator = torch.Generator().manual_seed(0)
    shared = {m: 10.0 + torch.randn(rows, 4, generator=generator) for m in MODALITIES}
    value = _value(losses.similarity_loss(model, _parts(shared)))
    assert value == pytest.approx(1.0, abs=0.2)


def test_similarity_skips_pairs_seen_once(model):
    state = torch.tensor([[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    parts = _parts({m: torch.randn(3, 4) for m in MODALITIES}, state=state)
    assert _value(losses.similarity_loss(model, parts)) == 0.0


def test_orthogonality_zero_for_zero_private(model):
    parts = _parts({m: torch.randn(8, 4) for m in MODALITIES})
    assert _value(losses.orthogonality_loss(model, parts)) == 0.0


def test_orthogonality_hand_value(model):
    # Two centred, uncorrelated columns: s = p gives C = I (2 x 2), so ||C||^2 / (k q)
    # = 2 / 4 for each modality.
    columns = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    parts = _parts({m: columns for m in MODALITIES}, private={m: columns for m in MODALITIES})
    assert _value(losses.orthogonality_loss(model, parts)) == pytest.approx(0.5)


def test_reconstruction_zero_when_exact(model):
    shared = {m: torch.randn(5, 4) for m in MODALITIES}
    present = torch.ones(5, 3, dtype=torch.bool)
    value = losses.reconstruction_loss(model, _parts(shared, reconstructed=shared), present)
    assert _value(value) == 0.0


def test_reconstruction_of_mean_is_one(model):
    # Predicting the mean of s_m leaves all of its variance: 1 - R^2 = 1.
    shared = {m: torch.randn(20, 4) for m in MODALITIES}
    means = {m: s.mean(dim=0, keepdim=True).expand_as(s) for m, s in shared.items()}
    present = torch.ones(20, 3, dtype=torch.bool)
    value = losses.reconstruction_loss(model, _parts(shared, reconstructed=means), present)
    assert _value(value) == pytest.approx(1.0, rel=1e-5)


def test_reconstruction_target_detached(model):
    shared = {m: torch.randn(5, 4, requires_grad=True) for m in MODALITIES}
    reconstructed = {m: torch.randn(5, 4, requires_grad=True) for m in MODALITIES}
    present = torch.ones(5, 3, dtype=torch.bool)
    losses.reconstruction_loss(model, _parts(shared, reconstructed=reconstructed),
                               present).backward()
    for name in MODALITIES:
        assert shared[name].grad is None
        assert reconstructed[name].grad is not None


def test_preservation_zero_for_constant_head(model):
    model.eval()
    with torch.no_grad():
        model.head.weight.zero_()
    batch = random_batch(rows=6)
    parts = model.forward_parts(batch["inputs"], batch["present"])
    assert _value(losses.preservation_loss(model, parts)) == 0.0


def test_preservation_hand_value(model):
    model.eval()
    batch = random_batch(rows=10, seed=3)
    parts = model.forward_parts(batch["inputs"], batch["present"])
    total, count = 0.0, 0
    with torch.no_grad():
        for index, name in enumerate(MODALITIES):
            forced = model(batch["inputs"], batch["present"], {name})
            rows = batch["present"][:, index]
            total += _value(((forced - parts["prediction"]) ** 2)[rows].sum())
            count += int(rows.sum())
    value = _value(losses.preservation_loss(model, parts))
    assert value == pytest.approx(total / count, rel=1e-5)


def test_training_losses_weighted_sum(model):
    batch = random_batch(rows=12, seed=4)
    weights = LossWeights(task=2.0, similarity=0.5, orthogonality=0.25, reconstruction=3.0,
                          preservation=0.0)
    torch.manual_seed(0)
    model.eval()
    total, terms = losses.training_losses(model, batch["inputs"], batch["present"],
                                          batch["present"], batch["label"], weights, "mse")
    expected = sum(getattr(weights, name) * _value(value) for name, value in terms.items())
    assert _value(total) == pytest.approx(expected, rel=1e-6)
    assert set(terms) == set(losses.LOSS_NAMES)


@pytest.mark.parametrize("values", [
    {"task": -1.0}, {"similarity": math.nan}, {"colour": 1.0}, {"preservation": True},
    {"orthogonality": np.inf},
])
def test_loss_weights_invalid(values):
    with pytest.raises(InputError):
        LossWeights.from_mapping(values)


def test_loss_weights_defaults():
    assert LossWeights.from_mapping({"task": 2}).as_dict() == {
        "task": 2.0, "similarity": 0.1, "orthogonality": 0.1, "reconstruction": 1.0,
        "preservation": 0.5,
    }
