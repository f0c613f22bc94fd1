"""Finding the earlier certificates of a chain among the files of a directory.

:mod:`mbd_cert.chain` checks the links; this module reads them. A link is looked up
under the file name that ``accounting.chain`` gives, then by digest among all
``*.json`` files of the chain directory (SPEC.md, section 7.6). A
:class:`ChainFileCache` shared by several verifications keeps the digest of each file
it has read, so a directory that many certificates share is parsed once per run
rather than once per certificate (R-REPO-7).

Stability: internal; :class:`ChainLink`, :class:`ChainFileCache` and
:data:`MAX_CHAIN_DIRECTORY_FILES` are public through :mod:`mbd_cert.chain`.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mbd_cert import _paths, certificate
from mbd_cert.errors import ChainLinkMissing, InputError, LimitExceeded

logger = logging.getLogger(__name__)

# A chain directory is scanned for at most this many ``*.json`` files when the
# certificate does not name its links (R-LIM-4).
MAX_CHAIN_DIRECTORY_FILES = 4096


@dataclass(frozen=True)
class ChainLink:
    """One certificate of a chain.

    Attributes:
        sequence_number: Position in the chain, 1 for the first deletion.
        digest: ``certificate_digest`` of the certificate.
        doc: The parsed, schema-valid certificate.
        source: Where it was read from (a path, or ``"<current>"`` for the newest).
    """

    sequence_number: int
    digest: str
    doc: dict[str, Any]
    source: str


# Path, device, inode, size, modification and change time (ns) of a scanned file.
_FileKey = tuple[str, int, int, int, int, int]


class ChainFileCache:
    """Certificate digests of the files that chain-directory scans have parsed.

    Pass one cache to every verification of a run (``VerifyOptions.chain_file_cache``)
    when many certificates share a chain directory, as in ``verify-repo``. Without
    it, each certificate whose earlier link is not under its listed name parses every
    ``*.json`` file of the directory, so N certificates cost N * N parses. A file is
    keyed by its path and its ``lstat`` device, inode, size, modification and change
    times, so a file that is replaced or rewritten is parsed again. The cache keeps
    digests only, never the parsed certificates, so its memory grows with the number
    of files, not with their size.

    NOTE: a rewrite that keeps the size and lands within the file system's timestamp
    granularity keeps its old key. The link found by a stale digest is parsed again
    and its digest compared, so the result is a missing link (a failed check), never
    a wrong link.
    """

    def __init__(self) -> None:
        self._digests: dict[_FileKey, str | None] = {}

    def __len__(self) -> int:
        return len(self._digests)

    def lookup(self, key: _FileKey) -> tuple[bool, str | None]:
        """Return ``(known, digest)``; ``digest`` is None for a file that is not a certificate."""
        if key in self._digests:
            return True, self._digests[key]
        return False, None

    def store(self, key: _FileKey, digest: str | None) -> None:
        """Record the digest of a parsed file, or None when it is not a usable certificate."""
        self._digests[key] = digest


class ChainIndex:
    """Lookup of certificates by digest: named files first, then a directory scan."""

    def __init__(self, chain_dir: Path | None, listing: Sequence[Mapping[str, Any]],
                 file_cache: ChainFileCache | None = None) -> None:
        self._dir = chain_dir
        self._named = {entry["certificate_digest"]: entry["path"] for entry in listing}
        self._cache = file_cache if file_cache is not None else ChainFileCache()
        # Digest -> path of every certificate in the directory, filled by the first scan.
        self._scanned: dict[str, Path] | None = None
        # Number of *.json files that scan read, for the warning about a wrong named file.
        self._scanned_count = 0
        # Links parsed by this index's own scan, so that a link found there is not
        # parsed a second time.
        self._parsed: dict[str, ChainLink] = {}

    def find(self, digest: str, current: ChainLink) -> ChainLink:
        if self._dir is not None and self._dir.is_dir():
            named = self._named.get(digest)
            wrong: ChainLink | None = None
            if named is not None:
                path = _paths.resolve_artefact(self._dir, named, field="accounting.chain[].path")
                if path.is_file():
                    link = _load_link(path)
                    if link.digest == digest:
                        return link
                    wrong = link
            found = self._find_scanned(digest)
            if wrong is not None:
                self._warn_wrong_named_file(wrong, digest, current, found)
            if found is not None:
                return found
        where = str(self._dir) if self._dir is not None else "no chain directory"
        raise ChainLinkMissing(
            f"certificate {current.sequence_number} links to previous certificate {digest}, "
            f"which is not in {where}",
            # Every command shows this hint, and verify-repo has no --chain option.
            hint="put the chain-NNNNN.json copies that 'mbd-cert issue' wrote with this "
            "certificate in the certificate's directory, the only place verify-repo "
            "reads them, or name the directory holding them with --chain DIR "
            "(verify, report)",
        )

    def _warn_wrong_named_file(self, wrong: ChainLink, digest: str, current: ChainLink,
                               found: ChainLink | None) -> None:
        """Warn that the file ``accounting.chain`` names contains another certificate.

        The warning names the file and both digests, what the search of the directory
        found, and which file to replace.
        """
        number = current.sequence_number - 1
        named = (f"accounting.chain names {wrong.source} as earlier certificate {number} "
                 f"({digest}), but that file contains another certificate ({wrong.digest}, "
                 f"sequence number {wrong.sequence_number}).")
        searched = f"A search of the {self._scanned_count} *.json files in {self._dir}"
        # The named file may be right for another chain: the directory may belong to
        # another certificate (a --chain pointing elsewhere), so that case comes first.
        if found is not None:
            logger.warning("%s %s found certificate %d in %s, which is used. If %s is the "
                           "chain directory of this certificate, replace %s with a copy of "
                           "%s to skip the search.", named, searched, number, found.source,
                           self._dir, wrong.source, found.source)
        else:
            logger.warning("%s %s did not find certificate %d either. Check that %s is the "
                           "chain directory of this certificate (verify --chain DIR; verify-repo "
                           "reads the certificate's own directory); if it "
                           "is, replace %s with the copy of certificate %d that 'mbd-cert "
                           "issue' wrote under that name.", named, searched, number,
                           self._dir, wrong.source, number)

    def _find_scanned(self, digest: str) -> ChainLink | None:
        path = self._scan().get(digest)
        if path is None:
            return None
        parsed = self._parsed.get(digest)
        if parsed is not None and parsed.source == str(path):
            return parsed
        # The digest may come from an earlier verification's cache entry, so the file is
        # parsed again and used only while its digest is unchanged.
        try:
            link = _load_link(path)
        except InputError as exc:
            logger.warning("%s changed since it was scanned: %s", path, exc.code)
            return None
        if link.digest != digest:
            logger.warning("%s changed since it was scanned: its digest is no longer %s",
                           path, digest)
            return None
        return link

    def _scan(self) -> dict[str, Path]:
        if self._scanned is not None:
            return self._scanned
        assert self._dir is not None
        names = sorted(name for name in os.listdir(self._dir) if name.endswith(".json"))
        if len(names) > MAX_CHAIN_DIRECTORY_FILES:
            raise LimitExceeded(
                f"chain directory {self._dir} contains {len(names)} JSON files, more than the cap "
                f"of {MAX_CHAIN_DIRECTORY_FILES}",
                hint="put only the earlier certificates of this model in the chain directory",
            )
        self._scanned_count = len(names)
        found: dict[str, Path] = {}
        for name in names:
            path = self._dir / name
            digest = self._digest_of(path)
            if digest is not None:
                found.setdefault(digest, path)
        self._scanned = found
        return found

    def _digest_of(self, path: Path) -> str | None:
        """Return the certificate digest of ``path``, or None when it is not a certificate.

        Symbolic links and anything but a regular file are skipped unread.
        """
        try:
            info = os.lstat(path)
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        key = (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns,
               info.st_ctime_ns)
        known, digest = self._cache.lookup(key)
        if known:
            return digest
        try:
            link = _load_link(path)
        except InputError as exc:
            # A chain directory may contain other JSON (reports, configs); a real link
            # that is malformed surfaces as a missing link naming its digest.
            logger.debug("skipping %s in the chain directory: %s", path, exc.code)
            self._cache.store(key, None)
            return None
        self._cache.store(key, link.digest)
        self._parsed.setdefault(link.digest, link)
        return link.digest


def _load_link(path: Path) -> ChainLink:
    try:
        doc = certificate.load_certificate(path)
    except InputError as exc:
        # The message must name the link, or it reads as a fault of the certificate
        # being verified.
        raise type(exc)(f"chain link {str(path)!r}: {exc.message}", hint=exc.hint,
                        code=exc.code) from exc
    return ChainLink(
        sequence_number=int(doc["accounting"]["sequence_number"]),
        digest=certificate.certificate_digest(doc),
        doc=doc,
        source=str(path),
    )
