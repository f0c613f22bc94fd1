"""``issue`` takes the built-in objectives' written-out gradients and still verifies."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
from cli_support import IssuerKeys

from mbd_cert import _issue_preflight, signing
from mbd_cert.arch import _mbd_gradients, get_architecture
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


def _issue(checkpoint: Path, out: Path, keys: IssuerKeys) -> dict:
    options = IssueOptions(modality="audio", epsilon=1.0, delta=1e-5, steps=STEPS)
    return issue(checkpoint, out, options, signing.load_private_key(keys.private))


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
