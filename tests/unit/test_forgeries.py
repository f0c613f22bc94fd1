"""Forged certificates, each built from an honest one and re-signed with the issuer's key.

Each forgery must fail the check that names its defect. The statistical forgeries are
repeated for several forger seeds; every seed must be caught.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from level_factories import (  # noqa: E402
    bundle_parts,
    copy_bundle,
    honest_bundle,
    load_doc,
    other_checkpoint,
    read,
    resign,
    run_verify,
    status_of,
    write_tensors,
)

from mbd_cert import _recompute  # noqa: E402
from mbd_cert.diff import array_manifest_digest  # noqa: E402

# Seed 0 runs by default; the others under -m slow (each forgery takes a few seconds).
FORGER_SEEDS = [0] + [pytest.param(seed, marks=pytest.mark.slow) for seed in (1, 2, 3, 4)]


@pytest.fixture(scope="module")
def honest():
    return honest_bundle()


def _parts(out: Path):
    return bundle_parts(out)


def _update(doc, bundle, pre, masks):
    from mbd_cert._torch_model import build_model, probe_batch

    start = {n: (np.zeros_like(v) if n in bundle.removed else v) for n, v in pre.items()}
    model = build_model(bundle.architecture, bundle.config_post, start)
    model.requires_grad_(False)

    def retain(m, sub):
        return bundle.architecture.retain_objective(m, sub, "audio")

    u = doc["update"]
    return _recompute.masked_update(model, masks, retain, probe_batch(bundle.probe),
                                    steps=u["steps"], learning_rate=u["learning_rate"],
                                    damping=u["damping"], clip_norm=u["clip_norm"])


def _release(out: Path, key, doc, bundle, pre, masked_values, masks=None) -> None:
    """Write a model whose masked entries are pre + masked_values, its diff, and re-sign."""
    masks = bundle.masks if masks is None else masks
    post = dict(bundle.post)
    diff = {}
    for name, mask in masks.items():
        moved = pre[name].astype(np.float64) + np.where(mask, masked_values[name], 0.0)
        post[name] = moved.astype(pre[name].dtype)
    for name in sorted(set(bundle.removed) | {n for n, m in masks.items() if m.any()}):
        diff["diff." + name] = post[name].astype(np.float64) - pre[name].astype(np.float64)
    for name, mask in masks.items():
        diff["mask." + name] = mask
    write_tensors(out / "model.safetensors", post)
    write_tensors(out / "diff.safetensors", diff)
    if masks is not bundle.masks:
        doc["saliency"]["mask_digest"] = array_manifest_digest(masks)
    resign(out, key, doc)


def _noise(bundle, sigma, seed):
    rng = np.random.default_rng(1000 + seed)
    return {n: rng.normal(0.0, sigma, size=m.shape) for n, m in sorted(bundle.masks.items())}


def test_honest_bundle_passes_level2(honest):
    _, out, key = honest
    report = run_verify(out, key, 2)
    assert report.verified, [(c.name, c.detail) for c in report.checks if c.status != "pass"]


@pytest.mark.parametrize("seed", FORGER_SEEDS)
def test_noise_omitted_fails_variance(honest, tmp_path, seed):
    """R-L2-6: a release without noise fails the chi-square test."""
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    doc, bundle, pre = _parts(out)
    update = _update(doc, bundle, pre, bundle.masks)
    _release(out, key, doc, bundle, pre, update.displacement)
    statuses = status_of(run_verify(out, key, 2))
    assert statuses["bundle-digest"] == "pass"
    assert statuses["residual-variance"] == "fail"


def test_certificate_cannot_lower_alpha(honest, tmp_path):
    # A forger who adds 80 % of the stated noise and states residual_alpha = 1e-300
    # would pass the variance test (p about 1e-18 here, far above 1e-300) if the
    # verifier took the level from the certificate (R-L2-9).
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    doc, bundle, pre = _parts(out)
    update = _update(doc, bundle, pre, bundle.masks)
    noise = _noise(bundle, 0.8 * doc["privacy"]["sigma"], 0)
    doc["update"]["residual_alpha"] = 1e-300
    _release(out, key, doc, bundle, pre, {n: update.displacement[n] + noise[n] for n in noise})
    statuses = status_of(run_verify(out, key, 2))
    assert statuses["signature"] == "pass"
    assert statuses["residual-variance"] == "fail"


@pytest.mark.parametrize("seed", FORGER_SEEDS)
def test_sigma_understated_fails_variance(honest, tmp_path, seed):
    """R-L2-6: noise below the stated sigma fails the chi-square test."""
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    doc, bundle, pre = _parts(out)
    update = _update(doc, bundle, pre, bundle.masks)
    noise = _noise(bundle, 0.8 * doc["privacy"]["sigma"], seed)
    _release(out, key, doc, bundle, pre, {n: update.displacement[n] + noise[n] for n in noise})
    statuses = status_of(run_verify(out, key, 2))
    assert statuses["pre-rebuild"] == "pass"
    assert statuses["residual-variance"] == "fail"


@pytest.mark.parametrize("seed", FORGER_SEEDS)
def test_unclipped_update_fails_projection(honest, tmp_path, seed):
    """R-L2-8: an unclipped update fails the projection test."""
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    doc, bundle, pre = _parts(out)
    update = _update(doc, bundle, pre, bundle.masks)
    factor = update.raw_norm / update.norm
    noise = _noise(bundle, doc["privacy"]["sigma"], seed)
    _release(out, key, doc, bundle, pre,
             {n: factor * update.displacement[n] + noise[n] for n in noise})
    statuses = status_of(run_verify(out, key, 2))
    assert statuses["residual-projection"] == "fail"


@pytest.mark.parametrize("seed", FORGER_SEEDS)
def test_random_mask_fails_saliency(honest, tmp_path, seed):
    """R-L2-4: a committed mask other than the recomputed top k fails."""
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    doc, bundle, pre = _parts(out)
    rng = np.random.default_rng(seed)
    masks = {}
    for name, mask in sorted(bundle.masks.items()):
        flat = np.zeros(mask.size, dtype=bool)
        flat[rng.choice(mask.size, int(mask.sum()), replace=False)] = True
        masks[name] = flat.reshape(mask.shape)
    update = _update(doc, bundle, pre, masks)
    noise = _noise(bundle, doc["privacy"]["sigma"], seed)
    _release(out, key, doc, bundle, pre,
             {n: update.displacement[n] + noise[n] for n in noise}, masks=masks)
    statuses = status_of(run_verify(out, key, 2))
    assert statuses["mask-commitment"] == "pass"
    assert statuses["saliency-mask"] == "fail"


def test_change_outside_mask_fails_support(honest, tmp_path):
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    post = read(out, "model.safetensors")
    diff = read(out, "diff.safetensors")
    post["head.weight"] = post["head.weight"].copy()
    before = post["head.weight"].astype(np.float64)
    post["head.weight"].flat[0] += np.float32(0.01)
    diff["diff.head.weight"] = post["head.weight"].astype(np.float64) - before
    write_tensors(out / "model.safetensors", post)
    write_tensors(out / "diff.safetensors", diff)
    resign(out, key)
    statuses = status_of(run_verify(out, key, 2))
    assert statuses["pre-rebuild"] == "pass"
    assert statuses["diff-support"] == "fail"


def test_encoder_entry_left_fails_deletion(honest, tmp_path):
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    doc = load_doc(out)
    name = doc["deletion"]["removed_tensors"][0]
    post = read(out, "model.safetensors")
    diff = read(out, "diff.safetensors")
    pre_value = -diff["diff." + name].flat[0]
    post[name] = post[name].copy()
    post[name].flat[0] = np.float32(pre_value)
    diff["diff." + name] = diff["diff." + name].copy()
    diff["diff." + name].flat[0] = 0.0
    write_tensors(out / "model.safetensors", post)
    write_tensors(out / "diff.safetensors", diff)
    resign(out, key)
    report = run_verify(out, key, 2)
    statuses = status_of(report)
    assert statuses["deleted-tensors-zero"] == "fail"
    # The entry also left the diff, so post - diff still rebuilds the committed model:
    # level 1 catches the forgery, and level 2 does not run after it (R-LVL-4).
    assert statuses["level-2"] == "skipped"
    assert "pre-rebuild" not in statuses
    level2 = next(c for c in report.checks if c.name == "level-2")
    assert "deleted-tensors-zero" in level2.detail


def test_diff_of_other_model_fails_rebuild(honest, tmp_path):
    """R-L2-1: a diff that does not rebuild the committed model is E_DIGEST_MISMATCH."""
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    other_pre = read(other_checkpoint(), "model.safetensors")
    post = read(out, "model.safetensors")
    diff = read(out, "diff.safetensors")
    for key_name in [k for k in diff if k.startswith("diff.")]:
        name = key_name.removeprefix("diff.")
        diff[key_name] = post[name].astype(np.float64) - other_pre[name].astype(np.float64)
    write_tensors(out / "diff.safetensors", diff)
    resign(out, key)
    report = run_verify(out, key, 2)
    statuses = status_of(report)
    assert statuses["bundle-digest"] == "pass"
    assert statuses["pre-rebuild"] == "fail"
    assert {c.code for c in report.checks if c.name == "pre-rebuild"} == {"E_DIGEST_MISMATCH"}


def test_swapped_probe_fails_saliency(honest, tmp_path):
    """R-L2-4: the mask is recomputed from the committed probe set."""
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    (out / "probe.safetensors").write_bytes(
        (other_checkpoint() / "probe.safetensors").read_bytes())
    resign(out, key)
    statuses = status_of(run_verify(out, key, 2))
    assert statuses["bundle-digest"] == "pass"
    assert statuses["saliency-mask"] == "fail"


def test_negative_zero_diff_fails_support(honest, tmp_path):
    """R-L2-1: a -0.0 diff entry is E_DIFF_NOT_EXACT."""
    # post - (-0.0) rebuilds post exactly, but the sign bits of such diff entries could
    # carry data outside the mask: both the exactness rule (R-DIFF-1) and the support
    # check (R-L2-3) see it.
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    diff = read(out, "diff.safetensors")
    name = next(n for n in sorted(diff) if n.startswith("diff.")
                and "mask." + n[len("diff."):] in diff
                and not diff["mask." + n[len("diff."):]].all())
    mask = diff["mask." + name[len("diff."):]]
    diff[name] = diff[name].copy()
    outside = np.flatnonzero(~mask.reshape(-1))[:3]
    diff[name].reshape(-1)[outside] = -0.0
    write_tensors(out / "diff.safetensors", diff)
    resign(out, key)
    report = run_verify(out, key, 2)
    statuses = status_of(report)
    rebuild = next(c for c in report.checks if c.name == "pre-rebuild")
    assert (rebuild.status, rebuild.code) == ("fail", "E_DIFF_NOT_EXACT")
    assert statuses["diff-support"] == "fail"
    support = next(c for c in report.checks if c.name == "diff-support")
    assert support.value == len(outside)


def test_zero_encoder_before_deletion_fails_rebuild(honest, tmp_path):
    """R-L2-1: the zero-encoder rule applies to the rebuilt model."""
    # A released model copied into a fresh checkpoint keeps its zeroed audio encoder.
    # Deleting audio again as a first deletion would drop the earlier epsilon from the
    # chain; the rebuilt pre-deletion model shows it (R-CHAIN-9).
    import hashlib

    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    doc = load_doc(out)
    diff = read(out, "diff.safetensors")
    committed = doc["subject_model"]["pre_deletion"]["tensors"]
    for name in doc["deletion"]["removed_tensors"]:
        diff["diff." + name] = np.zeros_like(diff["diff." + name])
        zeros = np.zeros(committed[name]["shape"], dtype="<f4")
        committed[name]["digest"] = "sha256:" + hashlib.sha256(zeros.tobytes()).hexdigest()
    write_tensors(out / "diff.safetensors", diff)
    resign(out, key, doc)
    report = run_verify(out, key, 2)
    rebuild = next(c for c in report.checks if c.name == "pre-rebuild")
    assert rebuild.status == "fail"
    assert rebuild.code == "E_CHAIN_BROKEN"
    assert "audio encoder is all zero" in rebuild.detail


def test_low_bits_of_diff_fail_rebuild(honest, tmp_path):
    """R-L2-1: a diff that is not float64(post) - float64(pre) bit for bit is E_DIFF_NOT_EXACT."""
    # Flipping the lowest bit of a masked diff entry still rebuilds the same float32
    # pre-deletion value after the cast, so only R-DIFF-1's exactness sees it.
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    diff = read(out, "diff.safetensors")
    name = next(n for n in sorted(diff) if n.startswith("diff.")
                and "mask." + n[len("diff."):] in diff)
    mask = diff["mask." + name[len("diff."):]]
    values = diff[name].copy()
    flat = values.reshape(-1).view(np.uint64)
    flat[np.flatnonzero(mask.reshape(-1))[:5]] ^= np.uint64(1)
    diff[name] = values
    write_tensors(out / "diff.safetensors", diff)
    resign(out, key)
    rebuild = next(c for c in run_verify(out, key, 2).checks if c.name == "pre-rebuild")
    assert (rebuild.status, rebuild.code) == ("fail", "E_DIFF_NOT_EXACT")
    assert "5 diff entries are not float64(post) - float64(pre)" in rebuild.detail
