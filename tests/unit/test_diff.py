from __future__ import annotations

import numpy as np
import pytest

from mbd_cert import _safetensors
from mbd_cert.diff import DIFF_PREFIX, array_manifest_digest, build_diff, rebuild_pre
from mbd_cert.errors import IssuanceError, MalformedSafetensors


def test_build_diff_rebuilds_pre_bit_exact():
    """R-DIFF-2: post - diff, cast to the parameter's dtype, equals pre bit for bit."""
    rng = np.random.default_rng(0)
    pre = {"w": rng.normal(size=(5, 7)).astype(np.float32)}
    post = {"w": (pre["w"] + rng.normal(scale=1e-3, size=(5, 7))).astype(np.float32)}
    diff = build_diff(pre, post, ["w"])
    assert diff[DIFF_PREFIX + "w"].dtype == np.float64
    rebuilt = rebuild_pre(post["w"], diff[DIFF_PREFIX + "w"], "w")
    assert rebuilt.tobytes() == pre["w"].tobytes()


def test_build_diff_zeroed_encoder_is_exact():
    pre = {"enc": np.array([1e-30, -3.5, 7e20], dtype=np.float32)}
    post = {"enc": np.zeros(3, dtype=np.float32)}
    diff = build_diff(pre, post, ["enc"])
    assert rebuild_pre(post["enc"], diff["diff.enc"], "enc").tobytes() == pre["enc"].tobytes()


def test_build_diff_refuses_inexact_reconstruction():
    """R-DIFF-2: the issuer checks the exact rebuild before signing."""
    # 1e30 + 1e-30 cannot be separated again in float64, so pre is lost.
    pre = {"w": np.array([1e-30], dtype=np.float32)}
    post = {"w": np.array([1e30], dtype=np.float32)}
    with pytest.raises(IssuanceError) as info:
        build_diff(pre, post, ["w"])
    assert info.value.code == "E_DIFF_NOT_EXACT"


def test_rebuild_pre_rejects_shape_mismatch():
    """R-DIFF-2: a diff of another shape is rejected, never broadcast."""
    # C07: never broadcast a diff onto a parameter of another shape.
    with pytest.raises(MalformedSafetensors) as info:
        rebuild_pre(np.zeros((2, 3), np.float32), np.zeros((3,), np.float64), "fusion.0.weight")
    assert info.value.code == "E_DIFF_SHAPE"
    assert "fusion.0.weight" in str(info.value)
    assert "[3]" in str(info.value) and "[2, 3]" in str(info.value)


def test_rebuild_pre_rejects_dtype_mismatch():
    """R-DIFF-2: a diff of another dtype is rejected, never cast."""
    with pytest.raises(MalformedSafetensors) as info:
        rebuild_pre(np.zeros(3, np.float32), np.zeros(3, np.float32), "head.bias")
    assert info.value.code == "E_DIFF_DTYPE"


def test_array_manifest_digest_matches_written_file(tmp_path):
    """R-DIFF-3: the mask digest is the manifest digest of the mask tensors, empty metadata."""
    masks = {
        "fusion.0.weight": np.array([[True, False], [False, True]]),
        "empty": np.zeros((2, 0), dtype=bool),
        "transposed": np.arange(6, dtype=np.float32).reshape(2, 3).T,
    }
    digests = _safetensors.write_safetensors(tmp_path / "m.safetensors", masks)
    assert array_manifest_digest(masks) == digests.manifest_digest


def test_array_manifest_digest_binds_names():
    """R-DIFF-3: the mask digest binds the parameter names."""
    mask = np.array([True, False])
    assert array_manifest_digest({"a": mask}) != array_manifest_digest({"b": mask})
