"""Find a deletion's pre-deletion model in a repository, for verify-repo (R-REPO-9).

A certificate commits to the digests of the model the deletion started from. That
file still contains the deleted modality's encoder, so a repository that publishes it
next to the release undoes the deletion for anyone who reads the repository.
``verify-repo`` reads the header of every file below the root once, and hashes in full
only the files whose header digest (R-DIG-4) equals a certificate's
``subject_model.pre_deletion.header_digest``. A Git LFS pointer is matched by its oid,
the SHA-256 of the file it stands for. Format 1.0 certificates have no header
digest and are not checked.

The index is lenient: it reads only the length prefix and the header bytes and skips
links and unreadable files. It skips directories that cannot be listed too, but names
them to its caller, which fails the run on them. Unlike the certificate search it
walks hidden directories too (all but ``.git``), because a copy under ``.backup/`` is
as published as one beside the certificate. It reads every file, because a cap would
let a repository bury the copy behind enough others.

Stability: internal.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
from pathlib import Path

from mbd_cert._git_lfs import POINTER_PREFIX, is_pointer
from mbd_cert._repo_search import repository_files

# A safetensors header of the built-in architecture is a few kilobytes; a larger
# claimed header is skipped unread.
_MAX_HEADER = 1024 * 1024
_CHUNK = 1024 * 1024
# A Git LFS pointer is a few lines of text, under 200 bytes in practice. Its oid line
# is "oid sha256:" and 64 lowercase hex digits (the Git LFS pointer specification).
_MAX_POINTER = 1024
_OID = re.compile(rb"^oid sha256:([0-9a-f]{64})$", re.MULTILINE)

HeaderIndex = dict[str, list[Path]]


def header_index(root: Path, unreadable: dict[Path, str] | None = None) -> HeaderIndex:
    """Map the header digest of every safetensors-like file below ``root`` to its paths.

    Each directory that cannot be listed is added to ``unreadable``, when given, with
    the reason.
    """
    index: HeaderIndex = {}
    for path in repository_files(root, hidden=True, unreadable=unreadable):
        # A file that cannot be opened is skipped here without a report. The search
        # for deleted encoders (R-REPO-12) fails the run on it instead, whenever a
        # certificate lists removed tensors.
        digest = _header_digest(path)
        if digest is not None:
            index.setdefault(digest, []).append(path)
    return index


def _lfs_key(file_digest: str) -> str:
    """Return the index key of Git LFS pointers to a file of ``file_digest``."""
    return f"git-lfs-oid:{file_digest}"


def pre_deletion_copies(committed: dict[str, object], index: HeaderIndex,
                        file_digests: dict[Path, str | None] | None = None) -> list[Path]:
    """Return the indexed files that are the committed pre-deletion model, byte for byte.

    ``file_digests`` caches each file's full digest across calls. Every certificate
    checks each link of its chain, and models of one architecture share a header
    digest, so without it a large model would be read in full once per link checked.
    """
    header = committed.get("header_digest")
    whole = committed.get("file_digest")
    if not isinstance(header, str) or not isinstance(whole, str):
        return []
    cache: dict[Path, str | None] = {} if file_digests is None else file_digests
    # A checkout without LFS contains a pointer whose oid is the file's SHA-256, so
    # the model is committed all the same, one 'git lfs pull' away.
    copies = list(index.get(_lfs_key(whole), []))
    for path in index.get(header, []):
        if path not in cache:
            cache[path] = _file_digest(path)
        if cache[path] == whole:
            copies.append(path)
    return copies


def has_safetensors_layout(path: Path) -> bool:
    """Return whether ``path`` starts like a safetensors file, whatever its name.

    The test reads 9 bytes: a little-endian u64 header length that fits in the file,
    then ``{``. It has no header size cap, so that a model padded with metadata is
    still recognised. Links, unreadable and non-regular files are not.
    """
    descriptor = open_regular(path)
    if descriptor is None:
        return False
    try:
        size = os.fstat(descriptor).st_size
        with os.fdopen(descriptor, "rb", buffering=0) as handle:
            start = handle.read(9)
    except OSError:
        return False
    if len(start) != 9:
        return False
    (length,) = struct.unpack("<Q", start[:8])
    return 2 <= length <= size - 8 and start[8:] == b"{"


def open_regular(path: Path, *, raise_denied: bool = False) -> int | None:
    """Return a read-only descriptor of ``path`` when it is a regular file, else None.

    Raises:
        PermissionError: With ``raise_denied``, the run's user may not open ``path``.
    """
    # Non-blocking and without following links: a FIFO or a link swapped in after the
    # listing must not hang the run or leave the repository.
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except PermissionError:
        if raise_denied:
            raise
        return None
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(descriptor).st_mode):
            return descriptor
    except OSError:
        pass
    os.close(descriptor)
    return None


def _header_digest(path: Path) -> str | None:
    """Return ``sha256:`` of the length prefix and the header, or None for other files.

    For a Git LFS pointer, return the key of its oid (:func:`_lfs_key`) instead.
    """
    descriptor = open_regular(path)
    if descriptor is None:
        return None
    try:
        with os.fdopen(descriptor, "rb", buffering=0) as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                return None
            if POINTER_PREFIX.startswith(prefix):
                # b"version " read as a header length is far above the cap, so the
                # two kinds of file cannot be confused.
                text = prefix + handle.read(_MAX_POINTER)
                return _pointer_key(text) if is_pointer(text) else None
            (length,) = struct.unpack("<Q", prefix)
            if not 2 <= length <= _MAX_HEADER:
                return None
            text = handle.read(length)
    except OSError:
        return None
    if len(text) != length or not text.startswith(b"{"):
        return None
    return "sha256:" + hashlib.sha256(prefix + text).hexdigest()


def _pointer_key(text: bytes) -> str | None:
    """Return the index key of the Git LFS pointer ``text``, or None without an oid."""
    match = _OID.search(text)
    return _lfs_key("sha256:" + match.group(1).decode()) if match else None


def _file_digest(path: Path) -> str | None:
    descriptor = open_regular(path)
    if descriptor is None:
        return None
    hasher = hashlib.sha256()
    try:
        with os.fdopen(descriptor, "rb", buffering=0) as handle:
            while chunk := handle.read(_CHUNK):
                hasher.update(chunk)
    except OSError:
        return None
    return "sha256:" + hasher.hexdigest()
