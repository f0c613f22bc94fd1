"""Chain and sealed-bundle vectors for schema/vectors/v1 (SPEC.md, sections 4.5 and 7.6).

make_vectors.py calls :func:`add_chain_and_sealed_vectors` after its own vectors. Two
honest deletions of one tiny model give the base: audio first, its audit bundle sealed
to a test auditor key, then vision, continuing the chain. Forged vectors edit one of
them and re-sign with the vector key, because the threat they model is an issuer that
has its own key and lies. Chain vectors verify with ``--chain .``; sealed vectors
with ``--auditor-private-key ./auditor.key``, where ``.`` is the vector directory.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mbd_cert import accounting, certificate, sealing, signing
from mbd_cert.chain import chain_file_name
from mbd_cert.issue import IssueOptions, issue

# make_vectors._write: (directory, doc, model, expected, key_dir, bundle=, raw_cert=, extras=).
WriteVector = Callable[..., None]

# 0.06 of the 396 eligible entries of an audio deletion on the tiny model gives a mask
# of 24 entries, enough for the level-2 normality test, which needs 20.
SEALED_TOP_K = 0.06
LINK_1 = chain_file_name(1)
CHAIN_ARGS = ["--chain", "."]
SEALED_ARGS = ["--auditor-private-key", "./auditor.key"]


def _sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _write_doc(path: Path, doc: dict[str, Any]) -> Path:
    path.write_bytes(certificate.dump_certificate(doc))
    return path


def _seal_listing(
    path: Path,
    listing: list[dict[str, Any]],
    payload: bytes,
    recipient: X25519PublicKey,
    certificate_id: str,
) -> Path:
    """Seal ``payload`` under any ``listing`` as one final chunk, following SPEC.md 4.5.

    Written from the SPEC rather than with :func:`mbd_cert.sealing.seal_files`, which
    cannot produce a listing that disagrees with its content.
    """
    content = json.dumps(
        {"format": sealing.CONTENT_FORMAT, "certificate_id": certificate_id, "files": listing}
    ).encode()
    return _seal_content(path, content, payload, recipient, certificate_id)


def _seal_content(
    path: Path,
    content: bytes,
    payload: bytes,
    recipient: X25519PublicKey,
    certificate_id: str,
) -> Path:
    """Seal ``payload`` after the listing bytes ``content``, whatever they hold."""
    raw = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    plaintext = struct.pack(">Q", len(content)) + content + payload
    # One chunk of fewer than C bytes is the last chunk (index 0, last-chunk byte 1).
    assert len(plaintext) < sealing.DEFAULT_CHUNK_BYTES
    ephemeral = X25519PrivateKey.generate()
    ephemeral_raw = ephemeral.public_key().public_bytes(*raw)
    recipient_raw = recipient.public_bytes(*raw)
    nonce = os.urandom(12)
    header = (
        sealing.MAGIC
        + bytes([sealing.VERSION])
        + ephemeral_raw
        + hashlib.sha256(recipient_raw).digest()
        + nonce
        + struct.pack(">I", sealing.DEFAULT_CHUNK_BYTES)
    )
    aes_key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=ephemeral_raw + recipient_raw,
        info=sealing.HKDF_INFO,
    ).derive(ephemeral.exchange(recipient))
    associated_data = header + certificate_id.encode() + struct.pack(">QB", 0, 1)
    path.write_bytes(header + AESGCM(aes_key).encrypt(nonce, plaintext, associated_data))
    return path


def add_chain_and_sealed_vectors(
    out: Path, scratch: Path, checkpoint: Path, key: Any, key_dir: Path, write: WriteVector
) -> None:
    """Issue the two base deletions in ``scratch`` and write every vector under ``out``."""
    # A subdirectory of its own, so no name clashes with make_vectors.py's scratch files.
    scratch = scratch / "chain-and-sealed"
    auditor_dir = scratch / "auditor"
    auditor_dir.mkdir(parents=True)
    sealing.write_x25519_keypair(auditor_dir / "auditor")
    sealing.write_x25519_keypair(auditor_dir / "other-auditor")
    signing.write_keypair(auditor_dir / "other-issuer")
    other_issuer = signing.load_private_key(auditor_dir / "other-issuer.key")

    first_run, second_run = scratch / "chain-audio", scratch / "chain-vision"
    first = issue(
        checkpoint,
        first_run,
        IssueOptions(
            modality="audio",
            epsilon=1.0,
            delta=1e-5,
            top_k_fraction=SEALED_TOP_K,
            noise_seed=20261205,
            issuer_name="mbd-cert test vectors",
            auditor_key=sealing.load_recipient_key(auditor_dir / "auditor.pub"),
        ),
        key,
    )
    second = issue(
        first_run,
        second_run,
        IssueOptions(
            modality="vision",
            epsilon=1.0,
            delta=1e-5,
            noise_seed=20261206,
            issuer_name="mbd-cert test vectors",
        ),
        key,
    )
    how_made_first = (
        f"mbd-cert issue --modality audio --epsilon 1 --delta 1e-5 --top-k {SEALED_TOP_K} "
        "--auditor-key auditor.pub on a tiny synthetic model"
    )
    how_made_second = (
        how_made_first + ", then mbd-cert issue --checkpoint <that output> --modality vision "
        "--epsilon 1 --delta 1e-5 (deletion 2 of the chain)"
    )
    _add_chain_vectors(
        out, scratch, key, key_dir, write, first, second, second_run, other_issuer, how_made_second
    )
    write(
        out / "invalid" / "chain-first-names-previous",
        certificate.sign_certificate(_with_previous(first, second), key),
        first_run / "model.safetensors",
        {
            "exit_code": 1,
            "error_code": "E_CHAIN_BROKEN",
            "requirement": "R-CHAIN-1",
            "how_made": how_made_first + "; deletion 1: accounting.previous_certificate set to "
            "the digest of deletion 2, re-signed",
            "args": CHAIN_ARGS,
        },
        key_dir,
    )
    _add_sealed_vectors(
        out, scratch, key, key_dir, write, first, first_run, auditor_dir, how_made_first
    )


def _with_previous(doc: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    edited = copy.deepcopy(doc)
    edited["accounting"]["previous_certificate"] = certificate.certificate_digest(previous)
    return edited


def _recount(doc: dict[str, Any], links: list[dict[str, Any]]) -> None:
    """Set ``doc``'s mu and cumulative epsilon to what ``links`` (oldest first) give."""
    entries = [accounting.ChainEntry(d["privacy"]["epsilon"], d["privacy"]["delta"],
                                     d["privacy"]["sigma"], d["privacy"]["sensitivity"])
               for d in links]
    account = accounting.account_chain(entries, doc["accounting"]["delta"])
    doc["accounting"].update(mu=account.mu, cumulative_epsilon=account.epsilon,
                             naive_epsilon=account.naive_epsilon,
                             rdp_epsilon=account.rdp_epsilon)


def _add_chain_vectors(
    out: Path,
    scratch: Path,
    key: Any,
    key_dir: Path,
    write: WriteVector,
    first: dict[str, Any],
    second: dict[str, Any],
    second_run: Path,
    other_issuer: Any,
    base_how_made: str,
) -> None:
    model = second_run / "model.safetensors"
    issuer_copy = second_run / LINK_1

    def vector(
        kind: str,
        name: str,
        doc: dict[str, Any],
        code: str | None,
        exit_code: int,
        requirement: str,
        how_made: str,
        link: Path | None = issuer_copy,
    ) -> None:
        write(
            out / kind / name,
            doc,
            model,
            {
                "exit_code": exit_code,
                "error_code": code,
                "requirement": requirement,
                "how_made": how_made,
                "args": CHAIN_ARGS,
            },
            key_dir,
            extras={LINK_1: link} if link is not None else None,
        )

    def edited(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        doc = copy.deepcopy(second)
        change(doc)
        return certificate.sign_certificate(doc, key)

    def relinked(link_doc: dict[str, Any], file_name: str) -> tuple[dict[str, Any], Path]:
        """Point deletion 2 at ``link_doc`` (digest and listing) and re-sign it."""
        digest = certificate.certificate_digest(link_doc)
        doc = copy.deepcopy(second)
        doc["accounting"]["previous_certificate"] = digest
        doc["accounting"]["chain"][0]["certificate_digest"] = digest
        return certificate.sign_certificate(doc, key), _write_doc(scratch / file_name, link_doc)

    vector(
        "valid",
        "chain-two-deletions",
        second,
        None,
        0,
        "R-CHAIN-1",
        base_how_made + "; chain-00001.json is the copy of deletion 1 that the issuer wrote",
    )

    # R-CHAIN-1: every later certificate names the digest of the one before it.
    vector(
        "invalid",
        "chain-link-missing",
        second,
        "E_CHAIN_LINK_MISSING",
        1,
        "R-CHAIN-1",
        base_how_made + "; chain-00001.json left out of the vector",
        link=None,
    )
    link_doc = copy.deepcopy(first)
    link_doc["issuer"]["name"] = "mbd-cert test vectors (edited)"
    edited_link = _write_doc(
        scratch / "edited-link.json", certificate.sign_certificate(link_doc, key)
    )
    vector(
        "invalid",
        "chain-link-edited",
        second,
        "E_CHAIN_LINK_MISSING",
        1,
        "R-CHAIN-1",
        "chain-00001.json: issuer.name edited and re-signed, so its digest no longer "
        "matches deletion 2's accounting.previous_certificate",
        link=edited_link,
    )
    vector(
        "invalid",
        "chain-previous-null",
        edited(lambda d: d["accounting"].update(previous_certificate=None)),
        "E_CHAIN_BROKEN",
        1,
        "R-CHAIN-1",
        "deletion 2: accounting.previous_certificate set to null, re-signed",
    )

    # R-CHAIN-2 to R-CHAIN-4: numbering, model continuity, listing and repeats.
    vector(
        "invalid",
        "chain-sequence-gap",
        edited(lambda d: d["accounting"].update(sequence_number=3)),
        "E_CHAIN_BROKEN",
        1,
        "R-CHAIN-2",
        "deletion 2: accounting.sequence_number set to 3, re-signed",
    )
    vector(
        "invalid",
        "chain-model-discontinuity",
        edited(
            lambda d: d["subject_model"]["pre_deletion"].update(
                manifest_digest="sha256:" + "0" * 64
            )
        ),
        "E_CHAIN_BROKEN",
        1,
        "R-CHAIN-3",
        "deletion 2: subject_model.pre_deletion.manifest_digest replaced by zeros, re-signed",
    )
    vector(
        "invalid",
        "chain-listing-edited",
        edited(
            lambda d: d["accounting"]["chain"][0].update(certificate_digest="sha256:" + "0" * 64)
        ),
        "E_CHAIN_BROKEN",
        1,
        "R-CHAIN-4",
        "deletion 2: accounting.chain[0].certificate_digest replaced by zeros, re-signed",
    )
    vector(
        "invalid",
        "chain-listing-empty",
        edited(lambda d: d["accounting"].update(chain=[])),
        "E_CHAIN_BROKEN",
        1,
        "R-CHAIN-4",
        "deletion 2: accounting.chain set to [] (no earlier link), re-signed",
    )
    vector(
        "invalid",
        "chain-certificate-id-repeated",
        edited(lambda d: d.update(certificate_id=first["certificate_id"])),
        "E_CHAIN_BROKEN",
        1,
        "R-CHAIN-4",
        "deletion 2: certificate_id set to deletion 1's id, re-signed",
    )

    # R-CHAIN-6: every earlier link is schema-valid and signed by a trusted key.
    link_doc = copy.deepcopy(first)
    link_doc["issuer"]["key_id"] = signing.key_id(other_issuer.public_key())
    doc, link = relinked(certificate.sign_certificate(link_doc, other_issuer), "untrusted.json")
    vector(
        "invalid",
        "chain-link-untrusted-key",
        doc,
        "E_KEY_UNTRUSTED",
        1,
        "R-CHAIN-6",
        "chain-00001.json re-signed by a key the verifier was not given; deletion 2 "
        "relinked to its digest and re-signed with the trusted key",
        link=link,
    )
    # R-CHAIN-8: every earlier link passes its own calibration checks. The accounting
    # of both links is recomputed, so only the calibration check can catch it.
    link_doc = copy.deepcopy(first)
    link_doc["privacy"]["sensitivity"] = link_doc["update"]["clip_norm"]
    _recount(link_doc, [link_doc])
    signed_link = certificate.sign_certificate(link_doc, key)
    doc, link = relinked(signed_link, "miscalibrated.json")
    doc.pop("signature")
    _recount(doc, [signed_link, doc])
    doc = certificate.sign_certificate(doc, key)
    vector(
        "invalid",
        "chain-link-miscalibrated",
        doc,
        "E_CALIBRATION_INVALID",
        1,
        "R-CHAIN-8",
        "chain-00001.json: privacy.sensitivity set to clip_norm, half the clip bound, and "
        "its mu and cumulative epsilon recomputed, re-signed; deletion 2 relinked to its "
        "digest, its accounting recomputed, re-signed",
        link=link,
    )
    link_doc = copy.deepcopy(first)
    link_doc["comment"] = "unknown top-level member"
    doc, link = relinked(certificate.sign_certificate(link_doc, key), "schema-invalid.json")
    vector(
        "invalid",
        "chain-link-schema-invalid",
        doc,
        "E_CERT_MALFORMED",
        2,
        "R-CHAIN-6",
        "chain-00001.json: an unknown top-level member added, re-signed; deletion 2 "
        "relinked to its digest and re-signed",
        link=link,
    )

    # R-ACC-1, R-ACC-2 over the chain, and the chain length cap R-LIM-4.
    vector(
        "invalid",
        "chain-cumulative-epsilon-understated",
        edited(lambda d: d["accounting"].update(cumulative_epsilon=1.0)),
        "E_CALIBRATION_INVALID",
        1,
        "R-ACC-2",
        "deletion 2: accounting.cumulative_epsilon set to 1.0, the epsilon of one "
        "deletion instead of the chain's, re-signed",
    )
    vector(
        "invalid",
        "chain-mu-understated",
        edited(lambda d: d["accounting"].update(mu=first["accounting"]["mu"])),
        "E_CALIBRATION_INVALID",
        1,
        "R-ACC-1",
        "deletion 2: accounting.mu set to deletion 1's mu (one deletion), re-signed",
    )
    # R-ACC-3: the RDP bound stated for reading is held to its recomputation too.
    vector(
        "invalid",
        "chain-rdp-epsilon-understated",
        edited(lambda d: d["accounting"].update(rdp_epsilon=d["accounting"]["rdp_epsilon"] / 2)),
        "E_CALIBRATION_INVALID",
        1,
        "R-ACC-3",
        "deletion 2: accounting.rdp_epsilon halved, below the RDP bound over both "
        "deletions, re-signed",
    )
    vector(
        "invalid",
        "chain-length-over-cap",
        edited(lambda d: d["accounting"].update(sequence_number=1001)),
        "E_LIMIT_EXCEEDED",
        2,
        "R-LIM-4",
        "deletion 2: accounting.sequence_number set to 1001, above the cap of 1000, re-signed",
    )


def _add_sealed_vectors(
    out: Path,
    scratch: Path,
    key: Any,
    key_dir: Path,
    write: WriteVector,
    first: dict[str, Any],
    first_run: Path,
    auditor_dir: Path,
    base_how_made: str,
) -> None:
    model = first_run / "model.safetensors"
    sealed = first_run / sealing.SEALED_FILE_NAME
    auditor_key = auditor_dir / "auditor.key"
    test_key_note = (
        "; auditor.key is an X25519 test key generated for these vectors, and the bundle "
        "it opens is all it protects"
    )

    def vector(
        kind: str,
        name: str,
        doc: dict[str, Any],
        code: str | None,
        exit_code: int,
        requirement: str,
        how_made: str,
        sealed_file: Path = sealed,
        key_file: Path = auditor_key,
        args: list[str] = SEALED_ARGS,
    ) -> None:
        write(
            out / kind / name,
            doc,
            model,
            {
                "exit_code": exit_code,
                "error_code": code,
                "requirement": requirement,
                "how_made": how_made + test_key_note,
                "args": args,
            },
            key_dir,
            extras={sealing.SEALED_FILE_NAME: sealed_file, "auditor.key": key_file},
        )

    def edited_file(name: str, change: Callable[[bytearray], bytearray]) -> Path:
        path = scratch / name
        path.write_bytes(bytes(change(bytearray(sealed.read_bytes()))))
        return path

    def recommitted(path: Path) -> dict[str, Any]:
        """Commit the certificate to ``path``'s digest and re-sign it."""
        doc = copy.deepcopy(first)
        doc["audit_bundle"]["sealed"]["file_digest"] = _sha256_file(path)
        return certificate.sign_certificate(doc, key)

    vector(
        "valid",
        "sealed-bundle",
        first,
        None,
        0,
        "R-SEAL-2",
        base_how_made + "; verified at level 2 from the sealed bundle alone (the plain bundle "
        "files are not in the vector)",
        args=["--level", "2", *SEALED_ARGS],
    )

    # R-SEAL-2: the file digest first, then the recipient, then authentication.
    def flip(data: bytearray) -> bytearray:
        data[sealing.HEADER_BYTES + 100] ^= 0x01
        return data

    flipped = edited_file("flipped.sealed", flip)
    vector(
        "invalid",
        "sealed-bundle-byte-flipped",
        first,
        "E_DIGEST_MISMATCH",
        1,
        "R-SEAL-2",
        base_how_made + "; one bit of ciphertext byte 188 of audit-bundle.sealed flipped",
        sealed_file=flipped,
    )
    vector(
        "invalid",
        "sealed-bundle-byte-flipped-resigned",
        recommitted(flipped),
        "E_SEALED_BUNDLE_INVALID",
        1,
        "R-SEAL-2",
        base_how_made + "; one bit of ciphertext byte 188 of audit-bundle.sealed flipped, "
        "audit_bundle.sealed.file_digest updated, re-signed",
        sealed_file=flipped,
    )
    vector(
        "invalid",
        "sealed-bundle-wrong-auditor-key",
        first,
        "E_SEALED_KEY_MISMATCH",
        2,
        "R-SEAL-2",
        base_how_made + "; auditor.key is another X25519 key, not the recipient's",
        key_file=auditor_dir / "other-auditor.key",
    )
    tampered = scratch / "tampered-bundle"
    tampered.mkdir()
    for name in ("diff.safetensors", "probe.safetensors"):
        shutil.copyfile(first_run / name, tampered / name)
    diff = bytearray((tampered / "diff.safetensors").read_bytes())
    diff[-1] ^= 0x01
    (tampered / "diff.safetensors").write_bytes(bytes(diff))
    doc = copy.deepcopy(first)
    doc["audit_bundle"]["sealed"] = sealing.seal_bundle(
        tampered,
        ["diff.safetensors", "probe.safetensors"],
        sealing.load_recipient_key(auditor_dir / "auditor.pub"),
        str(first["certificate_id"]),
    )
    vector(
        "invalid",
        "sealed-bundle-diff-edited",
        certificate.sign_certificate(doc, key),
        "E_DIGEST_MISMATCH",
        1,
        "R-SEAL-2",
        base_how_made + "; resealed with one bit of diff.safetensors' last byte flipped, "
        "audit_bundle.sealed updated, re-signed",
        sealed_file=tampered / sealing.SEALED_FILE_NAME,
    )

    # R-SEAL-1: the sealed file is bound to the certificate id.
    doc = copy.deepcopy(first)
    doc["certificate_id"] = "00000000-0000-4000-8000-000000000000"
    vector(
        "invalid",
        "sealed-bundle-other-certificate",
        certificate.sign_certificate(doc, key),
        "E_SEALED_BUNDLE_INVALID",
        1,
        "R-SEAL-1",
        base_how_made + "; certificate_id replaced, re-signed, so the sealed file belongs to "
        "another certificate",
    )

    # R-SEAL-2: the opened content matches its listing, under plain file names.
    recipient = sealing.load_recipient_key(auditor_dir / "auditor.pub")
    diff_bytes = (first_run / "diff.safetensors").read_bytes()
    probe_bytes = (first_run / "probe.safetensors").read_bytes()
    path = _seal_listing(
        scratch / "path-escape.sealed",
        [{"path": "../diff.safetensors", "size": len(diff_bytes)}],
        diff_bytes,
        recipient,
        str(first["certificate_id"]),
    )
    vector(
        "invalid",
        "sealed-bundle-path-escape",
        recommitted(path),
        "E_UNSAFE_PATH",
        2,
        "R-SEAL-2",
        base_how_made + "; resealed (per SPEC section 4.5) with the listed path "
        "'../diff.safetensors', audit_bundle.sealed.file_digest updated, re-signed",
        sealed_file=path,
    )
    path = _seal_listing(
        scratch / "listing-size.sealed",
        [
            {"path": "diff.safetensors", "size": len(diff_bytes) + 1},
            {"path": "probe.safetensors", "size": len(probe_bytes)},
        ],
        diff_bytes + probe_bytes,
        recipient,
        str(first["certificate_id"]),
    )
    vector(
        "invalid",
        "sealed-bundle-listing-size-wrong",
        recommitted(path),
        "E_SEALED_BUNDLE_INVALID",
        1,
        "R-SEAL-2",
        base_how_made + "; resealed (per SPEC section 4.5) with the listed size of "
        "diff.safetensors one byte too large, audit_bundle.sealed.file_digest updated, "
        "re-signed",
        sealed_file=path,
    )

    # R-SEAL-2: the opened bundle contains every file the certificate commits to.
    path = _seal_listing(
        scratch / "diff-missing.sealed",
        [{"path": "probe.safetensors", "size": len(probe_bytes)}],
        probe_bytes,
        recipient,
        str(first["certificate_id"]),
    )
    vector(
        "invalid",
        "sealed-bundle-diff-missing",
        recommitted(path),
        "E_SEALED_BUNDLE_INVALID",
        1,
        "R-SEAL-2",
        base_how_made + "; resealed (per SPEC section 4.5) with probe.safetensors only, so "
        "the bundle opens but lacks the diff.safetensors that audit_bundle.diff.path names, "
        "audit_bundle.sealed.file_digest updated, re-signed",
        sealed_file=path,
    )

    # R-SEAL-3: version byte and magic.
    def version_2(data: bytearray) -> bytearray:
        data[7] = 2
        return data

    def bad_magic(data: bytearray) -> bytearray:
        data[:7] = b"MBDSEAX"
        return data

    for name, change, code, edit in (
        (
            "sealed-bundle-version-2",
            version_2,
            "E_UNSUPPORTED_VERSION",
            "version byte 7 of audit-bundle.sealed set to 2",
        ),
        (
            "sealed-bundle-bad-magic",
            bad_magic,
            "E_SEALED_MALFORMED",
            "magic of audit-bundle.sealed changed to MBDSEAX",
        ),
    ):
        path = edited_file(name + ".sealed", change)
        vector(
            "invalid",
            name,
            recommitted(path),
            code,
            2,
            "R-SEAL-3",
            base_how_made + f"; {edit}, audit_bundle.sealed.file_digest updated, re-signed",
            sealed_file=path,
        )
