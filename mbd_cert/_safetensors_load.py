"""Read a whole safetensors file once, with the digests of exactly the bytes read.

The issuer computes on the tensors it reads and commits digests of its inputs. If it
read the arrays and, later, hashed or copied the file again, another process that
rewrote the file in between (a second training run, a ``git checkout``) would make
the certificate commit bytes that were never used. :func:`load_file` reads every byte
through one open file, once, and feeds the same bytes to the header parser, the
arrays and the SHA-256 hashers, so the digests describe the arrays even if the file
changes later. A later copy or digest of the file is compared with
them by :func:`check_unchanged`.

The arrays are kept in memory, as :func:`mbd_cert.checkpoint.read_tensors` keeps
them. Tensors that ``keep`` leaves out are hashed through one 4 MiB buffer.

Stability: private module. Import these names from :mod:`mbd_cert._safetensors`.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mbd_cert._safetensors_digest import (
    CHUNK_BYTES,
    FileDigests,
    TensorDigest,
    build_manifest,
    digest_manifest,
    format_digest,
)
from mbd_cert._safetensors_header import DTYPES
from mbd_cert._safetensors_read import (
    SafetensorsHeader,
    check_bool_bytes,
    open_regular_file,
    read_open_header,
)
from mbd_cert.errors import InputError, MalformedSafetensors

__all__ = ["LoadedFile", "check_unchanged", "load_file"]


@dataclass(frozen=True)
class LoadedFile:
    """A safetensors file as :func:`load_file` read it.

    Attributes:
        header: The validated header, parsed from the bytes that were hashed.
        tensors: Tensor name to a writable array of its stored bytes, as
            :func:`~mbd_cert._safetensors_read.read_tensor` types them, for each
            tensor that ``keep`` selected.
        digests: The file, manifest and tensor digests of the bytes read.
        header_digest: SHA-256 of the file's first ``8 + N`` bytes (SPEC.md, R-DIG-4).
    """

    header: SafetensorsHeader
    tensors: dict[str, np.ndarray]
    digests: FileDigests
    header_digest: str


# The read failed after the header parsed: the disk, a network mount or a file being
# replaced, not the file's format.
_UNREADABLE_HINT = ("check the disk or mount and that nothing rewrites the checkpoint, "
                    "then run the command again")


def load_file(path: str | os.PathLike[str], *,
              keep: Callable[[str], bool] | None = None) -> LoadedFile:
    """Read and validate a safetensors file in one pass, hashing what is read.

    Args:
        path: The file.
        keep: Selects the tensors returned as arrays, by name; None keeps all. The
            other tensors are hashed but not kept.

    Returns:
        The :class:`LoadedFile`.

    Raises:
        FileMissing: The file does not exist.
        MalformedSafetensors: The file is not valid (see
            :func:`~mbd_cert._safetensors_read.read_header`), or it became shorter
            or longer while it was read (``E_SAFETENSORS_CHANGED``).
        LimitExceeded: As :func:`~mbd_cert._safetensors_read.read_header`.
        InputError: ``E_FILE_UNREADABLE`` when it cannot be read, and
            ``E_FILE_NOT_REGULAR`` when it is not a regular file.
    """
    file_path = Path(os.fspath(path))
    handle, st = open_regular_file(file_path)
    tensors: dict[str, np.ndarray] = {}
    digests: dict[str, str] = {}
    with handle:
        header, head = read_open_header(handle, st, file_path)
        whole = hashlib.sha256(head)
        scratch: memoryview | None = None
        # The header parser has checked that the tensors tile the data section in this
        # order (R-ST-1), so reading them in turn reads each remaining byte once.
        for name, info in header.tensors.items():
            hasher = hashlib.sha256()
            if keep is None or keep(name):
                data = np.empty(info.nbytes, dtype=np.uint8)
                _read_hashed(handle, data.data, (hasher, whole), header)
                dtype = np.dtype(DTYPES[info.dtype].numpy_dtype)
                array = data.view(dtype).reshape(info.shape)
                if info.dtype == "BOOL":
                    check_bool_bytes(header, info, array)
                tensors[name] = array
            else:
                if scratch is None:
                    scratch = memoryview(bytearray(CHUNK_BYTES))
                left = info.nbytes
                while left:
                    size = min(left, CHUNK_BYTES)
                    _read_hashed(handle, scratch[:size], (hasher, whole), header)
                    left -= size
            digests[name] = format_digest(hasher)
        if _read_more(handle, header):
            raise _changed(file_path, f"it grew beyond its {header.file_size} bytes")
    entries = {name: TensorDigest(info.dtype, info.shape, digests[name])
               for name, info in header.tensors.items()}
    return LoadedFile(
        header=header,
        tensors=tensors,
        digests=FileDigests(
            file_digest=format_digest(whole),
            manifest_digest=digest_manifest(build_manifest(header.metadata, entries)),
            tensors=entries,
            metadata=dict(header.metadata),
        ),
        header_digest=format_digest(hashlib.sha256(head)),
    )


def check_unchanged(path: Path, loaded: FileDigests, now: str | None, *,
                    digest_of: str) -> None:
    """Check that a file digest taken later equals the digest of the bytes loaded.

    Args:
        path: The input file that was loaded, named in the message.
        loaded: Its digests from :func:`load_file`.
        now: The whole-file digest of the file, or of its copy, taken later.
        digest_of: What the later digest was taken of, such as ``"its copy in the output"``.

    Raises:
        MalformedSafetensors: ``E_SAFETENSORS_CHANGED`` when the digests differ.
    """
    if now != loaded.file_digest:
        raise _changed(path, f"{digest_of} has digest {now}, but the bytes issue computed on "
                             f"have {loaded.file_digest}")


def _changed(path: Path, detail: str) -> MalformedSafetensors:
    return MalformedSafetensors(
        f"{path}: file changed while issue was running: {detail}",
        code="E_SAFETENSORS_CHANGED",
        hint="another process or a git checkout rewrote the checkpoint; keep its files "
        "unchanged until issue finishes and run issue again. Nothing was written",
    )


def _read_hashed(handle: io.FileIO, view: memoryview, hashers: tuple[Any, ...],
                 header: SafetensorsHeader) -> None:
    """Fill ``view`` from the current position, feeding every byte read to ``hashers``."""
    filled = 0
    while filled < len(view):
        try:
            got = handle.readinto(view[filled:])
        except OSError as exc:
            raise InputError(f"cannot read {header.path}: {exc.strerror}",
                             hint=_UNREADABLE_HINT, code="E_FILE_UNREADABLE") from exc
        if not got:
            raise _changed(header.path, f"it ended before the {header.file_size} bytes its "
                                        "header describes")
        for hasher in hashers:
            hasher.update(view[filled:filled + got])
        filled += got


def _read_more(handle: io.FileIO, header: SafetensorsHeader) -> bool:
    """Return whether the file has a byte after the data section."""
    try:
        return bool(handle.read(1))
    except OSError as exc:
        raise InputError(f"cannot read {header.path}: {exc.strerror}",
                         hint=_UNREADABLE_HINT, code="E_FILE_UNREADABLE") from exc
