"""The MBD objectives' late-layer gradients written out, against autograd."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mbd_cert.arch import get_architecture
from mbd_cert.arch._mbd_gradients import FUSION_LAYERS, LateLayerGradients, for_architecture
from mbd_cert.arch._mbd_model import MBDModel, eval_mode
from mbd_cert.arch.mbd import forget_objective, retain_objective, zeroed_forget
from mbd_cert.saliency import gradient_moments, slice_batch
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
    """Check the closed form's moment sums against autograd's means, and return the sums."""
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
    # Encoders pool over padded steps, and the late layers see only their outputs.
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


class _DoubledLinear(torch.nn.Linear):
    """A linear layer whose own forward doubles its output."""

    def forward(self, x):
        return 2.0 * super().forward(x)


def _swap_layer(model: MBDModel, swap: str) -> None:
    """Replace one late module as a plugin's builder could, keeping its tensors."""
    if swap == "fusion-relu":
        model.fusion[1] = torch.nn.ReLU()
    elif swap == "generator-tanh-gelu":
        model.generators["audio"].net[1] = torch.nn.GELU(approximate="tanh")
    else:
        head = _DoubledLinear(model.head.in_features, 1).to(torch.float64)
        head.load_state_dict(model.head.state_dict())
        model.head = head


@pytest.mark.parametrize("swap", ["fusion-relu", "generator-tanh-gelu", "head-subclass"])
def test_swapped_layers_rejected(swap):
    # An exact MBDModel whose builder replaced a late module has another forward pass,
    # which the closed forms do not write out.
    batch = _batch(11, seed=5)
    pre, removed = _model([]), _model(["audio"])
    _swap_layer(pre, swap)
    _swap_layer(removed, swap)
    assert LateLayerGradients.forget(pre, batch, "audio") is None
    assert LateLayerGradients.retain(removed, batch, "audio") is None
    architecture = get_architecture("mbd-sentiment")
    assert for_architecture(architecture, pre, batch, "audio", forget=True) is None
    entries = [("fusion.0.weight", 0), ("head.weight", 1), ("generators.audio.net.2.bias", 0)]
    assert zeroed_forget(pre, batch, "audio", entries) is None


@pytest.mark.parametrize("hook", ["forward", "forward-pre", "parameter", "global"])
def test_hooked_layers_rejected(hook):
    # A builder can also change a late module's forward pass with a hook, which keeps
    # the module types. Autograd, as level 2 runs it, goes through the hook.
    batch = _batch(11, seed=5)
    pre = _model([])
    handle = None
    if hook == "forward":
        pre.fusion[3].register_forward_hook(lambda module, args, output: 2.0 * output)
    elif hook == "forward-pre":
        pre.head.register_forward_pre_hook(lambda module, args: (2.0 * args[0],))
    elif hook == "parameter":
        pre.head.weight.register_hook(lambda grad: 2.0 * grad)
    else:
        handle = torch.nn.modules.module.register_module_forward_hook(
            lambda module, args, output: output)
    try:
        assert LateLayerGradients.forget(pre, batch, "audio") is None
        assert zeroed_forget(pre, batch, "audio", [("head.weight", 1)]) is None
    finally:
        if handle is not None:
            handle.remove()


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
    # With no sample that has the modality, every name still gets its sums, all zero.
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


def test_update_falls_back_midway():
    # From the second step on the closed form has no finite value, and autograd
    # takes over for the remaining steps.
    model = _model(["audio"])
    batch = _batch(21, seed=6)
    weights = torch.ones(21, dtype=torch.float64)
    parameters = dict(model.named_parameters())
    masks = {name: np.random.default_rng(1).random(tuple(parameters[name].shape)) < 0.4
             for name in NAMES}
    options = {"steps": 4, "learning_rate": 0.05, "damping": 1e-3, "clip_norm": 10.0}
    reference = masked_update(model, masks, _retain, batch, weights, **options)
    gradients = LateLayerGradients.retain(model, batch, "audio")
    assert gradients is not None
    calls = []

    def first_only(names, step_weights):
        calls.append(len(calls))
        if len(calls) > 1:
            return None
        return LateLayerGradients.mean_gradient(gradients, names, step_weights)

    gradients.mean_gradient = first_only
    start = {name: parameters[name].detach().clone() for name in NAMES}
    mixed = masked_update(model, masks, _retain, batch, weights, closed_form=gradients,
                          **options)
    assert calls == [0, 1]
    assert mixed.norm_before_clip == pytest.approx(reference.norm_before_clip, rel=1e-12)
    for name in NAMES:
        np.testing.assert_allclose(mixed.displacement[name], reference.displacement[name],
                                   rtol=1e-10, atol=1e-15)
        assert torch.equal(parameters[name], start[name])


def test_proxy_values_beside_update_thread():
    # The issuer's proxy check reads the pre-deletion model's closed form on a second
    # thread while the main thread runs the update on the model without the modality.
    pre, removed = _model([]), _model(["audio"])
    batch = _batch(60, seed=12)
    forget = LateLayerGradients.forget(pre, batch, "audio")
    retain = LateLayerGradients.retain(removed, batch, "audio")
    assert forget is not None and retain is not None
    rows = _select_rows(batch, torch.nonzero(batch["present"][:, 1]).flatten())
    entries = [(name, 0) for name in NAMES]
    weights = torch.ones(60, dtype=torch.float64)
    alone = forget.zeroed_forget(pre, rows, entries)
    parameters = dict(removed.named_parameters())
    masks = {name: np.ones(tuple(parameters[name].shape), dtype=bool) for name in NAMES}
    options = {"steps": 3, "learning_rate": 0.05, "damping": 1e-3, "clip_norm": 10.0}
    update_alone = masked_update(removed, masks, _retain, batch, weights, closed_form=retain,
                                 **options)
    found: list[torch.Tensor | None] = []

    def proxy_check():
        found.extend(forget.zeroed_forget(pre, rows, entries) for _ in range(10))

    worker = threading.Thread(target=proxy_check)
    worker.start()
    updates = [masked_update(removed, masks, _retain, batch, weights, closed_form=retain,
                             **options) for _ in range(3)]
    worker.join()
    assert alone is not None and len(found) == 10
    for values in found:
        assert values is not None
        torch.testing.assert_close(values, alone, rtol=0.0, atol=0.0, equal_nan=True)
    for update in updates:
        for name in NAMES:
            np.testing.assert_array_equal(update.displacement[name],
                                          update_alone.displacement[name])


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


# Random built-in models, batches and eligible names against autograd. The default run
# draws a few seeded cases, and `-m fuzz` runs the long sweep (docs/fuzzing.md).
QUICK = settings(max_examples=12, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Agreement required with autograd, relative to the size of the summed terms (see
# _term_scales), because both sides sum the same float64 products in another order.
RTOL = 1e-10
MODALITY_NAMES = ["text", "audio", "vision", "a", "m_2", "x9", "z_", "b0"]


@dataclasses.dataclass
class _Case:
    """One drawn model, probe batch and objective, with the names to differentiate."""

    model: MBDModel
    batch: dict
    modality: str
    forget: bool
    names: list[str]
    weights: torch.Tensor
    entries: list[tuple[str, int]]


@st.composite
def _cases(draw) -> _Case:
    count = draw(st.integers(1, 4), label="modalities")
    modalities = draw(st.lists(st.sampled_from(MODALITY_NAMES), min_size=count,
                               max_size=count, unique=True))
    # A model with one modality has no retain objective, because it cannot lose its last one.
    forget = count == 1 or draw(st.booleans(), label="forget")
    modality = draw(st.sampled_from(modalities), label="modality")
    others = [m for m in modalities if m != modality]
    # Earlier deletions of a chain. The retain model has lost the modality as well.
    earlier = draw(st.lists(st.sampled_from(others), max_size=max(0, len(others) - 1),
                            unique=True)) if others else []
    small = st.integers(1, 5)
    config = {
        "modalities": modalities,
        "input_dims": {m: draw(small) for m in modalities},
        "seq_len": {m: draw(st.integers(1, 4)) for m in modalities},
        "hidden_dim": draw(small), "shared_dim": draw(small), "private_dim": draw(small),
        "fusion_hidden": draw(small), "dropout": draw(st.sampled_from([0.0, 0.5])),
        "output_scale": draw(st.sampled_from([0.5, 3.0, 7.0])),
        "deleted_modalities": earlier if forget else sorted([*earlier, modality]),
    }
    model = MBDModel(config, seed=draw(st.integers(0, 2**16))).to(torch.float64)
    # Dropout is on in training mode, and both routes must switch it off.
    model.train(draw(st.booleans(), label="training mode"))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(draw(st.sampled_from([0.1, 1.0, 4.0])))
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator,
                                             dtype=torch.float64))

    rows = draw(st.integers(1, 9), label="rows")
    present = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=count,
                                                  max_size=count),
                                         min_size=rows, max_size=rows)), dtype=torch.bool)
    inputs = {}
    for m in modalities:
        x = torch.randn(rows, config["seq_len"][m], config["input_dims"][m],
                        generator=generator, dtype=torch.float64)
        x *= draw(st.sampled_from([1e-150, 1e-5, 1.0, 1e5, 1e150]), label="input scale")
        # All-zero steps are padding, which the encoders leave out of their mean.
        padding = torch.rand(rows, config["seq_len"][m], generator=generator) < 0.25
        inputs[m] = torch.where(padding.unsqueeze(-1), torch.zeros_like(x), x)
    batch = {"inputs": inputs, "present": present,
             "label": 3.0 * torch.rand(rows, generator=generator, dtype=torch.float64) - 1.5}

    # The issuer's weights, the presence of the modality for the forget objective and
    # ones for the retain objective, or any non-negative weights.
    column = model.modality_index(modality)
    if draw(st.booleans(), label="issuer's weights"):
        weights = present[:, column].to(torch.float64) if forget else torch.ones(
            rows, dtype=torch.float64)
    else:
        weights = torch.tensor(draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.5]),
                                             min_size=rows, max_size=rows)),
                               dtype=torch.float64)
    layers = [*FUSION_LAYERS, *(f"generators.{m}.net.{i}" for m in modalities for i in (0, 2))]
    covered = [f"{layer}.{role}" for layer in layers for role in ("weight", "bias")]
    names = sorted(draw(st.lists(st.sampled_from(covered), min_size=1, unique=True),
                        label="names"))
    parameters = dict(model.named_parameters())
    # Entries outside the covered layers (an encoder's) come back as NaN on both routes.
    candidates = [n for n in [*names, f"encoders.{modality}.proj.weight"]
                  if parameters[n].numel()]
    entries = [(name, draw(st.integers(0, parameters[name].numel() - 1)))
               for name in draw(st.lists(st.sampled_from(candidates), max_size=6))]
    return _Case(model, batch, modality, forget, names, weights, entries)


def _sample_gradients(case: _Case) -> list[list[dict[str, torch.Tensor]]]:
    """Return per sample of non-zero weight the gradient of each prediction's term.

    The forget value (f - f_forced)**2 has one term per prediction, 2 gap f and
    -2 gap f_forced with the gap held fixed. The retain value |f - y| has one. Each
    term's gradient is a single product per covered layer, so their absolute values
    bound the size of what the closed form sums, cancellation included.
    """
    parameters = dict(case.model.named_parameters())
    targets = [parameters[name] for name in case.names]
    column = case.model.modality_index(case.modality)
    found = []
    for index in torch.nonzero(case.weights).flatten().tolist():
        one = slice_batch(case.batch, index)
        with eval_mode(case.model):
            parts = case.model.forward_parts(one["inputs"], one["present"])
            if case.forget:
                state = case.model.state_with_reconstruction(parts["state"], case.modality)
                forced, _ = case.model.predict_from_parts(parts["shared"], parts["private"],
                                                          state)
                gap = (parts["prediction"] - forced).detach() * one["present"][:, column]
                terms = [2.0 * gap * parts["prediction"], -2.0 * gap * forced]
            else:
                terms = [retain_objective(case.model, one, case.modality)]
        per_term = []
        for term in terms:
            grads = torch.autograd.grad(term.sum(), targets, retain_graph=True,
                                        allow_unused=True)
            per_term.append({name: torch.zeros_like(p) if g is None else g.detach()
                             for name, p, g in zip(case.names, targets, grads, strict=True)})
        found.append(per_term)
    return found


def _term_scales(case: _Case) -> tuple[dict[str, float], dict[str, float]]:
    """Return per name the largest sum_i w_i |g_i| and sum_i w_i |g_i|**2 over entries.

    |g_i| here is the sum of the absolute term gradients, an upper bound of sample i's
    gradient, so a cancellation between the two terms does not shrink the tolerance.
    """
    total = float(case.weights.sum())
    kept = case.weights[case.weights != 0].tolist()
    first, second = {}, {}
    samples = _sample_gradients(case)
    for name in case.names:
        size = [sum(term[name].abs() for term in terms) for terms in samples]
        first[name] = float(sum(w * s for w, s in zip(kept, size, strict=True)).max()) / total \
            if size and size[0].numel() else 0.0
        second[name] = float(sum(w * s * s for w, s in zip(kept, size, strict=True)).max()) \
            / total if size and size[0].numel() else 0.0
    return first, second


def _assert_within(found: dict, expected: dict, scales: dict[str, float], what: str) -> None:
    assert sorted(found) == sorted(expected)
    for name, value in expected.items():
        if not value.numel():
            continue
        bound = RTOL * max(float(value.abs().max()), scales[name])
        error = float((found[name] - value).abs().max())
        assert error <= bound, f"{what} of {name}: error {error:.3e} > {bound:.3e}"


def _select_rows(batch: dict, index: torch.Tensor) -> dict:
    return {"inputs": {m: x.index_select(0, index) for m, x in batch["inputs"].items()},
            "present": batch["present"].index_select(0, index),
            "label": batch["label"].index_select(0, index)}


def _objective(case: _Case):
    def value(model, batch):
        if case.forget:
            return forget_objective(model, batch, case.modality)
        return retain_objective(model, batch, case.modality)
    return value


def _check_against_autograd(case: _Case) -> None:
    make = LateLayerGradients.forget if case.forget else LateLayerGradients.retain
    gradients = make(case.model, case.batch, case.modality)
    assert gradients is not None and gradients.covers(case.names)
    total = float(case.weights.sum())
    if total > 0:
        sums = gradients.moment_sums(case.names, case.weights)
        assert sums is not None
        first, second = _term_scales(case)
        gradient, fisher = gradient_moments(case.model, case.names, _objective(case),
                                            case.batch, case.weights, vectorize=False)
        _assert_within({n: t / total for n, t in sums[0].items()}, gradient, first,
                       "gradient")
        _assert_within({n: t / total for n, t in sums[1].items()}, fisher, second, "Fisher")
        mean = gradients.mean_gradient(case.names, case.weights)
        assert mean is not None
        parameters = dict(case.model.named_parameters())
        loss = (_objective(case)(case.model, case.batch) * case.weights).sum() / total
        grads = torch.autograd.grad(loss, [parameters[n] for n in case.names],
                                    allow_unused=True)
        reference = {n: torch.zeros_like(parameters[n]) if g is None else g
                     for n, g in zip(case.names, grads, strict=True)}
        _assert_within(mean, reference, first, "mean gradient")
    if case.forget and case.entries:
        column = case.model.modality_index(case.modality)
        index = torch.nonzero(case.batch["present"][:, column]).flatten()
        rows = _select_rows(case.batch, index)
        values = gradients.zeroed_forget(case.model, rows, case.entries)
        expected = zeroed_forget(case.model, rows, case.modality, case.entries)
        assert values is not None and expected is not None
        # The values are squared prediction gaps, at most (2 output_scale)**2.
        torch.testing.assert_close(values, expected, rtol=RTOL,
                                   atol=RTOL * case.model.output_scale ** 2, equal_nan=True)


@QUICK
@given(case=_cases())
def test_random_cases_match_autograd(case):
    _check_against_autograd(case)


@pytest.mark.fuzz
@LONG
@given(case=_cases())
def test_random_cases_long_fuzz(case):
    _check_against_autograd(case)
