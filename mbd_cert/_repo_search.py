"""Find a repository's certificates and pair each with its model, for verify-repo.

The rules are those of SPEC.md, "Verifying a repository" (R-REPO-1, R-REPO-2):

* a certificate is a regular file named ``cert.json`` or ``<name>.cert.json``;
* ``<dir>/cert.json`` certifies ``<dir>/model.safetensors``, and
  ``<dir>/<name>.cert.json`` certifies ``<dir>/<name>.safetensors``;
* directories whose names start with ``.`` (``.git``, ``.venv``) and symbolic links
  are skipped, and a directory that cannot be listed stops the run.

Stability: internal.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

from mbd_cert import errors
from mbd_cert._confidential_files import CERTIFICATE_NAME, CERTIFICATE_SUFFIX

logger = logging.getLogger(__name__)

MODEL_NAME = "model.safetensors"


def find_certificates(root: Path) -> list[Path]:
    """Return every certificate file below ``root``, sorted by relative path.

    Raises:
        FileMissing: ``root`` does not exist.
        InputError: ``root`` is not a directory (``E_FILE_NOT_REGULAR``), or a directory
            below it cannot be listed (``E_FILE_UNREADABLE``).
    """
    if not root.exists():
        raise errors.FileMissing(f"repository root not found: {root}",
                                 hint="pass the repository's top directory")
    if not root.is_dir():
        raise errors.InputError(f"repository root is not a directory: {root}",
                                hint="pass the repository's top directory",
                                code="E_FILE_NOT_REGULAR")
    found = []
    # An explicit stack, not os.walk: on Python 3.11 os.walk recurses once per level,
    # and a directory about 1,000 levels deep ended the whole run with RecursionError.
    pending = [root]
    while pending:
        directory = pending.pop()
        for entry in _listing(directory):
            if entry.is_dir(follow_symlinks=False):
                # Hidden directories (.git) and linked directories are not searched.
                if not entry.name.startswith("."):
                    pending.append(Path(entry.path))
                continue
            if entry.name != CERTIFICATE_NAME and not entry.name.endswith(CERTIFICATE_SUFFIX):
                continue
            path = Path(entry.path)
            if path.is_symlink() or not path.is_file():
                logger.warning("skipping %s: not a regular file", path)
                continue
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _listing(directory: Path) -> list[os.DirEntry[str]]:
    """Return the entries of ``directory``; an unreadable one stops the run (exit 2)."""
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError as exc:
        # A certificate below it could not be verified, so skipping it would let CI
        # pass without checking it.
        raise errors.InputError(
            f"cannot list directory {directory}: {exc.strerror}",
            hint="make the repository readable to the CI user, or move the directory "
            "out of the repository",
            code="E_FILE_UNREADABLE",
        ) from exc


def model_for(certificate: Path) -> Path:
    """Return the model file a certificate is paired with (the rule in the module doc)."""
    if certificate.name == CERTIFICATE_NAME:
        return certificate.with_name(MODEL_NAME)
    stem = certificate.name[: -len(CERTIFICATE_SUFFIX)]
    return certificate.with_name(stem + ".safetensors")


def repository_files(root: Path, *, hidden: bool = False,
                     unreadable: dict[Path, str] | None = None) -> Iterator[Path]:
    """Yield the regular files below ``root``, skipping links and, unless asked, hidden entries.

    The scans that follow the certificate search use it. With ``hidden``, files and
    directories whose names start with a dot are walked too, except ``.git``, which
    contains git's own copies of the files. The certificate search stopped the run on
    any other directory that cannot be listed, so one met here is hidden, or became
    unreadable during the run. It is skipped and, when ``unreadable`` is given, added
    to it with the reason, so that the caller can report what the scan did not see.
    """
    # An explicit stack, for the reason given in find_certificates.
    pending = [root]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            if unreadable is not None:
                unreadable[directory] = exc.strerror or type(exc).__name__
            continue
        for entry in entries:
            if entry.name == ".git" or (entry.name.startswith(".") and not hidden):
                continue
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                yield Path(entry.path)
