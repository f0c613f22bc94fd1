"""File commitments: header digest, parallel tensor digests, optional whole-file digest.

SPEC.md R-DIG-3 and R-DIG-4: the header bytes and the tensor digests bind every byte of
the file, so the whole-file digest is checked only on request or for format 1.0.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from mbd_cert import _safetensors
from mbd_cert._commitment import check_commitment, file_commitment, header_digest
from mbd_cert.errors import DigestMismatch

TENSORS = {
    "a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
    "b.bias": np.array([1.5, -2.0], dtype=np.float32),
}


def _write_raw(path: Path, order: list[str], padding: int = 0) -> None:
    """Write TENSORS in ``order`` with ``padding`` extra spaces after the JSON header."""
    header: dict[str, object] = {}
    offset = 0
    for name in order:
        size = TENSORS[name].nbytes
        header[name] = {"dtype": "F32", "shape": list(TENSORS[name].shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8 + padding)
    data = b"".join(TENSORS[name].tobytes() for name in order)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _commit(path: Path) -> dict[str, object]:
    return file_commitment(_safetensors.digest_file(path), _safetensors.read_header(path))


def _check(committed: dict[str, object], path: Path, *, whole: bool = False) -> str:
    return check_commitment(committed, _safetensors.read_header(path),
                            field="subject_model.post_deletion", check_file_digest=whole)


def test_header_digest_covers_prefix_and_padding(tmp_path):
    path = tmp_path / "m.safetensors"
    _write_raw(path, ["a.weight", "b.bias"], padding=8)
    header = _safetensors.read_header(path)
    expected = hashlib.sha256(path.read_bytes()[:header.data_start]).hexdigest()
    assert header_digest(header) == "sha256:" + expected


def test_commitment_round_trip(tmp_path):
    path = tmp_path / "m.safetensors"
    _write_raw(path, ["a.weight", "b.bias"])
    committed = _commit(path)
    assert set(committed) == {"file_digest", "header_digest", "manifest_digest", "tensors"}
    assert "whole file" not in _check(committed, path)
    assert "whole file" in _check(committed, path, whole=True)


def test_reordered_data_section_fails_header(tmp_path):
    # Same tensors, names, dtypes and shapes, so the manifest is equal; only the header
    # (offsets) differs. Without the whole-file digest, header_digest must catch it.
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    _write_raw(first, ["a.weight", "b.bias"])
    _write_raw(second, ["b.bias", "a.weight"])
    committed = _commit(first)
    assert _commit(second)["manifest_digest"] == committed["manifest_digest"]
    with pytest.raises(DigestMismatch, match="header_digest"):
        _check(committed, second)


def test_extra_padding_fails_header(tmp_path):
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    _write_raw(first, ["a.weight", "b.bias"])
    _write_raw(second, ["a.weight", "b.bias"], padding=8)
    with pytest.raises(DigestMismatch, match="header_digest"):
        _check(_commit(first), second)


def test_changed_tensor_byte_fails_tensor(tmp_path):
    path = tmp_path / "m.safetensors"
    _write_raw(path, ["a.weight", "b.bias"])
    committed = _commit(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch, match="tensor 'b.bias'"):
        _check(committed, path)


def test_format_1_0_commitment_checks_whole_file(tmp_path):
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    _write_raw(first, ["a.weight", "b.bias"])
    _write_raw(second, ["a.weight", "b.bias"], padding=8)
    committed = _commit(first)
    del committed["header_digest"]
    assert "whole file" in _check(committed, first)
    with pytest.raises(DigestMismatch, match="file_digest"):
        _check(committed, second)


def test_file_digest_checked_only_on_request(tmp_path):
    path = tmp_path / "m.safetensors"
    _write_raw(path, ["a.weight", "b.bias"])
    committed = _commit(path)
    committed["file_digest"] = "sha256:" + "0" * 64
    _check(committed, path)
    with pytest.raises(DigestMismatch, match="file_digest"):
        _check(committed, path, whole=True)
