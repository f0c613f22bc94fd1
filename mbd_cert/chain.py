"""Chains of certificates of one model: links, sequence numbers and model continuity.

Each deletion after the first links to the certificate before it by that certificate's
digest (:func:`mbd_cert.certificate.certificate_digest`, SHA-256 of its canonical
bytes). A chain is valid when, walking back from the newest certificate (SPEC.md,
section 7.6):

* sequence numbers run 1, 2, ..., n without gaps (R-CHAIN-2);
* certificate 1 has no previous certificate and every later one names the digest of
  the one before it (R-CHAIN-1);
* certificate k's ``pre_deletion`` model is certificate k-1's ``post_deletion`` model:
  equal ``file_digest`` and ``manifest_digest`` (R-CHAIN-3);
* no certificate id or digest appears twice (R-CHAIN-4).

This module reads JSON only (no numpy, no torch). The cumulative budget is recomputed
by the caller from the links it returns (:mod:`mbd_cert.accounting`).

The files are found and read by :mod:`mbd_cert._chain_files`.

Stability: public (:func:`walk_chain`, :class:`ChainLink`, :class:`ChainFileCache`,
the limits).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mbd_cert import certificate
from mbd_cert._chain_files import (
    MAX_CHAIN_DIRECTORY_FILES,
    ChainFileCache,
    ChainIndex,
    ChainLink,
)
from mbd_cert._numbers import exact_number
from mbd_cert.errors import (
    ChainBroken,
    ChainLinkMissing,
    LimitExceeded,
    MalformedCertificate,
    VerificationFailed,
)

__all__ = [
    "CODE_BROKEN",
    "CODE_LINK_MISSING",
    "MAX_CHAIN_DIRECTORY_FILES",
    "MAX_CHAIN_LENGTH",
    "MU_RELATIVE_TOLERANCE",
    "ChainBroken",
    "ChainFileCache",
    "ChainLink",
    "ChainLinkMissing",
    "chain_file_name",
    "check_chain_accounting",
    "listed_links",
    "walk_chain",
    "write_chain_copies",
]

# A chain longer than this is rejected before any link is read (SPEC.md, R-LIM-4).
# Each link costs one certificate parse and one signature check; 1,000 deletions of
# the same model is far beyond the three modalities of the bundled architecture.
MAX_CHAIN_LENGTH = 1000

CODE_LINK_MISSING = "E_CHAIN_LINK_MISSING"
CODE_BROKEN = "E_CHAIN_BROKEN"


def chain_file_name(sequence_number: int) -> str:
    """Return the file name the issuer gives the copy of link ``sequence_number``."""
    return f"chain-{sequence_number:05d}.json"


def listed_links(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return ``accounting.chain``: the earlier links the certificate names, oldest first.

    Raises:
        MalformedCertificate: The member is present but not a list of objects with an
            integer ``sequence_number``, a ``certificate_digest`` and a ``path``.
    """
    listing = doc["accounting"].get("chain", [])
    if not isinstance(listing, list) or not all(
        isinstance(entry, dict)
        and isinstance(entry.get("sequence_number"), int)
        and isinstance(entry.get("certificate_digest"), str)
        and isinstance(entry.get("path"), str)
        for entry in listing
    ):
        raise MalformedCertificate(
            "accounting.chain must be a list of {sequence_number, certificate_digest, path}",
            hint="pass a certificate written by 'mbd-cert issue'",
        )
    return listing


def walk_chain(doc: Mapping[str, Any], chain_dir: Path | None, *,
               file_cache: ChainFileCache | None = None) -> list[ChainLink]:
    """Find and check every earlier certificate of ``doc``.

    Links are looked up in ``chain_dir``: first under the file names that
    ``accounting.chain`` lists, then among all ``*.json`` files of the directory,
    matched by digest. File names therefore do not matter, only contents.

    Args:
        doc: The newest certificate, already parsed and schema-valid.
        chain_dir: The directory holding the earlier certificates; may be None when
            ``doc`` is the first of its chain.
        file_cache: Digests of the directory's files from earlier walks of the same
            run; None scans the directory afresh.

    Returns:
        The links oldest first; the last one is ``doc`` itself.

    Raises:
        ChainLinkMissing: A previous certificate is not in ``chain_dir``.
        ChainBroken: Sequence numbers, links or model continuity are wrong, or a
            certificate appears twice.
        LimitExceeded: The chain is longer than :data:`MAX_CHAIN_LENGTH`, or the
            directory contains too many JSON files.
        InputError: A link file is unreadable or malformed (exit code 2).
    """
    newest = ChainLink(
        sequence_number=int(doc["accounting"]["sequence_number"]),
        digest=certificate.certificate_digest(doc),
        doc=dict(doc),
        source="<current>",
    )
    if newest.sequence_number > MAX_CHAIN_LENGTH:
        raise LimitExceeded(
            f"accounting.sequence_number is {newest.sequence_number}, above the chain length "
            f"cap of {MAX_CHAIN_LENGTH}",
            hint="this release verifies chains of at most 1000 deletions",
        )
    listing = listed_links(doc)
    index = ChainIndex(chain_dir, listing, file_cache)
    links = [newest]
    current = newest
    while True:
        previous_digest = current.doc["accounting"]["previous_certificate"]
        if current.sequence_number == 1:
            if previous_digest is not None:
                raise ChainBroken(
                    f"certificate {current.doc['certificate_id']} has sequence_number 1 but names "
                    f"a previous certificate {previous_digest}",
                    hint="the first deletion of a model has previous_certificate null",
                )
            break
        if previous_digest is None:
            raise ChainBroken(
                f"certificate {current.doc['certificate_id']} has sequence_number "
                f"{current.sequence_number} but previous_certificate is null",
                hint="a later deletion must link to the certificate before it",
            )
        previous = index.find(previous_digest, current)
        _check_link(previous, current)
        links.append(previous)
        current = previous
    links.reverse()
    _check_unique(links)
    _check_listing(listing if "chain" in doc["accounting"] else None, links)
    _check_deleted_modalities(links)
    return links


def _deleted(link: ChainLink) -> list[str]:
    config = link.doc["subject_model"]["architecture"]["config"]
    deleted = config.get("deleted_modalities", []) if isinstance(config, Mapping) else []
    return [m for m in deleted if isinstance(m, str)] if isinstance(deleted, list) else []


def _check_deleted_modalities(links: Sequence[ChainLink]) -> None:
    """Check that no deletion is missing from the chain (SPEC.md, R-CHAIN-9).

    Each certified deletion adds one modality to ``deleted_modalities``. A released
    model with more deleted modalities than links, or one that no longer lists a
    modality an earlier link deleted, comes from a deletion the chain leaves out, and
    the budget would leave out its epsilon. A link that deletes a modality the link
    before it already deleted certifies nothing new, while its model may list another
    modality as deleted that no certificate covers.
    """
    for position, link in enumerate(links):
        deleted = _deleted(link)
        if len(deleted) > link.sequence_number:
            raise ChainBroken(
                f"certificate {link.doc['certificate_id']} (sequence number "
                f"{link.sequence_number}) releases a model with {len(deleted)} deleted "
                f"modalities ({', '.join(deleted)}): at least one earlier deletion is "
                "missing from its chain",
                hint="the chain of a model must start at its first deletion; ask the issuer "
                "for the certificates of the earlier deletions",
            )
        modality = link.doc["deletion"]["modality"]
        if position and modality in _deleted(links[position - 1]):
            # The model released by link k-1 no longer reads this modality, so link k
            # deleted nothing new, and a modality that link k adds to
            # deleted_modalities would have no certificate of its own.
            raise ChainBroken(
                f"certificate {link.sequence_number} ({link.doc['certificate_id']}) "
                f"deletes {modality!r}, which certificate {links[position - 1].sequence_number} "
                "already deleted",
                hint="each deletion of a chain removes a modality the model still reads; "
                "ask the issuer for the certificate of the deletion it made instead",
            )
        if position and not set(_deleted(links[position - 1])) <= set(deleted):
            raise ChainBroken(
                f"certificate {link.sequence_number} releases a model that no longer lists "
                f"{sorted(set(_deleted(links[position - 1])) - set(deleted))} as deleted, "
                f"although certificate {links[position - 1].sequence_number} deleted it",
                hint="a deleted modality stays deleted in every later model of the chain",
            )


def _check_link(previous: ChainLink, current: ChainLink) -> None:
    """Check one step back: sequence number and model continuity (R-CHAIN-2, R-CHAIN-3)."""
    expected = current.sequence_number - 1
    if previous.sequence_number != expected:
        raise ChainBroken(
            f"{previous.source}: sequence_number is {previous.sequence_number}, expected "
            f"{expected} (certificate {current.doc['certificate_id']} links to it as its "
            "previous certificate)",
            hint="links are out of order or one is missing",
        )
    post = previous.doc["subject_model"]["post_deletion"]
    pre = current.doc["subject_model"]["pre_deletion"]
    for key in ("manifest_digest", "file_digest"):
        if post[key] != pre[key]:
            raise ChainBroken(
                f"certificate {current.sequence_number} starts from a model whose {key} is "
                f"{pre[key]}, but certificate {previous.sequence_number} released {post[key]}",
                hint="each deletion must start from the model the previous deletion released",
            )


def _check_unique(links: Sequence[ChainLink]) -> None:
    seen_ids: dict[str, int] = {}
    seen_digests: dict[str, int] = {}
    for link in links:
        certificate_id = link.doc["certificate_id"]
        for key, seen in ((certificate_id, seen_ids), (link.digest, seen_digests)):
            if key in seen:
                raise ChainBroken(
                    f"{key} appears at sequence numbers {seen[key]} and {link.sequence_number}",
                    hint="a chain contains each certificate once",
                )
            seen[key] = link.sequence_number


def _check_listing(listing: Sequence[Mapping[str, Any]] | None,
                   links: Sequence[ChainLink]) -> None:
    """Check that ``accounting.chain``, when present, names exactly the links walked.

    ``listing`` is None when the member is absent. An empty list is a listing too: it
    states that no earlier link exists, which is true of a first deletion only.
    """
    if listing is None:
        return
    walked = [(link.sequence_number, link.digest) for link in links[:-1]]
    named = [(entry["sequence_number"], entry["certificate_digest"]) for entry in listing]
    if named != walked:
        raise ChainBroken(
            f"accounting.chain lists {len(named)} links that differ from the {len(walked)} "
            "links found by following previous_certificate",
            hint="the certificate's chain listing was edited or the links were reordered",
        )


def write_chain_copies(previous: Sequence[ChainLink], out_dir: Path) -> list[dict[str, Any]]:
    """Copy the earlier certificates into ``out_dir`` and return ``accounting.chain``.

    Each link is written as ``chain-NNNNN.json`` (its sequence number), so the output
    directory of an issue contains its whole history and the next deletion, or a
    verifier without ``--chain``, finds every link beside ``cert.json``.
    """
    listing = []
    for link in previous:
        name = chain_file_name(link.sequence_number)
        (out_dir / name).write_bytes(certificate.dump_certificate(link.doc))
        listing.append({
            "sequence_number": link.sequence_number,
            "certificate_digest": link.digest,
            "path": name,
        })
    return listing


# Relative tolerance of R-ACC-1 (mu recomputed from the links). mu is a square root
# of a float64 sum of at most MAX_CHAIN_LENGTH terms, so the rounding error of two
# implementations stays below 1e-12 relative; 1e-9 leaves room for other summation
# orders and never admits a materially smaller mu.
MU_RELATIVE_TOLERANCE = 1e-9

# The two looser bounds a certificate states for reading (R-ACC-3), with the names a
# message gives them. The RDP conversion takes logarithms of arrays, whose last bit may
# differ between builds, so both bounds get the tolerance of mu.
_READING_BOUNDS = (
    ("naive_epsilon", "the sum of the per-deletion epsilons"),
    ("rdp_epsilon", "the RDP bound"),
)


def check_chain_accounting(
    doc: Mapping[str, Any], chain_dir: Path | None, trusted_keys: Sequence[Any], *,
    file_cache: ChainFileCache | None = None,
) -> tuple[list[ChainLink], Any]:
    """Walk the chain and recompute every link's accounting (SPEC.md, R-ACC-1 to R-ACC-3).

    Every earlier link must be signed by a trusted key (R-CHAIN-6) and calibrated
    (R-CHAIN-8, the checks of R-PRIV-2 to R-PRIV-5). For each link k
    the mu-GDP parameter and the cumulative epsilon are recomputed over links 1..k at
    link k's ``accounting.delta``. ``file_cache`` is passed to :func:`walk_chain`.

    Returns:
        ``(links, account)``: the links oldest first and the
        :class:`mbd_cert.accounting.ChainAccount` of the whole chain.

    Raises:
        VerificationFailed: A link is missing, out of order, duplicated, unsigned by a
            trusted key, miscalibrated, or states a mu, a cumulative epsilon or a
            reading bound that the recomputation contradicts (``E_CALIBRATION_INVALID``).
        InputError: A link file is malformed, or the chain exceeds the caps.
    """
    # Imported here so that walking a chain needs no numpy (accounting uses it).
    from mbd_cert import accounting
    from mbd_cert._calibration import check_calibration
    from mbd_cert.errors import CalibrationInvalid

    links = walk_chain(doc, chain_dir, file_cache=file_cache)
    for link in links[:-1]:
        try:
            certificate.check_signature(link.doc, trusted_keys)
        except VerificationFailed as exc:
            # Name the earlier certificate: the current one's signature has its own
            # check, which may pass.
            raise type(exc)(
                f"earlier certificate {link.sequence_number} of the chain ({link.source}): "
                f"{exc.message}", hint=exc.hint, code=exc.code) from exc
        # R-CHAIN-8: an earlier link's sigma and sensitivity enter the budget below, so
        # they are checked as strictly as the newest certificate's.
        try:
            check_calibration(link.doc)
        except CalibrationInvalid as exc:
            raise CalibrationInvalid(
                f"earlier certificate {link.sequence_number} of the chain ({link.source}): "
                f"{exc.message}", hint=exc.hint) from exc
    entries = []
    account = None
    for link in links:
        privacy, stated = link.doc["privacy"], link.doc["accounting"]
        entries.append(accounting.ChainEntry(
            privacy["epsilon"], privacy["delta"], privacy["sigma"], privacy["sensitivity"]
        ))
        where = f"certificate {link.sequence_number} ({link.doc['certificate_id']})"
        if stated["delta"] != privacy["delta"]:
            raise CalibrationInvalid(
                f"{where}: accounting.delta ({stated['delta']!r}) differs from privacy.delta "
                f"({privacy['delta']!r})"
            )
        account = accounting.account_chain(entries, stated["delta"])
        if abs(stated["mu"] - account.mu) > MU_RELATIVE_TOLERANCE * account.mu:
            raise CalibrationInvalid(
                f"{where}: accounting.mu is {stated['mu']!r}, but the chain of {len(entries)} "
                f"deletions gives mu = {account.mu!r}",
                hint="mu must be sqrt(sum (sensitivity_i / sigma_i)^2) over the whole chain",
            )
        if stated["cumulative_epsilon"] < account.epsilon:
            raise CalibrationInvalid(
                f"{where}: accounting.cumulative_epsilon is "
                f"{exact_number(stated['cumulative_epsilon'])}, less than the recomputed "
                f"{exact_number(account.epsilon)} over {len(entries)} deletions (mu-GDP, "
                f"mu = {exact_number(account.mu)}, delta = {exact_number(stated['delta'])})",
                hint="the certificate understates the privacy loss of its chain",
            )
        for field, meaning in _READING_BOUNDS:
            recomputed = getattr(account, field)
            if field in stated and \
                    stated[field] < recomputed * (1.0 - MU_RELATIVE_TOLERANCE):
                raise CalibrationInvalid(
                    f"{where}: accounting.{field} is {exact_number(stated[field])}, less "
                    f"than {meaning} over {len(entries)} deletions, "
                    f"{exact_number(recomputed)}",
                    hint="the certificate understates the privacy loss of its chain; "
                    "inspect and report show these stated values, so they are held to "
                    "the recomputation too (R-ACC-3)",
                )
    assert account is not None
    return links, account
