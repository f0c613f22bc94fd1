"""Bounded reading of whole input files: type and size checked before any byte is read.

Stability: private module. The JSON, key and policy readers use it; its functions may
change between releases without notice.
"""

from __future__ import annotations

import os
import stat

from mbd_cert.errors import FileMissing, InputError, LimitExceeded


def show_path(path: str | os.PathLike[str]) -> str:
    """Return ``path`` quoted for a message."""
    return repr(os.fspath(path))


def _require_regular_file(
    info: os.stat_result, path: str | os.PathLike[str], what: str, max_bytes: int
) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise InputError(
            f"{what} {show_path(path)} is {kind}",
            hint="pass the path of a regular file",
            code="E_FILE_NOT_REGULAR",
        )
    if info.st_size > max_bytes:
        raise LimitExceeded(
            f"{what} {show_path(path)} is {info.st_size} bytes; the maximum is {max_bytes}",
            code="E_INPUT_TOO_LARGE",
        )


def read_bytes_capped(
    path: str | os.PathLike[str], *, what: str, max_bytes: int, missing_hint: str = "check the path"
) -> bytes:
    """Read a whole regular file after checking its type and size.

    The size is checked with ``stat`` before reading, so a huge file costs no memory,
    and FIFOs, devices and directories are rejected without being read. Symbolic
    links are followed. Artefact paths taken from a certificate need their own checks.

    Args:
        path: File to read.
        what: Name of the file for messages, such as ``"certificate"``.
        max_bytes: Largest accepted file size.
        missing_hint: Hint of the ``FileMissing`` error: where the user gets this file.

    Returns:
        The file's bytes.

    Raises:
        FileMissing: The file does not exist.
        LimitExceeded: The file is larger than ``max_bytes`` (``E_INPUT_TOO_LARGE``).
        InputError: The path is not a regular file (``E_FILE_NOT_REGULAR``) or cannot
            be read (``E_FILE_UNREADABLE``).
    """
    try:
        _require_regular_file(os.stat(path), path, what, max_bytes)

        # O_NONBLOCK keeps open() from waiting on a FIFO swapped in after the stat
        # above. fstat then checks the file that was actually opened.
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        descriptor = os.open(path, flags)
        with os.fdopen(descriptor, "rb") as handle:
            opened = os.fstat(handle.fileno())
            _require_regular_file(opened, path, what, max_bytes)
            # read(n) allocates n bytes up front, so the request follows the file's own
            # size; one byte more detects a file that grew after fstat.
            data = handle.read(min(opened.st_size, max_bytes) + 1)
    except FileNotFoundError as exc:
        raise FileMissing(f"{what} not found: {show_path(path)}", hint=missing_hint) from exc
    except OSError as exc:
        raise InputError(
            f"cannot read {what} {show_path(path)}: {exc.strerror or exc}",
            code="E_FILE_UNREADABLE",
        ) from exc

    # The file may have grown between fstat and read.
    if len(data) > max_bytes:
        raise LimitExceeded(
            f"{what} {show_path(path)} is larger than {max_bytes} bytes",
            code="E_INPUT_TOO_LARGE",
        )
    return data
