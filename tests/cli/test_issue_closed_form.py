"""``issue`` takes the built-in objectives' written-out gradients and still verifies."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from cli_support import IssuerKeys
from safetensors.numpy import load_file

from mbd_cert import _issue_preflight, signing
from mbd_cert.arch import _mbd_gradients, get_architecture
from mbd_cert.diff import MASK_PREFIX
from mbd_cert.issue import IssueOptions, issue
from mbd_cert.verify import VerifyOptions, verify

STEPS = 2


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count the calls of the closed form's methods during the test."""
    counts: Counter[str] = Counter()
    cls = _mbd_gradients.LateLayerGradients
    for method in ("moment_sums", "mean_gradient", "zeroed_forget"):
        real = getattr(cls, method)

        def counted(self, *args, _real=real, _name=method, **kwargs):
            counts[_name] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, counted)
    return counts


def _issue(checkpoint: Path, out: Path, keys: IssuerKeys, modality: str = "audio",
           groups: list[str] | None = None, top_k: float | None = None) -> dict:
    options = IssueOptions(modality=modality, epsilon=1.0, delta=1e-5, steps=STEPS,
                           eligible_groups=groups)
    if top_k is not None:
        options = dataclasses.replace(options, top_k_fraction=top_k)
    return issue(checkpoint, out, options, signing.load_private_key(keys.private))


def _verify(out: Path, keys: IssuerKeys, level: int = 2) -> None:
    """Verify the certificate in ``out`` at ``level`` and assert that it verifies."""
    key = signing.load_public_key(keys.public)
    # The tiny model masks few entries, too few for the normality test (inconclusive).
    options = VerifyOptions(trusted_keys=[key], level=level, bundle_dir=out,
                            allow_inconclusive=True)
    report = verify(out / "cert.json", out / "model.safetensors", options)
    assert report.verified, report


def _masked_tensors(out: Path) -> set[str]:
    """Return the names of the tensors with at least one masked entry."""
    diff = load_file(str(out / "diff.safetensors"))
    return {name.removeprefix(MASK_PREFIX) for name, value in diff.items()
            if name.startswith(MASK_PREFIX) and bool(np.any(value))}


def test_builtin_issue_uses_closed_form(monkeypatch, tmp_path, tiny_checkpoint, issuer_keys):
    counts = _count_calls(monkeypatch)
    _issue(tiny_checkpoint, tmp_path / "out", issuer_keys)
    # The saliency moments, the update's Fisher, each step but the first (which takes
    # the gradient computed with the Fisher) and the proxy check.
    assert counts["moment_sums"] == 2
    assert counts["mean_gradient"] == STEPS - 1
    assert counts["zeroed_forget"] == 1
    # Level 2 recomputes the mask and the update with autograd.
    key = signing.load_public_key(issuer_keys.public)
    # The tiny model masks 8 entries, too few for the normality test (inconclusive).
    options = VerifyOptions(trusted_keys=[key], level=2, bundle_dir=tmp_path / "out",
                            allow_inconclusive=True)
    report = verify(tmp_path / "out" / "cert.json", tmp_path / "out" / "model.safetensors",
                    options)
    assert report.verified


def test_replaced_objective_uses_autograd(monkeypatch, tmp_path, tiny_checkpoint,
                                          issuer_keys):
    # A record with the built-in model but objectives of its own gets no closed form.
    builtin = get_architecture("mbd-sentiment")
    replaced = dataclasses.replace(
        builtin,
        forget_objective=lambda m, b, x: builtin.forget_objective(m, b, x),
        retain_objective=lambda m, b, x: builtin.retain_objective(m, b, x))
    monkeypatch.setattr(_issue_preflight, "get_architecture", lambda name: replaced)
    counts = _count_calls(monkeypatch)
    _issue(tiny_checkpoint, tmp_path / "out", issuer_keys)
    assert counts == Counter()


@pytest.mark.parametrize("groups", [
    ["head"],
    ["fusion", "head", "generators.audio", "generators.text"],
], ids=["head", "other-generator"])
def test_covered_groups_verify(monkeypatch, tmp_path, tiny_checkpoint, issuer_keys, groups):
    counts = _count_calls(monkeypatch)
    _issue(tiny_checkpoint, tmp_path / "out", issuer_keys, groups=groups)
    assert counts["moment_sums"] == 2
    assert counts["mean_gradient"] == STEPS - 1
    assert counts["zeroed_forget"] == 1
    _verify(tmp_path / "out", issuer_keys)


def test_encoder_group_uses_autograd(monkeypatch, tmp_path, tiny_checkpoint, issuer_keys):
    # An encoder tensor is outside the late layers, so both objectives' moments go
    # through autograd, and so do the steps whenever the mask reaches the encoder.
    counts = _count_calls(monkeypatch)
    out = tmp_path / "out"
    _issue(tiny_checkpoint, out, issuer_keys, groups=["encoders.text", "head"])
    masked = _masked_tensors(out)
    assert counts["moment_sums"] == 0
    assert any(name.startswith("encoders.text.") for name in masked)
    assert counts["mean_gradient"] == 0
    # The proxy check still takes the stored encoder outputs for the late-layer entries.
    assert counts["zeroed_forget"] == 1
    _verify(out, issuer_keys, level=3)


def test_chain_covers_deleted_generator(monkeypatch, tmp_path, tiny_checkpoint,
                                        issuer_keys):
    # The second deletion starts from the first one's released model, where audio's
    # slot is always its generator's reconstruction.
    first, second = tmp_path / "first", tmp_path / "second"
    _issue(tiny_checkpoint, first, issuer_keys)
    counts = _count_calls(monkeypatch)
    _issue(first, second, issuer_keys, modality="vision",
           groups=["head", "generators.audio", "generators.vision"], top_k=0.5)
    assert counts["moment_sums"] == 2
    assert counts["mean_gradient"] == STEPS - 1
    assert any(name.startswith("generators.audio.") for name in _masked_tensors(second))
    _verify(second, issuer_keys, level=3)


def test_random_encoder_still_tested(monkeypatch, tmp_path, tiny_checkpoint, issuer_keys):
    # The built-in objectives skip the test runs for determinism only on a model of the
    # modules MBDModel builds. A builder may swap in an encoder that draws noise, which
    # level 2 rejects (R-ARCH-7), so the issuer must reject it first.
    import torch

    from mbd_cert.arch._mbd_layers import Encoder
    from mbd_cert.errors import InputError

    class NoisyEncoder(Encoder):
        def forward(self, x):
            shared, private = super().forward(x)
            return shared + torch.randn_like(shared), private

    builtin = get_architecture("mbd-sentiment")

    def build(config):
        model = builtin.build(config)
        model.encoders["text"].__class__ = NoisyEncoder
        return model

    noisy = dataclasses.replace(builtin, build=build)
    monkeypatch.setattr(_issue_preflight, "get_architecture", lambda name: noisy)
    with pytest.raises(InputError) as raised:
        _issue(tiny_checkpoint, tmp_path / "out", issuer_keys)
    assert raised.value.code == "E_OBJECTIVE_NONDETERMINISTIC"
    assert not (tmp_path / "out").exists()
