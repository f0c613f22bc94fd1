"""Find a deleted encoder's tensors anywhere in a repository, for verify-repo (R-REPO-12).

R-REPO-9 finds the pre-deletion model by its header and file digests, so a copy
re-saved with other metadata, with one other weight changed, with renamed tensors,
or in another format passes it. The deleted encoder's weights are still in such a
copy, byte for byte. Each certificate commits the pre-deletion digest of every tensor
(``subject_model.pre_deletion.tensors``) and lists the tensors its deletion removed
(``deletion.removed_tensors``, which level 1 checks against the architecture's
encoder prefixes, R-DEL-1). The removed tensors' digests therefore identify the
deleted encoder by content. This module hashes every span of a repository file that
could be one of those tensors (:mod:`mbd_cert._tensor_spans`, :mod:`mbd_cert._zip_spans`)
and fails each certificate whose removed tensor it finds.

Stability: internal.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from mbd_cert._published_models import open_regular
from mbd_cert._repo_results import RepoResult
from mbd_cert._repo_search import repository_files
from mbd_cert._safetensors_header import DTYPES
from mbd_cert._tensor_spans import (
    ScanLimitExceeded,
    SpanDigest,
    has_searched_layout,
    search_stream,
)
from mbd_cert._zip_spans import END_RECORD_SIZE, MALFORMED, is_zip, search_zip

if TYPE_CHECKING:
    from mbd_cert.report import CheckResult

logger = logging.getLogger(__name__)

ENCODER_CHECK = "deleted-encoder"
UNSEARCHED_FILE_CHECK = "unsearched-file"
_CODE = "E_DELETED_ENCODER_PUBLISHED"
_CODE_SCAN_INCOMPLETE = "E_SCAN_INCOMPLETE"
_REQUIREMENT = "R-REPO-12"
# Maximum copies named per file and deletion in a check's detail. Its value counts all.
_MAX_NAMED = 5
# The reason recorded for a file that the run's user may not open.
_DENIED = "cannot be opened"
# The reason recorded for a file whose read failed before its end.
_UNREAD = "read failed"


class FileDenied(Exception):
    """Error for a file that the run's user may not open. The message states the reason."""


class FileUnread(Exception):
    """Error for a file whose read failed before its end. The message states the reason."""


class _FailedReads:
    """A file whose failed reads raise :class:`FileUnread` instead of ``OSError``.

    The zip parsers take an ``OSError`` for a malformed file (a seek to a negative
    offset), which is no match. A
    failed read of a regular file is an I/O error instead, after which the rest of the
    file is unsearched, so it must not be taken for a malformed file.
    """

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._handle.read(size)
        except OSError as error:
            raise FileUnread(f"{_UNREAD}: {error.strerror or error}") from error

    def seek(self, offset: int, whence: int = 0, /) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    def seekable(self) -> bool:
        return True


@dataclass(frozen=True)
class RemovedTensor:
    """One tensor that a deletion of a certificate's chain removed.

    Attributes:
        result: Index of the certificate's result in verify-repo's list.
        position: The deletion's place in the chain, from 1.
        link: The certificate of that deletion.
        this_deletion: Whether that certificate is the result's own, not an earlier link.
        name: The tensor's name in the pre-deletion model.
        element_size: Bytes per element of its dtype.
    """

    result: int
    position: int
    link: Mapping[str, Any]
    this_deletion: bool
    name: str
    element_size: int


# Byte length -> pre-deletion digest -> the removed tensors with those bytes.
TargetIndex = dict[int, dict[str, list[RemovedTensor]]]


def removed_tensor_index(results: Sequence[RepoResult]) -> TargetIndex:
    """Index the removed tensors of every link of every certificate's chain.

    The model before an earlier deletion of a chain contains that deletion's encoder, so
    each link's own removed tensors are searched with their digests in that link's
    pre-deletion model. Zero-size tensors are left out because they contain no bytes.
    """
    index: TargetIndex = {}
    for result_index, result in enumerate(results):
        doc = result.certificate_doc
        if doc is None:
            continue
        earlier = result.report.earlier_links if result.report is not None else []
        chain = [*earlier, doc]
        for position, link in enumerate(chain, start=1):
            for name, length, digest, element_size in _removed_tensors(link):
                tensor = RemovedTensor(result_index, position, link, position == len(chain),
                                       name, element_size)
                index.setdefault(length, {}).setdefault(digest, []).append(tensor)
    return index


def _removed_tensors(link: Mapping[str, Any]) -> Iterator[tuple[str, int, str, int]]:
    """Yield name, byte length, digest and element size of each tensor the link removed."""
    # A certificate that did not verify may be malformed anywhere. Its tensors that do
    # not parse are not searched, and the certificate fails verification on its own.
    try:
        removed = link["deletion"]["removed_tensors"]
        committed = link["subject_model"]["pre_deletion"]["tensors"]
    except (KeyError, TypeError):
        return
    if not isinstance(removed, list) or not isinstance(committed, dict):
        return
    for name in removed:
        entry = committed.get(name) if isinstance(name, str) else None
        if not isinstance(entry, dict) or entry.get("dtype") not in DTYPES:
            continue
        shape, digest = entry.get("shape"), entry.get("digest")
        if (not isinstance(shape, list) or not all(type(size) is int for size in shape)
                or not isinstance(digest, str)):
            continue
        element_size = DTYPES[entry["dtype"]].itemsize
        length = math.prod(shape) * element_size
        if length > 0:
            yield name, length, digest, element_size


def search_file(path: Path, lengths: Set[int]) -> list[tuple[str, SpanDigest]]:
    """Return ``(where, span)`` for each span of a searched length in the file ``path``.

    ``where`` names the zip member the span lies in, or is empty. A malformed file
    yields what was found before the fault.

    Raises:
        ScanLimitExceeded: The file is over a limit of the search.
        FileDenied: The run's user may not open the file.
        FileUnread: A read of the file failed, so its rest was not searched.
    """
    try:
        descriptor = open_regular(path, raise_denied=True)
    except PermissionError as error:
        raise FileDenied(f"{_DENIED}: {error.strerror or error}") from error
    if descriptor is None:
        return []
    found: list[tuple[str, SpanDigest]] = []
    # Most files of a repository have no searched layout. Two small reads tell, before
    # a buffered reader is set up.
    try:
        size = os.fstat(descriptor).st_size
        prefix = os.pread(descriptor, 16, 0)
        tail = os.pread(descriptor, END_RECORD_SIZE, size - END_RECORD_SIZE) \
            if size >= END_RECORD_SIZE else b""
    except OSError as error:
        os.close(descriptor)
        raise FileUnread(f"{_UNREAD}: {error.strerror or error}") from error
    if not has_searched_layout(prefix, size, lengths) and not is_zip(prefix, tail):
        os.close(descriptor)
        return []
    with os.fdopen(descriptor, "rb") as opened:
        handle = _FailedReads(opened)
        try:

            def from_start() -> contextlib.nullcontext[Any]:
                handle.seek(0)
                return contextlib.nullcontext(handle)

            for span in search_stream(from_start, size, lengths):
                found.append(("", span))
            if is_zip(prefix, tail):
                for member, span in search_zip(handle, size, lengths, min(lengths)):
                    found.append((member, span))
        except MALFORMED as error:
            logger.debug("stopped searching %s: %s", path, error)
    return found


def check_published_encoders(root: Path, results: Sequence[RepoResult],
                             reported: Mapping[str, Set[str]],
                             unreadable: dict[Path, str],
                             unsearched: dict[Path, str]) -> set[str]:
    """Fail each certificate whose removed tensor lies in a repository file (R-REPO-12).

    A file that R-REPO-9 reported for a certificate (``reported``: certificate to
    files) fails there and is not reported again on it. A certificate that did not
    verify gets a warning instead, as in R-REPO-9. Each directory that cannot be listed
    is added to ``unreadable``, and each file over a limit of the search, that the
    run's user may not open, or whose read failed to ``unsearched``, with the reason.

    Returns:
        The files reported, relative to ``root`` with ``/`` separators.
    """
    index = removed_tensor_index(results)
    if not index:
        return set()
    lengths = frozenset(index)
    # Result index -> file -> (location, removed tensor), in the order found.
    matches: dict[int, dict[str, list[tuple[str, RemovedTensor]]]] = {}
    for path in repository_files(root, hidden=True, unreadable=unreadable):
        try:
            spans = search_file(path, lengths)
        except (ScanLimitExceeded, FileDenied, FileUnread) as problem:
            unsearched[path] = str(problem)
            continue
        name = path.relative_to(root).as_posix()
        for member, span in spans:
            for tensor in index[span.length].get(span.digest, []):
                if (span.repeated_element is not None
                        and tensor.element_size % span.repeated_element == 0):
                    continue  # one value filled in, as in any model of that shape
                if name in reported.get(results[tensor.result].certificate, frozenset()):
                    continue
                found = matches.setdefault(tensor.result, {}).setdefault(name, [])
                found.append((_location(member, span.location), tensor))
    for position, by_file in matches.items():
        _record(results[position], by_file)
    return {name for by_file in matches.values() for name in by_file}


def _location(member: str, inner: str) -> str:
    """Name where a span lies: ``member 'M' (array data)``, ``tensor 'T'``, and so on."""
    if not member:
        return inner or "the whole file"
    return f"member {member!r} ({inner})" if inner else f"member {member!r}"


def _record(result: RepoResult, by_file: Mapping[str, list[tuple[str, RemovedTensor]]]) -> None:
    """Record the failed check, or the warning of a certificate that did not verify."""
    from mbd_cert._terminal import terminal_text
    from mbd_cert.report import CheckResult

    details = []
    for name, found in by_file.items():
        by_link: dict[int, list[tuple[str, RemovedTensor]]] = {}
        for location, tensor in found:
            by_link.setdefault(tensor.position, []).append((location, tensor))
        for group in by_link.values():
            pairs = [f"{terminal_text(location)} contains the bytes of "
                     f"{terminal_text(repr(tensor.name))}" for location, tensor in group]
            if len(pairs) > _MAX_NAMED:
                pairs[_MAX_NAMED:] = [f"and {len(pairs) - _MAX_NAMED} more"]
            details.append(
                f"{terminal_text(name)}: {', '.join(pairs)}, of the "
                f"{_removed_by(group[0][1])} (as its subject_model.pre_deletion.tensors "
                "commits them), so the file still contains the deleted encoder's weights "
                "for the repository's readers. Delete the file or move it out of the "
                "repository, and remove it from the version history too")
    detail = "; ".join(details)
    if result.report is None:
        result.warnings.append(detail)
        return
    count = sum(len(found) for found in by_file.values())
    result.report.record(CheckResult(ENCODER_CHECK, "fail", detail, code=_CODE,
                                     requirement=_REQUIREMENT, value=count, threshold=0))
    result.exit_code = max(result.exit_code, 1)


def _removed_by(tensor: RemovedTensor) -> str:
    """Name the encoder and the deletion that removed ``tensor``, as R-REPO-9 names it."""
    from mbd_cert._terminal import terminal_text

    modality = terminal_text(tensor.link["deletion"]["modality"])
    if tensor.this_deletion:
        return f"{modality} encoder that this deletion removed"
    return (f"{modality} encoder that deletion {tensor.position} of this chain "
            f"(certificate {terminal_text(tensor.link['certificate_id'])}) removed")


def unsearched_files_check(root: Path, unsearched: Mapping[Path, str]) -> CheckResult | None:
    """Return one failed check naming the files the search could not read, or None.

    Those are the files over the search's limits, those that the run's user may not
    open, and those whose read failed before their end. A deleted encoder's tensors
    could lie in such a file unreported, and the run cannot decide that they do not,
    so the check fails rather than warns.
    """
    from mbd_cert._terminal import terminal_text
    from mbd_cert.report import CheckResult

    if not unsearched:
        return None
    names = ", ".join(f"{terminal_text(path.relative_to(root).as_posix())} ({reason})"
                      for path, reason in sorted(unsearched.items()))
    noun, pronoun = ("file", "it") if len(unsearched) == 1 else ("files", "them")
    denied = any(reason.startswith(_DENIED) for reason in unsearched.values())
    unread = any(reason.startswith(_UNREAD) for reason in unsearched.values())
    over_limit = any(not reason.startswith((_DENIED, _UNREAD))
                     for reason in unsearched.values())
    detail = (f"cannot search {noun} {names} for the tensors of a deleted encoder "
              f"(R-REPO-12), so a copy in {pronoun} would pass unreported. ")
    if over_limit:
        detail += ("The search stops at its limits so that a hostile archive cannot stall "
                   "the run. ")
    fixes = []
    if denied:
        fixes.append(f"make {pronoun} readable to the user who runs verify-repo")
    if unread:
        fixes.append("fix the storage fault that stopped the read")
    fixes.append(f"move {pronoun} out of the repository")
    joined = ", or ".join(fixes)
    detail += joined[0].upper() + joined[1:]
    return CheckResult(UNSEARCHED_FILE_CHECK, "fail", detail, code=_CODE_SCAN_INCOMPLETE,
                       requirement=_REQUIREMENT, value=len(unsearched), threshold=0)
