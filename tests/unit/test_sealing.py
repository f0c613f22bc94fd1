"""Tests for mbd_cert.sealing: the sealed audit bundle and the X25519 key files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from mbd_cert import sealing
from mbd_cert.errors import (
    DigestMismatch,
    InputError,
    KeyInvalid,
    SealedBundleInvalid,
    UnsupportedVersion,
)

CERT_ID = "5f0c8a52-8d3e-4c1a-9d59-0b0c7f1e2a11"
SMALL_CHUNK = sealing.MIN_CHUNK_BYTES


@pytest.fixture
def bundle(tmp_path: Path) -> list[Path]:
    source = tmp_path / "src"
    source.mkdir()
    files = {"diff.safetensors": os.urandom(3 * SMALL_CHUNK + 17),
             "empty.bin": b"", "probe.safetensors": os.urandom(SMALL_CHUNK)}
    for name, data in files.items():
        (source / name).write_bytes(data)
    return [source / name for name in files]


def seal(bundle: list[Path], tmp_path: Path, key: X25519PrivateKey,
         certificate_id: str = CERT_ID) -> Path:
    out = tmp_path / "x.sealed"
    sealing.seal_files(bundle, out, key.public_key(), certificate_id, chunk_bytes=SMALL_CHUNK)
    return out


def open_into(path: Path, tmp_path: Path, key: X25519PrivateKey, name: str = "open",
              certificate_id: str = CERT_ID) -> list[Path]:
    target = tmp_path / name
    target.mkdir()
    return sealing.open_sealed(path, target, key, certificate_id)


def test_round_trip_restores_every_file(bundle: list[Path], tmp_path: Path) -> None:
    key = X25519PrivateKey.generate()
    opened = open_into(seal(bundle, tmp_path, key), tmp_path, key)
    assert [p.name for p in opened] == [p.name for p in bundle]
    for original, restored in zip(bundle, opened, strict=True):
        assert restored.read_bytes() == original.read_bytes()


def test_plaintext_exact_multiple_of_chunk(tmp_path: Path) -> None:
    key = X25519PrivateKey.generate()
    source = tmp_path / "f.bin"

    def plaintext_size(size: int) -> int:
        listing = json.dumps({"certificate_id": CERT_ID, "files": [{"path": "f.bin",
                              "size": size}], "format": sealing.CONTENT_FORMAT},
                             sort_keys=True, separators=(",", ":"))
        return 8 + len(listing) + size

    size = next(n for n in range(2 * SMALL_CHUNK) if plaintext_size(n) == 2 * SMALL_CHUNK)
    source.write_bytes(os.urandom(size))
    sealed = seal([source], tmp_path, key)
    # Two full chunks, then a last chunk of 0 plaintext bytes (its tag only).
    assert sealed.stat().st_size == sealing.HEADER_BYTES + 2 * (SMALL_CHUNK + 16) + 16
    assert open_into(sealed, tmp_path, key)[0].read_bytes() == source.read_bytes()


def test_wrong_key_is_unusable_input(bundle: list[Path], tmp_path: Path) -> None:
    sealed = seal(bundle, tmp_path, X25519PrivateKey.generate())
    with pytest.raises(InputError) as caught:
        open_into(sealed, tmp_path, X25519PrivateKey.generate())
    assert caught.value.code == "E_SEALED_KEY_MISMATCH"
    assert caught.value.exit_code == 2


def test_other_certificate_id_fails(bundle: list[Path], tmp_path: Path) -> None:
    key = X25519PrivateKey.generate()
    sealed = seal(bundle, tmp_path, key)
    with pytest.raises(sealing.SealedBundleInvalid) as caught:
        open_into(sealed, tmp_path, key, certificate_id="another-certificate")
    assert caught.value.exit_code == 1


@pytest.mark.parametrize("offset", [sealing.HEADER_BYTES + 5, -3])
def test_flipped_ciphertext_byte_fails(bundle: list[Path], tmp_path: Path, offset: int) -> None:
    key = X25519PrivateKey.generate()
    sealed = seal(bundle, tmp_path, key)
    data = bytearray(sealed.read_bytes())
    data[offset] ^= 0x01
    sealed.write_bytes(bytes(data))
    with pytest.raises(sealing.SealedBundleInvalid, match="does not authenticate"):
        open_into(sealed, tmp_path, key)


def test_flipped_header_byte_fails(bundle: list[Path], tmp_path: Path) -> None:
    key = X25519PrivateKey.generate()
    sealed = seal(bundle, tmp_path, key)
    data = bytearray(sealed.read_bytes())
    data[75] ^= 0x01  # inside the base nonce, which the associated data covers
    sealed.write_bytes(bytes(data))
    with pytest.raises(sealing.SealedBundleInvalid):
        open_into(sealed, tmp_path, key)


def test_truncated_at_chunk_boundary_fails(bundle: list[Path], tmp_path: Path) -> None:
    key = X25519PrivateKey.generate()
    sealed = seal(bundle, tmp_path, key)
    data = sealed.read_bytes()
    # Keep the header and the first two chunks: the second is not marked as the last.
    sealed.write_bytes(data[: sealing.HEADER_BYTES + 2 * (SMALL_CHUNK + 16)])
    with pytest.raises(sealing.SealedBundleInvalid):
        open_into(sealed, tmp_path, key)


def test_swapped_chunks_fail(bundle: list[Path], tmp_path: Path) -> None:
    key = X25519PrivateKey.generate()
    sealed = seal(bundle, tmp_path, key)
    data = sealed.read_bytes()
    stride = SMALL_CHUNK + 16
    head, first, second = (data[: sealing.HEADER_BYTES],
                           data[sealing.HEADER_BYTES: sealing.HEADER_BYTES + stride],
                           data[sealing.HEADER_BYTES + stride: sealing.HEADER_BYTES + 2 * stride])
    sealed.write_bytes(head + second + first + data[sealing.HEADER_BYTES + 2 * stride:])
    with pytest.raises(sealing.SealedBundleInvalid, match="chunk 0"):
        open_into(sealed, tmp_path, key)


def test_bad_magic_and_version(bundle: list[Path], tmp_path: Path) -> None:
    key = X25519PrivateKey.generate()
    sealed = seal(bundle, tmp_path, key)
    data = bytearray(sealed.read_bytes())
    data[7] = 2
    sealed.write_bytes(bytes(data))
    with pytest.raises(UnsupportedVersion):
        open_into(sealed, tmp_path, key)
    sealed.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(InputError) as caught:
        open_into(sealed, tmp_path, key, name="open2")
    assert caught.value.code == "E_SEALED_MALFORMED"


def test_key_files_round_trip(tmp_path: Path) -> None:
    private_path, public_path = sealing.write_x25519_keypair(tmp_path / "auditor")
    assert private_path.stat().st_mode & 0o777 == 0o600
    private = sealing.load_auditor_private_key(private_path)
    public = sealing.load_recipient_key(public_path)
    assert sealing.recipient_key_id(public) == sealing.recipient_key_id(private.public_key())
    raw = tmp_path / "raw.pub"
    raw.write_bytes(public.public_bytes(serialization.Encoding.Raw,
                                       serialization.PublicFormat.Raw))
    assert sealing.recipient_key_id(sealing.load_recipient_key(raw)) == \
        sealing.recipient_key_id(public)


def test_key_pair_into_directory(tmp_path: Path) -> None:
    # Like the signing key, a directory gets a named pair inside it, not DIR.key beside.
    private_path, public_path = sealing.write_x25519_keypair(tmp_path)
    assert private_path == tmp_path / "auditor.key"
    assert public_path == tmp_path / "auditor.pub"


def test_existing_pub_no_half_pair(tmp_path: Path) -> None:
    (tmp_path / "auditor.pub").write_text("kept")
    with pytest.raises(InputError) as caught:
        sealing.write_x25519_keypair(tmp_path / "auditor")
    assert caught.value.code == "E_FILE_EXISTS"
    assert not (tmp_path / "auditor.key").exists()
    assert (tmp_path / "auditor.pub").read_text() == "kept"


def test_signing_key_rejected_as_auditor_key(tmp_path: Path) -> None:
    signing_key = Ed25519PrivateKey.generate()
    pub = tmp_path / "issuer.pub"
    pub.write_bytes(signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(KeyInvalid, match="public key of kind Ed25519, expected the auditor"):
        sealing.load_recipient_key(pub)
    private = tmp_path / "issuer.key"
    private.write_bytes(signing_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(KeyInvalid, match="Ed25519 signing key"):
        sealing.load_auditor_private_key(private)
    with pytest.raises(KeyInvalid, match="private key"):
        sealing.load_recipient_key(private)


def test_open_for_verification_checks_digest(bundle: list[Path], tmp_path: Path) -> None:
    key = X25519PrivateKey.generate()
    directory = bundle[0].parent
    entry = sealing.seal_bundle(directory, [p.name for p in bundle], key.public_key(), CERT_ID)
    doc = {"certificate_id": CERT_ID, "audit_bundle": {"sealed": entry}}
    target = tmp_path / "ok"
    target.mkdir()
    assert "diff.safetensors" in sealing.open_for_verification(doc, directory, key, target)
    tampered = dict(entry, file_digest="sha256:" + "0" * 64)
    target2 = tmp_path / "bad"
    target2.mkdir()
    with pytest.raises(DigestMismatch):
        sealing.open_for_verification({"certificate_id": CERT_ID,
                                       "audit_bundle": {"sealed": tampered}},
                                      directory, key, target2)
    with pytest.raises(InputError) as caught:
        sealing.open_for_verification({"certificate_id": CERT_ID, "audit_bundle": {}},
                                      directory, key, target2)
    assert caught.value.code == "E_BUNDLE_NOT_SEALED"


def test_repeated_listed_name_invalid(tmp_path: Path) -> None:
    # The sealer never writes such a listing, so the file is sealed by hand from the
    # SPEC. Opening must reject the repeated name before its second file would
    # overwrite the first.
    from tests.vectors.make_chain_vectors import _seal_listing

    key = X25519PrivateKey.generate()
    sealed = _seal_listing(tmp_path / "x.sealed",
                           [{"path": "a.bin", "size": 1}, {"path": "a.bin", "size": 2}],
                           b"abc", key.public_key(), CERT_ID)
    with pytest.raises(SealedBundleInvalid) as info:
        open_into(sealed, tmp_path, key)
    assert info.value.code == "E_SEALED_BUNDLE_INVALID"
    assert "not a new plain file name" in info.value.message


@pytest.mark.parametrize("listed", ["../a.bin", "/tmp/a.bin", 7])
def test_unsafe_listed_path_rejected(tmp_path: Path, listed: Any) -> None:
    # R-SEAL-2: a listed path that escapes the directory is refused before anything is
    # written, with the code of every unsafe artefact path.
    from tests.vectors.make_chain_vectors import _seal_listing

    key = X25519PrivateKey.generate()
    sealed = _seal_listing(tmp_path / "x.sealed", [{"path": listed, "size": 1}], b"a",
                           key.public_key(), CERT_ID)
    with pytest.raises(InputError) as info:
        open_into(sealed, tmp_path, key)
    assert info.value.code == "E_UNSAFE_PATH"
    assert not (tmp_path / "a.bin").exists()


def test_listing_not_json_invalid(tmp_path: Path) -> None:
    # R-SEAL-2: the listing authenticated, so the issuer wrote it: a false bundle.
    from tests.vectors.make_chain_vectors import _seal_content

    key = X25519PrivateKey.generate()
    sealed = _seal_content(tmp_path / "x.sealed", b"{not json", b"", key.public_key(), CERT_ID)
    with pytest.raises(SealedBundleInvalid) as info:
        open_into(sealed, tmp_path, key)
    assert info.value.exit_code == 1
    assert "not valid JSON" in info.value.message


def test_bytes_after_listed_files_invalid(tmp_path: Path) -> None:
    # R-SEAL-2: content beyond the listed files is refused as it arrives.
    from tests.vectors.make_chain_vectors import _seal_listing

    key = X25519PrivateKey.generate()
    sealed = _seal_listing(tmp_path / "x.sealed", [{"path": "a.bin", "size": 1}], b"abc",
                           key.public_key(), CERT_ID)
    with pytest.raises(SealedBundleInvalid) as info:
        open_into(sealed, tmp_path, key)
    assert "goes on after its listed files" in info.value.message


def _sealed_doc(sealed: Path, recipient: X25519PrivateKey,
                **members: Any) -> dict[str, Any]:
    """Return the certificate members that commit ``sealed`` to ``recipient``."""
    commitment = {
        "path": sealed.name,
        "file_digest": "sha256:" + hashlib.sha256(sealed.read_bytes()).hexdigest(),
        "recipient_key_id": sealing.recipient_key_id(recipient.public_key()),
    }
    return {"certificate_id": CERT_ID, "audit_bundle": {**members, "sealed": commitment}}


def test_sealed_without_committed_diff_fails(tmp_path: Path) -> None:
    # The bundle opens but lacks the committed diff: a failed check (exit 1), not a
    # missing input in a temporary directory (exit 2).
    from tests.vectors.make_chain_vectors import _seal_listing

    key = X25519PrivateKey.generate()
    sealed = _seal_listing(tmp_path / "audit-bundle.sealed",
                           [{"path": "other.bin", "size": 3},
                            {"path": "probe.safetensors", "size": 0}],
                           b"abc", key.public_key(), CERT_ID)
    doc = _sealed_doc(sealed, key, diff={"path": "diff.safetensors"},
                      probe={"path": "probe.safetensors"})
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(SealedBundleInvalid) as info:
        sealing.open_for_verification(doc, tmp_path, key, into)
    assert info.value.exit_code == 1
    assert "'diff.safetensors'" in info.value.message
    assert "audit_bundle.diff.path" in info.value.message


def test_sealed_for_other_recipient_fails(
        bundle: list[Path], tmp_path: Path) -> None:
    auditor, other = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    sealed = seal(bundle, tmp_path, other)
    doc = _sealed_doc(sealed, auditor)
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(SealedBundleInvalid) as info:
        sealing.open_for_verification(doc, tmp_path, auditor, into)
    assert "states" in info.value.message


@pytest.mark.parametrize("content", [b"", b"\n", b"  \n\n"], ids=["empty", "newline", "blank"])
def test_empty_auditor_key_file_named(tmp_path: Path, content: bytes) -> None:
    # A CI job whose secret is unset writes an empty or blank key file.
    path = tmp_path / "auditor.key"
    path.write_bytes(content)
    with pytest.raises(KeyInvalid, match="file is empty") as raised:
        sealing.load_auditor_private_key(path)
    assert "secret" in (raised.value.hint or "")


def test_public_key_as_auditor_private_key(tmp_path: Path) -> None:
    _, public_path = sealing.write_x25519_keypair(tmp_path / "auditor")
    with pytest.raises(KeyInvalid, match="contains a public key") as raised:
        sealing.load_auditor_private_key(public_path)
    assert raised.value.exit_code == 2
    assert "not .pub" in (raised.value.hint or "")
