"""Parsing of Ed25519 key bytes: public keys as PEM, hex or raw, private keys as PEM.

Each parser raises :class:`~mbd_cert.errors.KeyInvalid` with a hint for the wrong kind
of key (RSA, EC, X25519, a private key where a public key is expected, or the reverse),
so the user learns which file to pass instead.

Stability: internal; :mod:`mbd_cert.signing` reads the key files and calls these parsers.
"""

from __future__ import annotations

import re
from typing import NoReturn

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from mbd_cert.errors import KeyInvalid

PUBLIC_KEY_BYTES = 32

_PEM_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_HEX_TEXT = re.compile(rb"[0-9A-Fa-f]+\Z")


def key_kind(key: object) -> str:
    """Return the algorithm name of a key, such as ``"RSA"`` or ``"X25519"``, for messages."""
    kinds: list[tuple[tuple[type, ...], str]] = [
        ((rsa.RSAPublicKey, rsa.RSAPrivateKey), "RSA"),
        ((ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey), "EC"),
        ((x25519.X25519PublicKey, x25519.X25519PrivateKey), "X25519"),
        ((x448.X448PublicKey, x448.X448PrivateKey), "X448"),
        ((ed448.Ed448PublicKey, ed448.Ed448PrivateKey), "Ed448"),
        ((Ed25519PublicKey, Ed25519PrivateKey), "Ed25519"),
    ]
    for classes, name in kinds:
        if isinstance(key, classes):
            return name
    # cryptography 51 deprecates DSA and warns when its key classes are looked up, so a
    # DSA key is named by its class name instead (DSAPublicKey, DSAPrivateKey).
    if type(key).__name__.lstrip("_").startswith("DSA"):
        return "DSA"
    return type(key).__name__


def _bad_key(source: str, problem: str, hint: str = "") -> NoReturn:
    raise KeyInvalid(f"{source}: {problem}", hint=hint)


def _reject_wrong_kind(source: str, key: object) -> NoReturn:
    kind = key_kind(key)
    if kind == "X25519":
        hint = "X25519 keys seal audit bundles; pass the issuer's Ed25519 signing key"
    else:
        hint = "pass an Ed25519 key, such as one written by mbd-cert keygen"
    _bad_key(source, f"contains a key of type {kind}; expected Ed25519", hint=hint)


def _single_pem_label(data: bytes, source: str) -> bytes | None:
    """Return the label of the file's PEM block, or ``None`` when it is not PEM."""
    if not data.lstrip().startswith(b"-----BEGIN "):
        return None
    labels = _PEM_BEGIN.findall(data)
    if len(labels) != 1:
        _bad_key(source, f"contains {len(labels)} PEM blocks; expected exactly one key")
    label: bytes = labels[0]
    return label


def parse_public_key(data: bytes, source: str) -> Ed25519PublicKey:
    """Parse an Ed25519 public key from one PEM block, 64 hex digits or 32 raw bytes.

    ``source`` names the key file in messages. Raises :class:`KeyInvalid` otherwise.
    """
    label = _single_pem_label(data, source)
    if label is not None:
        if label.endswith(b"PRIVATE KEY"):
            _bad_key(
                source,
                "this is a private key; pass the public key",
                hint="the public key is the .pub file written next to the private key. If "
                "this file was committed or shared, treat the private key as leaked: make a "
                "new key pair with 'mbd-cert keygen' and reissue with it",
            )
        if label != b"PUBLIC KEY":
            _bad_key(source, f"contains a PEM block of type {label.decode()}; expected PUBLIC KEY")
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyInvalid(
                f"{source}: the PUBLIC KEY block is invalid",
                hint="the file is damaged or truncated: copy the issuer's .pub file again",
            ) from exc
        if not isinstance(key, Ed25519PublicKey):
            _reject_wrong_kind(source, key)
        return key

    stripped = data.strip()
    if stripped.startswith(b"ssh-"):
        _bad_key(
            source,
            "OpenSSH public keys are not supported",
            hint="pass a PEM, 64-hex-digit or 32-byte raw Ed25519 public key",
        )
    if stripped and _HEX_TEXT.match(stripped):
        if len(stripped) != 2 * PUBLIC_KEY_BYTES:
            _bad_key(
                source,
                f"contains {len(stripped)} hex digits; a hex Ed25519 public key has "
                f"{2 * PUBLIC_KEY_BYTES}",
            )
        raw = bytes.fromhex(stripped.decode("ascii"))
    elif len(data) == PUBLIC_KEY_BYTES:
        raw = data
    else:
        _bad_key(
            source,
            f"is {len(data)} bytes, which is not a PEM, {2 * PUBLIC_KEY_BYTES}-hex-digit or "
            f"{PUBLIC_KEY_BYTES}-byte raw Ed25519 public key",
            hint="replace it with the issuer's .pub file as 'mbd-cert keygen' wrote it",
        )
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise KeyInvalid(f"{source}: is not a valid Ed25519 public key") from exc



def foreign_public_key_kind(data: bytes) -> str | None:
    """Return the algorithm of a public key of another kind than Ed25519, else ``None``.

    Recognises one PEM ``PUBLIC KEY`` or ``RSA PUBLIC KEY`` block and one OpenSSH
    public key line. An OpenSSH line counts as foreign even for an Ed25519 key: mbd-cert
    never writes issuer keys in that format, so such a file is someone's SSH identity.
    ``None`` means the bytes are an Ed25519 key, a private key, or no key that this
    function can parse: :func:`parse_public_key` then accepts them or raises its usual
    error.
    """
    stripped = data.strip()
    try:
        if stripped.startswith(b"-----BEGIN ") and len(_PEM_BEGIN.findall(data)) == 1:
            key: object = serialization.load_pem_public_key(data)
        elif stripped.startswith((b"ssh-", b"ecdsa-")) and b"\n" not in stripped:
            key = serialization.load_ssh_public_key(stripped)
            if isinstance(key, Ed25519PublicKey):
                return "OpenSSH Ed25519"
        else:
            return None
    except (ValueError, UnsupportedAlgorithm):
        return None
    return None if isinstance(key, Ed25519PublicKey) else key_kind(key)


def parse_private_key(data: bytes, source: str) -> Ed25519PrivateKey:
    """Parse an Ed25519 private key from one unencrypted PKCS#8 PEM block.

    ``source`` names the key file in messages. Raises :class:`KeyInvalid` otherwise.
    """
    label = _single_pem_label(data, source)
    if label is None:
        # Raw 32-byte and hex private keys look exactly like public keys, and reading
        # a public key as a private key would silently sign with an unrelated key.
        _bad_key(
            source,
            "is not a PEM private key; raw and hex private keys are not accepted",
            hint="pass the unencrypted PKCS#8 PEM file written by mbd-cert keygen",
        )
    if label == b"PUBLIC KEY":
        _bad_key(source, "this is a public key; pass the private key",
                 hint="mbd-cert keygen --out PREFIX writes the private key to PREFIX.key "
                 "and the public key to PREFIX.pub; sign with the .key file")
    if label == b"ENCRYPTED PRIVATE KEY":
        _bad_key(
            source,
            "the private key is encrypted; mbd-cert reads unencrypted PKCS#8 keys",
            hint="decrypt it with 'openssl pkcs8 -in FILE -out NEW' and keep NEW at mode 600",
        )
    if not label.endswith(b"PRIVATE KEY") or label == b"OPENSSH PRIVATE KEY":
        _bad_key(source, f"contains a PEM block of type {label.decode()}; expected PRIVATE KEY")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyInvalid(
            f"{source}: the private key block is invalid",
            hint="the file is damaged or truncated: restore it from your backup, or make "
            "a new key pair with 'mbd-cert keygen'",
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        _reject_wrong_kind(source, key)
    return key
