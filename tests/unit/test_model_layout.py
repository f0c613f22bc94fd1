"""Dtype rule of the model-tensors check for architectures that do not fix one (R-DEL-2)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mbd_cert import _safetensors
from mbd_cert._level1_checks import _check_dtypes, check_model_layout
from mbd_cert.errors import DeletionIncomplete


def _model(tmp_path: Path, tensors: dict[str, np.ndarray]) -> object:
    path = tmp_path / "model.safetensors"
    _safetensors.write_safetensors(path, tensors)
    return _safetensors.read_header(path)


def _doc(dtypes: dict[str, str]) -> dict:
    return {"subject_model": {"pre_deletion": {"tensors": {
        name: {"dtype": dtype, "shape": [2], "digest": "sha256:" + "0" * 64}
        for name, dtype in dtypes.items()}}}}


PLUGIN = SimpleNamespace(weight_dtype=None)


def test_integer_buffer_kept_from_commitment_passes(tmp_path: Path) -> None:
    # A BatchNorm's num_batches_tracked is I64 beside F32 weights in an honest release.
    header = _model(tmp_path, {"w": np.zeros(2, "<f4"), "bn.count": np.zeros(2, "<i8")})
    _check_dtypes(_doc({"w": "F32", "bn.count": "I64"}), header, PLUGIN)


def test_widened_against_commitment_fails(tmp_path: Path) -> None:
    header = _model(tmp_path, {"w": np.zeros(2, "<f8")})
    with pytest.raises(DeletionIncomplete, match=r"w F64 \(expected F32\)"):
        _check_dtypes(_doc({"w": "F32"}), header, PLUGIN)


def test_architecture_dtype_overrides_commitment(tmp_path: Path) -> None:
    # A forged commitment cannot legalise F64 for an architecture that fixes F32.
    header = _model(tmp_path, {"w": np.zeros(2, "<f8")})
    with pytest.raises(DeletionIncomplete, match=r"w F64 \(expected F32\)"):
        _check_dtypes(_doc({"w": "F64"}), header, SimpleNamespace(weight_dtype="F32"))


def test_architecture_without_listing_skips_names(tmp_path: Path) -> None:
    # Header, metadata and dtypes are still checked; only names and shapes are skipped.
    path = tmp_path / "model.safetensors"
    _safetensors.write_safetensors(path, {"w": np.zeros(2, "<f4")},
                                   {"format": "mbd-cert-model/1", "architecture": "x"})
    doc = _doc({"w": "F32"})
    doc["subject_model"]["architecture"] = {"name": "x", "config": {}}
    architecture = SimpleNamespace(name="x", validate_config=dict, tensor_shapes=None,
                                   weight_dtype=None)
    result = check_model_layout(doc, _safetensors.read_header(path), architecture)
    assert result.status == "skipped"
    assert "header, metadata and dtypes checked" in result.detail


def test_complex_commitment_cannot_legalise_c64(tmp_path: Path) -> None:
    # The issuer signs the commitment too, so a C64 one would let the imaginary halves
    # carry a deleted encoder past level 1.
    header = _model(tmp_path, {"w": np.zeros(2, "<c8")})
    with pytest.raises(DeletionIncomplete, match=r"w C64 \(complex, and the architecture "
                                                 r"fixes no dtype\)"):
        _check_dtypes(_doc({"w": "C64"}), header, PLUGIN)


def test_listing_without_dtype_says_widening_undetected(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    _safetensors.write_safetensors(path, {"w": np.zeros(2, "<f4")},
                                   {"format": "mbd-cert-model/1", "architecture": "x"})
    doc = _doc({"w": "F32"})
    doc["subject_model"]["architecture"] = {"name": "x", "config": {}}
    architecture = SimpleNamespace(name="x", validate_config=dict,
                                   tensor_shapes=lambda config: {"w": (2,)}, weight_dtype=None)
    result = check_model_layout(doc, _safetensors.read_header(path), architecture)
    assert result.status == "pass"
    assert "a real dtype wider than the weights need is not detected" in result.detail
