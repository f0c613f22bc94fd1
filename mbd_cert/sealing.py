"""Sealing the audit bundle to one auditor: X25519, HKDF-SHA256 and AES-256-GCM.

The audit bundle reveals pre-deletion parameter values, so the issuer can encrypt it
for one auditor's X25519 public key (SPEC.md, section 4.5). The public certificate
carries only digests: of the plaintext bundle files, as before, and of the sealed file.

Sealed file (``audit-bundle.sealed``), all integers big-endian:

==========  =====  ==========================================================
offset      bytes  content
==========  =====  ==========================================================
0           7      magic ``MBDSEAL``
7           1      format version, 1
8           32     the issuer's ephemeral X25519 public key
40          32     SHA-256 of the recipient's raw X25519 public key
72          12     base nonce (random)
84          4      chunk size C in bytes, 1 KiB to 16 MiB
88          ...    chunks: AES-256-GCM ciphertext of C plaintext bytes plus the
                   16-byte tag; the last chunk contains 0 to C - 1 bytes
==========  =====  ==========================================================

Key: HKDF-SHA256 (RFC 5869) of the X25519 shared secret, salt = ephemeral public key
followed by the recipient public key, info ``mbd-cert sealed audit bundle v1``, 32
bytes. Chunk i uses the base nonce with its last 8 bytes XORed with i. Its associated
data is the 88 header bytes, the certificate id (UTF-8), the 8-byte chunk index and
one byte that is 1 for the last chunk, else 0. Reordered, dropped or
truncated chunks and a bundle sealed for another certificate therefore fail to open.

Plaintext: an 8-byte length L, L bytes of JSON ``{"format": "mbd-cert-sealed-bundle/1",
"certificate_id", "files": [{"path", "size"}]}``, then the files' bytes in that order.

Opening with a key whose id is not the recipient's is unusable input (exit code 2,
``E_SEALED_KEY_MISMATCH``): nothing about the certificate is false. A file that does
not authenticate under the right key is a failed check (exit code 1,
``E_SEALED_BUNDLE_INVALID``).

Stability: public; the file layout is fixed by version byte 1.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mbd_cert import _paths
from mbd_cert._sealed_content import CONTENT_FORMAT as CONTENT_FORMAT
from mbd_cert._sealed_content import MAX_CONTENT_HEADER_BYTES as MAX_CONTENT_HEADER_BYTES
from mbd_cert._sealed_content import (
    MAX_FILES,
    ContentSink,
    encode_listing,
    plaintext_blocks,
    rechunk,
)
from mbd_cert._x25519_keys import (  # re-exported: the key files belong to this API
    load_auditor_private_key,
    load_recipient_key,
    write_x25519_keypair,
)
from mbd_cert.errors import (
    DigestMismatch,
    FileMissing,
    InputError,
    SealedBundleInvalid,
    UnsupportedVersion,
)

MAGIC = b"MBDSEAL"
VERSION = 1
ALGORITHM = "x25519-hkdf-sha256-aes-256-gcm"
FORMAT = "mbd-cert-sealed/1"
SEALED_FILE_NAME = "audit-bundle.sealed"
HKDF_INFO = b"mbd-cert sealed audit bundle v1"
HEADER_BYTES = 88
TAG_BYTES = 16
DEFAULT_CHUNK_BYTES = 1024 * 1024
MIN_CHUNK_BYTES = 1024
MAX_CHUNK_BYTES = 16 * 1024 * 1024

CODE_KEY_MISMATCH = "E_SEALED_KEY_MISMATCH"
CODE_INVALID = "E_SEALED_BUNDLE_INVALID"
CODE_MALFORMED = "E_SEALED_MALFORMED"

__all__ = [
    "SealedBundleInvalid",
    "load_auditor_private_key",
    "load_recipient_key",
    "open_for_verification",
    "open_sealed",
    "recipient_key_id",
    "seal_bundle",
    "seal_files",
    "write_x25519_keypair",
]


def recipient_key_id(public_key: X25519PublicKey) -> str:
    """Return ``sha256:<hex>`` of the raw 32-byte X25519 public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def seal_files(
    files: Sequence[Path],
    out_path: Path,
    recipient: X25519PublicKey,
    certificate_id: str,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> str:
    """Encrypt ``files`` into one sealed file for ``recipient``, bound to ``certificate_id``.

    Args:
        files: The bundle files; their base names are stored and must be distinct.
        out_path: The sealed file to write (atomically; an existing file is replaced).
        recipient: The auditor's X25519 public key.
        certificate_id: The id of the certificate that commits to this bundle.
        chunk_bytes: Plaintext bytes per AES-GCM chunk.

    Returns:
        The recipient key id.

    Raises:
        InputError: Too many files, duplicate names or a chunk size out of range.
    """
    if not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES:
        raise InputError(f"chunk size must be in [{MIN_CHUNK_BYTES}, {MAX_CHUNK_BYTES}], "
                         f"got {chunk_bytes}", code="E_PARAMETER_INVALID")
    names = [Path(f).name for f in files]
    if len(set(names)) != len(names) or len(names) > MAX_FILES:
        raise InputError(f"cannot seal {names}: names must be distinct, at most {MAX_FILES}",
                         code="E_PARAMETER_INVALID")
    content = encode_listing(names, files, certificate_id)

    ephemeral = X25519PrivateKey.generate()
    ephemeral_raw = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key_id = recipient_key_id(recipient)
    nonce = secrets.token_bytes(12)
    header = (MAGIC + bytes([VERSION]) + ephemeral_raw + bytes.fromhex(key_id[7:]) + nonce
              + struct.pack(">I", chunk_bytes))
    aead = AESGCM(_derive_key(ephemeral.exchange(recipient), ephemeral_raw, recipient))

    plaintext = plaintext_blocks(content, files, chunk_bytes)

    with _paths.atomic_output(out_path, overwrite=True) as output:
        output.file.write(header)
        for index, (chunk, final) in enumerate(rechunk(plaintext, chunk_bytes)):
            aad = _associated_data(header, certificate_id, index, final)
            output.file.write(aead.encrypt(_chunk_nonce(nonce, index), chunk, aad))
    return key_id


def open_sealed(
    path: Path,
    out_dir: Path,
    private_key: X25519PrivateKey,
    certificate_id: str,
) -> list[Path]:
    """Decrypt a sealed bundle into ``out_dir`` (which must exist and be private).

    Returns:
        The paths of the files written.

    Raises:
        InputError: The file is not a sealed bundle (``E_SEALED_MALFORMED``), or the key
            is not the recipient's (``E_SEALED_KEY_MISMATCH``), both exit code 2.
        UnsupportedVersion: The version byte is unknown.
        SealedBundleInvalid: A chunk does not authenticate: the file was modified or
            was sealed for another certificate (exit code 1).
    """
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        header = handle.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES or header[:7] != MAGIC:
            raise InputError(f"{path}: not a sealed audit bundle (bad magic or short header)",
                             code=CODE_MALFORMED)
        if header[7] != VERSION:
            raise UnsupportedVersion(f"{path}: sealed bundle version {header[7]}, this release "
                                     f"reads version {VERSION}", hint="upgrade mbd-cert")
        ephemeral_raw, recipient_raw = header[8:40], header[40:72]
        nonce = header[72:84]
        (chunk_bytes,) = struct.unpack(">I", header[84:88])
        if not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES:
            raise InputError(f"{path}: chunk size {chunk_bytes} out of range", code=CODE_MALFORMED)
        public = private_key.public_key()
        own_id = recipient_key_id(public)
        if own_id[7:] != recipient_raw.hex():
            raise InputError(
                f"{path} is sealed for recipient key sha256:{recipient_raw.hex()}, but the "
                f"given private key has id {own_id}",
                hint="pass the auditor private key whose public key the issuer sealed to",
                code=CODE_KEY_MISMATCH,
            )
        try:
            ephemeral = X25519PublicKey.from_public_bytes(ephemeral_raw)
            shared = private_key.exchange(ephemeral)
        except ValueError as exc:
            raise InputError(f"{path}: invalid ephemeral key", code=CODE_MALFORMED) from exc
        aead = AESGCM(_derive_key(shared, ephemeral_raw, public))

        body = size - HEADER_BYTES
        stride = chunk_bytes + TAG_BYTES
        count = body // stride + 1
        if not TAG_BYTES <= body - (count - 1) * stride < stride:
            raise SealedBundleInvalid(f"{path}: the file is truncated or has trailing bytes")
        sink = ContentSink(out_dir, certificate_id, str(path))
        try:
            for index in range(count):
                final = index == count - 1
                data = handle.read(stride)
                aad = _associated_data(header, certificate_id, index, final)
                try:
                    plain = aead.decrypt(_chunk_nonce(nonce, index), data, aad)
                except InvalidTag as exc:
                    raise SealedBundleInvalid(
                        f"{path}: chunk {index} does not authenticate for certificate "
                        f"{certificate_id}",
                        hint="the file was modified, or it belongs to another certificate",
                    ) from exc
                sink.write(plain)
            return sink.finish()
        finally:
            sink.close()


def _derive_key(shared: bytes, ephemeral_raw: bytes, recipient: X25519PublicKey) -> bytes:
    recipient_raw = recipient.public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral_raw + recipient_raw,
                info=HKDF_INFO)
    return hkdf.derive(shared)


def _chunk_nonce(base: bytes, index: int) -> bytes:
    counter = int.from_bytes(base[4:], "big") ^ index
    return base[:4] + counter.to_bytes(8, "big")


def _associated_data(header: bytes, certificate_id: str, index: int, final: bool) -> bytes:
    return header + certificate_id.encode("utf-8") + struct.pack(">QB", index, int(final))


def seal_bundle(
    bundle_dir: Path, names: Sequence[str], recipient: X25519PublicKey, certificate_id: str
) -> dict[str, str]:
    """Seal the named bundle files of ``bundle_dir`` into :data:`SEALED_FILE_NAME`.

    Returns:
        The certificate's ``audit_bundle.sealed`` member: path, file digest, format,
        algorithm and recipient key id.
    """
    out_path = bundle_dir / SEALED_FILE_NAME
    key_id = seal_files([bundle_dir / name for name in names], out_path, recipient, certificate_id)
    digest = hashlib.sha256()
    with open(out_path, "rb") as handle:
        while block := handle.read(DEFAULT_CHUNK_BYTES):
            digest.update(block)
    return {
        "path": SEALED_FILE_NAME,
        "format": FORMAT,
        "algorithm": ALGORITHM,
        "recipient_key_id": key_id,
        "file_digest": "sha256:" + digest.hexdigest(),
    }


def open_for_verification(
    doc: Mapping[str, Any], search_dir: Path, private_key: X25519PrivateKey, into: Path
) -> str:
    """Check the sealed bundle against the certificate and open it into ``into``.

    Args:
        doc: The certificate (schema-valid).
        search_dir: The directory holding the sealed file named in the certificate.
        private_key: The auditor's X25519 private key.
        into: An empty private directory for the opened files.

    Returns:
        A one-line summary for the report.

    Raises:
        InputError: The certificate has no sealed bundle (``E_BUNDLE_NOT_SEALED``), the
            file is missing or malformed, or the key is not the recipient's.
        DigestMismatch: The sealed file is not the one the certificate commits to.
        SealedBundleInvalid: The file does not authenticate, it is sealed for another
            recipient than the certificate states, or it lacks a committed bundle file.
    """
    entry = doc["audit_bundle"].get("sealed")
    if not isinstance(entry, Mapping):
        raise InputError(
            "the certificate has no sealed audit bundle (audit_bundle.sealed)",
            hint="verify with --bundle DIR holding the plain bundle files instead",
            code="E_BUNDLE_NOT_SEALED",
        )
    path = _paths.resolve_artefact(search_dir, entry["path"], field="audit_bundle.sealed.path")
    if not path.is_file():
        raise FileMissing(f"sealed audit bundle not found: {path}",
                          hint="pass the directory holding it with --bundle DIR")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(DEFAULT_CHUNK_BYTES):
            digest.update(block)
    actual = "sha256:" + digest.hexdigest()
    if actual != entry["file_digest"]:
        raise DigestMismatch(
            f"audit_bundle.sealed.file_digest: expected {entry['file_digest']}, got {actual}",
            hint=f"{path} is not the sealed bundle the certificate commits to",
        )
    with open(path, "rb") as handle:
        header = handle.read(HEADER_BYTES)
    if len(header) == HEADER_BYTES and header[:len(MAGIC)] == MAGIC:
        sealed_for = "sha256:" + header[40:72].hex()
        if sealed_for != entry["recipient_key_id"]:
            # The file is the committed one (digest above), so the certificate
            # contradicts itself: a false claim, not a wrong key from the user.
            raise SealedBundleInvalid(
                f"the committed sealed bundle {entry['path']} is sealed for recipient "
                f"{sealed_for}, but audit_bundle.sealed.recipient_key_id states "
                f"{entry['recipient_key_id']}")
    own_id = recipient_key_id(private_key.public_key())
    if entry["recipient_key_id"] != own_id:
        raise InputError(
            f"audit_bundle.sealed.recipient_key_id is {entry['recipient_key_id']}, but the given "
            f"private key has id {own_id}",
            hint="pass the auditor private key the issuer sealed the bundle to",
            code=CODE_KEY_MISMATCH,
        )
    opened = open_sealed(path, into, private_key, str(doc["certificate_id"]))
    # The bundle check reads the committed files from ``into``, where a file missing from
    # the signed sealed bundle would look like a missing input of the user (exit 2).
    names = {p.name for p in opened}
    for role in ("diff", "probe"):
        committed = doc["audit_bundle"].get(role)
        if isinstance(committed, Mapping) and committed.get("path") not in names:
            raise SealedBundleInvalid(
                f"the committed sealed bundle {entry['path']} does not contain "
                f"{committed.get('path')!r}, which audit_bundle.{role}.path names; it "
                f"contains {sorted(names)}",
                hint="ask the issuer for the sealed bundle that issue wrote")
    return f"opened {entry['path']} for recipient {own_id}: " + ", ".join(p.name for p in opened)
