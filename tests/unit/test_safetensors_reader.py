"""Tests of the strict safetensors reader, the digests and the writer."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import load_file, save_file

from mbd_cert import _safetensors as stio
from mbd_cert import (
    _safetensors_digest,
    _safetensors_header,
    _safetensors_read,
    _safetensors_scan,
    _safetensors_write,
)
from mbd_cert.errors import (
    DigestMismatch,
    FileMissing,
    InputError,
    LimitExceeded,
    MalformedSafetensors,
    MbdCertError,
)

EMPTY_DIGEST = "sha256:" + hashlib.sha256(b"").hexdigest()


# --- helpers --------------------------------------------------------------------------


def entry(dtype: str, shape: list[Any], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def raw_file(path: Path, header: bytes | str | dict[str, Any], data: bytes = b"",
             length: int | None = None) -> Path:
    """Write a file with an arbitrary header, length field and data section."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode("utf-8")
    size = len(header) if length is None else length
    path.write_bytes(struct.pack("<Q", size) + header + data)
    return path


def expect(exc_type: type[MbdCertError], code: str, *phrases: str) -> Any:
    """Context manager asserting the exact class, code and message phrases."""

    class _Check:
        def __enter__(self) -> None:
            self._raises = pytest.raises(exc_type)
            self.info = self._raises.__enter__()

        def __exit__(self, *args: Any) -> bool:
            handled = self._raises.__exit__(*args)
            error = self.info.value
            assert type(error) is exc_type
            assert error.code == code
            for phrase in phrases:
                assert phrase in str(error)
            return bool(handled)

    return _Check()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """A small valid file written by the reference writer."""
    path = tmp_path / "sample.safetensors"
    save_file(
        {
            "w": np.arange(6, dtype=np.float32).reshape(2, 3),
            "b": np.array([1, 2, 3], dtype=np.int64),
            "m": np.array([True, False, True]),
        },
        str(path),
        metadata={"format": "pt"},
    )
    return path


# --- header length field --------------------------------------------------------------


@pytest.mark.parametrize("length", [2**63, 2**64 - 1, 100_000_001])
def test_header_length_over_cap(tmp_path: Path, length: int) -> None:
    """R-LIM-2, R-ST-1: a header length over 100,000,000 bytes is rejected before reading it."""
    path = raw_file(tmp_path / "f", b"{}", length=length)
    with expect(MalformedSafetensors, "E_SAFETENSORS_HEADER_TOO_LARGE", str(length),
                "100000000"):
        stio.read_header(path)


def test_header_length_beyond_file(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f", b'{"a":', length=5000)
    with expect(MalformedSafetensors, "E_SAFETENSORS_TRUNCATED", "5000", "only 5 bytes"):
        stio.read_header(path)


def test_header_length_at_cap_but_file_short(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f", b"{}", length=100_000_000)
    with expect(MalformedSafetensors, "E_SAFETENSORS_TRUNCATED", "100000000"):
        stio.read_header(path)


def test_header_length_exactly_at_cap_accepted(tmp_path: Path) -> None:
    header = json.dumps({"a": entry("U8", [2], 0, 2)}).encode()
    padded = header + b" " * (100_000_000 - len(header))
    path = raw_file(tmp_path / "f", padded, b"xy")
    parsed = stio.read_header(path)
    assert parsed.header_size == 100_000_000
    assert parsed.data_start == 100_000_008
    assert stio.read_tensor(parsed, "a").tobytes() == b"xy"
    path.unlink()  # pytest keeps recent temporary directories, so drop the 100 MB now


@pytest.mark.parametrize("size", [0, 1, 7])
def test_file_shorter_than_length_field(tmp_path: Path, size: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"\x01" * size)
    with expect(MalformedSafetensors, "E_SAFETENSORS_TRUNCATED", f"{size} bytes"):
        stio.read_header(path)


@pytest.mark.parametrize("length", [0, 1])
def test_header_length_too_small(tmp_path: Path, length: int) -> None:
    path = raw_file(tmp_path / "f", b"{" * length + b"  ", length=length)
    with expect(MalformedSafetensors, "E_SAFETENSORS_MALFORMED", "at least 2"):
        stio.read_header(path)


def test_huge_length_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The length field is checked before any read of that size is issued.
    path = raw_file(tmp_path / "f", b"{}", length=2**63)
    sizes: list[int] = []
    real_read_exact = _safetensors_read.read_exact

    def spy(handle: Any, size: int, where: Path) -> bytes:
        sizes.append(size)
        return bytes(real_read_exact(handle, size, where))

    monkeypatch.setattr(_safetensors_read, "read_exact", spy)
    with pytest.raises(MalformedSafetensors):
        stio.read_header(path)
    # Only the prefix is read: at most 32 bytes, here the whole 10-byte file.
    assert sizes == [10]


# --- data size against shape ----------------------------------------------------------


def test_size_mismatch_message(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f", {"w": entry("F32", [1000, 1000], 0, 16)}, b"\0" * 16)
    with expect(MalformedSafetensors, "E_SAFETENSORS_SIZE_MISMATCH", "'w'", "4000000 bytes",
                "declare 16 bytes", "[1000, 1000]"):
        stio.read_header(path)


def test_size_mismatch_in_second_tensor(tmp_path: Path) -> None:
    """R-ST-1: shape product times dtype size must equal the declared byte count."""
    header = {"a": entry("U8", [4], 0, 4), "b": entry("F16", [3], 4, 12)}
    path = raw_file(tmp_path / "f", header, b"\0" * 12)
    with expect(MalformedSafetensors, "E_SAFETENSORS_SIZE_MISMATCH", "'b'", "needs 6 bytes",
                "declare 8 bytes"):
        stio.read_header(path)


@pytest.mark.parametrize(
    ("dtype", "shape", "nbytes", "expected"),
    [
        ("U8", [0], 1, 0),
        ("F64", [2**32, 2**32], 8, 2**67),  # would overflow a 64-bit product
        ("BF16", [], 4, 2),
        ("C64", [3], 16, 24),
    ],
)
def test_size_mismatch_other_sizes(tmp_path: Path, dtype: str, shape: list[int],
                                   nbytes: int, expected: int) -> None:
    path = raw_file(tmp_path / "f", {"t": entry(dtype, shape, 0, nbytes)}, b"\0" * nbytes)
    with expect(MalformedSafetensors, "E_SAFETENSORS_SIZE_MISMATCH", f"needs {expected} bytes",
                f"declare {nbytes} bytes"):
        stio.read_header(path)


# --- duplicate keys -------------------------------------------------------------------


def test_duplicate_tensor_name(tmp_path: Path) -> None:
    """R-ST-1: a repeated tensor name is rejected."""
    header = ('{"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
              '"w":{"dtype":"U8","shape":[1,2],"data_offsets":[0,2]}}')
    path = raw_file(tmp_path / "f", header, b"xy")
    with expect(MalformedSafetensors, "E_SAFETENSORS_DUPLICATE_KEY",
                "duplicate tensor name 'w'"):
        stio.read_header(path)


def test_duplicate_tensor_name_not_adjacent(tmp_path: Path) -> None:
    header = ('{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
              '"v":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},'
              '"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}')
    path = raw_file(tmp_path / "f", header, b"xy")
    with expect(MalformedSafetensors, "E_SAFETENSORS_DUPLICATE_KEY", "'w'"):
        stio.read_header(path)


def test_duplicate_field_in_entry(tmp_path: Path) -> None:
    header = '{"w":{"dtype":"U8","shape":[2],"shape":[1],"data_offsets":[0,2]}}'
    path = raw_file(tmp_path / "f", header, b"xy")
    with expect(MalformedSafetensors, "E_SAFETENSORS_DUPLICATE_KEY", "'w'", "'shape' twice"):
        stio.read_header(path)


def test_duplicate_metadata_key(tmp_path: Path) -> None:
    header = '{"__metadata__":{"k":"1","k":"2"}}'
    path = raw_file(tmp_path / "f", header)
    with expect(MalformedSafetensors, "E_SAFETENSORS_DUPLICATE_KEY", "metadata key 'k'"):
        stio.read_header(path)


def test_duplicate_metadata_object(tmp_path: Path) -> None:
    header = '{"__metadata__":{"k":"1"},"__metadata__":{"k":"2"}}'
    path = raw_file(tmp_path / "f", header)
    with expect(MalformedSafetensors, "E_SAFETENSORS_DUPLICATE_KEY", "'__metadata__'"):
        stio.read_header(path)


# --- metadata -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [("1", "the integer 1"), ("null", "null"), ("[]", "a list"), ('{"x":"y"}', "an object"),
     ("true", "a boolean")],
)
def test_metadata_value_not_string(tmp_path: Path, value: str, shown: str) -> None:
    """R-ST-1: metadata values must be strings."""
    path = raw_file(tmp_path / "f", '{"__metadata__":{"epsilon":' + value + "}}")
    with expect(MalformedSafetensors, "E_SAFETENSORS_METADATA", "key 'epsilon'", shown):
        stio.read_header(path)


def test_tensor_named_metadata(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f", {"__metadata__": entry("U8", [2], 0, 2)}, b"xy")
    with expect(MalformedSafetensors, "E_SAFETENSORS_METADATA", "key 'shape' is a list",
                "no tensor may be named '__metadata__'"):
        stio.read_header(path)


@pytest.mark.parametrize("value", ["null", '"x"', "[]"])
def test_metadata_not_object(tmp_path: Path, value: str) -> None:
    path = raw_file(tmp_path / "f", '{"__metadata__":' + value + "}")
    with expect(MalformedSafetensors, "E_SAFETENSORS_METADATA", "'__metadata__'"):
        stio.read_header(path)


def test_metadata_returned(sample: Path) -> None:
    assert stio.read_header(sample).metadata == {"format": "pt"}


def test_writer_rejects_metadata_value_type(tmp_path: Path) -> None:
    """R-ST-3: the writer refuses non-string metadata."""
    with expect(InputError, "E_PARAMETER_INVALID", "key 'epsilon'", "int"):
        stio.write_safetensors(tmp_path / "f", {"a": np.zeros(1)},
                               {"epsilon": 1})  # type: ignore[dict-item]
    assert not (tmp_path / "f").exists()


def test_writer_rejects_metadata_key_type(tmp_path: Path) -> None:
    with expect(InputError, "E_PARAMETER_INVALID", "metadata key 3"):
        stio.write_safetensors(tmp_path / "f", {"a": np.zeros(1)},
                               {3: "x"})  # type: ignore[dict-item]


def test_writer_rejects_tensor_named_metadata(tmp_path: Path) -> None:
    """R-ST-3: the writer refuses a tensor named __metadata__."""
    with expect(InputError, "E_PARAMETER_INVALID", "'__metadata__'"):
        stio.write_safetensors(tmp_path / "f", {"__metadata__": np.zeros(1)})
    assert os.listdir(tmp_path) == []


# --- zero-size tensors ----------------------------------------------------------------


def test_zero_size_tensor_round_trip(tmp_path: Path) -> None:
    """R-DIG-1: a zero-size tensor's digest is the SHA-256 of the empty string."""
    tensors: dict[str, np.ndarray] = {
        "a": np.zeros((2, 0), np.float32),
        "b": np.arange(3, dtype=np.float32),
        "c": np.zeros((0,), np.uint8),
        "d": np.zeros((0, 5, 0), np.int64),
    }
    digests = stio.write_safetensors(tmp_path / "f", tensors)
    header = stio.read_header(tmp_path / "f")
    for name, array in tensors.items():
        got = stio.read_tensor(header, name)
        assert got.shape == array.shape
        assert got.dtype == array.dtype
        assert np.array_equal(got, array)
    assert digests.tensors["a"].digest == EMPTY_DIGEST
    assert digests.tensors["a"].shape == (2, 0)
    assert stio.tensor_digest(header, "d") == EMPTY_DIGEST
    reference = load_file(str(tmp_path / "f"))
    assert reference["a"].shape == (2, 0)


def test_zero_size_tensors_share_offset(tmp_path: Path) -> None:
    header = {"x": entry("F32", [0], 4, 4), "y": entry("U8", [4], 0, 4),
              "z": entry("I64", [3, 0], 4, 4)}
    path = raw_file(tmp_path / "f", header, b"abcd")
    parsed = stio.read_header(path)
    assert list(parsed.tensors) == ["y", "x", "z"]
    digests = stio.digest_file(path, workers=1)
    assert digests.tensors["x"].digest == EMPTY_DIGEST
    assert digests.tensors["y"].digest == digest_of(b"abcd")


def test_empty_file_without_tensors(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f", b"{}      ")
    parsed = stio.read_header(path)
    assert parsed.tensors == {}
    digests = stio.digest_file(path, workers=2)
    assert digests.tensors == {}
    assert digests.file_digest == digest_of(path.read_bytes())


# --- non-contiguous arrays ------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.arange(12, dtype=np.float32).reshape(3, 4).T,
        lambda: np.arange(20, dtype=np.int16)[::3],
        lambda: np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
        lambda: np.arange(6, dtype=">i4").reshape(2, 3),
        lambda: np.arange(24, dtype=np.uint8).reshape(2, 3, 4).transpose(2, 0, 1),
    ],
    ids=["transposed", "strided", "fortran", "big-endian", "permuted"],
)
def test_writer_stores_row_major_order(tmp_path: Path, make: Any) -> None:
    """R-ST-3: the writer stores arrays in C order whatever their memory layout."""
    array = make()
    expected = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<")))
    digests = stio.write_safetensors(tmp_path / "f", {"t": array})
    assert digests.tensors["t"].digest == digest_of(expected.tobytes())
    got = stio.read_tensor(stio.read_header(tmp_path / "f"), "t")
    assert np.array_equal(got, array)
    assert np.array_equal(load_file(str(tmp_path / "f"))["t"], array)


# --- foreign formats ------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_rejected(tmp_path: Path, protocol: int) -> None:
    """R-ST-2: a pickle is 'not a safetensors file' and is never unpickled."""
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"w": [1.0] * 100}, protocol=protocol))
    with expect(MalformedSafetensors, "E_SAFETENSORS_NOT_SAFETENSORS",
                "not a safetensors file", "pickle", "convert it with safetensors"):
        stio.read_header(path)


def test_tiny_pickle_rejected(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(1, protocol=4)[:6])
    with expect(MalformedSafetensors, "E_SAFETENSORS_NOT_SAFETENSORS", "pickle"):
        stio.read_header(path)


def test_zip_checkpoint_rejected(tmp_path: Path) -> None:
    """R-ST-2: a PyTorch zip checkpoint is 'not a safetensors file'."""
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": 1}))
    with expect(MalformedSafetensors, "E_SAFETENSORS_NOT_SAFETENSORS",
                "not a safetensors file", "PyTorch zip checkpoint"):
        stio.read_header(path)


def test_torch_save_rejected(tmp_path: Path) -> None:
    """R-ST-2: both torch.save formats, zip and legacy, are 'not a safetensors file'."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(3)}, path)
    with expect(MalformedSafetensors, "E_SAFETENSORS_NOT_SAFETENSORS", "PyTorch zip"):
        stio.read_header(path)
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(3)}, legacy, _use_new_zipfile_serialization=False)
    with expect(MalformedSafetensors, "E_SAFETENSORS_NOT_SAFETENSORS", "pickle"):
        stio.read_header(legacy)


def test_npy_rejected(tmp_path: Path) -> None:
    """R-ST-2: a NumPy .npy array is 'not a safetensors file'."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(4))
    path = tmp_path / "w.npy"
    path.write_bytes(buffer.getvalue())
    with expect(MalformedSafetensors, "E_SAFETENSORS_NOT_SAFETENSORS", ".npy"):
        stio.read_header(path)


@pytest.mark.parametrize("text", [b'{\n  "format_version": "1.0"\n}\n', b"\xef\xbb\xbf[1, 2, 3]",
                                  b'  {"a": 1}'])
def test_json_document_rejected(tmp_path: Path, text: bytes) -> None:
    # A certificate passed where a tensor file belongs read as a huge length field.
    path = tmp_path / "cert.json"
    path.write_bytes(text)
    with expect(MalformedSafetensors, "E_SAFETENSORS_NOT_SAFETENSORS",
                "looks like a JSON document", "not a .json file"):
        stio.read_header(path)


def test_length_123_not_json(tmp_path: Path) -> None:
    # N = 123 is stored as 7B 00 .. 00: a '{' first, but zero bytes no JSON text has.
    path = tmp_path / "f"
    path.write_bytes((123).to_bytes(8, "little") + b"{}")
    with expect(MalformedSafetensors, "E_SAFETENSORS_TRUNCATED"):
        stio.read_header(path)


def test_length_640_not_taken_for_pickle(tmp_path: Path) -> None:
    # N = 640 is stored as 80 02 00 .. 00, the same first bytes as a protocol-2 pickle.
    header = json.dumps({"a": entry("U8", [2], 0, 2)}).encode()
    path = raw_file(tmp_path / "f", header + b" " * (640 - len(header)), b"xy")
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert stio.read_header(path).header_size == 640


# --- layout: overlaps, gaps, trailing bytes -------------------------------------------


def test_overlapping_offsets(tmp_path: Path) -> None:
    """R-ST-1: tensors' data offsets must not overlap."""
    header = {"a": entry("U8", [4], 0, 4), "b": entry("U8", [4], 2, 6)}
    path = raw_file(tmp_path / "f", header, b"\0" * 6)
    with expect(MalformedSafetensors, "E_SAFETENSORS_LAYOUT", "'b'", "overlap", "'a'"):
        stio.read_header(path)


def test_identical_offsets_overlap(tmp_path: Path) -> None:
    header = {"a": entry("U8", [4], 0, 4), "b": entry("I32", [1], 0, 4)}
    path = raw_file(tmp_path / "f", header, b"\0" * 4)
    with expect(MalformedSafetensors, "E_SAFETENSORS_LAYOUT", "overlap"):
        stio.read_header(path)


def test_zero_size_inside_tensor_overlaps(tmp_path: Path) -> None:
    header = {"a": entry("U8", [4], 0, 4), "b": entry("U8", [0], 2, 2)}
    path = raw_file(tmp_path / "f", header, b"\0" * 4)
    with expect(MalformedSafetensors, "E_SAFETENSORS_LAYOUT", "overlap"):
        stio.read_header(path)


@pytest.mark.parametrize(("first_begin", "gap_text"), [(0, "[2, 4]"), (2, "[0, 2]")])
def test_gap_between_tensors(tmp_path: Path, first_begin: int, gap_text: str) -> None:
    """R-ST-1: tensors' data offsets must leave no gap."""
    if first_begin == 0:
        header = {"a": entry("U8", [2], 0, 2), "b": entry("U8", [2], 4, 6)}
    else:
        header = {"a": entry("U8", [2], 2, 4), "b": entry("U8", [2], 4, 6)}
    path = raw_file(tmp_path / "f", header, b"\0" * 6)
    with expect(MalformedSafetensors, "E_SAFETENSORS_LAYOUT", "gap of 2 bytes", gap_text):
        stio.read_header(path)


def test_trailing_bytes_after_data(tmp_path: Path) -> None:
    """R-ST-1: the last tensor must end at the end of the file."""
    path = raw_file(tmp_path / "f", {"a": entry("U8", [2], 0, 2)}, b"xyz")
    with expect(MalformedSafetensors, "E_SAFETENSORS_LAYOUT", "1 bytes after the last"):
        stio.read_header(path)


def test_trailing_bytes_without_tensors(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f", "{}", b"junk")
    with expect(MalformedSafetensors, "E_SAFETENSORS_LAYOUT", "4 bytes after"):
        stio.read_header(path)


def test_data_section_truncated(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f", {"a": entry("U8", [2], 0, 2),
                                     "b": entry("F32", [2], 2, 10)}, b"\0" * 6)
    with expect(MalformedSafetensors, "E_SAFETENSORS_TRUNCATED", "'b'", "ends at data offset 10",
                "has 6 bytes"):
        stio.read_header(path)


def test_begin_after_end(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f", {"a": entry("U8", [0], 4, 2)}, b"\0" * 4)
    with expect(MalformedSafetensors, "E_SAFETENSORS_LAYOUT", "[4, 2]", "begin <= end"):
        stio.read_header(path)


# --- entry fields ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "phrase"),
    [([-1], "[-1]"), ([True, 2], "True"), ([2, None], "None"), ("[2]", "a string"),
     ({"x": 1}, "an object")],
    ids=["negative", "bool", "null", "string", "object"],
)
def test_bad_shape(tmp_path: Path, shape: Any, phrase: str) -> None:
    """R-ST-1: shape dimensions are non-negative integers."""
    path = raw_file(tmp_path / "f", {"a": entry("U8", shape, 0, 2)}, b"xy")
    with expect(MalformedSafetensors, "E_SAFETENSORS_MALFORMED", "'a'", "shape", phrase):
        stio.read_header(path)


def test_float_in_shape(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f", '{"a":{"dtype":"U8","shape":[2.0],"data_offsets":[0,2]}}',
                    b"xy")
    with expect(MalformedSafetensors, "E_SAFETENSORS_MALFORMED", "non-integer number 2.0"):
        stio.read_header(path)


@pytest.mark.parametrize(
    ("dtype", "phrase"),
    [("F128", "'F128'"), ("f32", "'f32'"), ("F4", "sub-byte"), (7, "the integer 7"),
     (None, "null"), ([], "a list"), ({"a": 1}, "an object")],
)
def test_unknown_dtype(tmp_path: Path, dtype: Any, phrase: str) -> None:
    path = raw_file(tmp_path / "f", {"a": entry(dtype, [2], 0, 2)}, b"xy")
    with expect(MalformedSafetensors, "E_SAFETENSORS_MALFORMED", "'a'", "dtype", phrase):
        stio.read_header(path)


@pytest.mark.parametrize(
    ("offsets", "phrase"),
    [([0], "data_offsets [0]"), ([0, 1, 2], "[0, 1, 2]"), ([0, "2"], "two integers"),
     ([0, True], "two integers"), ("0-2", "a string")],
)
def test_bad_offsets(tmp_path: Path, offsets: Any, phrase: str) -> None:
    header = {"a": {"dtype": "U8", "shape": [2], "data_offsets": offsets}}
    path = raw_file(tmp_path / "f", header, b"xy")
    with expect(MalformedSafetensors, "E_SAFETENSORS_MALFORMED", "'a'", phrase):
        stio.read_header(path)


def test_negative_offset(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f", {"a": entry("U8", [2], -2, 0)}, b"xy")
    with expect(MalformedSafetensors, "E_SAFETENSORS_LAYOUT", "[-2, 0]"):
        stio.read_header(path)


def test_missing_and_unknown_fields(tmp_path: Path) -> None:
    """R-ST-1: each entry has exactly dtype, shape and data_offsets."""
    path = raw_file(tmp_path / "f", {"a": {"dtype": "U8", "shape": [2]}}, b"xy")
    with expect(MalformedSafetensors, "E_SAFETENSORS_MALFORMED", "'a'", "lacks field"):
        stio.read_header(path)
    extra = dict(entry("U8", [2], 0, 2), offset=0)
    path = raw_file(tmp_path / "g", {"a": extra}, b"xy")
    with expect(MalformedSafetensors, "E_SAFETENSORS_MALFORMED", "unknown field 'offset'"):
        stio.read_header(path)


def test_entry_not_object(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f", {"a": [0, 2]}, b"xy")
    with expect(MalformedSafetensors, "E_SAFETENSORS_MALFORMED", "'a' is a list"):
        stio.read_header(path)


# --- header syntax --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "phrase"),
    [
        (b"[]", "not a JSON object"),
        (b'  {"a":1}', "starts with ' '"),
        (b'"{}"', "not a JSON object"),
        (b"{}\n", "only spaces"),
        (b"{}\t  ", "only spaces"),
        (b"{}\x00", "only spaces"),
        (b"{}{}", "only spaces"),
        (b"{\xff}", "not valid UTF-8"),
        (b"\xef\xbb\xbf{}", "not a JSON object"),
        (b'{"a":NaN}', "NaN"),
        (b'{"a":-Infinity}', "-Infinity"),
        (b'{"a":', "invalid header JSON"),
        (b'{"a\x01":1}', "invalid header JSON"),
        (b'{"a":[' + b"9" * 30 + b"]}", "64 bits"),
        (b'{"a":1e5}', "non-integer"),
    ],
)
def test_header_syntax_rejected(tmp_path: Path, header: bytes, phrase: str) -> None:
    path = raw_file(tmp_path / "f", header)
    with expect(MalformedSafetensors, "E_SAFETENSORS_MALFORMED", phrase):
        stio.read_header(path)


def test_deep_nesting_rejected(tmp_path: Path) -> None:
    header = b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    path = raw_file(tmp_path / "f", header)
    with expect(MalformedSafetensors, "E_SAFETENSORS_MALFORMED", "nested too deeply"):
        stio.read_header(path)


def test_lone_surrogate_name_rejected(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f", '{"\\ud800":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}',
                    b"xy")
    with expect(MalformedSafetensors, "E_SAFETENSORS_MALFORMED", "not valid Unicode"):
        stio.read_header(path)


def test_unicode_names_accepted(tmp_path: Path) -> None:
    tensors: dict[str, np.ndarray] = {
        "é": np.zeros(1, np.uint8),
        "z": np.ones(1, np.uint8),
        "\U0001f600": np.ones(2),
    }
    stio.write_safetensors(tmp_path / "f", tensors)
    header = stio.read_header(tmp_path / "f")
    assert set(header.tensors) == set(tensors)
    assert load_file(str(tmp_path / "f")).keys() == tensors.keys()


# --- caps -----------------------------------------------------------------------------


def test_tensor_count_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_safetensors_header, "MAX_TENSORS", 2)
    header = {name: entry("U8", [1], i, i + 1) for i, name in enumerate("abc")}
    path = raw_file(tmp_path / "f", header, b"xyz")
    with expect(LimitExceeded, "E_LIMIT_EXCEEDED", "more than 2 tensors"):
        stio.read_header(path)


def test_json_object_count_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_safetensors_header, "MAX_TENSORS", 1)
    header = '{"__metadata__":{"a":"b"},"x":{"y":{"z":{}}}}'
    path = raw_file(tmp_path / "f", header)
    with expect(LimitExceeded, "E_LIMIT_EXCEEDED", "JSON objects"):
        stio.read_header(path)


@pytest.mark.parametrize(("cap", "header", "phrase"), [
    ("MAX_HEADER_BRACKETS", '{"a":[[],[],[]]}', "4 '[' bytes"),
    ("MAX_HEADER_QUOTES", '{"__metadata__":{"a":"b"}}', "6 '\"' bytes"),
])
def test_value_count_caps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cap: str,
                          header: str, phrase: str) -> None:
    monkeypatch.setattr(_safetensors_header, cap, 3)
    path = raw_file(tmp_path / "f", header)
    with expect(LimitExceeded, "E_LIMIT_EXCEEDED", phrase, "maximum of 3"):
        stio.read_header(path)


def test_name_length_cap(tmp_path: Path) -> None:
    name = "n" * (stio.MAX_TENSOR_NAME_BYTES + 1)
    path = raw_file(tmp_path / "f", {name: entry("U8", [1], 0, 1)}, b"x")
    with expect(LimitExceeded, "E_LIMIT_EXCEEDED", "1025 bytes", "1024"):
        stio.read_header(path)
    ok = "n" * stio.MAX_TENSOR_NAME_BYTES
    path = raw_file(tmp_path / "g", {ok: entry("U8", [1], 0, 1)}, b"x")
    assert ok in stio.read_header(path).tensors


def test_rank_cap(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f", {"a": entry("U8", [1] * 33, 0, 1)}, b"x")
    with expect(LimitExceeded, "E_LIMIT_EXCEEDED", "33 dimensions"):
        stio.read_header(path)
    path = raw_file(tmp_path / "g", {"a": entry("U8", [1] * 32, 0, 1)}, b"x")
    assert stio.read_tensor(stio.read_header(path), "a").ndim == 32


def test_dimension_cap(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f", {"a": entry("U8", [2**53, 0], 0, 0)})
    with expect(LimitExceeded, "E_LIMIT_EXCEEDED", str(2**53)):
        stio.read_header(path)


def test_empty_tensor_spanning_too_much_rejected(tmp_path: Path) -> None:
    # Zero elements, but numpy cannot create an empty array of this shape: the reader
    # raised ValueError (exit 3) where the header should be rejected (a fuzz case).
    path = raw_file(tmp_path / "f", {"t0": entry("F32", [0, 1313608, 1755350918398], 0, 0)})
    with expect(LimitExceeded, "E_LIMIT_EXCEEDED", "nonzero dimensions span"):
        stio.read_header(path)


def test_empty_tensor_of_large_shape_reads(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f", {"t0": entry("U8", [0, 2**31, 2**31], 0, 0)})
    array = stio.read_tensor(stio.read_header(path), "t0")
    assert array.shape == (0, 2**31, 2**31)


# --- files that are not there or not regular ------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with expect(FileMissing, "E_FILE_MISSING", "nope.safetensors"):
        stio.read_header(tmp_path / "nope.safetensors")


def test_directory_rejected(tmp_path: Path) -> None:
    with expect(InputError, "E_FILE_NOT_REGULAR", "is a directory"):
        stio.read_header(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_rejected_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with expect(InputError, "E_FILE_NOT_REGULAR", "not a regular file"):
        stio.read_header(fifo)


# --- reading tensors ------------------------------------------------------------------


def test_read_tensor_values(sample: Path) -> None:
    header = stio.read_header(sample)
    weights = stio.read_tensor(header, "w")
    assert weights.dtype == np.dtype("<f4")
    assert not weights.flags.writeable
    assert np.array_equal(weights, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert [name for name, _ in stio.iter_tensors(header)] == list(header.tensors)


def test_read_tensor_unknown_name(sample: Path) -> None:
    with expect(MalformedSafetensors, "E_SAFETENSORS_TENSOR_MISSING", "'nope'"):
        stio.read_tensor(stio.read_header(sample), "nope")
    with expect(MalformedSafetensors, "E_SAFETENSORS_TENSOR_MISSING", "'nope'"):
        stio.tensor_digest(stio.read_header(sample), "nope")


@pytest.mark.parametrize(("dtype", "raw"), [("BF16", "<u2"), ("F8_E4M3", "|u1"),
                                            ("F8_E5M2", "|u1"), ("F8_E8M0", "|u1")])
def test_raw_views_for_bf16_and_f8(tmp_path: Path, dtype: str,
                                                  raw: str) -> None:
    itemsize = np.dtype(raw).itemsize
    data = bytes(range(1, 4 * itemsize + 1))
    path = raw_file(tmp_path / "f", {"t": entry(dtype, [2, 2], 0, len(data))}, data)
    got = stio.read_tensor(stio.read_header(path), "t")
    assert got.dtype == np.dtype(raw)
    assert got.shape == (2, 2)
    assert got.tobytes() == data


def test_bool_tensor_with_invalid_byte(tmp_path: Path) -> None:
    path = raw_file(tmp_path / "f", {"m": entry("BOOL", [3], 0, 3)}, b"\x01\x00\x02")
    header = stio.read_header(path)
    with expect(MalformedSafetensors, "E_SAFETENSORS_MALFORMED", "'m'", "byte value 2",
                "element 2"):
        stio.read_tensor(header, "m")


def test_file_changed_after_header(sample: Path) -> None:
    header = stio.read_header(sample)
    with open(sample, "ab") as handle:
        handle.write(b"\0")
    with expect(MalformedSafetensors, "E_SAFETENSORS_CHANGED", "changed"):
        stio.read_tensor(header, "w")
    with expect(MalformedSafetensors, "E_SAFETENSORS_CHANGED", "changed"):
        stio.tensor_digest(header, "w")


def test_file_replaced_after_header(sample: Path, tmp_path: Path) -> None:
    header = stio.read_header(sample)
    other = tmp_path / "other"
    other.write_bytes(sample.read_bytes())
    os.replace(other, sample)
    with expect(MalformedSafetensors, "E_SAFETENSORS_CHANGED", "changed"):
        stio.read_tensor(header, "w")


def test_file_edited_with_mtime_restored(sample: Path) -> None:
    # An edit in place that keeps the size and restores the mtime still changes the ctime.
    before = os.stat(sample)
    header = stio.read_header(sample)
    time.sleep(0.05)  # so that a coarse file system clock has ticked since the file was written
    with open(sample, "r+b") as handle:
        handle.seek(header.data_start)
        handle.write(b"\xff")
    os.utime(sample, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(sample)
    assert after.st_size == before.st_size
    assert after.st_mtime_ns == before.st_mtime_ns
    assert after.st_ctime_ns != before.st_ctime_ns
    with expect(MalformedSafetensors, "E_SAFETENSORS_CHANGED", "changed"):
        stio.read_tensor(header, "w")
    with expect(MalformedSafetensors, "E_SAFETENSORS_CHANGED", "changed"):
        stio.tensor_digest(header, "w")


NUMPY_DTYPES = [np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.float16, np.int32,
                np.uint32, np.float32, np.complex64, np.float64, np.int64, np.uint64]


@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=lambda d: np.dtype(d).name)
def test_agrees_with_reference_reader(tmp_path: Path, dtype: Any) -> None:
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, size=(5 * 3 * np.dtype(dtype).itemsize,), dtype=np.uint8)
    if dtype is np.bool_:
        raw = raw % 2
    tensors = {
        "x": raw.view(dtype).reshape(5, 3),
        "scalar": np.zeros((), dtype),
        "empty": np.zeros((0, 4), dtype),
        "u8": np.arange(3, dtype=np.uint8),
    }
    path = tmp_path / "ref.safetensors"
    save_file(tensors, str(path), metadata={"k": "v"})
    reference = load_file(str(path))
    header = stio.read_header(path)
    assert header.metadata == {"k": "v"}
    for name, expected in reference.items():
        got = stio.read_tensor(header, name)
        assert got.dtype == expected.dtype
        assert got.shape == expected.shape
        assert got.tobytes() == expected.tobytes()
        assert stio.tensor_digest(header, name) == digest_of(expected.tobytes())


# --- digests --------------------------------------------------------------------------


def test_digests_match_hashlib(sample: Path) -> None:
    """R-DIG-1: a tensor digest is the SHA-256 of its stored data bytes."""
    reference = load_file(str(sample))
    header = stio.read_header(sample)
    for workers in (1, 2, 4):
        digests = stio.digest_file(sample, workers=workers)
        assert digests.file_digest == digest_of(sample.read_bytes())
        assert stio.file_digest(sample) == digests.file_digest
        for name, array in reference.items():
            assert digests.tensors[name].digest == digest_of(array.tobytes())
            assert digests.tensors[name].dtype == header.tensors[name].dtype
            assert digests.tensors[name].shape == array.shape
        assert digests.metadata == {"format": "pt"}


def test_digest_file_without_file_digest(sample: Path) -> None:
    full = stio.digest_file(sample, workers=2)
    for workers in (1, 3):
        partial = stio.digest_file(sample, workers=workers, with_file_digest=False)
        assert partial.file_digest is None
        assert partial.tensors == full.tensors
        assert partial.manifest_digest == full.manifest_digest


def test_digest_chunk_and_batch_boundaries(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    tensors = {f"t{i:02d}": rng.integers(0, 255, size=int(rng.integers(0, 40)),
                                         dtype=np.uint8) for i in range(30)}
    path = tmp_path / "f"
    save_file(tensors, str(path))
    expected = {name: digest_of(array.tobytes()) for name, array in tensors.items()}
    monkeypatch.setattr(_safetensors_digest, "CHUNK_BYTES", 7)
    monkeypatch.setattr(_safetensors_scan, "_BATCH_BYTES", 50)
    for workers in (1, 3):
        digests = stio.digest_file(path, workers=workers)
        assert {n: d.digest for n, d in digests.tensors.items()} == expected
        assert digests.file_digest == digest_of(path.read_bytes())
    assert stio.file_digest(path) == digest_of(path.read_bytes())


def test_digest_progress(sample: Path) -> None:
    for workers in (1, 2):
        calls: list[tuple[int, int]] = []

        def record(done: int, total: int, calls: list[tuple[int, int]] = calls) -> None:
            calls.append((done, total))

        stio.digest_file(sample, workers=workers, progress=record)
        total = calls[-1][1]
        assert calls[-1] == (total, total)
        assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_parallel_progress_before_last_task(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # The last batch waits until progress has been reported for another task. If
    # progress came only when all tasks had ended, it would wait out its timeout first.
    path = tmp_path / "f"
    save_file({f"t{i}": np.full(64, i, np.uint8) for i in range(6)}, str(path))
    monkeypatch.setattr(_safetensors_scan, "_BATCH_BYTES", 64)
    reported = threading.Event()
    last_done = threading.Event()
    hash_batch = _safetensors_scan._hash_batch

    def slow_last(header: Any, batch: list[Any], nonfinite: Any) -> dict[str, str]:
        if batch[-1].name == "t5":
            reported.wait(timeout=5)
            result = hash_batch(header, batch, nonfinite)
            last_done.set()
            return result
        return hash_batch(header, batch, nonfinite)

    monkeypatch.setattr(_safetensors_scan, "_hash_batch", slow_last)
    last_done_at_call: list[bool] = []

    def record(done: int, total: int) -> None:
        last_done_at_call.append(last_done.is_set())
        reported.set()

    digests = stio.digest_file(path, workers=2, progress=record, with_file_digest=False)
    assert len(digests.tensors) == 6
    assert len(last_done_at_call) == 6
    assert last_done_at_call[0] is False


def test_default_workers_by_file_size(sample: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A small file is hashed in the calling thread; above the threshold, in a pool.
    pools: list[int] = []
    parallel = _safetensors_scan._digest_parallel

    def spy(header: Any, workers: int, *args: Any) -> Any:
        pools.append(workers)
        return parallel(header, workers, *args)

    monkeypatch.setattr(_safetensors_scan, "_digest_parallel", spy)
    monkeypatch.setattr(_safetensors_scan.os, "cpu_count", lambda: 2)
    small = stio.digest_file(sample)
    assert pools == []
    monkeypatch.setattr(_safetensors_scan, "_SERIAL_BYTES", sample.stat().st_size - 1)
    assert stio.digest_file(sample) == small
    assert pools == [2]


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_digest_bad_workers(sample: Path, workers: Any) -> None:
    with expect(InputError, "E_PARAMETER_INVALID", "workers"):
        stio.digest_file(sample, workers=workers)


def test_manifest_canonical_bytes(tmp_path: Path) -> None:
    """R-DIG-2: the manifest is the canonical JSON of metadata and sorted tensor entries."""
    path = tmp_path / "f"
    save_file({"b": np.zeros(2, np.float32), "a": np.ones(1, np.uint8)}, str(path),
              metadata={"z": "1"})
    header = stio.read_header(path)
    da, db = digest_of(b"\x01"), digest_of(b"\0" * 8)
    digests = {"a": da, "b": db}
    expected = (
        '{"metadata":{"z":"1"},"tensors":['
        f'{{"digest":"{da}","dtype":"U8","name":"a","shape":[1]}},'
        f'{{"digest":"{db}","dtype":"F32","name":"b","shape":[2]}}]}}'
    ).encode()
    assert rfc8785.dumps(stio.manifest(header, digests)) == expected
    assert stio.manifest_digest(header, digests) == digest_of(expected)
    assert stio.digest_file(path).manifest_digest == digest_of(expected)


def test_manifest_sorts_by_utf8_bytes() -> None:
    """R-DIG-2: manifest entries are sorted by name."""
    names = ["b", "a", "\U0001f600", "\uff5e", "A", "a.b"]
    tensors = {n: stio.TensorDigest("U8", (1,), EMPTY_DIGEST) for n in names}
    built = stio.build_manifest({}, tensors)
    assert [t["name"] for t in built["tensors"]] == sorted(names, key=str.encode)


def test_manifest_rejects_wrong_digests(sample: Path) -> None:
    header = stio.read_header(sample)
    good = {name: EMPTY_DIGEST for name in header.tensors}
    with expect(InputError, "E_PARAMETER_INVALID", "missing ['w']"):
        stio.manifest(header, {k: v for k, v in good.items() if k != "w"})
    with expect(InputError, "E_PARAMETER_INVALID", "unknown ['x']"):
        stio.manifest(header, dict(good, x=EMPTY_DIGEST))
    with expect(InputError, "E_PARAMETER_INVALID", "'w'", "64 lowercase hex"):
        stio.manifest(header, dict(good, w=EMPTY_DIGEST.upper()))


def test_flipped_byte_changes_one_digest(sample: Path, tmp_path: Path) -> None:
    before = stio.digest_file(sample)
    header = stio.read_header(sample)
    info = header.tensors["w"]
    data = bytearray(sample.read_bytes())
    data[header.data_start + info.begin + 5] ^= 0x01
    flipped = tmp_path / "flipped"
    flipped.write_bytes(bytes(data))
    after = stio.digest_file(flipped)
    assert after.tensors["w"].digest != before.tensors["w"].digest
    assert after.tensors["b"] == before.tensors["b"]
    assert after.tensors["m"] == before.tensors["m"]
    assert after.file_digest != before.file_digest
    assert after.manifest_digest != before.manifest_digest


def test_manifest_binds_shape_and_name(tmp_path: Path) -> None:
    data = np.arange(6, dtype=np.float32)
    one = stio.write_safetensors(tmp_path / "one", {"w": data.reshape(2, 3)})
    two = stio.write_safetensors(tmp_path / "two", {"w": data.reshape(3, 2)})
    three = stio.write_safetensors(tmp_path / "three", {"v": data.reshape(2, 3)})
    assert one.tensors["w"].digest == two.tensors["w"].digest == three.tensors["v"].digest
    assert len({one.manifest_digest, two.manifest_digest, three.manifest_digest}) == 3


# --- writer ---------------------------------------------------------------------------


def test_writer_matches_reference_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    tensors: dict[str, np.ndarray] = {
        "b": rng.integers(0, 255, 3).astype(np.uint8),
        "a": rng.standard_normal((2, 3)).astype(np.float32),
        "c": np.zeros(1, np.int64),
        "d": np.zeros((2, 0), np.float16),
        "e": np.array(3.5),
        "f": np.array([True, False]),
        "g": np.arange(4, dtype=np.int32),
    }
    # One key only: the reference writer stores metadata in hash-map order.
    metadata = {"format": "mbd"}
    ours = stio.write_safetensors(tmp_path / "ours", tensors, metadata)
    save_file(tensors, str(tmp_path / "ref"), metadata=metadata)
    assert (tmp_path / "ours").read_bytes() == (tmp_path / "ref").read_bytes()
    assert ours.file_digest == digest_of((tmp_path / "ref").read_bytes())
    header = stio.read_header(tmp_path / "ours")
    assert header.data_start % 8 == 0
    for info in header.tensors.values():
        assert info.begin % stio.DTYPES[info.dtype].itemsize == 0


def test_writer_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "f"
    stio.write_safetensors(path, {"a": np.zeros(1)})
    before = path.read_bytes()
    with expect(InputError, "E_FILE_EXISTS", str(path)):
        stio.write_safetensors(path, {"a": np.ones(1)})
    assert path.read_bytes() == before
    stio.write_safetensors(path, {"a": np.ones(1)}, overwrite=True)
    assert np.array_equal(load_file(str(path))["a"], np.ones(1))
    assert os.listdir(tmp_path) == ["f"]


@pytest.mark.parametrize(
    ("value", "phrase"),
    [(np.zeros(2, np.float128) if hasattr(np, "float128") else np.zeros(2, "V16"), "dtype"),
     (np.array(["x"]), "dtype <U1"),
     (np.array([object()]), "dtype object"),
     (np.zeros(2, [("a", "<f4")]), "dtype"),
     ([1.0, 2.0], "has type list"),
     (np.float32(1.0), "has type float32")],
)
def test_writer_rejects_unsupported_values(tmp_path: Path, value: Any, phrase: str) -> None:
    with expect(InputError, "E_PARAMETER_INVALID", "'t'", phrase):
        stio.write_safetensors(tmp_path / "f", {"t": value})
    assert os.listdir(tmp_path) == []


def test_writer_rejects_non_string_name(tmp_path: Path) -> None:
    with expect(InputError, "E_PARAMETER_INVALID", "tensor name 3"):
        stio.write_safetensors(tmp_path / "f", {3: np.zeros(1)})  # type: ignore[dict-item]


def test_writer_rejects_invalid_bool_bytes(tmp_path: Path) -> None:
    mask = np.array([0, 1, 2], dtype=np.uint8).view(np.bool_)
    with expect(InputError, "E_PARAMETER_INVALID", "'m'", "0 and 1"):
        stio.write_safetensors(tmp_path / "f", {"m": mask})


def test_writer_missing_directory(tmp_path: Path) -> None:
    with expect(FileMissing, "E_FILE_MISSING", "missing"):
        stio.write_safetensors(tmp_path / "missing" / "f", {"a": np.zeros(1)})


def test_writer_detects_corrupted_readback(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """R-ST-3: the writer reads the file back and compares digests before it is used."""
    real = _safetensors_write._write_payload

    def corrupting(handle: Any, header: bytes, prepared: Any) -> None:
        buffer = io.BytesIO()
        real(buffer, header, prepared)
        data = bytearray(buffer.getvalue())
        data[-1] ^= 0xFF
        handle.write(bytes(data))

    monkeypatch.setattr(_safetensors_write, "_write_payload", corrupting)
    with expect(DigestMismatch, "E_WRITE_READBACK_MISMATCH", "'a'", "expected sha256:"):
        stio.write_safetensors(tmp_path / "f", {"a": np.arange(4, dtype=np.float32)})
    assert os.listdir(tmp_path) == []


def test_writer_interrupt_leaves_nothing(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(handle: Any, header: bytes, prepared: Any) -> None:
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(_safetensors_write, "_write_payload", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stio.write_safetensors(tmp_path / "f", {"a": np.zeros(3)})
    assert os.listdir(tmp_path) == []


# --- property tests -------------------------------------------------------------------

WRITABLE_DTYPES: list[np.dtype[Any]] = [np.dtype(d) for d in NUMPY_DTYPES]
WRITABLE_DTYPES += [np.dtype(">f4"), np.dtype(">i8")]


@st.composite
def tensor_dicts(draw: st.DrawFn) -> dict[str, np.ndarray]:
    names = draw(st.lists(
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1,
                max_size=12).filter(lambda n: n != "__metadata__"),
        max_size=6, unique=True))
    tensors: dict[str, np.ndarray] = {}
    for name in names:
        dtype = draw(st.sampled_from(WRITABLE_DTYPES))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
        array = draw(hnp.arrays(dtype, shape))
        if draw(st.booleans()) and array.ndim >= 2:
            array = array.T
        tensors[name] = array
    return tensors


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(tensors=tensor_dicts(),
       metadata=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3))
def test_round_trip_property(tmp_path: Path, tensors: dict[str, np.ndarray],
                             metadata: dict[str, str]) -> None:
    path = tmp_path / "rt.safetensors"
    digests = stio.write_safetensors(path, tensors, metadata, overwrite=True)
    header = stio.read_header(path)
    assert header.metadata == metadata
    assert set(header.tensors) == set(tensors)
    for name, array in tensors.items():
        expected = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<")))
        got = stio.read_tensor(header, name)
        assert got.shape == array.shape
        assert got.tobytes() == expected.tobytes()
        assert digests.tensors[name].digest == digest_of(expected.tobytes())
        assert stio.tensor_digest(header, name) == digests.tensors[name].digest
    assert stio.digest_file(path, workers=2) == digests


def _valid_file_bytes() -> bytes:
    tensors: dict[str, np.ndarray] = {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
               "b": np.arange(3, dtype=np.int16), "e": np.zeros((2, 0), np.uint8)}
    header = json.dumps({"__metadata__": {"k": "v"}, **{
        "w": entry("F32", [2, 3], 0, 24), "b": entry("I16", [3], 24, 30),
        "e": entry("U8", [2, 0], 30, 30)}}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    data = tensors["w"].tobytes() + tensors["b"].tobytes()
    return struct.pack("<Q", len(header)) + header + data


VALID_FILE = _valid_file_bytes()
HEADER_END = 8 + struct.unpack("<Q", VALID_FILE[:8])[0]


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID_FILE)
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        position = draw(st.integers(0, min(HEADER_END, len(data)) - 1 if data else 0))
        if not data:
            break
        if operation == "replace":
            data[position] = draw(st.integers(0, 255))
        elif operation == "insert":
            data.insert(position, draw(st.sampled_from(b' {}[]",:0129-eE.\\\x00\xff')))
        elif operation == "delete":
            del data[position]
        else:
            del data[position:]
    return bytes(data)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=mutated_files())
def test_mutated_header_never_crashes(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "mutated.safetensors"
    path.write_bytes(content)
    try:
        header = stio.read_header(path)
        for name in header.tensors:
            stio.read_tensor(header, name)
        digests = stio.digest_file(path, workers=2)
    except MalformedSafetensors:
        return
    assert digests.file_digest == digest_of(content)


@pytest.mark.fuzz
@settings(max_examples=20_000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=mutated_files())
def test_mutated_header_long_fuzz(tmp_path: Path, content: bytes) -> None:
    test_mutated_header_never_crashes.hypothesis.inner_test(tmp_path, content)  # type: ignore[attr-defined]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8)
    | st.sampled_from(["U8", "F32", "BOOL", "__metadata__", "dtype", "shape",
                       "data_offsets"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["dtype", "shape", "data_offsets", "__metadata__",
                                       "a", "b"]), children, max_size=4),
    max_leaves=20,
)


small_ints = st.integers(-1, 12) | st.booleans()
plausible_entries = st.fixed_dictionaries({
    "dtype": st.sampled_from(["U8", "I16", "F32", "BOOL", "BF16", "F4", "x"]),
    "shape": st.lists(small_ints, max_size=3),
    "data_offsets": st.lists(small_ints, min_size=1, max_size=3),
})


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.dictionaries(st.text(max_size=4) | st.just("__metadata__"),
                              json_values | plausible_entries, max_size=4),
       data=st.binary(max_size=16))
def test_random_json_header_never_crashes(tmp_path: Path, header: dict[str, Any],
                                          data: bytes) -> None:
    path = raw_file(tmp_path / "random.safetensors", header, data)
    try:
        parsed = stio.read_header(path)
        for name in parsed.tensors:
            stio.read_tensor(parsed, name)
        stio.digest_file(path, workers=1)
    except (MalformedSafetensors, LimitExceeded):
        return


@pytest.mark.parametrize("dtype", ["<f4", "<f8", "<f2", "<i1", "<c8", "<u2"])
def test_count_nonzero_entries_reads_bytes_in_chunks(tmp_path: Path, dtype: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from mbd_cert import _safetensors_read

    # A 24-byte chunk makes a 97-entry tensor span several reads, with a partial last one.
    monkeypatch.setattr(_safetensors_read, "_COUNT_CHUNK_BYTES", 24)
    values = np.zeros(97, dtype=dtype)
    for index in (0, 5, 50, 96):
        values[index] = 1
    if np.dtype(dtype).kind in "fc":
        values[60] = -0.0  # equal to zero, but its sign bit is set
    path = tmp_path / "m.safetensors"
    stio.write_safetensors(path, {"t": values, "z": np.zeros(8, dtype=dtype)})
    header = stio.read_header(path)
    expected = 4 + (1 if np.dtype(dtype).kind in "fc" else 0)
    assert stio.count_nonzero_entries(header, "t") == expected
    assert stio.count_nonzero_entries(header, "z") == 0


def test_count_nonzero_entries_ignoring_sign(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    stio.write_safetensors(path, {
        "f": np.array([-0.0, 0.0, -0.0], dtype="<f4"),
        "c": np.array([complex(-0.0, -0.0), 0j], dtype="<c8"),
        "i": np.array([-128, 0], dtype="<i1"),  # 0x80 is a value, not a sign on zero
    })
    header = stio.read_header(path)
    assert stio.count_nonzero_entries(header, "f") == 2
    assert stio.count_nonzero_entries(header, "f", ignore_sign=True) == 0
    assert stio.count_nonzero_entries(header, "c", ignore_sign=True) == 0
    assert stio.count_nonzero_entries(header, "i", ignore_sign=True) == 1
