"""Factories for the level-2 and level-3 tests: a tiny honest deletion and forged copies.

A forger here has the issuer's key, so every forged certificate gets its digests
recomputed and is signed again: only the level-2 and level-3 checks can catch it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mbd_cert import _safetensors, certificate
from mbd_cert.checkpoint import read_tensors
from mbd_cert.issue import IssueOptions, issue
from mbd_cert.verify import VerifyOptions, verify
from trainer.data import load_corpus
from trainer.train import train

# A model of about 1,300 eligible entries, trained for a few epochs: fast, and the mask
# still holds several hundred entries for the residual tests.
TINY_TRAINING = {
    "epochs": 6, "batch_size": 32, "learning_rate": 3e-3, "patience": 6,
    "probe_members": 100, "probe_nonmembers": 100,
    "model": {"hidden_dim": 16, "shared_dim": 8, "private_dim": 4, "fusion_hidden": 16},
}
TINY_CORPUS = {"n_train": 300, "n_valid": 100, "n_test": 150}


def train_tiny(out: Path, seed: int = 0) -> Path:
    """Train the tiny model on the bundled synthetic corpus; return the checkpoint dir."""
    corpus = load_corpus("synthetic", seed=seed, **TINY_CORPUS)
    train(corpus, TINY_TRAINING, out, seed=seed, progress=False)
    return out


def issue_tiny(checkpoint: Path, out: Path, key: Ed25519PrivateKey, *, epsilon: float = 1.0,
               top_k: float = 0.3, noise_seed: int = 0, clip_norm: float = 1e-3,
               learning_rate: float = 1e-3, steps: int | None = None) -> dict[str, Any]:
    """Delete audio from the tiny checkpoint with reproducible noise.

    ``steps`` None keeps the issuer's default.
    """
    options = IssueOptions(modality="audio", epsilon=epsilon, delta=1e-5, top_k_fraction=top_k,
                           noise_seed=noise_seed, clip_norm=clip_norm,
                           learning_rate=learning_rate, force=True)
    if steps is not None:
        options = dataclasses.replace(options, steps=steps)
    return issue(checkpoint, out, options, key)


def run_verify(out: Path, key: Ed25519PrivateKey, level: int, **extra: Any) -> Any:
    """Verify the bundle in ``out`` at ``level``; return the report."""
    options = VerifyOptions(trusted_keys=[key.public_key()], level=level, bundle_dir=out,
                            **extra)
    return verify(out / "cert.json", out / "model.safetensors", options)


def status_of(report: Any) -> dict[str, str]:
    """Return check name -> status."""
    return {check.name: check.status for check in report.checks}


def copy_bundle(source: Path, target: Path) -> Path:
    """Copy an issued output directory."""
    shutil.copytree(source, target)
    return target


def load_doc(out: Path) -> dict[str, Any]:
    """Read the certificate of ``out`` without verifying it."""
    return dict(json.loads((out / "cert.json").read_text()))


def _commitment(path: Path, template: dict[str, Any]) -> dict[str, Any]:
    digests = _safetensors.digest_file(path)
    entry: dict[str, Any] = {
        "file_digest": digests.file_digest,
        "manifest_digest": digests.manifest_digest,
        "tensors": {name: {"dtype": t.dtype, "shape": list(t.shape), "digest": t.digest}
                    for name, t in sorted(digests.tensors.items())},
    }
    if "header_digest" in template:
        from mbd_cert._commitment import header_digest

        entry["header_digest"] = header_digest(_safetensors.read_header(path))
    return entry


def write_tensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Replace a safetensors file, keeping its metadata."""
    metadata = _safetensors.read_header(path).metadata
    path.unlink()
    _safetensors.write_safetensors(path, tensors, metadata)


def resign(out: Path, key: Ed25519PrivateKey, doc: dict[str, Any] | None = None) -> None:
    """Recompute every file commitment of ``out`` into its certificate and sign it again."""
    doc = load_doc(out) if doc is None else doc
    post = doc["subject_model"]["post_deletion"]
    doc["subject_model"]["post_deletion"] = _commitment(out / "model.safetensors", post)
    for role in ("diff", "probe"):
        digests = _safetensors.digest_file(out / doc["audit_bundle"][role]["path"])
        doc["audit_bundle"][role]["file_digest"] = digests.file_digest
        doc["audit_bundle"][role]["manifest_digest"] = digests.manifest_digest
    signed = certificate.sign_certificate(doc, key)
    (out / "cert.json").write_bytes(certificate.dump_certificate(signed))


def read(out: Path, name: str) -> dict[str, np.ndarray]:
    """Read all tensors of ``out/name``."""
    return read_tensors(out / name)


_CACHE: dict[str, Any] = {}


def honest_bundle() -> tuple[Path, Path, Ed25519PrivateKey]:
    """Return ``(checkpoint, output, key)`` of one honest tiny deletion, made once per session.

    Epsilon 4 and a 60 % mask keep the forgery tests' statistical power high: sigma is
    small next to the unclipped update, and the residual tests see about 780 entries.
    20 update steps, not the default 3, make the unclipped update about 16 times the
    clip norm, so that the forgery which skips the clip is a large one. (At 3 steps it
    is about 3 times the clip norm, which the noise hides, as it hides any change of
    the order of the sensitivity.)
    """
    if "bundle" not in _CACHE:
        import atexit
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="mbd-level-tests-"))
        atexit.register(shutil.rmtree, root, True)
        key = Ed25519PrivateKey.generate()
        checkpoint = train_tiny(root / "checkpoint")
        issue_tiny(checkpoint, root / "honest", key, epsilon=4.0, top_k=0.6, steps=20)
        _CACHE["bundle"] = (checkpoint, root / "honest", key)
    result: tuple[Path, Path, Ed25519PrivateKey] = _CACHE["bundle"]
    return result


def other_checkpoint() -> Path:
    """Return a second tiny checkpoint (training seed 1), made once per session."""
    if "other" not in _CACHE:
        checkpoint, _, _ = honest_bundle()
        _CACHE["other"] = train_tiny(checkpoint.parent / "other", seed=1)
    other: Path = _CACHE["other"]
    return other


def bundle_parts(out: Path) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """Return the certificate, the loaded audit bundle and the rebuilt pre-deletion model."""
    from mbd_cert.verify_recompute import load_bundle, rebuild_pre

    doc = load_doc(out)
    bundle = load_bundle(doc, out / "model.safetensors", out)
    return doc, bundle, rebuild_pre(bundle)
