"""Utility metrics computed on a reused model equal those of a fresh build."""

from __future__ import annotations

import numpy as np
import torch

from mbd_cert._issue_utility import utility_after_deletion, utility_before_deletion
from mbd_cert._torch_model import build_model, model_tensors
from mbd_cert.arch import get_architecture
from mbd_cert.checkpoint import ProbeSet
from tests.unit.test_gradient_moments import CONFIG

ARCHITECTURE = get_architecture("mbd-sentiment")


def _evaluation(n: int = 23) -> ProbeSet:
    rng = np.random.default_rng(4)
    inputs = {m: rng.standard_normal((n, CONFIG["seq_len"][m], CONFIG["input_dims"][m]))
              .astype(np.float32) for m in CONFIG["modalities"]}
    return ProbeSet(modalities=list(CONFIG["modalities"]), inputs=inputs,
                    present=rng.random((n, 3)) > 0.2,
                    label=rng.standard_normal(n).astype(np.float32),
                    member=np.zeros(n, dtype=bool))


def _tensors(config: dict) -> dict[str, np.ndarray]:
    model = ARCHITECTURE.build(config)
    return model_tensors(model, np.dtype(np.float32))


def _used_float64_model(config: dict, tensors: dict[str, np.ndarray]) -> torch.nn.Module:
    """Return the float64 model as the issuer leaves it: some weights moved in place."""
    model = build_model(ARCHITECTURE, config, tensors)
    with torch.no_grad():
        model.fusion[0].weight.add_(0.5)
        model.head.bias.zero_()
    return model


def test_reused_pre_model_same_metrics():
    config = ARCHITECTURE.validate_config(CONFIG)
    tensors, evaluation = _tensors(config), _evaluation()
    fresh = utility_before_deletion(ARCHITECTURE, config, tensors, evaluation, "audio")
    reused = utility_before_deletion(ARCHITECTURE, config, tensors, evaluation, "audio",
                                     reuse=_used_float64_model(config, tensors))
    assert fresh is not None
    assert reused == fresh


def test_reused_removed_model_same_metrics():
    config = ARCHITECTURE.validate_config({**CONFIG, "deleted_modalities": ["audio"]})
    tensors, evaluation = _tensors(config), _evaluation()
    fresh = utility_after_deletion(ARCHITECTURE, config, tensors, evaluation, "audio")
    model = _used_float64_model(config, tensors)
    reused = utility_after_deletion(ARCHITECTURE, config, tensors, evaluation, "audio",
                                    reuse=model)
    assert fresh is not None
    assert reused == fresh
    # The model now computes in float32, as released.
    assert model.head.weight.dtype == torch.float32


def test_shared_encoder_pass_same_predictions():
    # The pre-deletion metrics take both predictions from one encoder pass.
    from mbd_cert._issue_utility import _with_and_without
    from mbd_cert._torch_model import predict, probe_batch

    config = ARCHITECTURE.validate_config(CONFIG)
    model = build_model(ARCHITECTURE, config, _tensors(config), dtype=torch.float32)
    batch = probe_batch(_evaluation(), dtype=torch.float32)
    present = batch["present"].clone()
    present[:, 1] = False
    both = _with_and_without(model, batch, "audio")
    assert np.array_equal(both[0], predict(model, batch))
    assert np.array_equal(both[1], predict(model, {**batch, "present": present}))
    assert not np.array_equal(both[0], both[1])


def test_reused_model_of_float16_weights():
    # A plugin may store its weights in another dtype than float32. A fresh build loads
    # them in that dtype and then casts to float32, so the reused model must give the
    # same metrics rather than reject the float16 tensors.
    import dataclasses

    half = dataclasses.replace(
        ARCHITECTURE, build=lambda config: ARCHITECTURE.build(config).to(torch.float16),
        weight_dtype="F16")
    config = ARCHITECTURE.validate_config(CONFIG)
    tensors = model_tensors(half.build(config), np.dtype(np.float16))
    evaluation = _evaluation()
    fresh = utility_before_deletion(half, config, tensors, evaluation, "audio")
    reused = utility_before_deletion(half, config, tensors, evaluation, "audio",
                                     reuse=build_model(half, config, tensors))
    assert fresh is not None
    assert reused == fresh


def test_model_hook_keeps_two_predictions():
    # A hook on the model itself runs only when the model is called.
    config = ARCHITECTURE.validate_config(CONFIG)
    tensors, evaluation = _tensors(config), _evaluation()
    plain = utility_before_deletion(ARCHITECTURE, config, tensors, evaluation, "audio")
    model = build_model(ARCHITECTURE, config, tensors, dtype=torch.float32)
    model.register_forward_hook(lambda module, args, output: output * 0.5)
    hooked = utility_before_deletion(ARCHITECTURE, config, tensors, evaluation, "audio",
                                     reuse=model)
    assert hooked is not None and plain is not None
    assert hooked["all"] != plain["all"]
    assert hooked["missing_audio"] != plain["missing_audio"]
