"""Safe resolution of artefact paths and atomic file writes.

A certificate names its audit-bundle files by relative path, and the certificate
comes from an untrusted party, so :func:`resolve_artefact` accepts only plain
relative paths that stay inside the bundle directory. Writes go to a temporary file
in the target directory and are published with one rename, so readers never see a
partial file.

Stability: private module; used by the issuer, the verifier and the writers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mbd_cert.errors import FileMissing, InputError, UnsafePath


def check_output_file(path: Path, option: str, inputs: Iterable[Path] = (),
                      input_dirs: Iterable[Path] = ()) -> None:
    """Reject an output path that cannot be written, before any long work starts.

    ``inputs`` and ``input_dirs`` are passed to :func:`check_not_input`.

    Raises:
        InputError: ``path`` is a directory (``E_FILE_NOT_REGULAR``), or an input
            (``E_OUTPUT_IS_INPUT``).
        FileMissing: Its directory does not exist.
    """
    if path.is_dir():
        raise InputError(f"{option} names a directory: {path}",
                         hint="pass a file path, such as report.xml, inside it",
                         code="E_FILE_NOT_REGULAR")
    if not path.parent.is_dir():
        raise FileMissing(f"{option} directory not found: {path.parent}",
                          hint="create the directory first, or write the file into an "
                          "existing one")
    check_not_input(path, option, inputs, input_dirs)


# Suffixes of the files a verifier may read from a directory it is given: certificates
# and chain links, models and bundle files, sealed bundles, public keys.
INPUT_SUFFIXES = frozenset({".json", ".safetensors", ".sealed", ".pub"})


def check_not_input(path: Path, option: str, inputs: Iterable[Path],
                    input_dirs: Iterable[Path] = ()) -> None:
    """Reject an output path that would replace a file the command reads (SPEC.md, R-SEC-1).

    ``path`` is an input when it exists and is the same file as one of ``inputs``
    (compared by device and inode, after symbolic links), or when it lies in one of
    ``input_dirs`` and its suffix is in :data:`INPUT_SUFFIXES`. The second rule holds
    whether the file exists or not: otherwise the first run would write the file and
    the same command would fail from the second run on.

    Raises:
        InputError: ``E_OUTPUT_IS_INPUT``, naming the option and the input.
    """
    hint = f"write the {option} file to a new path, outside the files the command reads"
    if os.path.lexists(path):
        for source in inputs:
            if _same_file(path, source):
                # Another name of the same file is worth showing, the same name is not.
                alias = "" if os.fspath(path) == os.fspath(source) else f" is {source}"
                raise InputError(f"{option} names an input file: {path}{alias}",
                                 hint=hint, code="E_OUTPUT_IS_INPUT")
    if path.suffix not in INPUT_SUFFIXES:
        return
    for directory in input_dirs:
        if _same_file(path.parent, directory):
            raise InputError(
                f"{option} names {path}, a {path.suffix} file in {directory}, which the "
                "command reads certificates, models, bundle files or keys from",
                hint=hint, code="E_OUTPUT_IS_INPUT")


def _same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def reject_output_over_inputs(out_dir: Path,
                              inputs: Iterable[tuple[str, Path | None]]) -> None:
    """Reject an output directory that is one of the inputs or contains one.

    Commands replace ``--out`` as a whole, so such an input would be deleted. Both
    sides are compared after resolving symbolic links and relative paths. An output
    inside an input directory is accepted, because replacing it leaves the input's
    own files in place.

    Args:
        out_dir: The ``--out`` directory; it need not exist.
        inputs: Pairs of (option that named the input, such as ``--checkpoint``, and
            its path). A None path is skipped.

    Raises:
        InputError: ``E_OUTPUT_IS_INPUT``, naming both options and paths.
    """
    out_real = os.path.realpath(out_dir)
    for option, path in inputs:
        if path is None:
            continue
        input_real = os.path.realpath(path)
        if os.path.commonpath([out_real, input_real]) != out_real:
            continue
        relation = "is" if input_real == out_real else "contains"
        raise InputError(
            f"--out {str(out_dir)!r} {relation} the input {option} {str(path)!r}",
            hint="writing --out replaces the whole directory and would delete that "
            "input, so --force cannot allow it; choose another --out, such as a new, "
            "empty directory",
            code="E_OUTPUT_IS_INPUT",
        )


__all__ = [
    "MAX_ARTEFACT_PATH_CHARS",
    "AtomicOutput",
    "atomic_output",
    "atomic_write_bytes",
    "reject_output_over_inputs",
    "resolve_artefact",
]

# PATH_MAX on Linux; longer relative paths cannot be opened there anyway.
MAX_ARTEFACT_PATH_CHARS = 4096
# ASCII control characters, which terminals and logs interpret, and the backslash,
# which Windows treats as a separator.
_FORBIDDEN_CHARACTERS = re.compile(r"[\x00-\x1f\x7f\\]")
# "C:foo" is relative on POSIX but names a drive on Windows.
_DRIVE_PREFIX = re.compile(r"^[A-Za-z]:")


def _reject(field: str, relpath: object, reason: str) -> UnsafePath:
    return UnsafePath(
        f"unsafe artefact path in {field}: {relpath!r} {reason}",
        hint="artefact paths must be relative paths inside the bundle directory, "
        "separated by '/', without '.', '..' or empty components",
    )


def _check_syntax(relpath: object, field: str) -> list[str]:
    """Return the components of ``relpath`` after checking its syntax."""
    if not isinstance(relpath, str):
        raise _reject(field, relpath, f"has type {type(relpath).__name__}; expected a string")
    if relpath == "":
        raise _reject(field, relpath, "is empty")
    if len(relpath) > MAX_ARTEFACT_PATH_CHARS:
        raise _reject(field, relpath[:64] + "...",
                      f"has {len(relpath)} characters, more than {MAX_ARTEFACT_PATH_CHARS}")
    bad = _FORBIDDEN_CHARACTERS.search(relpath)
    if bad is not None:
        name = "a backslash" if bad.group() == "\\" else f"control character {bad.group()!r}"
        raise _reject(field, relpath, f"contains {name}")
    if relpath.startswith("/"):
        raise _reject(field, relpath, "is absolute")
    if _DRIVE_PREFIX.match(relpath):
        raise _reject(field, relpath, "starts with a drive letter")
    parts = relpath.split("/")
    for part in parts:
        if part == "":
            raise _reject(field, relpath, "has an empty component")
        if part in (".", ".."):
            raise _reject(field, relpath, f"has a {part!r} component")
    return parts


def resolve_artefact(base_dir: str | os.PathLike[str], relpath: str, *,
                     allow_symlinks: bool = False, field: str = "artefact path") -> Path:
    """Resolve a path named in a certificate against the bundle directory.

    Components below ``base_dir`` that exist are checked with ``lstat``. The first
    missing component ends the check, so the path of a file still to be written
    resolves. ``base_dir`` itself is chosen by the user, so it may be or contain a
    symbolic link.

    Args:
        base_dir: The directory the certificate's paths are relative to.
        relpath: The path as written in the certificate, with ``/`` separators.
        allow_symlinks: Accept symbolic links below ``base_dir`` (only when the signed
            certificate allows them). The resolved target must still lie inside
            ``base_dir``.
        field: Name of the certificate field, for messages.

    Returns:
        ``base_dir / relpath``.

    Raises:
        UnsafePath: ``relpath`` is not a string, is empty, absolute, has ``.``,
            ``..`` or empty components, a backslash, a control character or NUL,
            or passes through a symbolic link that is not allowed or leads outside
            ``base_dir``.
        FileMissing: ``base_dir`` does not exist.
        InputError: ``E_FILE_NOT_REGULAR`` when ``base_dir`` is not a directory,
            ``E_FILE_UNREADABLE`` when a component cannot be examined.
    """
    parts = _check_syntax(relpath, field)
    base = Path(os.fspath(base_dir))
    hint = "pass the directory that holds the audit bundle"
    if base.exists() and not base.is_dir():
        raise InputError(f"bundle path is a file, not a directory: {base}", hint=hint,
                         code="E_FILE_NOT_REGULAR")
    if not base.is_dir():
        raise FileMissing(f"bundle directory not found: {base}", hint=hint)

    current = base
    for part in parts:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except (FileNotFoundError, NotADirectoryError):
            # Nothing exists below this point, so no link can be followed there.
            break
        except OSError as exc:
            raise InputError(f"cannot examine {current} (from {field} {relpath!r}): "
                             f"{exc.strerror}", code="E_FILE_UNREADABLE") from exc
        if stat.S_ISLNK(mode) and not allow_symlinks:
            # A link could point a signed path at a file outside the directory.
            raise _reject(field, relpath, f"passes through the symbolic link {current}; "
                          "replace the link with the file itself")

    target = base.joinpath(*parts)
    if allow_symlinks:
        real_base = os.path.realpath(base)
        real_target = os.path.realpath(target)
        if os.path.commonpath([real_base, real_target]) != real_base:
            raise _reject(field, relpath, f"resolves to {real_target}, outside the bundle "
                          f"directory {real_base}")
    # NOTE: a component replaced by a symbolic link after this check is followed by
    # the caller's open(), because the check assumes that no other process modifies
    # the bundle while it is verified.
    return target


@dataclass
class AtomicOutput:
    """Temporary file that :func:`atomic_output` publishes on success.

    Attributes:
        file: Binary file object to write to.
        temp_path: Path of the temporary file, for reading it back before publishing.
    """

    file: BinaryIO
    temp_path: Path


def _fsync_directory(directory: Path) -> None:
    # Makes the rename durable; POSIX only, because Windows cannot open directories.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exists_error(path: Path) -> InputError:
    return InputError(f"file already exists: {path}", code="E_FILE_EXISTS",
                      hint="choose another path or allow overwriting")


def _publish(temp_path: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(temp_path, path)
        return
    try:
        # link() fails if the target exists, so no existing file is ever replaced.
        os.link(temp_path, path)
    except FileExistsError as exc:
        raise _exists_error(path) from exc
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                             errno.EMLINK):
            raise
        # NOTE: this filesystem has no hard links, so the existence check and the
        # rename below are two steps and a file created in between is replaced.
        if os.path.lexists(path):
            raise _exists_error(path) from exc
        os.replace(temp_path, path)
        return
    os.unlink(temp_path)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *,
                  overwrite: bool = False) -> Iterator[AtomicOutput]:
    """Write a file atomically: temporary file, fsync, then rename onto ``path``.

    On normal exit of the ``with`` block the data is flushed, fsynced and published.
    On any exception, KeyboardInterrupt included, the temporary file is removed and
    ``path`` is left as it was.

    Args:
        path: Final path. Its directory must exist.
        overwrite: Replace an existing file at ``path``.

    Yields:
        The :class:`AtomicOutput` to write to.

    Raises:
        FileMissing: The directory of ``path`` does not exist.
        InputError: ``E_FILE_EXISTS`` when ``path`` exists and ``overwrite`` is false;
            ``E_FILE_UNWRITABLE`` when the file cannot be created or written.
    """
    target = Path(os.fspath(path))
    directory = target.parent
    if not directory.is_dir():
        raise FileMissing(f"directory not found: {directory}",
                          hint="create the directory first")
    if not overwrite and os.path.lexists(target):
        raise _exists_error(target)
    try:
        fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.",
                                         suffix=".tmp")
    except OSError as exc:
        raise InputError(f"cannot create a file in {directory}: {exc.strerror}",
                         hint="choose a directory you can write to, or free disk space",
                         code="E_FILE_UNWRITABLE") from exc
    temp_path = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield AtomicOutput(handle, temp_path)
            handle.flush()
            os.fsync(handle.fileno())
        _publish(temp_path, target, overwrite)
        _fsync_directory(directory)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        hint = ("the path names a directory: give a file name inside it"
                if target.is_dir() else "check the permissions and the free disk space")
        raise InputError(f"cannot write {target}: {exc.strerror}", hint=hint,
                         code="E_FILE_UNWRITABLE") from exc
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview,
                       *, overwrite: bool = False, shared: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`).

    Args:
        path: Final path. Its directory must exist.
        data: The complete file content.
        overwrite: Replace an existing file at ``path``.
        shared: Give the file the mode a plain ``open`` would (0o644 under a umask of
            022) instead of the temporary file's 0o600, for outputs meant to be read
            by others (reports, attestations, JUnit files).

    Raises:
        FileMissing: The directory of ``path`` does not exist.
        InputError: ``E_FILE_EXISTS`` when ``path`` exists and ``overwrite`` is false;
            ``E_FILE_UNWRITABLE`` when the file cannot be written.
    """
    with atomic_output(path, overwrite=overwrite) as output:
        if shared:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(output.temp_path, 0o666 & ~umask)
        output.file.write(data)


def key_pair_paths(dir_or_prefix: str | os.PathLike[str], default_name: str, *,
                   force: bool) -> tuple[Path, Path]:
    """Return the ``.key`` and ``.pub`` paths of a new key pair, both checked free.

    An existing directory gets ``default_name.key`` and ``default_name.pub`` inside it;
    any other path is a prefix. Both paths are checked before either file is written,
    so an existing file never leaves half a pair behind.

    Raises:
        InputError: A path exists and ``force`` is false (``E_FILE_EXISTS``).
    """
    base = Path(dir_or_prefix)
    if base.is_dir():
        base = base / default_name
    private_path = base.with_name(base.name + ".key")
    public_path = base.with_name(base.name + ".pub")
    if not force:
        for path in (private_path, public_path):
            if os.path.lexists(path):
                raise InputError(
                    f"key file {str(path)!r} already exists",
                    hint="choose another path, or pass --force to overwrite it",
                    code="E_FILE_EXISTS",
                )
    return private_path, public_path
