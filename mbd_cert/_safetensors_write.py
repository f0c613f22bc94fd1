"""Writer of safetensors files for the issuer, with read-back verification.

The issuer signs digests of the files it writes, so a file must hold exactly the
arrays it was given. :func:`write_safetensors` therefore converts every array to
contiguous little-endian form, writes a temporary file, reads it back with the
strict reader, compares every tensor digest with one computed from memory, and only
then renames the file into place.

The layout follows the reference writer (safetensors crate 0.8). Tensors are
stored sorted by dtype (largest first, in the crate's dtype order) and then by
name. The header is padded with spaces to a multiple of 8 bytes, so every tensor
starts at an offset aligned to its element size. Metadata keys are written in
sorted order.

Stability: private module. Import :func:`write_safetensors` from
:mod:`mbd_cert._safetensors`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from mbd_cert._paths import atomic_output
from mbd_cert._safetensors_digest import DIGEST_PREFIX, FileDigests
from mbd_cert._safetensors_header import (
    DTYPES,
    MAX_DIM,
    MAX_HEADER_BYTES,
    MAX_RANK,
    MAX_TENSOR_NAME_BYTES,
    MAX_TENSORS,
)
from mbd_cert._safetensors_scan import digest_file
from mbd_cert.errors import DigestMismatch, InputError, LimitExceeded

__all__ = ["write_safetensors"]

# numpy (kind, itemsize) to safetensors dtype, for the dtypes numpy can represent.
# BF16 and the F8 types have no numpy dtype, so the writer cannot produce them.
_NUMPY_TO_DTYPE = {
    ("b", 1): "BOOL",
    ("u", 1): "U8",
    ("i", 1): "I8",
    ("i", 2): "I16",
    ("u", 2): "U16",
    ("f", 2): "F16",
    ("i", 4): "I32",
    ("u", 4): "U32",
    ("f", 4): "F32",
    ("c", 8): "C64",
    ("f", 8): "F64",
    ("i", 8): "I64",
    ("u", 8): "U64",
}


@dataclass(frozen=True)
class _Prepared:
    name: str
    dtype: str
    array: np.ndarray  # contiguous, little-endian
    digest: str


def _invalid(message: str) -> InputError:
    return InputError(message, code="E_PARAMETER_INVALID",
                      hint="pass a mapping of str names to numpy arrays and str metadata")


def _check_text(description: str, value: object) -> str:
    if not isinstance(value, str):
        raise _invalid(f"{description} {value!r} has type {type(value).__name__}; expected a str")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _invalid(f"{description} {value!r} is not valid Unicode (lone surrogate)") from exc
    return value


def _prepare(name: object, array: object) -> _Prepared:
    text = _check_text("tensor name", name)
    if text == "__metadata__":
        raise _invalid("tensor name '__metadata__' is reserved for the metadata map")
    if len(text.encode("utf-8")) > MAX_TENSOR_NAME_BYTES:
        raise LimitExceeded(f"tensor name {text[:40]!r}... is longer than "
                            f"{MAX_TENSOR_NAME_BYTES} bytes")
    if not isinstance(array, np.ndarray):
        raise _invalid(f"tensor {text!r} has type {type(array).__name__}; expected a numpy "
                       "array (convert it explicitly so no dtype is guessed)")
    dtype = _NUMPY_TO_DTYPE.get((array.dtype.kind, array.dtype.itemsize))
    if dtype is None or array.dtype.fields is not None or array.dtype.subdtype is not None:
        raise _invalid(f"tensor {text!r} has numpy dtype {array.dtype}, which safetensors "
                       "cannot store; supported: " + ", ".join(sorted(_NUMPY_TO_DTYPE.values())))
    if array.ndim > MAX_RANK or any(dim > MAX_DIM for dim in array.shape):
        raise LimitExceeded(f"tensor {text!r} has shape {list(array.shape)}; the reader "
                            f"accepts at most {MAX_RANK} dimensions of at most {MAX_DIM}")

    # A transposed or sliced array would otherwise be written in memory order, not
    # in row-major element order. Byte swapping keeps the values exactly.
    contiguous = array.astype(array.dtype.newbyteorder("<"), order="C", copy=False)
    raw = contiguous.reshape(-1).view(np.uint8)
    if dtype == "BOOL" and raw.size and int(raw.max()) > 1:
        raise _invalid(f"BOOL tensor {text!r} contains bytes other than 0 and 1; "
                       "build it with a comparison or astype(bool)")
    return _Prepared(text, dtype, contiguous, DIGEST_PREFIX + hashlib.sha256(raw.data).hexdigest())


def _header_bytes(prepared: list[_Prepared], metadata: dict[str, str]) -> bytes:
    return canonical_header_bytes(
        [(item.name, item.dtype, tuple(item.array.shape)) for item in prepared], metadata)


def canonical_header_bytes(entries: Sequence[tuple[str, str, tuple[int, ...]]],
                           metadata: Mapping[str, str]) -> bytes:
    """Return the header, padding included, that :func:`write_safetensors` writes.

    The tensors are ordered as the writer orders them (by dtype alignment, then by
    name as UTF-8 bytes), the metadata by key, and the data offsets follow from that
    order and the sizes. Level 1 compares a released model's header with these bytes
    (SPEC.md, R-DEL-2), so whitespace, key order and the order of the data section
    cannot carry anything.

    Args:
        entries: (name, safetensors dtype, shape) per tensor, in any order.
        metadata: The ``__metadata__`` map, empty for none.
    """
    ordered = sorted(entries, key=lambda entry: (-DTYPES[entry[1]].rank,
                                                 entry[0].encode("utf-8")))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    offset = 0
    for name, dtype, shape in ordered:
        size = DTYPES[dtype].itemsize * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    encoded = text.encode("utf-8")
    # Pad with spaces so the data section starts at a multiple of 8 bytes.
    encoded += b" " * (-len(encoded) % 8)
    if len(encoded) > MAX_HEADER_BYTES:
        raise LimitExceeded(f"header would have {len(encoded)} bytes, more than the "
                            f"maximum of {MAX_HEADER_BYTES} that readers accept")
    return encoded


def _write_payload(handle: BinaryIO, header: bytes, prepared: list[_Prepared]) -> None:
    handle.write(len(header).to_bytes(8, "little"))
    handle.write(header)
    for item in prepared:
        if item.array.size:
            handle.write(item.array.reshape(-1).view(np.uint8).data)


def write_safetensors(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None, *,
                      overwrite: bool = False, workers: int | None = None) -> FileDigests:
    """Write tensors to a safetensors file atomically and verify it by reading it back.

    Args:
        path: Destination. Its directory must exist.
        tensors: Name to numpy array. Supported dtypes: bool, (u)int8/16/32/64,
            float16/32/64 and complex64, in either byte order; arrays need not be
            contiguous.
        metadata: String-to-string map stored as ``__metadata__``; omitted when empty.
        overwrite: Replace an existing file at ``path``.
        workers: Threads for the read-back digests (see
            :func:`mbd_cert._safetensors.digest_file`).

    Returns:
        The digests of the written file, checked against the in-memory arrays.

    Raises:
        InputError: ``E_PARAMETER_INVALID`` for a name, metadata key or metadata
            value that is not a str, and for a tensor named ``__metadata__``. The
            same code covers a value that is not a numpy array, an unsupported
            dtype, and a BOOL array with bytes other than 0 and 1.
            ``E_FILE_EXISTS`` when ``path`` exists and ``overwrite`` is false, and
            ``E_FILE_UNWRITABLE`` when the file cannot be written.
        LimitExceeded: A cap of the reader would reject the file (tensor count, name
            length, rank, dimension or header size).
        FileMissing: The directory of ``path`` does not exist.
        DigestMismatch: ``E_WRITE_READBACK_MISMATCH`` when the file read back differs
            from the arrays; nothing is written to ``path`` then.
    """
    clean_metadata: dict[str, str] = {}
    for key, value in sorted((metadata or {}).items(), key=lambda kv: str(kv[0])):
        _check_text("metadata key", key)
        clean_metadata[key] = _check_text(f"metadata value for key {key!r}", value)
    if len(tensors) > MAX_TENSORS:
        raise LimitExceeded(f"{len(tensors)} tensors, more than the maximum of {MAX_TENSORS}")
    prepared = [_prepare(name, array) for name, array in tensors.items()]
    prepared.sort(key=lambda item: (-DTYPES[item.dtype].rank, item.name.encode("utf-8")))
    header = _header_bytes(prepared, clean_metadata)

    with atomic_output(path, overwrite=overwrite) as output:
        _write_payload(output.file, header, prepared)
        output.file.flush()
        digests = digest_file(output.temp_path, workers=workers)
        _compare(os.fspath(path), prepared, clean_metadata, digests)
    return digests


def _compare(path: str, prepared: list[_Prepared], metadata: dict[str, str],
             digests: FileDigests) -> None:
    hint = "the disk or filesystem corrupted the write; nothing was written"
    if set(digests.tensors) != {item.name for item in prepared} or digests.metadata != metadata:
        raise DigestMismatch(f"{path}: tensor names or metadata read back differ from "
                             "those written", code="E_WRITE_READBACK_MISMATCH", hint=hint)
    for item in prepared:
        got = digests.tensors[item.name]
        if (got.dtype, got.shape) != (item.dtype, item.array.shape):
            raise DigestMismatch(
                f"{path}: tensor {item.name!r} read back as {got.dtype} {list(got.shape)}, "
                f"expected {item.dtype} {list(item.array.shape)}",
                code="E_WRITE_READBACK_MISMATCH", hint=hint)
        if got.digest != item.digest:
            raise DigestMismatch(
                f"{path}: tensor {item.name!r} read back with digest {got.digest}, "
                f"expected {item.digest}", code="E_WRITE_READBACK_MISMATCH", hint=hint)
