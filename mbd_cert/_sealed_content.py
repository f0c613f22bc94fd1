"""Plaintext stream inside a sealed audit bundle: a length-prefixed listing, then the files.

Layout: an 8-byte big-endian length L, L bytes of JSON ``{"format":
"mbd-cert-sealed-bundle/1", "certificate_id", "files": [{"path", "size"}]}``, then the
files' bytes in listing order. :mod:`mbd_cert.sealing` encrypts this stream in
authenticated chunks; this module builds the stream, cuts it into chunks and parses it
back into files.

Stability: internal; :mod:`mbd_cert.sealing` re-exports the constants.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from mbd_cert import _json, _paths
from mbd_cert.errors import InputError, SealedBundleInvalid

CONTENT_FORMAT = "mbd-cert-sealed-bundle/1"
MAX_CONTENT_HEADER_BYTES = 64 * 1024
MAX_FILES = 16


def encode_listing(names: Sequence[str], files: Sequence[Path], certificate_id: str) -> bytes:
    """Return the JSON listing of ``files``, stored under ``names``, for ``certificate_id``."""
    listing = [
        {"path": name, "size": os.path.getsize(path)}
        for name, path in zip(names, files, strict=True)
    ]
    return json.dumps(
        {"format": CONTENT_FORMAT, "certificate_id": certificate_id, "files": listing},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def plaintext_blocks(content: bytes, files: Sequence[Path], block_bytes: int) -> Iterator[bytes]:
    """Yield the length-prefixed listing ``content``, then each file's bytes in order."""
    yield struct.pack(">Q", len(content)) + content
    for path in files:
        with open(path, "rb") as handle:
            while block := handle.read(block_bytes):
                yield block


def rechunk(blocks: Iterator[bytes], size: int) -> Iterator[tuple[bytes, bool]]:
    """Yield ``(chunk, final)``: full chunks, then a last chunk of 0 to size - 1 bytes."""
    buffer = bytearray()
    for block in blocks:
        buffer += block
        while len(buffer) >= size:
            yield bytes(buffer[:size]), False
            del buffer[:size]
    yield bytes(buffer), True


class ContentSink:
    """Parse the decrypted stream: length, JSON listing, then each file's bytes."""

    def __init__(self, out_dir: Path, certificate_id: str, source: str) -> None:
        self._out_dir = out_dir
        self._certificate_id = certificate_id
        self._source = source
        self._buffer = bytearray()
        self._files: list[tuple[Path, int]] | None = None
        self._current: BinaryIO | None = None
        self._remaining = 0
        self._written: list[Path] = []

    def write(self, data: bytes) -> None:
        self._buffer += data
        if self._files is None and not self._parse_listing():
            return
        while self._buffer:
            if self._current is None:
                if not self._open_next():
                    # Rejected now rather than at finish(), so that they never pile up.
                    raise SealedBundleInvalid(
                        f"{self._source}: the content goes on after its listed files")
                continue
            take = min(self._remaining, len(self._buffer))
            self._current.write(self._buffer[:take])
            del self._buffer[:take]
            self._remaining -= take
            if self._remaining == 0:
                self._current.close()
                self._current = None

    def finish(self) -> list[Path]:
        if self._files is None:
            raise SealedBundleInvalid(f"{self._source}: the content listing is missing")
        while self._current is None and self._files and self._files[0][1] == 0:
            self._open_next()
        if self._files or self._current is not None or self._buffer:
            raise SealedBundleInvalid(f"{self._source}: the content does not match its listing")
        return self._written

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None

    def _parse_listing(self) -> bool:
        if len(self._buffer) < 8:
            return False
        (length,) = struct.unpack(">Q", self._buffer[:8])
        if length > MAX_CONTENT_HEADER_BYTES:
            raise SealedBundleInvalid(f"{self._source}: content listing of {length} bytes")
        if len(self._buffer) < 8 + length:
            return False
        # The listing authenticated under the recipient's key, so the issuer wrote it:
        # a malformed one is a false bundle (exit 1), not unusable input (R-SEAL-2).
        try:
            listing = _json.load_json_strict(bytes(self._buffer[8:8 + length]),
                                             what="sealed listing",
                                             max_bytes=MAX_CONTENT_HEADER_BYTES)
        except InputError as error:
            raise SealedBundleInvalid(f"{self._source}: the content listing is not valid "
                                      f"JSON ({error.message})") from error
        del self._buffer[:8 + length]
        if (not isinstance(listing, dict) or listing.get("format") != CONTENT_FORMAT
                or listing.get("certificate_id") != self._certificate_id
                or not isinstance(listing.get("files"), list)
                or len(listing["files"]) > MAX_FILES):
            raise SealedBundleInvalid(f"{self._source}: the content listing is invalid")
        files: list[tuple[Path, int]] = []
        for entry in listing["files"]:
            size = entry.get("size") if isinstance(entry, dict) else None
            if not isinstance(size, int) or size < 0:
                raise SealedBundleInvalid(f"{self._source}: a listed file has no valid size")
            # A path that escapes the directory is E_UNSAFE_PATH (exit 2), as for every
            # artefact path, signed or not.
            path = _paths.resolve_artefact(self._out_dir, entry.get("path"), field="sealed path")
            # A name listed twice would overwrite its first file, so it counts as in use.
            in_use = path.exists() or any(path == earlier for earlier, _ in files)
            if len(path.relative_to(self._out_dir).parts) != 1 or in_use:
                raise SealedBundleInvalid(f"{self._source}: listed path {entry.get('path')!r} is "
                                          "not a new plain file name")
            files.append((path, size))
        self._files = files
        return True

    def _open_next(self) -> bool:
        if not self._files:
            return False
        path, size = self._files.pop(0)
        self._current = open(path, "xb")  # noqa: SIM115 - closed when its bytes are written
        self._written.append(path)
        self._remaining = size
        if size == 0:
            self._current.close()
            self._current = None
        return True
