"""The MBD objectives' late-layer gradients written out, against autograd."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mbd_cert.arch import get_architecture
from mbd_cert.arch._mbd_gradients import LateLayerGradients, for_architecture
from mbd_cert.arch._mbd_model import MBDModel
from mbd_cert.arch.mbd import forget_objective, retain_objective, zeroed_forget
from mbd_cert.saliency import gradient_moments
from mbd_cert.update import masked_update
from tests.unit.test_gradient_moments import CONFIG, _batch, _model

# Every covered layer, and two generators: the deleted modality's and another one.
NAMES = sorted(f"{layer}.{role}" for role in ("weight", "bias") for layer in (
    "fusion.0", "fusion.3", "head", "generators.audio.net.0", "generators.audio.net.2",
    "generators.text.net.0", "generators.text.net.2"))


def _reference(model, batch, objective, weights):
    """Return autograd's weighted mean gradient and Fisher, one backward pass per sample."""
    return gradient_moments(model, NAMES, objective, batch, weights, vectorize=False)


def _forget(model, batch):
    return forget_objective(model, batch, "audio")


def _retain(model, batch):
    return retain_objective(model, batch, "audio")


def _assert_moments(gradients, model, batch, objective, weights):
    """Check the closed form's moment sums against autograd's means; return the sums."""
    assert gradients is not None
    sums = gradients.moment_sums(NAMES, weights)
    assert sums is not None
    gradient, fisher = _reference(model, batch, objective, weights)
    _assert_close(sums[0], gradient, float(weights.sum()))
    _assert_close(sums[1], fisher, float(weights.sum()))
    return sums, gradient


def _assert_close(left, right, total):
    assert sorted(left) == sorted(right)
    for name in left:
        torch.testing.assert_close(left[name] / total, right[name], rtol=1e-12, atol=1e-15,
                                   msg=f"tensor {name}")


@pytest.mark.parametrize("deleted", [[], ["vision"]], ids=["none-deleted", "vision-deleted"])
def test_forget_moments_match(deleted):
    model = _model(deleted)
    batch = _batch(29, seed=7)
    weights = batch["present"][:, 1].to(torch.float64)
    assert 0 < int(weights.sum()) < 29  # rows without audio are left out
    gradients = LateLayerGradients.forget(model, batch, "audio")
    assert gradients is not None
    assert gradients.covers(NAMES)
    sums, _ = _assert_moments(gradients, model, batch, _forget, weights)
    assert any(bool(t.abs().sum() > 0) for t in sums[1].values())


@pytest.mark.parametrize("deleted", [["audio"], ["audio", "vision"]],
                         ids=["audio-deleted", "audio-and-vision-deleted"])
def test_retain_moments_match(deleted):
    model = _model(deleted)
    batch = _batch(31, seed=8)
    weights = torch.linspace(0.5, 2.0, 31, dtype=torch.float64)
    gradients = LateLayerGradients.retain(model, batch, "audio")
    _, gradient = _assert_moments(gradients, model, batch, _retain, weights)
    mean = gradients.mean_gradient(NAMES, weights)
    assert mean is not None
    _assert_close(mean, gradient, 1.0)


def test_sequences_and_missing_rows():
    # Encoders pool over padded steps; the late layers see only their outputs.
    config = {**CONFIG, "seq_len": {"text": 4, "audio": 3, "vision": 2}}
    model = MBDModel(config, seed=5).to(torch.float64).eval()
    generator = torch.Generator().manual_seed(11)
    inputs = {m: torch.randn(17, config["seq_len"][m], config["input_dims"][m],
                             generator=generator, dtype=torch.float64)
              for m in config["modalities"]}
    inputs["text"][:, -1] = 0.0
    present = torch.rand(17, 3, generator=generator) > 0.4
    batch = {"inputs": inputs, "present": present,
             "label": torch.randn(17, generator=generator, dtype=torch.float64)}
    weights = present[:, 1].to(torch.float64)
    gradients = LateLayerGradients.forget(model, batch, "audio")
    _assert_moments(gradients, model, batch, _forget, weights)


def test_reads_current_parameters():
    # The masked update changes the late layers in place between steps.
    model = _model(["audio"])
    batch = _batch(13, seed=2)
    weights = torch.ones(13, dtype=torch.float64)
    gradients = LateLayerGradients.retain(model, batch, "audio")
    assert gradients is not None
    before = gradients.mean_gradient(NAMES, weights)
    with torch.no_grad():
        model.fusion[0].weight.mul_(0.5)
    after = gradients.mean_gradient(NAMES, weights)
    assert before is not None and after is not None
    gradient, _ = _reference(model, batch, _retain, weights)
    _assert_close(after, gradient, 1.0)
    assert not torch.equal(before["fusion.0.weight"], after["fusion.0.weight"])


def test_nonfinite_sums_give_none():
    model = _model([])
    batch = _batch(9, seed=3)
    with torch.no_grad():
        model.fusion[3].weight.fill_(1e200)  # squares overflow
    gradients = LateLayerGradients.forget(model, batch, "audio")
    assert gradients is not None
    assert gradients.moment_sums(NAMES, torch.ones(9, dtype=torch.float64)) is None


def test_huge_inputs_keep_fisher():
    # The weight moments square x and dy apart. With x = 1e150 in fusion.3 and
    # dy about 1e-158 (GELU's slope at u = -27.5), dy**2 underflows to 0 while each
    # per-sample gradient dy x is about 1e-8, so the generic route must take over.
    model = MBDModel({**CONFIG, "deleted_modalities": ["audio"], "fusion_hidden": 1},
                     seed=3).to(torch.float64).eval()
    batch = _batch(7, seed=2)
    with torch.no_grad():
        model.fusion[0].weight.zero_()
        model.fusion[0].bias.fill_(1e150)
        model.fusion[3].weight.fill_(-27.5e-150)
        model.fusion[3].bias.zero_()
    names = ["fusion.3.weight"]
    weights = torch.ones(7, dtype=torch.float64)
    gradients = LateLayerGradients.retain(model, batch, "audio")
    assert gradients is not None
    _, reference = gradient_moments(model, names, _retain, batch, weights, vectorize=False)
    assert float(reference[names[0]].abs().max()) > 1e-30
    _, fisher = gradient_moments(model, names, _retain, batch, weights, closed_form=gradients)
    torch.testing.assert_close(fisher[names[0]], reference[names[0]], rtol=1e-10, atol=0.0)


def test_rejected_models_and_names():
    batch = _batch(5, seed=1)
    plain = _model([])
    assert LateLayerGradients.forget(plain.to(torch.float32), batch, "audio") is None
    assert LateLayerGradients.forget(_model(["audio"]), batch, "audio") is None
    assert LateLayerGradients.retain(_model([]), batch, "audio") is None

    class Subclass(MBDModel):
        pass

    assert LateLayerGradients.forget(Subclass(CONFIG, seed=0).to(torch.float64), batch,
                                     "audio") is None
    gradients = LateLayerGradients.forget(_model([]), batch, "audio")
    assert gradients is not None
    assert not gradients.covers(["encoders.text.proj.weight"])
    assert not gradients.covers(["property_embedding.weight"])
    assert not gradients.covers([])


def test_builtin_objectives_only():
    architecture = get_architecture("mbd-sentiment")
    model, batch = _model([]), _batch(5, seed=1)
    assert for_architecture(architecture, model, batch, "audio", forget=True) is not None
    assert for_architecture(architecture, _model(["audio"]), batch, "audio",
                            forget=False) is not None
    # A record that keeps the model but brings objectives of its own gets none.
    replaced = dataclasses.replace(architecture, forget_objective=lambda m, b, x: _forget(m, b),
                                   retain_objective=lambda m, b, x: _retain(m, b))
    assert for_architecture(replaced, model, batch, "audio", forget=True) is None
    assert for_architecture(replaced, _model(["audio"]), batch, "audio", forget=False) is None


def test_masked_update_unchanged():
    model = _model(["audio"])
    batch = _batch(21, seed=6)
    weights = torch.ones(21, dtype=torch.float64)
    generator = np.random.default_rng(0)
    parameters = dict(model.named_parameters())
    masks = {name: generator.random(tuple(parameters[name].shape)) < 0.3 for name in NAMES}
    options = {"steps": 3, "learning_rate": 0.05, "damping": 1e-3, "clip_norm": 10.0}
    reference = masked_update(model, masks, _retain, batch, weights, **options)
    gradients = LateLayerGradients.retain(model, batch, "audio")
    fast = masked_update(model, masks, _retain, batch, weights, closed_form=gradients,
                         **options)
    assert reference.norm_before_clip > 0
    assert fast.norm_before_clip == pytest.approx(reference.norm_before_clip, rel=1e-12)
    for name in NAMES:
        np.testing.assert_allclose(fast.displacement[name], reference.displacement[name],
                                   rtol=1e-10, atol=1e-15)


def test_zero_weights_give_zero_sums():
    # A probe set where no sample has the modality: every sum is there, and zero.
    model, batch = _model([]), _batch(6, seed=4)
    batch["present"][:, 1] = False
    gradients = LateLayerGradients.forget(model, batch, "audio")
    assert gradients is not None
    sums = gradients.moment_sums(NAMES, batch["present"][:, 1].to(torch.float64))
    assert sums is not None
    parameters = dict(model.named_parameters())
    for found in sums:
        assert sorted(found) == NAMES
        for name in NAMES:
            assert found[name].dtype == torch.float64
            assert torch.equal(found[name], torch.zeros_like(parameters[name],
                                                             dtype=torch.float64))


def test_zeroed_forget_reuses_encoders():
    # The proxy check evaluates the rows where the modality is observed.
    model, batch = _model([]), _batch(19, seed=9)
    gradients = LateLayerGradients.forget(model, batch, "audio")
    assert gradients is not None
    index = torch.nonzero(batch["present"][:, 1]).flatten()
    assert 0 < int(index.numel()) < 19
    rows = {"inputs": {m: x.index_select(0, index) for m, x in batch["inputs"].items()},
            "present": batch["present"].index_select(0, index),
            "label": batch["label"].index_select(0, index)}
    entries = [("fusion.0.weight", 3), ("fusion.3.bias", 1), ("head.weight", 2),
               ("generators.audio.net.2.weight", 5), ("generators.audio.net.0.bias", 0)]
    values = gradients.zeroed_forget(model, rows, entries)
    expected = zeroed_forget(model, rows, "audio", entries)
    assert values is not None and expected is not None
    torch.testing.assert_close(values, expected, rtol=1e-12, atol=1e-15, equal_nan=True)
    # Other rows, or another model, are left to the caller.
    assert gradients.zeroed_forget(model, batch, entries) is None
    assert gradients.zeroed_forget(_model([]), rows, entries) is None
    changed = {**rows, "inputs": {**rows["inputs"], "text": rows["inputs"]["text"] + 1.0}}
    assert gradients.zeroed_forget(model, changed, entries) is None
