"""Search the members of a zip archive for tensor data, for verify-repo (R-REPO-12).

``torch.save`` writes a zip archive whose ``<name>/data/<n>`` members contain each
storage's raw bytes, and ``np.savez`` one whose members are ``.npy`` files. Each member
that can contain a span of a searched length is searched as a byte stream
(:func:`mbd_cert._tensor_spans.search_stream`). Nothing is unpickled, and an archive
inside the archive is not opened.

A hostile archive can contain millions of members, decompress a few kilobytes into
gigabytes, or name one member's data in many entries. The limits below are checked
before :mod:`zipfile` reads the central directory, on the members' compressed sizes,
and on the bytes decompressed while searching. A file over them raises
:class:`ScanLimitExceeded`, which the caller reports rather than passing the file.
A malformed archive or member is skipped.

Stability: internal.
"""

from __future__ import annotations

import lzma
import struct
import zipfile
import zlib
from collections.abc import Collection, Iterator
from typing import Any

from mbd_cert._tensor_spans import (
    ByteStream,
    ScanLimitExceeded,
    SpanDigest,
    read_exact,
    search_stream,
)

# zipfile keeps one object per entry of the central directory. An entry takes 46 bytes
# plus its name, so this allows about 200,000 members whose entries are 80 bytes.
# torch.save writes one member per storage plus about six, np.savez one per array, so
# a model checkpoint stays far below it.
# NOTE: the limit is an estimate. An honest archive above it (a data set of a million
# files) fails the run as unsearched.
MAX_CENTRAL_DIRECTORY = 16 * 1024 * 1024
# Trained float weights compress by far less than 4x (an estimate), so an honest
# archive decompresses to less than 4x its size. The allowance covers small archives
# of zeros, such as a deleted encoder.
MAX_EXPANSION = 4
DECOMPRESSED_ALLOWANCE = 256 * 1024 * 1024

_LOCAL_HEADER = b"PK\x03\x04"
_END_RECORD = b"PK\x05\x06"
_END_RECORD_FORMAT = "<4s4H2LH"
END_RECORD_SIZE = struct.calcsize(_END_RECORD_FORMAT)  # 22
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_LOCATOR_SIZE = 20
_ZIP64_END_RECORD = b"PK\x06\x06"
_ZIP64_END_RECORD_FORMAT = "<4sQ2H2L4Q"
_ZIP64_END_RECORD_SIZE = struct.calcsize(_ZIP64_END_RECORD_FORMAT)  # 56
_MAX_COMMENT = 0xFFFF
# Exceptions that zipfile and the decompressors raise on a malformed archive or member.
MALFORMED = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
             RuntimeError, NotImplementedError, struct.error, zlib.error, lzma.LZMAError,
             IndexError, KeyError, OverflowError)


def is_zip(prefix: bytes, tail: bytes) -> bool:
    """Return whether a file starts with a zip member or ends with a zip end record.

    ``tail`` is the file's last 22 bytes, where an archive without a comment has its
    end record, so that an archive behind other bytes is found too.
    """
    return prefix.startswith(_LOCAL_HEADER) or tail.startswith(_END_RECORD)


def search_zip(handle: Any, size: int, lengths: Collection[int],
               min_length: int) -> Iterator[tuple[str, SpanDigest]]:
    """Yield ``(member name, span)`` for each searched span of each member.

    ``handle`` is a buffered binary file that :class:`zipfile.ZipFile` can read.

    Raises:
        ScanLimitExceeded: The archive's central directory is over
            :data:`MAX_CENTRAL_DIRECTORY`, its members decompress to more than
            :data:`MAX_EXPANSION` times its size plus :data:`DECOMPRESSED_ALLOWANCE`,
            or their compressed sizes add up to more than its size.
    """
    if not _directory_within_limits(handle, size):
        return
    try:
        archive = zipfile.ZipFile(handle)
    except MALFORMED:
        return
    budget = _Budget(MAX_EXPANSION * size + DECOMPRESSED_ALLOWANCE)
    with archive:
        searched = [info for info in archive.infolist()
                    if not info.is_dir() and info.file_size >= min_length]
        _check_compressed_sizes(searched, size)
        for info in searched:

            def open_member(info: zipfile.ZipInfo = info) -> _CountedMember:
                return _CountedMember(archive.open(info), budget)

            # One malformed or encrypted member does not hide the members after it.
            try:
                for span in search_stream(open_member, info.file_size, lengths):
                    yield info.filename, span
            except MALFORMED:
                continue


def _check_compressed_sizes(members: list[zipfile.ZipInfo], size: int) -> None:
    """Reject members whose compressed data would add up to more than the archive.

    Members of an honest archive do not overlap. Entries that share one member's data
    would have it decompressed once per entry, and data that decompresses to nothing
    costs that work without spending the budget of decompressed bytes.

    Raises:
        ScanLimitExceeded: The compressed sizes add up to more than ``size``.
    """
    total = sum(info.compress_size for info in members)
    if total > size:
        raise ScanLimitExceeded(
            f"zip members whose compressed sizes add up to {total} bytes, more than the "
            f"file's {size}: the members overlap")


def _directory_within_limits(handle: ByteStream, size: int) -> bool:
    """Check the declared central directory size before zipfile reads the directory.

    Returns False when no end record is found or the directory would not fit in the
    file, because zipfile cannot read such an archive.

    Raises:
        ScanLimitExceeded: The declared size is over :data:`MAX_CENTRAL_DIRECTORY`.
    """
    # Where zipfile looks: the last 22 bytes, else the last 22 + 65,535 (a comment).
    start = max(0, size - END_RECORD_SIZE - _MAX_COMMENT)
    handle.seek(start)
    tail = read_exact(handle, size - start)
    position = tail.rfind(_END_RECORD)
    if position < 0 or len(tail) - position < END_RECORD_SIZE:
        return False
    fields = struct.unpack(_END_RECORD_FORMAT, tail[position:position + END_RECORD_SIZE])
    directory_size = fields[5]
    if fields[4] == 0xFFFF or directory_size == 0xFFFFFFFF or fields[6] == 0xFFFFFFFF:
        # ZIP64: zipfile reads the ZIP64 end record right before its locator, which
        # comes right before the end record.
        record_at = position - _ZIP64_LOCATOR_SIZE - _ZIP64_END_RECORD_SIZE
        locator = tail[position - _ZIP64_LOCATOR_SIZE:position]
        if record_at >= 0 and locator.startswith(_ZIP64_LOCATOR):
            record = struct.unpack(_ZIP64_END_RECORD_FORMAT,
                                   tail[record_at:record_at + _ZIP64_END_RECORD_SIZE])
            if record[0] == _ZIP64_END_RECORD:
                directory_size = record[8]
    if directory_size > size:
        return False
    if directory_size > MAX_CENTRAL_DIRECTORY:
        raise ScanLimitExceeded(
            f"a zip central directory of {directory_size} bytes, over the search's "
            f"limit of {MAX_CENTRAL_DIRECTORY}")
    return True


class _Budget:
    """Bytes that the members of one archive may still decompress."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def spend(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise ScanLimitExceeded(
                f"zip members that decompress to more than {self.limit} bytes, "
                f"{MAX_EXPANSION} times the file size plus {DECOMPRESSED_ALLOWANCE}")


class _CountedMember:
    """A zip member opened for reading, whose bytes count against the archive's budget.

    It cannot seek, so the search reads past data it skips and pays for it.
    """

    def __init__(self, member: Any, budget: _Budget) -> None:
        self._member = member
        self._budget = budget

    def __enter__(self) -> _CountedMember:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._member.close()

    def read(self, size: int = -1, /) -> bytes:
        data: bytes = self._member.read(size)
        self._budget.spend(len(data))
        return data

    def seekable(self) -> bool:
        return False

    def seek(self, offset: int, whence: int = 0, /) -> int:
        raise OSError("a zip member is read forward only")
