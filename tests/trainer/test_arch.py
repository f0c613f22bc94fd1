"""Tests of mbd_cert.arch: registry, config validation, forward semantics, objectives."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from mbd_factories import DIMS, MODALITIES, STEPS, random_batch, tiny_config

from mbd_cert import arch
from mbd_cert.arch import (
    Architecture,
    batch_from_arrays,
    get_architecture,
    load_state_dict_strict,
)
from mbd_cert.arch import _mbd_config as mbd_config
from mbd_cert.arch.mbd import ARCHITECTURE, MBDModel
from mbd_cert.errors import InputError, LimitExceeded, MalformedData

# --- registry --------------------------------------------------------------------------


def test_builtin_architecture_record():
    """R-ARCH-5: the built-in's encoder and generator prefixes."""
    record = get_architecture("mbd-sentiment")
    assert record.name == "mbd-sentiment"
    assert record.version == "1"
    assert record.encoder_prefixes(tiny_config(), "audio") == ["encoders.audio."]
    assert record.generator_prefixes(tiny_config(), "audio") == ["generators.audio."]


def test_unknown_architecture_rejected():
    with pytest.raises(InputError) as info:
        get_architecture("no-such-model")
    assert info.value.code == "E_ARCHITECTURE_UNKNOWN"
    assert "no-such-model" in str(info.value)


def _fake_entry_points(monkeypatch, *entries):
    points = [importlib.metadata.EntryPoint(name, value, arch.ENTRY_POINT_GROUP)
              for name, value in entries]

    def entry_points(*, group):
        assert group == arch.ENTRY_POINT_GROUP
        return points

    monkeypatch.setattr(arch.importlib.metadata, "entry_points", entry_points)


def _plugin_module(tmp_path, monkeypatch, name, body):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)


def test_entry_point_architecture_loaded(tmp_path, monkeypatch):
    _plugin_module(tmp_path, monkeypatch, "mbd_plugin_ok", """
        import dataclasses
        from mbd_cert.arch.mbd import ARCHITECTURE as BASE
        ARCHITECTURE = dataclasses.replace(BASE, name="plugin-model", version="7")
    """)
    _fake_entry_points(monkeypatch, ("plugin-model", "mbd_plugin_ok:ARCHITECTURE"))
    record = get_architecture("plugin-model")
    assert record.version == "7"
    assert "plugin-model" in arch.available_architectures()


@pytest.mark.parametrize(("returned", "problem"), [
    ("{}", "has no 'modalities' list"),
    ("[1, 2]", "is a list, not a mapping"),
    ("dict(config, modalities=['text', 'text'])", "has no 'modalities' list"),
    ("dict(config, deleted_modalities=['smell'])", "no 'deleted_modalities' list within"),
])
def test_plugin_config_contract_checked(tmp_path, monkeypatch, returned, problem):
    """R-ARCH-4: the toolkit reads modalities and deleted_modalities from what it returns."""
    _plugin_module(tmp_path, monkeypatch, "mbd_plugin_config", f"""
        import dataclasses
        from mbd_cert.arch.mbd import ARCHITECTURE as BASE
        def validate_config(config):
            config = BASE.validate_config(config)
            return {returned}
        ARCHITECTURE = dataclasses.replace(BASE, name="config-model",
                                           validate_config=validate_config)
    """)
    _fake_entry_points(monkeypatch, ("config-model", "mbd_plugin_config:ARCHITECTURE"))
    record = get_architecture("config-model")
    with pytest.raises(InputError) as info:
        record.validate_config(tiny_config())
    assert info.value.code == "E_ARCHITECTURE_LOAD_FAILED"
    assert "architecture 'config-model': validate_config returned a config that" in str(
        info.value)
    assert problem in str(info.value)


def test_entry_point_load_failure_names_it(tmp_path, monkeypatch):
    _plugin_module(tmp_path, monkeypatch, "mbd_plugin_broken", "raise RuntimeError('boom')\n")
    _fake_entry_points(monkeypatch, ("broken-model", "mbd_plugin_broken:ARCHITECTURE"))
    with pytest.raises(InputError) as info:
        get_architecture("broken-model")
    assert info.value.code == "E_ARCHITECTURE_LOAD_FAILED"
    assert "broken-model" in str(info.value)
    assert "boom" in str(info.value)


def test_entry_point_wrong_object_rejected(tmp_path, monkeypatch):
    """R-ARCH-1: an entry point must name an Architecture object."""
    _plugin_module(tmp_path, monkeypatch, "mbd_plugin_wrong", "ARCHITECTURE = 42\n")
    _fake_entry_points(monkeypatch, ("wrong-model", "mbd_plugin_wrong:ARCHITECTURE"))
    with pytest.raises(InputError) as info:
        get_architecture("wrong-model")
    assert info.value.code == "E_ARCHITECTURE_LOAD_FAILED"


def test_entry_point_other_name_rejected(tmp_path, monkeypatch):
    """R-ARCH-1: the Architecture's name must equal the entry point's name."""
    _plugin_module(tmp_path, monkeypatch, "mbd_plugin_renamed", """
        import dataclasses
        from mbd_cert.arch.mbd import ARCHITECTURE as BASE
        ARCHITECTURE = dataclasses.replace(BASE, name="other-model")
    """)
    _fake_entry_points(monkeypatch, ("plugin-model", "mbd_plugin_renamed:ARCHITECTURE"))
    with pytest.raises(InputError) as info:
        get_architecture("plugin-model")
    assert info.value.code == "E_ARCHITECTURE_LOAD_FAILED"
    assert "'plugin-model'" in str(info.value)


def test_entry_point_duplicate_name_rejected(tmp_path, monkeypatch):
    """R-ARCH-1: two loadable entry points with one name and different targets."""
    for module in ("mbd_plugin_first", "mbd_plugin_second"):
        _plugin_module(tmp_path, monkeypatch, module, """
            import dataclasses
            from mbd_cert.arch.mbd import ARCHITECTURE as BASE
            ARCHITECTURE = dataclasses.replace(BASE, name="twice")
        """)
    _fake_entry_points(monkeypatch, ("twice", "mbd_plugin_first:ARCHITECTURE"),
                       ("twice", "mbd_plugin_second:ARCHITECTURE"))
    with pytest.raises(InputError) as info:
        get_architecture("twice")
    assert info.value.code == "E_ARCHITECTURE_LOAD_FAILED"
    assert "several entry points" in str(info.value)


def test_entry_point_cannot_replace_builtin(monkeypatch, caplog):
    """R-ARCH-2: mbd-sentiment resolves to the built-in and ignores a plugin's entry point."""
    _fake_entry_points(monkeypatch, ("mbd-sentiment", "evil:ARCHITECTURE"))
    with caplog.at_level("WARNING", logger="mbd_cert.arch"):
        record = get_architecture("mbd-sentiment")
        names = arch.available_architectures()
    assert record.build(tiny_config()).state_dict().keys() == \
        ARCHITECTURE.build(tiny_config()).state_dict().keys()
    assert names == ["mbd-sentiment"]
    assert any("evil:ARCHITECTURE" in message for message in caplog.messages)


def test_lookup_and_config_need_no_torch():
    """R-ARCH-3: looking up the built-in architecture imports no torch."""
    # Level-1 verification runs without torch: block its import and use the record.
    script = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None
        from mbd_cert.arch import get_architecture
        record = get_architecture("mbd-sentiment")
        config = record.validate_config({"input_dims": {"text": 3, "audio": 2, "vision": 2},
                                         "seq_len": {"text": 1, "audio": 1, "vision": 1}})
        assert record.encoder_prefixes(config, "audio") == ["encoders.audio."]
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_lazy_record_matches_torch_record():
    lazy = get_architecture("mbd-sentiment")
    model = lazy.build(tiny_config())
    reference = ARCHITECTURE.build(tiny_config())
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    batch = random_batch()
    assert torch.equal(lazy.forget_objective(model, batch, "audio"),
                       ARCHITECTURE.forget_objective(reference, batch, "audio"))


# --- config ----------------------------------------------------------------------------


def test_config_defaults_filled():
    """R-ARCH-4: the validated config contains modalities and deleted_modalities."""
    config = mbd_config.validate_config({"input_dims": DIMS, "seq_len": STEPS})
    assert config["modalities"] == ["text", "audio", "vision"]
    assert config["hidden_dim"] == 64
    assert config["shared_dim"] == 32
    assert config["private_dim"] == 16
    assert config["fusion_hidden"] == 64
    assert config["dropout"] == 0.1
    assert config["deleted_modalities"] == []
    assert config["output_scale"] == 3.0
    assert mbd_config.validate_config(config) == config


@pytest.mark.parametrize(("change", "field"), [
    ({"colour": 1}, "colour"),
    ({"hidden_dim": "64"}, "config.hidden_dim"),
    ({"hidden_dim": True}, "config.hidden_dim"),
    ({"shared_dim": 0}, "config.shared_dim"),
    ({"private_dim": 2.0}, "config.private_dim"),
    ({"dropout": 1.0}, "config.dropout"),
    ({"dropout": float("nan")}, "config.dropout"),
    ({"output_scale": float("inf")}, "config.output_scale"),
    ({"output_scale": 0}, "config.output_scale"),
    ({"modalities": "text"}, "config.modalities"),
    ({"modalities": []}, "config.modalities"),
    ({"modalities": ["text", "text"]}, "config.modalities"),
    ({"modalities": ["te.xt"]}, "config.modalities"),
    ({"modalities": ["text\n"]}, "config.modalities"),
    ({"input_dims": {"text": 6, "audio": 4}}, "config.input_dims"),
    ({"input_dims": {"text": 6, "audio": 4, "vision": -1}}, "config.input_dims.vision"),
    ({"seq_len": {"text": 1, "audio": 1, "vision": None}}, "config.seq_len.vision"),
    ({"deleted_modalities": ["smell"]}, "config.deleted_modalities"),
    ({"deleted_modalities": ["text", "audio", "vision"]}, "config.deleted_modalities"),
])
def test_config_invalid_field_named(change, field):
    """R-ARCH-4: an invalid config is E_CONFIG_INVALID naming the field."""
    with pytest.raises(InputError) as info:
        mbd_config.validate_config(tiny_config(**change))
    assert info.value.code == "E_CONFIG_INVALID"
    assert field in str(info.value)


def test_config_missing_input_dims():
    config = tiny_config()
    del config["input_dims"]
    with pytest.raises(InputError, match="config.input_dims is missing"):
        mbd_config.validate_config(config)


def test_config_huge_model_rejected():
    """R-ARCH-4: validate_config caps the sizes it allocates from."""
    with pytest.raises(LimitExceeded):
        mbd_config.validate_config(tiny_config(
            input_dims={"text": 1_000_000, "audio": 4, "vision": 5}, hidden_dim=60_000))


@pytest.mark.parametrize("modalities", [["text"], ["text", "audio"], MODALITIES])
def test_parameter_count_matches_model(modalities):
    config = tiny_config(modalities=modalities,
                         input_dims={m: DIMS[m] for m in modalities},
                         seq_len={m: STEPS[m] for m in modalities})
    model = MBDModel(config)
    assert sum(p.numel() for p in model.parameters()) == \
        mbd_config.parameter_count(model.config)


@pytest.mark.parametrize("modalities", [["text"], ["text", "audio"], MODALITIES])
def test_tensor_shapes_match_state_dict(modalities):
    config = tiny_config(modalities=modalities, deleted_modalities=modalities[1:2],
                         input_dims={m: DIMS[m] for m in modalities},
                         seq_len={m: STEPS[m] for m in modalities})
    model = MBDModel(config)
    listed = mbd_config.tensor_shapes(model.config)
    assert list(listed.items()) == [(name, tuple(t.shape))
                                    for name, t in model.state_dict().items()]


def _must_not_build(config):
    raise AssertionError("the model was built before its weights were checked")


@pytest.mark.parametrize("change", [
    {"hidden_dim": 60_000},
    {"input_dims": {**DIMS, "text": DIMS["text"] + 1}},
])
def test_build_model_checks_shapes_first(change):
    import dataclasses

    from mbd_cert._torch_model import build_model

    tensors = {name: t.numpy() for name, t in MBDModel(tiny_config()).state_dict().items()}
    guarded = dataclasses.replace(get_architecture("mbd-sentiment"), build=_must_not_build)
    with pytest.raises(InputError) as caught:
        build_model(guarded, tiny_config(**change), tensors)
    assert caught.value.code == "E_MODEL_TENSORS_MISMATCH"


def test_build_model_extra_tensor_rejected():
    import dataclasses

    from mbd_cert._torch_model import build_model

    tensors = {name: t.numpy() for name, t in MBDModel(tiny_config()).state_dict().items()}
    tensors["encoders.copy.proj.weight"] = np.zeros((2, 2), dtype=np.float32)
    guarded = dataclasses.replace(get_architecture("mbd-sentiment"), build=_must_not_build)
    with pytest.raises(InputError, match="the architecture does not define"):
        build_model(guarded, tiny_config(), tensors)


# --- forward semantics -----------------------------------------------------------------


def test_forward_parts_shapes_and_state():
    model = MBDModel(tiny_config(), seed=0).eval()
    present = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0]], dtype=bool)
    batch = random_batch(rows=4, present=present)
    parts = model.forward_parts(batch["inputs"], batch["present"])
    assert parts["prediction"].shape == (4,)
    assert parts["state"].tolist() == [[0, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]]
    for name in MODALITIES:
        assert parts["shared"][name].shape == (4, 4)
        assert parts["private"][name].shape == (4, 3)
        assert parts["reconstructed"][name].shape == (4, 4)
    assert model.state_dict()["property_embedding.weight"].shape == (9, 4)


def test_prediction_bounded_by_output_scale():
    model = MBDModel(tiny_config(output_scale=1.5), seed=0).eval()
    batch = random_batch(rows=64)
    big = {m: 1000.0 * x for m, x in batch["inputs"].items()}
    with torch.no_grad():
        prediction = model(big, batch["present"])
    assert float(prediction.abs().max()) <= 1.5


def test_absent_modality_input_ignored():
    model = MBDModel(tiny_config(), seed=1).eval()
    present = np.array([[1, 0, 1]] * 5, dtype=bool)
    batch = random_batch(rows=5, present=present)
    changed = dict(batch["inputs"], audio=torch.randn(5, STEPS["audio"], DIMS["audio"]))
    with torch.no_grad():
        assert torch.equal(model(batch["inputs"], batch["present"]),
                           model(changed, batch["present"]))


def test_deleted_modality_input_ignored():
    """R-ARCH-6: the forward pass ignores a deleted modality's input."""
    model = MBDModel(tiny_config(deleted_modalities=["audio"]), seed=2).eval()
    batch = random_batch(rows=6, present=np.ones((6, 3), dtype=bool))
    with torch.no_grad():
        baseline = model(batch["inputs"], batch["present"])
        noisy = dict(batch["inputs"], audio=100 * torch.randn(6, STEPS["audio"], DIMS["audio"]))
        not_a_number = dict(batch["inputs"],
                            audio=torch.full((6, STEPS["audio"], DIMS["audio"]), float("nan")))
        without = {m: x for m, x in batch["inputs"].items() if m != "audio"}
        absent = batch["present"].clone()
        absent[:, 1] = False
        for inputs, present in ((noisy, batch["present"]), (not_a_number, batch["present"]),
                                (without, batch["present"]), (batch["inputs"], absent)):
            assert torch.equal(model(inputs, present), baseline)


def test_deleted_encoder_never_runs():
    """R-ARCH-6: the deleted encoder's weights never reach the output."""
    model = MBDModel(tiny_config(deleted_modalities=["audio"]), seed=2).eval()
    batch = random_batch(rows=6)
    with torch.no_grad():
        baseline = model(batch["inputs"], batch["present"])
        for name, parameter in model.named_parameters():
            if name.startswith("encoders.audio."):
                parameter.fill_(float("nan"))
        parts = model.forward_parts(batch["inputs"], batch["present"])
    assert torch.equal(parts["prediction"], baseline)
    assert "audio" not in parts["shared"]
    assert parts["state"][:, 1].tolist() == [2] * 6


def test_force_reconstruct_matches_state_switch():
    model = MBDModel(tiny_config(), seed=3).eval()
    batch = random_batch(rows=8)
    with torch.no_grad():
        forced = model.forward_parts(batch["inputs"], batch["present"], {"text"})
        parts = model.forward_parts(batch["inputs"], batch["present"])
        state = model.state_with_reconstruction(parts["state"], "text")
        switched, _ = model.predict_from_parts(parts["shared"], parts["private"], state)
    assert torch.equal(forced["state"], state)
    assert forced["state"][:, 0].tolist() == [1] * 8
    torch.testing.assert_close(forced["prediction"], switched, rtol=0, atol=1e-6)


def test_forced_modality_hidden_from_generators():
    # With audio forced to reconstruction, no generator may read the real audio.
    model = MBDModel(tiny_config(), seed=4).eval()
    batch = random_batch(rows=5, present=np.ones((5, 3), dtype=bool))
    changed = dict(batch["inputs"], audio=torch.randn(5, STEPS["audio"], DIMS["audio"]))
    with torch.no_grad():
        assert torch.equal(model(batch["inputs"], batch["present"], {"audio"}),
                           model(changed, batch["present"], {"audio"}))


def test_unknown_forced_modality_rejected():
    model = MBDModel(tiny_config())
    batch = random_batch()
    with pytest.raises(InputError, match="smell"):
        model(batch["inputs"], batch["present"], {"smell"})


def test_bad_present_and_input_shape_rejected():
    model = MBDModel(tiny_config())
    batch = random_batch(rows=3)
    with pytest.raises(MalformedData, match="present"):
        model(batch["inputs"], batch["present"].to(torch.uint8))
    wrong = dict(batch["inputs"], text=torch.zeros(3, STEPS["text"] + 1, DIMS["text"]))
    with pytest.raises(MalformedData, match="inputs\\['text'\\]"):
        model(wrong, batch["present"])


def test_seeded_build_deterministic():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = MBDModel(tiny_config(), seed=5)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG stream is untouched
    second = MBDModel(tiny_config(), seed=5)
    other = MBDModel(tiny_config(), seed=6)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name
    assert not torch.equal(first.head.weight, other.head.weight)


def test_seeded_build_matches_the_seeded_cpu_generator():
    """A seeded build initialises exactly as the global CPU generator at that seed would.

    Checkpoints trained before the build stopped calling ``torch.manual_seed`` started
    from these values, so a change here would change every retrained model.
    """
    torch.manual_seed(7)
    reference = MBDModel(tiny_config(), seed=None)
    seeded = MBDModel(tiny_config(), seed=7)
    for name, value in reference.state_dict().items():
        assert torch.equal(value, seeded.state_dict()[name]), name


def test_seeded_build_leaves_accelerator_generators_alone(monkeypatch):
    """``fork_rng(devices=[])`` restores only the CPU state, so no other seed may be set."""
    seeded = []
    for backend in ("cuda", "xpu", "mtia"):
        module = getattr(torch, backend, None)
        if module is not None and hasattr(module, "manual_seed_all"):
            monkeypatch.setattr(module, "manual_seed_all",
                                lambda seed, backend=backend: seeded.append(backend))
    MBDModel(tiny_config(), seed=5)
    assert seeded == []


def test_float64_model_runs():
    model = MBDModel(tiny_config(), seed=0).to(torch.float64).eval()
    batch = random_batch()
    inputs = {m: x.double() for m, x in batch["inputs"].items()}
    assert model(inputs, batch["present"]).dtype == torch.float64


def test_single_modality_model_runs():
    config = tiny_config(modalities=["text"], input_dims={"text": 6}, seq_len={"text": 4})
    model = MBDModel(config, seed=0).eval()
    inputs = {"text": torch.randn(3, 4, 6)}
    present = torch.tensor([[True], [False], [True]])
    assert model(inputs, present).shape == (3,)


# --- objectives ------------------------------------------------------------------------


def test_forget_objective_definition():
    model = MBDModel(tiny_config(dropout=0.3), seed=7).train()
    batch = random_batch(rows=9)
    values = ARCHITECTURE.forget_objective(model, batch, "audio")
    assert model.training  # the caller's mode is restored
    model.eval()
    with torch.no_grad():
        expected = (model(batch["inputs"], batch["present"])
                    - model(batch["inputs"], batch["present"], {"audio"})) ** 2
    expected[~batch["present"][:, 1]] = 0.0
    assert values.shape == (9,)
    torch.testing.assert_close(values.detach(), expected, rtol=1e-5, atol=1e-9)
    assert torch.all(values[~batch["present"][:, 1]] == 0)
    values.sum().backward()
    assert model.head.weight.grad is not None


def test_objectives_switch_off_dropout_in_submodules():
    # A root in eval mode can contain submodules in training mode. Dropout must still
    # be off inside the objective, and each module must get its own mode back.
    model = MBDModel(tiny_config(dropout=0.5, deleted_modalities=["audio"]), seed=3).eval()
    model.fusion.train()
    batch = random_batch(rows=8)
    first = ARCHITECTURE.retain_objective(model, batch, "audio").detach()
    second = ARCHITECTURE.retain_objective(model, batch, "audio").detach()
    assert torch.equal(first, second)
    assert not model.training
    assert model.fusion.training
    assert model.fusion[2].training
    model.fusion.eval()
    torch.testing.assert_close(ARCHITECTURE.retain_objective(model, batch, "audio").detach(),
                               first, rtol=0, atol=0)


def test_forget_objective_per_sample_matches_batch():
    # The issuer evaluates the objective one sample at a time.
    model = MBDModel(tiny_config(), seed=8)
    batch = random_batch(rows=6)
    full = ARCHITECTURE.forget_objective(model, batch, "text").detach()
    for row in range(6):
        single = {
            "inputs": {m: x[row:row + 1] for m, x in batch["inputs"].items()},
            "present": batch["present"][row:row + 1],
            "label": batch["label"][row:row + 1],
        }
        value = ARCHITECTURE.forget_objective(model, single, "text").detach()
        torch.testing.assert_close(value, full[row:row + 1], rtol=1e-5, atol=1e-7)


def test_forget_objective_rejects_deleted_modality():
    model = MBDModel(tiny_config(deleted_modalities=["audio"]))
    with pytest.raises(InputError, match="already deleted"):
        ARCHITECTURE.forget_objective(model, random_batch(), "audio")


def test_retain_objective_definition():
    model = MBDModel(tiny_config(deleted_modalities=["vision"]), seed=9).eval()
    batch = random_batch(rows=5)
    values = ARCHITECTURE.retain_objective(model, batch, "vision")
    with torch.no_grad():
        expected = (model(batch["inputs"], batch["present"]) - batch["label"]).abs()
    torch.testing.assert_close(values.detach(), expected)


def test_retain_objective_needs_deleted_modality():
    model = MBDModel(tiny_config())
    with pytest.raises(InputError, match="not deleted"):
        ARCHITECTURE.retain_objective(model, random_batch(), "vision")


def test_objectives_reject_other_modules():
    with pytest.raises(InputError, match="MBDModel"):
        ARCHITECTURE.forget_objective(torch.nn.Linear(2, 2), random_batch(), "text")


# --- loading and batches ---------------------------------------------------------------


def _arrays(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def test_load_state_dict_strict_round_trip():
    source = MBDModel(tiny_config(), seed=10)
    arrays = _arrays(source)
    for value in arrays.values():
        value.flags.writeable = False  # as memory-mapped safetensors arrays are
    target = MBDModel(tiny_config(), seed=11)
    load_state_dict_strict(target, arrays)
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name


def test_load_state_dict_strict_missing_and_unexpected():
    """R-ARCH-6: the state_dict names exactly the file's tensors."""
    model = MBDModel(tiny_config())
    arrays = _arrays(model)
    missing = dict(arrays)
    del missing["head.bias"]
    with pytest.raises(InputError, match="head.bias") as info:
        load_state_dict_strict(model, missing)
    assert info.value.code == "E_MODEL_TENSORS_MISMATCH"
    with pytest.raises(InputError, match="extra.weight"):
        load_state_dict_strict(model, {**arrays, "extra.weight": np.zeros(1, np.float32)})


def test_load_state_dict_strict_shape_mismatch():
    model = MBDModel(tiny_config())
    arrays = _arrays(model)
    arrays["head.weight"] = np.zeros((1, 1), dtype=np.float32)  # broadcastable, still wrong
    with pytest.raises(InputError) as info:
        load_state_dict_strict(model, arrays)
    message = str(info.value)
    assert "head.weight" in message
    assert "[1, 1]" in message
    assert "[1, 8]" in message


def test_load_state_dict_strict_dtype_mismatch():
    """R-ARCH-6: tensors load without a cast."""
    model = MBDModel(tiny_config())
    arrays = _arrays(model)
    arrays["head.bias"] = arrays["head.bias"].astype(np.float64)
    with pytest.raises(InputError) as info:
        load_state_dict_strict(model, arrays)
    assert "head.bias" in str(info.value)
    assert "float64" in str(info.value)
    assert "float32" in str(info.value)


def test_batch_from_arrays_converts():
    rows = 4
    inputs = {m: np.ones((rows, STEPS[m], DIMS[m]), np.float32) for m in MODALITIES}
    present = np.array([[1, 0, 1]] * rows, dtype=np.uint8)
    batch = batch_from_arrays(inputs, present, np.zeros(rows, np.float32))
    assert batch["present"].dtype == torch.bool
    assert batch["present"][:, 1].tolist() == [False] * rows
    assert batch["inputs"]["text"].dtype == torch.float32
    model = MBDModel(tiny_config()).eval()
    assert model(batch["inputs"], batch["present"]).shape == (rows,)


@pytest.mark.parametrize("problem", ["rows", "dtype", "nan", "present_values"])
def test_batch_from_arrays_rejects(problem):
    rows = 3
    inputs = {m: np.zeros((rows, STEPS[m], DIMS[m]), np.float32) for m in MODALITIES}
    present = np.ones((rows, 3), dtype=bool)
    label = np.zeros(rows, np.float32)
    if problem == "rows":
        label = np.zeros(rows + 1, np.float32)
    elif problem == "dtype":
        inputs["audio"] = inputs["audio"].astype(np.float16)
    elif problem == "nan":
        inputs["vision"][0, 0, 0] = np.nan
    else:
        present = np.full((rows, 3), 2, dtype=np.uint8)
    with pytest.raises(MalformedData):
        batch_from_arrays(inputs, present, label)


def test_architecture_is_frozen():
    with pytest.raises(AttributeError):
        ARCHITECTURE.name = "other"  # type: ignore[misc]
    assert isinstance(ARCHITECTURE, Architecture)
