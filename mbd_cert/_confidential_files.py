"""Find the issuer's confidential files in a repository, for verify-repo's warning.

``issue`` leaves ``diff.safetensors`` and ``probe.safetensors`` in its output
directory even when it also seals them, and ``eval.safetensors``, the held-out samples
of its utility metrics. The diff rebuilds the pre-deletion model, and the probe and
evaluation sets contain data samples (SPEC.md, section 12.3), so a repository that
contains them publishes what the deletion removed. ``verify-repo`` warns about them
(R-REPO-5): under the names the certificate gives, and under any other name in the
certificate's directory or a subdirectory without a certificate of its own, found by
the ``format`` metadata in the safetensors header.

The warning is advisory and never changes an exit code, so the header scan is lenient
where verification is strict. It reads only the length prefix and the header JSON. It
ignores whether the data section is complete, and it skips any file it cannot read.

Stability: internal.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path
from typing import Any

from mbd_cert import errors
from mbd_cert._json import load_json_strict

# safetensors "format" metadata of the issuer's confidential files: the diff, and the
# probe and evaluation sets, which contain data samples.
CONFIDENTIAL_FORMATS = frozenset({"mbd-cert-diff/1", "mbd-cert-probe/1"})
# The issuer's headers are a few kilobytes (544 to 2,136 bytes for the diff, probe
# and evaluation sets of the synthetic and MOSEI checkpoints).
# A larger claimed header is skipped unread, so a hostile file costs one 8-byte read.
_MAX_SCANNED_HEADER = 1024 * 1024

# Names verify-repo verifies as certificates.
CERTIFICATE_NAME = "cert.json"
CERTIFICATE_SUFFIX = ".cert.json"
# Files whose header one certificate's scan reads at most: the walk below its directory
# touches each file once, with an 8-byte read for most.
_MAX_SCANNED_FILES = 10_000

# Directory -> its confidential files, filled once per verify-repo run, because
# several certificates can share a directory.
ScanCache = dict[Path, list[Path]]


def published_confidential_files(root: Path, certificate: Path,
                                 cache: ScanCache | None = None,
                                 doc: dict[str, Any] | None = None) -> list[str]:
    """Return the confidential issuer files that lie beside ``certificate``.

    Args:
        root: The repository root; the returned paths are relative to it.
        certificate: A certificate file below ``root``.
        cache: Scan results per directory, shared by the calls of one run.
        doc: The certificate already parsed; None parses ``certificate``.

    Returns:
        Paths relative to ``root``; empty when the certificate is not confidential or
        cannot be read, because verification reports that.
    """
    from mbd_cert import _paths
    from mbd_cert.certificate import load_certificate

    try:
        bundle = (doc if doc is not None else load_certificate(certificate))["audit_bundle"]
    except errors.MbdCertError:
        return []
    if bundle.get("confidential") is not True:
        return []
    found = []
    for part in ("diff", "probe"):
        try:
            path = _paths.resolve_artefact(certificate.parent, bundle[part]["path"],
                                           field=f"audit_bundle.{part}.path")
        except errors.MbdCertError:
            continue
        if path.is_file():
            found.append(path.relative_to(root).as_posix())
    # The certificate does not name the evaluation set. Issue writes it under this name.
    evaluation = certificate.parent / "eval.safetensors"
    if evaluation.is_file() and not evaluation.is_symlink():
        found.append(evaluation.relative_to(root).as_posix())
    directory = certificate.parent
    if cache is None or directory not in cache:
        scanned = files_by_format(directory)
        if cache is not None:
            cache[directory] = scanned
    else:
        scanned = cache[directory]
    for path in scanned:
        relative = path.relative_to(root).as_posix()
        if relative not in found:
            found.append(relative)
    return found


def files_by_format(directory: Path) -> list[Path]:
    """Return the files below ``directory`` whose header names a confidential format.

    The walk covers ``directory`` and its subdirectories (a ``bundle/`` folder beside
    the certificate, say), except hidden ones and those that contain a certificate of
    their own, whose scan covers them. Symbolic links are not followed, and at most
    10,000 files are read. A renamed copy (``diff-old.safetensors``, ``probe.bak``) is
    found as well as the original.
    """
    found: list[Path] = []
    scanned = 0
    pending = [directory]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as listing:
                entries = list(listing)
        except OSError:
            continue  # verification reports an unreadable certificate directory
        files = [e for e in entries if e.is_file(follow_symlinks=False)]
        if current != directory and any(_is_certificate(e.name) for e in files):
            continue
        pending.extend(Path(e.path) for e in entries
                       if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))
        for entry in files:
            scanned += 1
            if scanned > _MAX_SCANNED_FILES:
                return sorted(found)
            if header_format(Path(entry.path)) in CONFIDENTIAL_FORMATS:
                found.append(Path(entry.path))
    return sorted(found)


def _is_certificate(name: str) -> bool:
    return name == CERTIFICATE_NAME or name.endswith(CERTIFICATE_SUFFIX)


def header_format(path: Path) -> str | None:
    """Return the ``format`` metadata of a safetensors header, or None.

    None stands for anything else: not a safetensors file, a header over 1 MiB, JSON
    that the strict loader rejects (a repeated key included), no ``__metadata__`` or no
    string ``format`` in it, or a file that cannot be opened. The data section is not read.
    """
    try:
        # Non-blocking and without following links: a file swapped for a FIFO or a
        # link after the directory listing must not hang the run or leave the repository.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return None
        with os.fdopen(descriptor, "rb", buffering=0) as handle:
            descriptor = -1  # closed by the file object from here on
            prefix = handle.read(8)
            if len(prefix) != 8:
                return None
            (length,) = struct.unpack("<Q", prefix)
            if not 2 <= length <= _MAX_SCANNED_HEADER:
                return None
            text = handle.read(length)
    except OSError:
        return None
    finally:
        if descriptor >= 0:
            os.close(descriptor)
    if len(text) != length:
        return None
    try:
        # The strict loader: a plain json.loads keeps the last of two "__metadata__"
        # keys, so a crafted header could show one format to this scan and another
        # to a reader that keeps the first.
        header = load_json_strict(text, what="safetensors header",
                                  max_bytes=_MAX_SCANNED_HEADER, error_class=errors.InputError)
    except errors.MbdCertError:
        return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    value = metadata.get("format") if isinstance(metadata, dict) else None
    return value if isinstance(value, str) else None
