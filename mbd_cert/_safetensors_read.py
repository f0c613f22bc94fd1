"""Strict reader of safetensors headers and tensor data.

The verifier reads model, diff and probe files that come from untrusted parties.
So this reader rejects everything that the reference reader (the Rust
``safetensors`` crate, version 0.8) rejects, and more. It also rejects duplicate
JSON keys, unknown fields, any padding other than trailing spaces, and data
sections with gaps, overlaps or trailing bytes. Nothing is allocated or read
according to a length field before that field has been checked against its cap and
the file size.

File layout: an 8-byte little-endian unsigned header length N, N bytes of UTF-8
JSON (an object mapping each tensor name to ``{"dtype", "shape", "data_offsets"}``
plus an optional ``"__metadata__"`` string map), then the data section, which the
``data_offsets`` index relative to its start.

Stability: private module. Import these names from :mod:`mbd_cert._safetensors`.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mbd_cert import _git_lfs
from mbd_cert._safetensors_header import (
    DTYPES,
    MAX_HEADER_BYTES,
    TensorInfo,
    parse_header,
)
from mbd_cert.errors import FileMissing, InputError, MalformedSafetensors

__all__ = [
    "SafetensorsHeader",
    "TensorInfo",
    "check_bool_bytes",
    "iter_tensors",
    "open_checked",
    "open_regular_file",
    "read_exact",
    "read_header",
    "read_open_header",
    "read_tensor",
]

# Leading bytes of formats that people pass by mistake. Their loaders run pickle,
# so they are recognised here and never parsed further.
_ZIP_MAGIC = b"PK\x03\x04"  # PyTorch >= 1.6 torch.save: a zip archive holding a pickle
_NPY_MAGIC = b"\x93NUMPY"  # NumPy .npy format, version 1 to 3
_PICKLE_PROTO = 0x80  # pickle PROTO opcode, followed by the protocol number
_PICKLE_PROTOCOLS = range(2, 6)  # protocols 2 to 5 start with PROTO


@dataclass(frozen=True)
class SafetensorsHeader:
    """Validated header of one safetensors file.

    Attributes:
        path: The file the header was read from.
        header_size: N, the length of the JSON header in bytes (padding included).
        data_start: Offset of the data section in the file (8 + N).
        file_size: Size of the file in bytes when the header was read.
        metadata: The ``__metadata__`` string map, or ``{}`` when absent.
        tensors: Tensor name to :class:`TensorInfo`, in data-section order.
        stat_key: (device, inode, size, mtime in ns, ctime in ns) when the header was
            read, so later reads can detect that the file was replaced or changed. The
            change time is there because a writer can restore the mtime with
            ``os.utime``, but not the ctime.
    """

    path: Path
    header_size: int
    data_start: int
    file_size: int
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]
    stat_key: tuple[int, int, int, int, int] = field(default=(0, 0, 0, 0, 0), compare=False)


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def open_regular_file(path: str | os.PathLike[str]) -> tuple[io.FileIO, os.stat_result]:
    """Open ``path`` for reading and check that it is a regular file.

    Raises:
        FileMissing: The file does not exist.
        InputError: ``E_FILE_UNREADABLE`` when it cannot be opened, and
            ``E_FILE_NOT_REGULAR`` when it is a directory, FIFO or device.
    """
    # O_NONBLOCK keeps open() from waiting for a writer when the path is a FIFO.
    # It has no effect on regular files, the only kind read after the check below.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise FileMissing(
            f"file not found: {os.fspath(path)}", hint="check the path"
        ) from exc
    except IsADirectoryError as exc:
        raise _not_regular(path, "a directory") from exc
    except OSError as exc:
        raise InputError(
            f"cannot open {os.fspath(path)}: {exc.strerror}",
            code="E_FILE_UNREADABLE",
            hint="check the path and its permissions",
        ) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise _not_regular(path, kind)
        return os.fdopen(fd, "rb", buffering=0), st
    except BaseException:
        os.close(fd)
        raise


def _not_regular(path: str | os.PathLike[str], kind: str) -> InputError:
    # The same code and wording as the JSON reader gives for a certificate path.
    return InputError(
        f"{os.fspath(path)} is {kind}",
        code="E_FILE_NOT_REGULAR",
        hint="pass the path of a regular safetensors file",
    )


def open_checked(header: SafetensorsHeader) -> io.FileIO:
    """Reopen the file of ``header`` and check that it has not changed since.

    Args:
        header: A header returned by :func:`read_header`.

    Returns:
        An unbuffered binary file object, positioned at offset 0.

    Raises:
        FileMissing: The file no longer exists.
        InputError: ``E_FILE_UNREADABLE`` when it cannot be opened.
        MalformedSafetensors: ``E_SAFETENSORS_CHANGED`` when the file's device,
            inode, size, modification time or change time differ from those at
            :func:`read_header` time.
    """
    handle, st = open_regular_file(header.path)
    if _stat_key(st) != header.stat_key:
        handle.close()
        raise MalformedSafetensors(
            f"{header.path}: file changed since its header was read "
            f"(size {header.file_size} -> {st.st_size} bytes, or replaced or modified)",
            code="E_SAFETENSORS_CHANGED",
            hint="do not modify files while they are being verified; run again",
        )
    return handle


def read_exact(handle: io.FileIO, size: int, path: Path) -> bytes:
    """Read exactly ``size`` bytes from the current position.

    Raises:
        MalformedSafetensors: ``E_SAFETENSORS_TRUNCATED`` when the file ends first.
        InputError: ``E_FILE_UNREADABLE`` on an I/O error.
    """
    try:
        data = handle.read(size)
        # An unbuffered read may return fewer bytes than requested before EOF.
        while data is not None and len(data) < size:
            more = handle.read(size - len(data))
            if not more:
                break
            data += more
    except OSError as exc:
        raise InputError(
            f"cannot read {path}: {exc.strerror}", code="E_FILE_UNREADABLE"
        ) from exc
    if data is None or len(data) != size:
        got = 0 if data is None else len(data)
        raise MalformedSafetensors(
            f"{path}: file ended after {got} of {size} expected bytes",
            code="E_SAFETENSORS_TRUNCATED",
            hint="the file is truncated or was modified while reading",
        )
    return data


_CONVERT_HINT = ("convert it with safetensors in a trusted environment; mbd-cert never "
                 "unpickles files")


def _foreign_format(prefix: bytes) -> tuple[str, str] | None:
    """Name the non-safetensors format that starts ``prefix``, with a hint, if any."""
    if prefix.startswith(_ZIP_MAGIC):
        return "a PyTorch zip checkpoint", _CONVERT_HINT
    if len(prefix) >= 2 and prefix[0] == _PICKLE_PROTO and prefix[1] in _PICKLE_PROTOCOLS:
        return "a pickle or legacy PyTorch checkpoint", _CONVERT_HINT
    if prefix.startswith(_NPY_MAGIC):
        return "a NumPy .npy array", _CONVERT_HINT
    # A certificate or config passed in place of a tensor file: its length field reads
    # as a huge number, and the error would then report only "header too large".
    # A length field below 2**56 has a zero byte, which no JSON text has.
    text = prefix.removeprefix(b"\xef\xbb\xbf")
    if text.lstrip(b" \t\r\n")[:1] in (b"{", b"[") and all(
            32 <= byte < 127 or byte in (9, 10, 13) for byte in text[:8]):
        return ("a JSON document, such as a certificate or a config",
                "pass the .safetensors file this option takes, not a .json file")
    return None


def _check_prefix(path: Path, prefix: bytes, file_size: int) -> int:
    """Check the 8-byte length field against the cap and the file size.

    Returns:
        The header length N.

    Raises:
        MalformedSafetensors: See :func:`read_header`.
    """
    header_size = int.from_bytes(prefix[:8], "little") if len(prefix) >= 8 else -1
    # Some valid headers start with the same bytes as a pickle (N = 640 is
    # 80 02 00 .. 00), so the magic bytes only decide when the file cannot be
    # a safetensors file: its length field is out of range or no '{' follows it.
    plausible = (
        2 <= header_size <= MAX_HEADER_BYTES
        and 8 + header_size <= file_size
        and prefix[8:9] == b"{"
    )
    if not plausible and _git_lfs.is_pointer(prefix):
        raise MalformedSafetensors(
            f"{path}: is a Git LFS pointer file, not the file it points to",
            code="E_SAFETENSORS_NOT_SAFETENSORS",
            hint=_git_lfs.FETCH_HINT,
        )
    foreign = None if plausible else _foreign_format(prefix)
    if foreign is not None:
        raise MalformedSafetensors(
            f"{path}: not a safetensors file (looks like {foreign[0]})",
            code="E_SAFETENSORS_NOT_SAFETENSORS",
            hint=foreign[1],
        )
    if file_size < 8:
        raise MalformedSafetensors(
            f"{path}: file has {file_size} bytes, fewer than the 8-byte header length field",
            code="E_SAFETENSORS_TRUNCATED",
            hint="the file is empty or truncated",
        )
    if header_size > MAX_HEADER_BYTES:
        raise MalformedSafetensors(
            f"{path}: header length field is {header_size} bytes, "
            f"more than the maximum of {MAX_HEADER_BYTES}",
            code="E_SAFETENSORS_HEADER_TOO_LARGE",
            hint="the file is corrupt or not a safetensors file",
        )
    if 8 + header_size > file_size:
        raise MalformedSafetensors(
            f"{path}: header length field is {header_size} bytes, but only "
            f"{file_size - 8} bytes follow it",
            code="E_SAFETENSORS_TRUNCATED",
            hint="the file is truncated or not a safetensors file",
        )
    if header_size < 2:
        raise MalformedSafetensors(
            f"{path}: header length field is {header_size} bytes; "
            "expected at least 2 for '{}'",
            hint="the file is corrupt or not a safetensors file",
        )
    return header_size


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and validate the header of a safetensors file.

    The length field is checked before anything is allocated for it, and the header
    is parsed without accepting duplicate keys (see
    :func:`mbd_cert._safetensors_header.parse_header` for every rule).

    Args:
        path: Path of the file.

    Returns:
        The validated header. Its ``tensors`` are in data-section order.

    Raises:
        FileMissing: The file does not exist.
        InputError: ``E_FILE_UNREADABLE`` when the file cannot be read, or
            ``E_FILE_NOT_REGULAR`` when it is not a regular file.
        MalformedSafetensors: The file is not a valid safetensors file. Codes:
            ``E_SAFETENSORS_NOT_SAFETENSORS`` (a zip, pickle or .npy file),
            ``E_SAFETENSORS_TRUNCATED``, ``E_SAFETENSORS_HEADER_TOO_LARGE``,
            ``E_SAFETENSORS_DUPLICATE_KEY``, ``E_SAFETENSORS_SIZE_MISMATCH``,
            ``E_SAFETENSORS_LAYOUT``, ``E_SAFETENSORS_METADATA`` and
            ``E_SAFETENSORS_MALFORMED`` for other header faults.
        LimitExceeded: The header exceeds a cap on tensor count, name length, rank
            or dimension size.
    """
    file_path = Path(os.fspath(path))
    handle, st = open_regular_file(file_path)
    with handle:
        return read_open_header(handle, st, file_path)[0]


def read_open_header(handle: io.FileIO, st: os.stat_result,
                     path: Path) -> tuple[SafetensorsHeader, bytes]:
    """Read and validate the header of an open file, as :func:`read_header` does.

    Args:
        handle: The file, opened by :func:`open_regular_file`.
        st: Its status from :func:`open_regular_file`.
        path: Its path, for messages.

    Returns:
        The header, and the file's first ``8 + N`` bytes (the length field and the
        JSON header) that it was parsed from. ``handle`` is left at the data section.

    Raises:
        MalformedSafetensors, LimitExceeded, InputError: As :func:`read_header`.
    """
    # 9 bytes decide the layout, and 32 recognise a Git LFS pointer.
    prefix = read_exact(handle, min(32, st.st_size), path)
    header_size = _check_prefix(path, prefix, st.st_size)
    handle.seek(8)
    raw = read_exact(handle, header_size, path)
    data_start = 8 + header_size
    metadata, tensors = parse_header(raw, path, st.st_size - data_start)
    header = SafetensorsHeader(
        path=path,
        header_size=header_size,
        data_start=data_start,
        file_size=st.st_size,
        metadata=metadata,
        tensors=tensors,
        stat_key=_stat_key(st),
    )
    return header, prefix[:8] + raw


def _tensor_info(header: SafetensorsHeader, name: str) -> TensorInfo:
    info = header.tensors.get(name)
    if info is None:
        raise MalformedSafetensors(
            f"{header.path}: no tensor named {name!r}",
            code="E_SAFETENSORS_TENSOR_MISSING",
            hint="list the file's tensors with `mbd-cert inspect`",
        )
    return info


def read_tensor(header: SafetensorsHeader, name: str) -> np.ndarray:
    """Return one tensor as a read-only, memory-mapped numpy array.

    The array has a little-endian dtype. BF16 is returned as raw ``uint16`` words and
    every F8 dtype as raw ``uint8`` bytes, because numpy has no such types. The
    header's ``TensorInfo.dtype`` gives their interpretation. C64 is ``complex64``. A zero-size
    tensor is returned as an empty (not memory-mapped) array of its shape.

    Args:
        header: A header returned by :func:`read_header`.
        name: The tensor name.

    Returns:
        The tensor's data, in row-major order.

    Raises:
        MalformedSafetensors: ``E_SAFETENSORS_TENSOR_MISSING`` for an unknown name,
            ``E_SAFETENSORS_CHANGED`` when the file changed since ``header`` was
            read, and ``E_SAFETENSORS_MALFORMED`` for a BOOL tensor holding a byte
            other than 0 or 1.
        FileMissing: The file no longer exists.
        InputError: ``E_FILE_UNREADABLE`` when the file cannot be read.
    """
    info = _tensor_info(header, name)
    dtype = np.dtype(DTYPES[info.dtype].numpy_dtype)
    with open_checked(header) as handle:
        if info.end == info.begin:
            array: np.ndarray = np.zeros(info.shape, dtype=dtype)
            array.flags.writeable = False
            return array
        # NOTE: a mapped file truncated by another process while the array is in
        # use raises SIGBUS; open_checked only detects changes made before this call.
        array = np.memmap(
            handle, dtype=dtype, mode="r", offset=header.data_start + info.begin,
            shape=info.shape,
        )
    if info.dtype == "BOOL":
        check_bool_bytes(header, info, array)
    return array


def check_bool_bytes(header: SafetensorsHeader, info: TensorInfo, array: np.ndarray) -> None:
    """Reject a BOOL tensor with a byte other than 0 or 1 (``E_SAFETENSORS_MALFORMED``)."""
    # numpy treats a bool byte of 2 as true in some operations and as unequal to
    # True in others, so a crafted mask could pass one check and fail another.
    raw = array.reshape(-1).view(np.uint8)
    bad = np.flatnonzero(raw > 1)
    if bad.size:
        raise MalformedSafetensors(
            f"{header.path}: BOOL tensor {info.name!r} contains byte value {int(raw[bad[0]])} "
            f"at element {int(bad[0])}; expected 0 or 1",
            hint="rewrite the tensor with a safetensors writer",
        )


def read_header_bytes(header: SafetensorsHeader) -> bytes:
    """Return the file's raw JSON header, padding included (``header_size`` bytes).

    Raises:
        MalformedSafetensors, FileMissing, InputError: As :func:`read_tensor`.
    """
    with open_checked(header) as handle:
        handle.seek(8)
        return read_exact(handle, header.header_size, header.path)


# Bytes read per step by count_nonzero_entries: a multiple of every entry width.
_COUNT_CHUNK_BYTES = 4 * 1024 * 1024
_UNSIGNED_OF_WIDTH = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
# Floating-point dtypes with a negative zero, and the width of the float whose top bit
# is the sign. The FNUZ formats have none (their 0x80 is NaN), nor has F8_E8M0.
_SIGN_BIT_WIDTHS = {"F8_E5M2": 1, "F8_E4M3": 1, "F16": 2, "BF16": 2, "F32": 4, "F64": 8,
                    "C64": 4}


def count_nonzero_entries(header: SafetensorsHeader, name: str, *,
                          ignore_sign: bool = False) -> int:
    """Return how many entries of one tensor have a byte other than zero.

    Bytes, not values, are compared, so -0.0 counts as non-zero. With ``ignore_sign``
    the sign bit of floating-point entries is left out, so -0.0 counts as zero, as its
    value is (a complex entry then counts once per non-zero part). The tensor is read
    in chunks of 4 MiB, so memory stays bounded whatever its size (a memory-mapped
    array would add every page it touches to the resident set).

    Raises:
        MalformedSafetensors, FileMissing, InputError: As :func:`read_tensor`.
    """
    info = _tensor_info(header, name)
    width = np.dtype(DTYPES[info.dtype].numpy_dtype).itemsize
    unsigned = _UNSIGNED_OF_WIDTH.get(width)
    if ignore_sign and info.dtype in _SIGN_BIT_WIDTHS:
        # Complex entries hold two floats: mask each one's sign bit.
        width = _SIGN_BIT_WIDTHS[info.dtype]
        unsigned = _UNSIGNED_OF_WIDTH[width]
        magnitude: np.ndarray | None = np.array((1 << (8 * width - 1)) - 1, dtype=unsigned)
    else:
        magnitude = None
    count = 0
    with open_checked(header) as handle:
        handle.seek(header.data_start + info.begin)
        left = info.end - info.begin
        while left:
            size = min(left, _COUNT_CHUNK_BYTES - _COUNT_CHUNK_BYTES % width)
            chunk = read_exact(handle, size, header.path)
            left -= size
            if magnitude is not None:
                count += int(np.count_nonzero(np.frombuffer(chunk, dtype=unsigned) & magnitude))
            elif unsigned is not None:
                count += int(np.count_nonzero(np.frombuffer(chunk, dtype=unsigned)))
            else:
                raw = np.frombuffer(chunk, dtype=np.uint8).reshape(-1, width)
                count += int(np.count_nonzero(raw.any(axis=1)))
    return count


def iter_tensors(header: SafetensorsHeader) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, array)`` for every tensor, in data-section order.

    Args:
        header: A header returned by :func:`read_header`.

    Yields:
        Each tensor name and its array, as :func:`read_tensor` returns it.

    Raises:
        MalformedSafetensors: As :func:`read_tensor`.
        FileMissing: As :func:`read_tensor`.
        InputError: As :func:`read_tensor`.
    """
    for name in header.tensors:
        yield name, read_tensor(header, name)
