"""Tests for mbd_cert.signing: key files, key ids and Ed25519 signatures."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from mbd_cert import signing
from mbd_cert.errors import (
    FileMissing,
    InputError,
    KeyInvalid,
    LimitExceeded,
    MalformedCertificate,
    SignatureInvalid,
    UntrustedKey,
)
from mbd_cert.signing import (
    ED25519_GROUP_ORDER,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sign,
    verify_signature,
    write_keypair,
)

MESSAGE = b'{"format_version":"1.0"}'
_PEM = serialization.Encoding.PEM
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
_PKCS8 = serialization.PrivateFormat.PKCS8
_PLAIN = serialization.NoEncryption()


@pytest.fixture(scope="module")
def issuer_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@pytest.fixture(scope="module")
def other_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def raw_public(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def key_error(loader: object, path: Path) -> KeyInvalid:
    with pytest.raises(KeyInvalid) as info:
        loader(path)  # type: ignore[operator]
    assert info.value.code == "E_KEY_INVALID"
    assert str(path) in str(info.value)
    return info.value


# --- generating and writing -------------------------------------------------------


def test_generate_keypair_formats() -> None:
    private_pem, public_pem = generate_keypair()
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    private_key = serialization.load_pem_private_key(private_pem, password=None)
    public_key = serialization.load_pem_public_key(public_pem)
    assert isinstance(private_key, Ed25519PrivateKey)
    assert isinstance(public_key, Ed25519PublicKey)
    assert key_id(private_key.public_key()) == key_id(public_key)


def test_generate_keypair_is_random() -> None:
    assert generate_keypair()[0] != generate_keypair()[0]


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_write_keypair_with_prefix(tmp_path: Path, open_umask: None) -> None:
    private_path, public_path = write_keypair(tmp_path / "acme")
    assert (private_path.name, public_path.name) == ("acme.key", "acme.pub")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    private_key = load_private_key(private_path)
    assert key_id(private_key.public_key()) == key_id(load_public_key(public_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acme.key", "acme.pub"]


def test_write_keypair_into_directory(tmp_path: Path) -> None:
    private_path, public_path = write_keypair(tmp_path)
    assert private_path == tmp_path / "issuer.key"
    assert public_path == tmp_path / "issuer.pub"


def test_write_keypair_uses_given_private_key(
    tmp_path: Path, issuer_key: Ed25519PrivateKey
) -> None:
    pem = issuer_key.private_bytes(_PEM, _PKCS8, _PLAIN)
    private_path, public_path = write_keypair(tmp_path / "k", pem)
    assert private_path.read_bytes() == pem
    assert key_id(load_public_key(public_path)) == key_id(issuer_key.public_key())


@pytest.mark.parametrize("existing", ["k.key", "k.pub"])
def test_write_keypair_refuses_overwrite(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_bytes(b"keep me")
    with pytest.raises(InputError) as info:
        write_keypair(tmp_path / "k")
    assert info.value.code == "E_FILE_EXISTS"
    assert existing in str(info.value)
    assert (tmp_path / existing).read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == [existing]


def test_write_keypair_force_overwrites(tmp_path: Path) -> None:
    first, _ = write_keypair(tmp_path / "k")
    old = first.read_bytes()
    second, _ = write_keypair(tmp_path / "k", force=True)
    assert second.read_bytes() != old
    assert stat.S_IMODE(second.stat().st_mode) == 0o600


def test_write_keypair_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileMissing):
        write_keypair(tmp_path / "absent" / "k")


def test_write_keypair_rejects_non_ed25519_private_pem(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(KeyInvalid):
        write_keypair(tmp_path / "k", rsa_key.private_bytes(_PEM, _PKCS8, _PLAIN))
    assert list(tmp_path.iterdir()) == []


# --- loading public keys ---------------------------------------------------------


def test_load_public_key_formats_agree(tmp_path: Path, issuer_key: Ed25519PrivateKey) -> None:
    raw = raw_public(issuer_key)
    files = [
        write(tmp_path / "pem.pub", issuer_key.public_key().public_bytes(_PEM, _SPKI)),
        write(tmp_path / "raw.pub", raw),
        write(tmp_path / "hex.pub", raw.hex().encode() + b"\n"),
        write(tmp_path / "HEX.pub", b"  " + raw.hex().upper().encode() + b"\r\n"),
    ]
    expected = key_id(issuer_key.public_key())
    assert [key_id(load_public_key(path)) for path in files] == [expected] * 4


@pytest.mark.parametrize("size", [31, 33, 0, 64])
def test_raw_key_of_wrong_length_rejected(tmp_path: Path, size: int) -> None:
    path = write(tmp_path / "raw.pub", bytes([0x80 + i % 100 for i in range(size)]))
    error = key_error(load_public_key, path)
    assert f"is {size} bytes" in str(error)


def test_raw_key_with_trailing_newline_rejected(
    tmp_path: Path, issuer_key: Ed25519PrivateKey
) -> None:
    path = write(tmp_path / "raw.pub", raw_public(issuer_key) + b"\n")
    assert "is 33 bytes" in str(key_error(load_public_key, path))


@pytest.mark.parametrize("digits", [32, 62, 66, 128])
def test_hex_key_of_wrong_length_rejected(tmp_path: Path, digits: int) -> None:
    path = write(tmp_path / "hex.pub", b"a" * digits)
    assert f"{digits} hex digits" in str(key_error(load_public_key, path))


def test_x25519_key_rejected_as_public_key(tmp_path: Path) -> None:
    """R-SIG-5: a key given with --key or trusted_keys must be an Ed25519 public key."""
    public = x25519.X25519PrivateKey.generate().public_key().public_bytes(_PEM, _SPKI)
    error = key_error(load_public_key, write(tmp_path / "x.pub", public))
    assert "X25519" in str(error)
    assert "Ed25519" in error.hint


def test_private_key_rejected_as_public_key(tmp_path: Path, issuer_key: Ed25519PrivateKey) -> None:
    path = write(tmp_path / "issuer.key", issuer_key.private_bytes(_PEM, _PKCS8, _PLAIN))
    error = key_error(load_public_key, path)
    assert "this is a private key; pass the public key" in str(error)
    # A private key where a public one belongs may have been published with it.
    assert "treat the private key as leaked" in error.hint


def test_rsa_and_ec_public_keys_rejected(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """R-SIG-5: RSA and EC keys given with --key or trusted_keys are E_KEY_INVALID."""
    rsa_path = write(tmp_path / "rsa.pub", rsa_key.public_key().public_bytes(_PEM, _SPKI))
    assert "RSA" in str(key_error(load_public_key, rsa_path))
    ec_public = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(_PEM, _SPKI)
    ec_path = write(tmp_path / "ec.pub", ec_public)
    assert "EC" in str(key_error(load_public_key, ec_path))


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"hello, I am not a key\n", "is 22 bytes"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "block is invalid"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "CERTIFICATE"),
        (b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA user@host\n", "OpenSSH"),
    ],
    ids=["text", "bad-pem-body", "certificate", "openssh"],
)
def test_garbage_public_key_rejected(tmp_path: Path, content: bytes, fragment: str) -> None:
    assert fragment in str(key_error(load_public_key, write(tmp_path / "k.pub", content)))


def test_garbage_public_key_has_a_hint(tmp_path: Path) -> None:
    error = key_error(load_public_key, write(tmp_path / "k.pub", b"garbage\n"))
    assert "mbd-cert keygen" in error.hint


def test_damaged_pem_keys_have_a_hint(tmp_path: Path, issuer_key: Ed25519PrivateKey) -> None:
    public = issuer_key.public_key().public_bytes(_PEM, _SPKI).decode().splitlines()
    cut = "\n".join([public[0], public[1][:20], public[-1]]) + "\n"
    error = key_error(load_public_key, write(tmp_path / "k.pub", cut.encode()))
    assert "block is invalid" in str(error)
    assert "copy the issuer's .pub file again" in error.hint
    private = issuer_key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()).decode().splitlines()
    cut = "\n".join([private[0], private[1][:20], private[-1]]) + "\n"
    error = key_error(signing.load_private_key, write(tmp_path / "k.key", cut.encode()))
    assert "block is invalid" in str(error)
    assert "mbd-cert keygen" in error.hint


def test_two_pem_blocks_rejected(tmp_path: Path, issuer_key: Ed25519PrivateKey) -> None:
    pem = issuer_key.public_key().public_bytes(_PEM, _SPKI)
    path = write(tmp_path / "two.pub", pem + pem)
    assert "2 PEM blocks" in str(key_error(load_public_key, path))


def test_public_key_file_missing(tmp_path: Path) -> None:
    with pytest.raises(FileMissing):
        load_public_key(tmp_path / "absent.pub")


def test_public_key_directory_rejected(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_public_key(tmp_path)
    assert info.value.code == "E_FILE_NOT_REGULAR"


def test_public_key_file_too_large(tmp_path: Path) -> None:
    path = write(tmp_path / "big.pub", b"a" * (signing.MAX_KEY_FILE_BYTES + 1))
    with pytest.raises(LimitExceeded):
        load_public_key(path)


# --- trust directories ------------------------------------------------------------


def _x25519_public_pem() -> bytes:
    return x25519.X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def raw_public_of(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_trust_directory_skips_other_algorithms(
    tmp_path: Path, issuer_key: Ed25519PrivateKey, rsa_key: rsa.RSAPrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """R-SIG-5: keys of other algorithms in a trust directory are skipped with a warning each."""
    write(tmp_path / "issuer.pub", raw_public(issuer_key).hex().encode())
    write(tmp_path / "auditor.pub", _x25519_public_pem())
    write(tmp_path / "rsa.pem", rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    write(tmp_path / "notes.txt", b"not a key file, and not read")
    with caplog.at_level(logging.WARNING, logger="mbd_cert.signing"):
        keys = signing.load_trust_directory(tmp_path)
    assert [raw_public_of(key) for key in keys] == [raw_public(issuer_key)]
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "auditor.pub" in messages[0]
    assert "type X25519" in messages[0]
    assert "rsa.pem" in messages[1]
    assert "type RSA" in messages[1]


def test_trust_directory_skips_ssh_ed25519_key(
    tmp_path: Path, issuer_key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture,
) -> None:
    # An SSH identity beside the issuer key, as in a copied ~/.ssh directory.
    ssh_line = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    write(tmp_path / "id_ed25519.pub", ssh_line + b" user@host\n")
    write(tmp_path / "issuer.pub", raw_public(issuer_key).hex().encode())
    with caplog.at_level(logging.WARNING, logger="mbd_cert.signing"):
        keys = signing.load_trust_directory(tmp_path)
    assert [raw_public_of(key) for key in keys] == [raw_public(issuer_key)]
    assert "OpenSSH Ed25519" in caplog.text
    with pytest.raises(KeyInvalid):
        load_public_key(tmp_path / "id_ed25519.pub")


def test_trust_directory_of_other_algorithms_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """R-SIG-5: a trust directory whose key files were all skipped is E_KEY_INVALID."""
    for index in range(13):
        write(tmp_path / f"auditor{index:02d}.pub", _x25519_public_pem())
    with caplog.at_level(logging.WARNING, logger="mbd_cert.signing"), \
            pytest.raises(KeyInvalid) as info:
        signing.load_trust_directory(tmp_path)
    assert "contains no Ed25519 public key" in info.value.message
    assert "'auditor00.pub' (X25519)" in info.value.message
    assert "and 3 more" in info.value.message
    # Ten files are named one by one, then one line counts the rest.
    assert len(caplog.records) == 11
    assert "3 more" in caplog.records[-1].getMessage()


def test_trust_directory_empty_gives_no_keys(tmp_path: Path) -> None:
    assert signing.load_trust_directory(tmp_path) == []


def test_trust_directory_missing(tmp_path: Path) -> None:
    with pytest.raises(FileMissing):
        signing.load_trust_directory(tmp_path / "absent")


@pytest.mark.parametrize("content", [b"garbage", b""], ids=["garbage", "empty"])
def test_trust_directory_unparsable_file_stops(
    tmp_path: Path, issuer_key: Ed25519PrivateKey, content: bytes,
) -> None:
    """R-SIG-5: an unparsable file in a trust directory is E_KEY_INVALID naming it."""
    write(tmp_path / "issuer.pub", raw_public(issuer_key))
    key_error(lambda _: signing.load_trust_directory(tmp_path), write(tmp_path / "x.pem", content))


@pytest.mark.parametrize("kind", ["ed25519", "x25519"])
def test_trust_directory_private_key_stops(
    tmp_path: Path, issuer_key: Ed25519PrivateKey, kind: str,
) -> None:
    """R-SIG-5: a private key in a trust directory stops verification and is never skipped."""
    write(tmp_path / "issuer.pub", raw_public(issuer_key))
    private = issuer_key if kind == "ed25519" else x25519.X25519PrivateKey.generate()
    path = write(tmp_path / "leaked.pem", private.private_bytes(_PEM, _PKCS8, _PLAIN))
    error = key_error(lambda _: signing.load_trust_directory(tmp_path), path)
    assert "private key" in str(error)


# --- loading private keys ---------------------------------------------------------


def test_load_private_key_pem(tmp_path: Path, issuer_key: Ed25519PrivateKey) -> None:
    path = write(tmp_path / "k.key", issuer_key.private_bytes(_PEM, _PKCS8, _PLAIN))
    path.chmod(0o600)
    assert raw_public(load_private_key(path)) == raw_public(issuer_key)


def test_public_key_rejected_as_private_key(tmp_path: Path, issuer_key: Ed25519PrivateKey) -> None:
    path = write(tmp_path / "k.pub", issuer_key.public_key().public_bytes(_PEM, _SPKI))
    error = key_error(load_private_key, path)
    assert "this is a public key; pass the private key" in str(error)
    assert ".key" in error.hint


def test_encrypted_private_key_rejected(tmp_path: Path, issuer_key: Ed25519PrivateKey) -> None:
    encryption = serialization.BestAvailableEncryption(b"secret")
    path = write(tmp_path / "k.key", issuer_key.private_bytes(_PEM, _PKCS8, encryption))
    assert "encrypted" in str(key_error(load_private_key, path))


def test_raw_private_key_rejected(tmp_path: Path) -> None:
    path = write(tmp_path / "k.key", bytes(range(32)))
    assert "raw and hex private keys" in str(key_error(load_private_key, path))


def test_wrong_kind_private_keys_rejected(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    traditional = serialization.PrivateFormat.TraditionalOpenSSL
    rsa_path = write(tmp_path / "rsa.key", rsa_key.private_bytes(_PEM, traditional, _PLAIN))
    assert "RSA" in str(key_error(load_private_key, rsa_path))
    x_key = x25519.X25519PrivateKey.generate().private_bytes(_PEM, _PKCS8, _PLAIN)
    assert "X25519" in str(key_error(load_private_key, write(tmp_path / "x.key", x_key)))


def test_key_kind_dsa_without_warning(rsa_key: rsa.RSAPrivateKey) -> None:
    # cryptography 51 warns on every lookup of its DSA classes, so key_kind names a
    # DSA key by its class name and must not touch them for other keys either.
    import warnings

    from mbd_cert._ed25519_keys import key_kind

    class DSAPublicKey:  # a fake with the name of cryptography's DSA key class
        pass

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert key_kind(DSAPublicKey()) == "DSA"
        assert key_kind(rsa_key) == "RSA"
        assert key_kind(x25519.X25519PrivateKey.generate()) == "X25519"


def test_openssh_private_key_rejected(tmp_path: Path, issuer_key: Ed25519PrivateKey) -> None:
    openssh = issuer_key.private_bytes(_PEM, serialization.PrivateFormat.OpenSSH, _PLAIN)
    assert "OPENSSH" in str(key_error(load_private_key, write(tmp_path / "id", openssh)))


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_readable_private_key_logs_warning(
    tmp_path: Path, issuer_key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "k.key", issuer_key.private_bytes(_PEM, _PKCS8, _PLAIN))
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="mbd_cert.signing"):
        load_private_key(path)
    assert "chmod 600" in caplog.text
    assert "PRIVATE KEY" not in caplog.text


# --- key ids ----------------------------------------------------------------------


def test_key_id_is_sha256_of_raw_key(issuer_key: Ed25519PrivateKey) -> None:
    expected = "sha256:" + hashlib.sha256(raw_public(issuer_key)).hexdigest()
    assert key_id(issuer_key.public_key()) == expected
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", expected)


def test_key_id_differs_between_keys(
    issuer_key: Ed25519PrivateKey, other_key: Ed25519PrivateKey
) -> None:
    assert key_id(issuer_key.public_key()) != key_id(other_key.public_key())


def test_key_id_rejects_other_key_types(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(KeyInvalid):
        key_id(rsa_key.public_key())  # type: ignore[arg-type]


# --- signatures -------------------------------------------------------------------


def test_signature_text_is_padded_standard_base64(issuer_key: Ed25519PrivateKey) -> None:
    text = sign(issuer_key, MESSAGE)
    assert re.fullmatch(r"[A-Za-z0-9+/]{86}==", text)
    issuer_key.public_key().verify(base64.b64decode(text), MESSAGE)


def test_sign_and_verify(issuer_key: Ed25519PrivateKey, other_key: Ed25519PrivateKey) -> None:
    keys = [other_key.public_key(), issuer_key.public_key()]
    verify_signature(keys, key_id(issuer_key.public_key()), MESSAGE, sign(issuer_key, MESSAGE))


def verify_as_issuer(issuer_key: Ed25519PrivateKey, message: bytes, signature: str) -> None:
    public_key = issuer_key.public_key()
    verify_signature([public_key], key_id(public_key), message, signature)


def test_changed_message_rejected(issuer_key: Ed25519PrivateKey) -> None:
    signature = sign(issuer_key, MESSAGE)
    with pytest.raises(SignatureInvalid) as info:
        verify_as_issuer(issuer_key, MESSAGE.replace(b"1.0", b"1.1"), signature)
    assert info.value.code == "E_SIGNATURE_INVALID"
    # The message reports that verification failed, never where the bytes differ.
    assert signature not in str(info.value)
    assert "1.1" not in str(info.value)


@pytest.mark.parametrize("index", [0, 31, 32, 63])
def test_flipped_signature_byte_rejected(issuer_key: Ed25519PrivateKey, index: int) -> None:
    raw = bytearray(issuer_key.sign(MESSAGE))
    raw[index] ^= 0x01
    with pytest.raises(SignatureInvalid) as info:
        verify_as_issuer(issuer_key, MESSAGE, base64.b64encode(bytes(raw)).decode())
    assert info.value.code == "E_SIGNATURE_INVALID"


def _with_s_plus_order(signature: bytes) -> bytes:
    s_value = int.from_bytes(signature[32:], "little")
    return signature[:32] + (s_value + ED25519_GROUP_ORDER).to_bytes(32, "little")


def test_group_order_constant() -> None:
    assert ED25519_GROUP_ORDER == 2**252 + 27742317777372353535851937790883648493


def test_openssl_rejects_s_plus_group_order(issuer_key: Ed25519PrivateKey) -> None:
    # The backend itself enforces S < L; the explicit check in signing repeats it.
    malleated = _with_s_plus_order(issuer_key.sign(MESSAGE))
    with pytest.raises(InvalidSignature):
        issuer_key.public_key().verify(malleated, MESSAGE)


def test_s_plus_group_order_rejected(issuer_key: Ed25519PrivateKey) -> None:
    malleated = _with_s_plus_order(issuer_key.sign(MESSAGE))
    with pytest.raises(SignatureInvalid) as info:
        verify_as_issuer(issuer_key, MESSAGE, base64.b64encode(malleated).decode())
    assert info.value.code == "E_SIGNATURE_INVALID"


@pytest.mark.parametrize("size", [0, 32, 63, 65, 128])
def test_signature_of_wrong_length_rejected(issuer_key: Ed25519PrivateKey, size: int) -> None:
    text = base64.b64encode((issuer_key.sign(MESSAGE) * 2)[:size]).decode()
    with pytest.raises(SignatureInvalid) as info:
        verify_as_issuer(issuer_key, MESSAGE, text)
    assert info.value.code == "E_SIGNATURE_MALFORMED"


def _signature_with_both_alphabet_extras(private_key: Ed25519PrivateKey) -> tuple[bytes, str]:
    for counter in range(1000):
        message = MESSAGE + str(counter).encode()
        text = sign(private_key, message)
        if "+" in text or "/" in text:
            return message, text
    raise AssertionError("no signature used + or /")


def test_other_base64_spellings_rejected(issuer_key: Ed25519PrivateKey) -> None:
    message, text = _signature_with_both_alphabet_extras(issuer_key)
    variants = {
        "unpadded": text.rstrip("="),
        "urlsafe": text.replace("+", "-").replace("/", "_"),
        "urlsafe-unpadded": text.replace("+", "-").replace("/", "_").rstrip("="),
        "trailing-newline": text + "\n",
        "leading-space": " " + text,
        "line-break": text[:40] + "\n" + text[40:],
        "extra-padding": text + "=",
    }
    for name, variant in variants.items():
        with pytest.raises(SignatureInvalid) as info:
            verify_as_issuer(issuer_key, message, variant)
        assert info.value.code == "E_SIGNATURE_MALFORMED", name


def test_non_canonical_trailing_bits_rejected(issuer_key: Ed25519PrivateKey) -> None:
    text = sign(issuer_key, MESSAGE)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(text[85])
    assert last % 16 == 0  # only the top two bits of the last data character carry data
    altered = text[:85] + alphabet[last + 1] + "=="
    assert base64.b64decode(altered) == base64.b64decode(text)
    with pytest.raises(SignatureInvalid) as info:
        verify_as_issuer(issuer_key, MESSAGE, altered)
    assert info.value.code == "E_SIGNATURE_MALFORMED"


@pytest.mark.parametrize("value", [None, 12, b"bytes"])
def test_non_string_signature_rejected(issuer_key: Ed25519PrivateKey, value: object) -> None:
    with pytest.raises(SignatureInvalid) as info:
        verify_as_issuer(issuer_key, MESSAGE, value)  # type: ignore[arg-type]
    assert info.value.code == "E_SIGNATURE_MALFORMED"


# --- trust -----------------------------------------------------------------------


def test_key_not_supplied_is_untrusted(
    issuer_key: Ed25519PrivateKey, other_key: Ed25519PrivateKey
) -> None:
    # A forger signs with their own key and names it: the signature is valid under that
    # key, but the user never supplied it.
    forged = sign(other_key, MESSAGE)
    with pytest.raises(UntrustedKey) as info:
        verify_signature([issuer_key.public_key()], key_id(other_key.public_key()), MESSAGE, forged)
    assert info.value.code == "E_KEY_UNTRUSTED"
    assert key_id(other_key.public_key()) in str(info.value)
    # The fix differs between verify and verify-repo, so the hint names both.
    assert "--key" in info.value.hint
    assert "trusted_keys" in info.value.hint


def test_no_trusted_keys_is_untrusted(issuer_key: Ed25519PrivateKey) -> None:
    with pytest.raises(UntrustedKey):
        verify_signature([], key_id(issuer_key.public_key()), MESSAGE, sign(issuer_key, MESSAGE))


def test_untrusted_key_checked_before_signature_text(issuer_key: Ed25519PrivateKey) -> None:
    with pytest.raises(UntrustedKey):
        verify_signature([], key_id(issuer_key.public_key()), MESSAGE, "not base64")


@pytest.mark.parametrize(
    "value",
    [
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "sha512:" + "a" * 64,
        "a" * 64,
        "",
        7,
        "sha256:" + "a" * 64 + "\n",
    ],
)
def test_malformed_key_id_rejected(issuer_key: Ed25519PrivateKey, value: object) -> None:
    with pytest.raises(MalformedCertificate) as info:
        verify_signature(
            [issuer_key.public_key()],
            value,  # type: ignore[arg-type]
            MESSAGE,
            sign(issuer_key, MESSAGE),
        )
    assert info.value.code == "E_KEY_ID_MALFORMED"


def test_non_ed25519_trusted_key_rejected(
    issuer_key: Ed25519PrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    with pytest.raises(KeyInvalid):
        verify_signature(
            [rsa_key.public_key()],  # type: ignore[list-item]
            key_id(issuer_key.public_key()),
            MESSAGE,
            sign(issuer_key, MESSAGE),
        )
