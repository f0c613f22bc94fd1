"""Digest the runs of bytes in a file that could be one tensor's data, for verify-repo.

The search for a deleted encoder's tensors (R-REPO-12) has the byte lengths and the
SHA-256 digests of the tensors it looks for, not their bytes. This module hashes
the spans of a byte stream whose length is one of those lengths, read as one of
three layouts:

* the whole stream (``ndarray.tofile``, or a torch zip member ``*/data/<n>``, which
  contains one storage's raw bytes);
* each tensor entry of a safetensors layout, from its ``data_offsets``;
* the data after the header of a NumPy ``.npy`` layout. The header is skipped by its
  length field and never evaluated, so no pickle is read even for object arrays.

Nothing else is hashed, which keeps the cost near that of reading headers. A
malformed stream yields what was found before the fault, never an exception.

Stability: internal.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

CHUNK = 1024 * 1024
# The safetensors header of a model with 100,000 tensors is about 10 MB. A larger
# header is not parsed, because parsing its JSON could take gigabytes of memory.
MAX_SCANNED_HEADER = 16 * 1024 * 1024
# numpy writes headers of 64-byte multiples, and np.load rejects more than 10,000
# bytes by default. A format 2.0 header may be longer, but not past this cap.
_MAX_NPY_HEADER = 1024 * 1024
_NPY_MAGIC = b"\x93NUMPY"
# Element sizes of the safetensors dtypes (_safetensors_header.DTYPES).
_ELEMENT_SIZES = (1, 2, 4, 8)



class ByteStream(Protocol):
    """A binary stream read from its start: an open file or a zip member."""

    def read(self, size: int = -1, /) -> bytes: ...

    def seekable(self) -> bool: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...


StreamOpener = Callable[[], AbstractContextManager[ByteStream]]


class ScanLimitExceeded(Exception):
    """Error for a file that needs more work than the search allows.

    The message states the limit.
    """


@dataclass(frozen=True)
class SpanDigest:
    """The digest of one span of bytes whose length is a searched length.

    Attributes:
        location: Where the span lies in its stream: "" for the whole stream,
            ``tensor 'NAME'`` for a safetensors entry, ``array data`` for an npy layout.
        length: Byte length of the span.
        digest: ``sha256:`` and 64 hex digits of the span.
        repeated_element: The smallest element size of 1, 2, 4 or 8 bytes whose first
            element the span repeats throughout, or None. Such a span is one value
            filled into a tensor: the zeros of a deleted encoder or the ones of an
            untrained LayerNorm weight, which any model of that shape may contain.
    """

    location: str
    length: int
    digest: str
    repeated_element: int | None


def read_exact(stream: ByteStream, size: int) -> bytes:
    """Read ``size`` bytes, fewer only at the end of the stream."""
    parts = []
    while size > 0:
        part = stream.read(min(size, CHUNK))
        if not part:
            break
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _skip(stream: ByteStream, count: int) -> bool:
    """Move ``count`` bytes forward, or return False at the end of a stream that cannot seek.

    A file seeks past the tensors it does not hash instead of reading them. Past its
    end, the next read returns nothing, which the caller treats as the end.
    """
    if stream.seekable():
        stream.seek(count, os.SEEK_CUR)
        return True
    while count > 0:
        part = stream.read(min(count, CHUNK))
        if not part:
            return False
        count -= len(part)
    return True


def digest_span(stream: ByteStream, length: int) -> tuple[str, int | None] | None:
    """Return the digest and repeated element size of the next ``length`` bytes.

    Returns None when the stream ends first.
    """
    hasher = hashlib.sha256()
    # Each size that divides the length is a candidate. Chunks are multiples of 8, so
    # every chunk starts on an element boundary.
    periods = [size for size in _ELEMENT_SIZES if length % size == 0]
    first = b""
    remaining = length
    while remaining:
        chunk = read_exact(stream, min(CHUNK, remaining))
        if not chunk:
            return None
        hasher.update(chunk)
        if not first:
            first = chunk[:8]
        if periods:
            periods = _repeating(chunk, first, periods)
        remaining -= len(chunk)
    return "sha256:" + hasher.hexdigest(), (periods[0] if periods else None)


def _repeating(chunk: bytes, first: bytes, periods: list[int]) -> list[int]:
    """Return the element sizes of ``periods`` whose first element ``chunk`` repeats."""
    # Each size divides the largest, so a chunk that fails the largest fails them all.
    largest = periods[-1]
    head = chunk[:64]
    if head != (first[:largest] * (len(head) // largest + 1))[:len(head)]:
        return []
    return [size for size in periods
            if chunk == first[:size] * (len(chunk) // size)]


def has_searched_layout(prefix: bytes, size: int, lengths: Collection[int]) -> bool:
    """Return whether :func:`search_stream` could find a span, from the first 16 bytes."""
    return size in lengths or _is_safetensors(prefix, size) or prefix.startswith(_NPY_MAGIC)


def _is_safetensors(prefix: bytes, size: int) -> bool:
    """Return whether ``prefix`` is a u64 header length that fits in the file, then ``{``."""
    if len(prefix) < 9 or prefix[8:9] != b"{":
        return False
    header_length = int.from_bytes(prefix[:8], "little")
    return 2 <= header_length <= size - 8


def search_stream(open_stream: StreamOpener, size: int,
                  lengths: Collection[int]) -> Iterator[SpanDigest]:
    """Yield the digest of each span of a searched length in one stream of ``size`` bytes.

    ``open_stream`` opens the stream at its start. Each layout reads it afresh, so a
    zip member is decompressed again rather than kept in memory.

    Raises:
        ScanLimitExceeded: A safetensors layout has a header over
            :data:`MAX_SCANNED_HEADER`, or the opener's own limit was reached.
    """
    with open_stream() as stream:
        prefix = read_exact(stream, 16)
    if size in lengths:
        with open_stream() as stream:
            whole = digest_span(stream, size)
        if whole is not None:
            yield SpanDigest("", size, *whole)
    if _is_safetensors(prefix, size):
        with open_stream() as stream:
            yield from _safetensors_spans(stream, size, lengths)
    if prefix.startswith(_NPY_MAGIC):
        with open_stream() as stream:
            found = _npy_data(stream, size, lengths)
        if found is not None:
            yield found


def _safetensors_spans(stream: ByteStream, size: int,
                       lengths: Collection[int]) -> Iterator[SpanDigest]:
    header_length = int.from_bytes(read_exact(stream, 8), "little")
    if header_length > MAX_SCANNED_HEADER:
        raise ScanLimitExceeded(
            f"a safetensors header of {header_length} bytes, over the search's limit of "
            f"{MAX_SCANNED_HEADER}")
    entries = _tensor_entries(read_exact(stream, header_length), size - 8 - header_length)
    # Forward only: a zip member cannot seek back cheaply. Spans that overlap one
    # already read break the safetensors layout (R-ST-1), and skipping them keeps the
    # work to one pass over the data whatever the header claims.
    spans: dict[tuple[int, int], list[str]] = {}
    for name, (begin, end) in entries:
        if end - begin in lengths:
            spans.setdefault((begin, end), []).append(name)
    position = 0
    for (begin, end), names in sorted(spans.items()):
        if begin < position:
            continue
        if not _skip(stream, begin - position):
            return
        found = digest_span(stream, end - begin)
        if found is None:
            return
        position = end
        location = ", ".join(f"tensor {name!r}" for name in names)
        yield SpanDigest(location, end - begin, *found)


def _tensor_entries(header: bytes, data_size: int) -> list[tuple[str, tuple[int, int]]]:
    """Return ``(name, (begin, end))`` of each well-formed entry, data-relative."""
    try:
        parsed = json.loads(header)
    except (ValueError, RecursionError):
        return []
    if not isinstance(parsed, dict):
        return []
    entries = []
    for name, entry in parsed.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(value) is int for value in offsets)):
            continue
        begin, end = offsets
        if 0 <= begin <= end <= data_size:
            entries.append((name, (begin, end)))
    return entries


def _npy_data(stream: ByteStream, size: int, lengths: Collection[int]) -> SpanDigest | None:
    """Digest the data of an npy layout when its length is searched (format 1.0 to 3.0)."""
    start = read_exact(stream, 12)
    if len(start) < 10:
        return None
    major = start[6]
    if major == 1:
        (header_length,) = struct.unpack("<H", start[8:10])
        data_offset = 10 + header_length
    elif major in (2, 3) and len(start) == 12:
        (header_length,) = struct.unpack("<I", start[8:12])
        data_offset = 12 + header_length
    else:
        return None
    length = size - data_offset
    if header_length > _MAX_NPY_HEADER or length not in lengths:
        return None
    if not _skip(stream, data_offset - len(start)):
        return None
    found = digest_span(stream, length)
    return SpanDigest("array data", length, *found) if found is not None else None
