"""SHA-256 digests of safetensors files: per tensor, manifest and whole file.

Definitions (SPEC.md, "Digests"):

* Digest strings are ``"sha256:"`` followed by 64 lowercase hex digits.
* Tensor digest: SHA-256 of the tensor's raw little-endian bytes exactly as stored in
  the data section.
* Manifest: ``{"metadata": {...}, "tensors": [{"name", "dtype", "shape", "digest"},
  ...]}`` with tensors sorted by the UTF-8 bytes of their names. The manifest digest
  is SHA-256 of its RFC 8785 canonical JSON bytes, so it binds names, dtypes, shapes
  and metadata, while the tensors can be hashed in parallel.
* File digest: SHA-256 of the whole file.

:func:`mbd_cert._safetensors_scan.digest_file` computes all of them for one file in
parallel. Files are read in chunks with ordinary reads into a reused buffer, not through
mmap, so resident memory stays at about one chunk per worker and a file truncated
during hashing raises an error instead of SIGBUS.

Stability: private module. Import these names from :mod:`mbd_cert._safetensors`.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import rfc8785

from mbd_cert._nonfinite import NonfiniteCounter, nonfinite_counter
from mbd_cert._safetensors_read import (
    SafetensorsHeader,
    TensorInfo,
    open_checked,
    open_regular_file,
)
from mbd_cert.errors import InputError, MalformedSafetensors

__all__ = [
    "CHUNK_BYTES",
    "DIGEST_PREFIX",
    "FileDigests",
    "TensorDigest",
    "build_manifest",
    "digest_manifest",
    "file_digest",
    "format_digest",
    "hash_span",
    "manifest",
    "manifest_digest",
    "tensor_digest",
]

DIGEST_PREFIX = "sha256:"
_DIGEST_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")
# Bytes per read. hashlib releases the GIL for inputs over 2047 bytes, so worker
# threads hash in parallel; 4 MiB keeps per-call overhead negligible.
CHUNK_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class TensorDigest:
    """Digest of one tensor together with the dtype and shape it is bound to."""

    dtype: str
    shape: tuple[int, ...]
    digest: str


@dataclass(frozen=True)
class FileDigests:
    """All digests of one safetensors file.

    Attributes:
        file_digest: SHA-256 of the whole file, or None when it was not requested.
        manifest_digest: SHA-256 of the canonical manifest.
        tensors: Tensor name to :class:`TensorDigest`, in data-section order.
        metadata: The file's ``__metadata__`` map (``{}`` when absent).
        nonfinite: Tensor name to its count of NaN and infinite entries, for the
            floating-point tensors, or None when the count was not requested.
    """

    file_digest: str | None
    manifest_digest: str
    tensors: dict[str, TensorDigest]
    metadata: dict[str, str]
    nonfinite: dict[str, int] | None = None


def format_digest(hasher: Any) -> str:
    """Format a finished hashlib SHA-256 object as ``sha256:<hex>``."""
    return DIGEST_PREFIX + str(hasher.hexdigest())


def hash_span(handle: io.FileIO, header: SafetensorsHeader, start: int, stop: int,
               tensors: list[TensorInfo], whole: Any | None,
               nonfinite: dict[str, int] | None = None) -> dict[str, str]:
    """Hash file bytes [start, stop) once, feeding each tensor's hasher its bytes.

    ``tensors`` must tile the span's part of the data section in offset order, as a
    validated header guarantees. ``whole``, when given, receives every byte.
    ``nonfinite``, when given, receives the count of NaN and infinite entries of each
    floating-point tensor in ``tensors`` (R-DEL-3), zero counts included.
    """
    digests: dict[str, str] = {}
    buffer = bytearray(min(CHUNK_BYTES, max(stop - start, 1)))
    view = memoryview(buffer)
    index = 0
    current = hashlib.sha256()

    def new_counter() -> NonfiniteCounter | None:
        if nonfinite is None or index >= len(tensors):
            return None
        return nonfinite_counter(tensors[index].dtype)

    counter = new_counter()

    def finish_tensors(position: int) -> None:
        nonlocal index, current, counter
        # A tensor is complete once the position reaches its end; zero-size ones are
        # complete as soon as the position reaches their offset.
        while index < len(tensors) and header.data_start + tensors[index].end <= position:
            digests[tensors[index].name] = format_digest(current)
            if nonfinite is not None and counter is not None:
                nonfinite[tensors[index].name] = counter.count
            current = hashlib.sha256()
            index += 1
            counter = new_counter()

    position = start
    handle.seek(start)
    finish_tensors(position)
    while position < stop:
        try:
            got = handle.readinto(view[:min(len(buffer), stop - position)])
        except OSError as exc:
            raise InputError(f"cannot read {header.path}: {exc.strerror}",
                             code="E_FILE_UNREADABLE") from exc
        if not got:
            raise MalformedSafetensors(
                f"{header.path}: file ended at byte {position}, expected {stop}",
                code="E_SAFETENSORS_CHANGED",
                hint="do not modify files while they are being verified; run again",
            )
        chunk = view[:got]
        if whole is not None:
            whole.update(chunk)
        # Header bytes at the start of the chunk belong to no tensor.
        offset = max(0, min(got, header.data_start - position))
        while offset < got and index < len(tensors):
            tensor_stop = header.data_start + tensors[index].end
            take = min(got - offset, tensor_stop - (position + offset))
            current.update(chunk[offset:offset + take])
            if counter is not None:
                counter.update(chunk[offset:offset + take])
            offset += take
            finish_tensors(position + offset)
        position += got
    finish_tensors(position)
    return digests


def tensor_digest(header: SafetensorsHeader, name: str) -> str:
    """Compute the digest of one tensor's stored bytes.

    Args:
        header: A header returned by :func:`~mbd_cert._safetensors_read.read_header`.
        name: The tensor name.

    Returns:
        ``"sha256:<hex>"``.

    Raises:
        MalformedSafetensors: ``E_SAFETENSORS_TENSOR_MISSING`` for an unknown name,
            ``E_SAFETENSORS_CHANGED`` when the file changed since ``header`` was read.
        FileMissing: The file no longer exists.
        InputError: ``E_FILE_UNREADABLE`` when the file cannot be read.
    """
    info = header.tensors.get(name)
    if info is None:
        raise MalformedSafetensors(f"{header.path}: no tensor named {name!r}",
                                   code="E_SAFETENSORS_TENSOR_MISSING")
    with open_checked(header) as handle:
        start = header.data_start + info.begin
        return hash_span(handle, header, start, start + info.nbytes, [info], None)[name]


def file_digest(path: str | os.PathLike[str]) -> str:
    """Compute the SHA-256 digest of a whole file, reading it in chunks.

    Args:
        path: Any regular file.

    Returns:
        ``"sha256:<hex>"``.

    Raises:
        FileMissing: The file does not exist.
        InputError: ``E_FILE_UNREADABLE`` when it cannot be read, ``E_FILE_NOT_REGULAR``
            when it is not a regular file.
    """
    handle, _ = open_regular_file(path)
    hasher = hashlib.sha256()
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    with handle:
        while True:
            try:
                got = handle.readinto(view)
            except OSError as exc:
                raise InputError(f"cannot read {os.fspath(path)}: {exc.strerror}",
                                 code="E_FILE_UNREADABLE") from exc
            if not got:
                return format_digest(hasher)
            hasher.update(view[:got])


def build_manifest(metadata: Mapping[str, str],
                   tensors: Mapping[str, TensorDigest]) -> dict[str, Any]:
    """Build the manifest object from metadata and per-tensor digests.

    Args:
        metadata: The file's string metadata (``{}`` when absent).
        tensors: Tensor name to :class:`TensorDigest`.

    Returns:
        ``{"metadata": {...}, "tensors": [...]}`` with tensors sorted by name.

    Raises:
        InputError: ``E_PARAMETER_INVALID`` when a digest is not ``sha256:`` with
            64 lowercase hex digits.
    """
    entries = []
    for name in sorted(tensors, key=lambda n: n.encode("utf-8")):
        item = tensors[name]
        if not _DIGEST_PATTERN.fullmatch(item.digest):
            raise InputError(f"digest of tensor {name!r} is {item.digest[:80]!r}; expected "
                             "'sha256:' and 64 lowercase hex digits",
                             code="E_PARAMETER_INVALID")
        entries.append({"name": name, "dtype": item.dtype, "shape": list(item.shape),
                        "digest": item.digest})
    return {"metadata": dict(metadata), "tensors": entries}


def digest_manifest(manifest_object: Mapping[str, Any]) -> str:
    """Compute the SHA-256 digest of a manifest's RFC 8785 canonical JSON bytes.

    Args:
        manifest_object: A manifest from :func:`build_manifest` or :func:`manifest`.

    Returns:
        ``"sha256:<hex>"``.

    Raises:
        InputError: ``E_PARAMETER_INVALID`` when the object cannot be canonicalised
            (for example an integer above 2**53 - 1).
    """
    try:
        canonical = rfc8785.dumps(dict(manifest_object))
    except rfc8785.CanonicalizationError as exc:
        raise InputError(f"manifest cannot be canonicalised: {exc}",
                         code="E_PARAMETER_INVALID") from exc
    return format_digest(hashlib.sha256(canonical))


def manifest(header: SafetensorsHeader, digests: Mapping[str, str]) -> dict[str, Any]:
    """Build the manifest of a file from its header and its tensor digests.

    Args:
        header: A header returned by :func:`~mbd_cert._safetensors_read.read_header`.
        digests: Tensor name to digest string, for exactly the header's tensors.

    Returns:
        The manifest object (see :func:`build_manifest`).

    Raises:
        InputError: ``E_PARAMETER_INVALID`` when ``digests`` names other tensors than
            the header or contains a malformed digest.
    """
    missing = sorted(set(header.tensors) - set(digests))
    extra = sorted(set(digests) - set(header.tensors))
    if missing or extra:
        raise InputError(f"digests do not match the tensors of {header.path}: missing "
                         f"{missing[:5]}, unknown {extra[:5]}", code="E_PARAMETER_INVALID")
    tensors = {name: TensorDigest(info.dtype, info.shape, digests[name])
               for name, info in header.tensors.items()}
    return build_manifest(header.metadata, tensors)


def manifest_digest(header: SafetensorsHeader, digests: Mapping[str, str]) -> str:
    """Compute the manifest digest (the model digest) of a file.

    Args:
        header: A header returned by :func:`~mbd_cert._safetensors_read.read_header`.
        digests: Tensor name to digest string, for exactly the header's tensors.

    Returns:
        ``"sha256:<hex>"``.

    Raises:
        InputError: As :func:`manifest`.
    """
    return digest_manifest(manifest(header, digests))
