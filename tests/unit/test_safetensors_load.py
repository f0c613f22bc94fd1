"""mbd_cert._safetensors_load: one read that parses and hashes the same bytes (R-ISS-5)."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mbd_cert import _safetensors, _safetensors_load
from mbd_cert._commitment import header_digest
from mbd_cert.errors import MalformedSafetensors


def _tensors() -> dict[str, np.ndarray]:
    return {
        "weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "empty": np.zeros((0, 5), dtype=np.float64),
        "mask": np.array([True, False, True]),
        "count": np.arange(3, dtype=np.int64),
        "half": np.linspace(-1, 1, 7).astype(np.float16),
    }


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    _safetensors.write_safetensors(path, _tensors(), {"format": "test"})
    return path


def test_digests_equal_separate_pass(model: Path) -> None:
    loaded = _safetensors.load_file(model)
    assert loaded.digests == _safetensors.digest_file(model)
    assert loaded.header_digest == header_digest(_safetensors.read_header(model))
    assert loaded.header == _safetensors.read_header(model)


def test_arrays_equal_reader(model: Path) -> None:
    loaded = _safetensors.load_file(model)
    header = _safetensors.read_header(model)
    assert list(loaded.tensors) == list(header.tensors)
    for name, array in loaded.tensors.items():
        expected = _safetensors.read_tensor(header, name)
        assert array.dtype == expected.dtype, name
        assert array.shape == expected.shape, name
        assert np.array_equal(array, expected), name
        assert array.flags.writeable, name


def test_keep_hashes_every_tensor(model: Path) -> None:
    loaded = _safetensors.load_file(model, keep=lambda name: name == "count")
    assert list(loaded.tensors) == ["count"]
    assert loaded.digests == _safetensors.digest_file(model)


def test_bool_byte_rejected(model: Path, tmp_path: Path) -> None:
    data = bytearray(model.read_bytes())
    header = _safetensors.read_header(model)
    info = header.tensors["mask"]
    data[header.data_start + info.begin] = 2
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(MalformedSafetensors, match="BOOL tensor 'mask' contains byte value 2"):
        _safetensors.load_file(bad)


def _change_after_header(monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    """Make load_file's header read call ``change(path)`` once it has parsed the header."""
    original = _safetensors_load.read_open_header

    def wrapper(handle: Any, st: os.stat_result, path: Path) -> Any:
        result = original(handle, st, path)
        change(path)
        return result

    monkeypatch.setattr(_safetensors_load, "read_open_header", wrapper)


def test_truncated_while_read(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    size = model.stat().st_size
    _change_after_header(monkeypatch, lambda path: os.truncate(path, size - 3))
    with pytest.raises(MalformedSafetensors, match="ended before the") as caught:
        _safetensors.load_file(model)
    assert caught.value.code == "E_SAFETENSORS_CHANGED"
    assert str(model) in str(caught.value)


def test_grown_while_read(model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def grow(path: Path) -> None:
        with open(path, "ab") as handle:
            handle.write(b"\0" * 8)

    _change_after_header(monkeypatch, grow)
    with pytest.raises(MalformedSafetensors, match="grew beyond its") as caught:
        _safetensors.load_file(model)
    assert caught.value.code == "E_SAFETENSORS_CHANGED"


def test_check_unchanged_names_file(model: Path) -> None:
    loaded = _safetensors.load_file(model)
    _safetensors.check_unchanged(model, loaded.digests, loaded.digests.file_digest,
                                 digest_of="its copy")
    other = "sha256:" + "0" * 64
    with pytest.raises(MalformedSafetensors) as caught:
        _safetensors.check_unchanged(model, loaded.digests, other, digest_of="its copy")
    assert caught.value.code == "E_SAFETENSORS_CHANGED"
    assert str(caught.value).startswith(f"{model}: file changed while issue was running: "
                                        f"its copy has digest {other}")
    assert "run issue again" in (caught.value.hint or "")


def test_invalid_file_rejected_like_reader(tmp_path: Path) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(struct.pack("<Q", 2) + b"{}" + b"\0")
    with pytest.raises(MalformedSafetensors) as loaded:
        _safetensors.load_file(path)
    with pytest.raises(MalformedSafetensors) as read:
        _safetensors.read_header(path)
    assert loaded.value.code == read.value.code
