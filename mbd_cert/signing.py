"""Ed25519 keys and signatures for certificates.

Stability: public. The signature text form and the key id are part of the certificate
format.

Trust model: the verifier trusts only the public keys that the user supplies, for
example with ``--key`` or a trust directory. A certificate names its issuer key by key
id alone. :func:`verify_signature` takes no key from the certificate, so a public key
embedded in a certificate is never used, even when the certificate claims to be
signed by it.

Signature text: standard base64 with padding (RFC 4648, section 4), which is exactly 88
characters ending in ``==`` for a 64-byte Ed25519 signature (SPEC.md R-SIG-4). The
base64url alphabet, missing padding, whitespace and encodings with non-zero unused bits
are rejected, so every signature has exactly one text form.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from mbd_cert._ed25519_keys import PUBLIC_KEY_BYTES as PUBLIC_KEY_BYTES  # re-exported
from mbd_cert._ed25519_keys import (
    foreign_public_key_kind,
    key_kind,
    parse_private_key,
    parse_public_key,
)
from mbd_cert._paths import atomic_output, key_pair_paths
from mbd_cert._read_capped import read_bytes_capped
from mbd_cert.errors import (
    FileMissing,
    KeyInvalid,
    MalformedCertificate,
    SignatureInvalid,
    UntrustedKey,
)

__all__ = [
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "load_trust_directory",
    "sign",
    "verify_signature",
    "write_keypair",
]

logger = logging.getLogger(__name__)

SIGNATURE_BYTES = 64
SIGNATURE_TEXT_LENGTH = 88  # 4 * ceil(64 / 3) base64 characters, padding included
KEY_ID_PREFIX = "sha256:"
# A PEM Ed25519 key is under 200 bytes. 64 KiB still admits large RSA keys, so that
# they are reported as the wrong key type rather than as an oversized file.
MAX_KEY_FILE_BYTES = 64 * 1024
# Skipped trust-directory files logged one by one; the rest are counted in one line.
_MAX_SKIPPED_KEY_WARNINGS = 10
PRIVATE_KEY_FILE_MODE = 0o600
# Hints for a key path that does not exist: the files 'mbd-cert keygen' writes.
PUBLIC_KEY_MISSING_HINT = ("pass the issuer's public key, the PREFIX.pub file that "
                           "'mbd-cert keygen --out PREFIX' wrote; 'mbd-cert key-id FILE' "
                           "prints its id to compare with the issuer's")
PRIVATE_KEY_MISSING_HINT = ("pass the issuer's private key, the PREFIX.key file that "
                            "'mbd-cert keygen --out PREFIX' wrote")
PUBLIC_KEY_FILE_MODE = 0o644
DEFAULT_KEY_NAME = "issuer"

# Order L of the Ed25519 base point (RFC 8032, section 5.1). A signature's S half must
# be below L, or S + L would give a second valid encoding of the same signature.
ED25519_GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493

_SIGNATURE_TEXT = re.compile(r"[A-Za-z0-9+/]{86}==\Z")
_KEY_ID = re.compile(r"sha256:[0-9a-f]{64}\Z")


def generate_keypair() -> tuple[bytes, bytes]:
    """Generate an Ed25519 key pair.

    Returns:
        ``(private_pem, public_pem)``: the private key as unencrypted PKCS#8 PEM and
        the public key as SubjectPublicKeyInfo PEM.
    """
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return private_pem, _public_pem(private_key.public_key())


def _public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_key_file(path: Path, data: bytes, mode: int, *, force: bool) -> None:
    with atomic_output(path, overwrite=force) as output:
        # The mode is set before any key byte is written, so the private key is never
        # readable by others, even for a moment.
        os.chmod(output.temp_path, mode)
        output.file.write(data)


def write_keypair(
    dir_or_prefix: str | os.PathLike[str],
    private_pem: bytes | None = None,
    *,
    force: bool = False,
) -> tuple[Path, Path]:
    """Write an Ed25519 key pair as ``PREFIX.key`` (mode 0o600) and ``PREFIX.pub``.

    The public key is derived from the private key, so the two files always match.
    Each file is written to a temporary file in the same directory and then renamed,
    so a reader never sees a partly written key.

    Args:
        dir_or_prefix: An existing directory, which gets ``issuer.key`` and
            ``issuer.pub``, or a path prefix such as ``keys/acme``.
        private_pem: Unencrypted PKCS#8 PEM of an Ed25519 private key, or ``None`` to
            generate a new key.
        force: Overwrite existing files.

    Returns:
        ``(private_key_path, public_key_path)``.

    Raises:
        InputError: A target file exists and ``force`` is false (``E_FILE_EXISTS``),
            or writing failed (``E_FILE_UNWRITABLE``).
        FileMissing: The directory of the prefix does not exist.
        KeyInvalid: ``private_pem`` is not an unencrypted Ed25519 PKCS#8 PEM key.
    """
    if private_pem is None:
        private_pem, public_pem = generate_keypair()
    else:
        private_key = parse_private_key(private_pem, "private_pem argument")
        public_pem = _public_pem(private_key.public_key())

    private_path, public_path = key_pair_paths(dir_or_prefix, DEFAULT_KEY_NAME, force=force)
    _write_key_file(private_path, private_pem, PRIVATE_KEY_FILE_MODE, force=force)
    _write_key_file(public_path, public_pem, PUBLIC_KEY_FILE_MODE, force=force)
    return private_path, public_path


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load an Ed25519 public key that the user trusts.

    Accepted file contents: a SubjectPublicKeyInfo PEM block, 64 hex digits (either
    case, surrounding whitespace allowed), or exactly 32 raw bytes.

    Args:
        path: The key file.

    Returns:
        The public key.

    Raises:
        KeyInvalid: The file is not an Ed25519 public key, for example a raw key of 31
            or 33 bytes, an X25519, RSA or EC key, or a private key.
        FileMissing: The file does not exist.
        LimitExceeded: The file is larger than ``MAX_KEY_FILE_BYTES``.
        InputError: The path is not a readable regular file.
    """
    source = f"public key file {os.fspath(path)!r}"
    data = read_bytes_capped(path, what="public key file", max_bytes=MAX_KEY_FILE_BYTES,
                             missing_hint=PUBLIC_KEY_MISSING_HINT)
    return parse_public_key(data, source)


def load_trust_directory(directory: str | os.PathLike[str]) -> list[Ed25519PublicKey]:
    """Load the issuer keys of a trust directory: its ``*.pem`` and ``*.pub`` files.

    Other files, subdirectories and links that lead to no regular file are ignored.
    A file that contains a public key of another algorithm, such as the X25519 auditor
    key that ``mbd-cert keygen --kind x25519`` writes as ``.pub``, is skipped with a
    warning naming it (SPEC.md, R-SIG-5). Every other key file must be an Ed25519
    public key.

    Args:
        directory: The trust directory.

    Returns:
        The Ed25519 public keys, in file name order; empty when the directory has no
        key file.

    Raises:
        FileMissing: The directory does not exist.
        KeyInvalid: A key file is unparsable or a private key, or every key file was
            skipped, so the directory contains no Ed25519 public key.
        LimitExceeded: A key file is larger than ``MAX_KEY_FILE_BYTES``.
        InputError: A key file is not readable.
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileMissing(f"trust directory not found: {os.fspath(directory)!r}",
                          hint="pass a directory of issuer public keys to --trust-dir")
    keys: list[Ed25519PublicKey] = []
    skipped: list[str] = []
    for path in sorted(root.iterdir()):
        if path.suffix not in (".pem", ".pub") or not path.is_file():
            continue
        data = read_bytes_capped(path, what="public key file", max_bytes=MAX_KEY_FILE_BYTES)
        kind = foreign_public_key_kind(data)
        if kind is None:
            keys.append(parse_public_key(data, f"public key file {os.fspath(path)!r}"))
            continue
        skipped.append(f"{path.name!r} ({kind})")
        if len(skipped) <= _MAX_SKIPPED_KEY_WARNINGS:
            logger.warning("trust directory: skipped %r: it contains a public key of type %s, "
                           "not an Ed25519 issuer key", os.fspath(path), kind)
    if len(skipped) > _MAX_SKIPPED_KEY_WARNINGS:
        logger.warning("trust directory: skipped %d more public keys of other algorithms",
                       len(skipped) - _MAX_SKIPPED_KEY_WARNINGS)
    if skipped and not keys:
        listed = ", ".join(skipped[:_MAX_SKIPPED_KEY_WARNINGS])
        more = len(skipped) - _MAX_SKIPPED_KEY_WARNINGS
        raise KeyInvalid(
            f"trust directory {os.fspath(directory)!r} contains no Ed25519 public key; "
            f"skipped {listed}" + (f" and {more} more" if more > 0 else ""),
            hint="add the issuer's Ed25519 public key (the .pub file of 'mbd-cert keygen "
            "--kind ed25519') to the directory, or pass it with --key",
        )
    return keys


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from an unencrypted PKCS#8 PEM file.

    Logs a warning when the file is readable by group or others.

    Args:
        path: The key file.

    Returns:
        The private key.

    Raises:
        KeyInvalid: The file is not an unencrypted Ed25519 PKCS#8 PEM private key.
        FileMissing: The file does not exist.
        LimitExceeded: The file is larger than ``MAX_KEY_FILE_BYTES``.
        InputError: The path is not a readable regular file.
    """
    source = f"private key file {os.fspath(path)!r}"
    data = read_bytes_capped(path, what="private key file", max_bytes=MAX_KEY_FILE_BYTES,
                             missing_hint=PRIVATE_KEY_MISSING_HINT)
    key = parse_private_key(data, source)
    # Warn only once the file is known to hold a private key: the advice would be
    # wrong for a public key passed by mistake, which the parser rejects above.
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if os.name == "posix" and mode & 0o077:
        logger.warning("%s has mode %03o; run chmod 600 on it", source, mode)
    return key


def _compute_key_id(public_key: Ed25519PublicKey) -> str:
    if not isinstance(public_key, Ed25519PublicKey):
        raise KeyInvalid(f"expected an Ed25519 public key, got {key_kind(public_key)}")
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_ID_PREFIX + hashlib.sha256(raw).hexdigest()


def key_id(public_key: Ed25519PublicKey) -> str:
    """Compute the key id that certificates use to name their issuer key.

    Args:
        public_key: The issuer's public key.

    Returns:
        ``"sha256:"`` followed by the lowercase hex SHA-256 of the 32-byte raw key.

    Raises:
        KeyInvalid: ``public_key`` is not an Ed25519 public key.
    """
    return _compute_key_id(public_key)


def _encode_signature(signature: bytes) -> str:
    return base64.b64encode(signature).decode("ascii")


def sign(private_key: Ed25519PrivateKey, message: bytes) -> str:
    """Sign a message, normally the canonical bytes of a certificate.

    Args:
        private_key: The issuer's private key.
        message: The bytes to sign.

    Returns:
        The signature as 88 characters of standard base64 with padding.
    """
    return _encode_signature(private_key.sign(message))


def _decode_signature(signature_b64: object) -> bytes:
    if not isinstance(signature_b64, str):
        raise SignatureInvalid(
            f"signature must be a string, got {type(signature_b64).__name__}",
            code="E_SIGNATURE_MALFORMED",
        )
    if not _SIGNATURE_TEXT.match(signature_b64):
        raise SignatureInvalid(
            f"signature is not {SIGNATURE_TEXT_LENGTH} characters of standard base64 ending "
            f"in '==' (got {len(signature_b64)} characters)",
            hint="signatures use the standard base64 alphabet (+ and /) with '=' padding",
            code="E_SIGNATURE_MALFORMED",
        )
    signature = base64.b64decode(signature_b64, validate=True)
    # The 86 data characters carry 516 bits for 512, so the last four bits must be zero
    # for the text to be the one canonical encoding.
    if _encode_signature(signature) != signature_b64:
        raise SignatureInvalid(
            "signature is not canonical base64: its last data character sets unused bits",
            code="E_SIGNATURE_MALFORMED",
        )
    return signature


def verify_signature(
    public_keys: Sequence[Ed25519PublicKey],
    key_id: str,
    message: bytes,
    signature_b64: str,
) -> None:
    """Check an Ed25519 signature against the trusted key that ``key_id`` names.

    Only keys in ``public_keys`` are used. A key embedded in a certificate is never
    used, so a certificate cannot vouch for itself.

    Args:
        public_keys: The keys the user trusts.
        key_id: The issuer key id stated in the certificate.
        message: The signed bytes, normally the canonical certificate bytes.
        signature_b64: The signature text from the certificate.

    Raises:
        MalformedCertificate: ``key_id`` is not ``sha256:`` and 64 lowercase hex digits
            (``E_KEY_ID_MALFORMED``).
        UntrustedKey: No trusted key has this key id.
        SignatureInvalid: The signature text is not canonical padded base64 of 64
            bytes (``E_SIGNATURE_MALFORMED``), or the signature does not verify
            (``E_SIGNATURE_INVALID``), including signatures with S >= L.
        KeyInvalid: An entry of ``public_keys`` is not an Ed25519 public key.
    """
    if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
        key_id_text = repr(key_id)[:80]
        raise MalformedCertificate(
            f"issuer key id {key_id_text} is not 'sha256:' followed by 64 lowercase hex digits",
            code="E_KEY_ID_MALFORMED",
        )

    matching = [key for key in public_keys if _compute_key_id(key) == key_id]
    if not matching:
        raise UntrustedKey(
            f"certificate names issuer key {key_id}, which is not among the "
            f"{len(public_keys)} trusted public keys",
            hint="get the issuer's public key and compare its id ('mbd-cert key-id FILE') "
            "with the one the issuer gives you by another channel, then pass it with --key "
            "(verify) or list it in the policy's trusted_keys (verify-repo)",
        )

    signature = _decode_signature(signature_b64)
    failure = SignatureInvalid(
        f"signature does not verify under trusted key {key_id}",
        hint="the certificate or its signature was changed after signing",
    )

    # The OpenSSL 3 build in cryptography 50 already rejects S >= L (the unit tests check
    # it). The explicit check keeps that guarantee if the backend changes.
    if int.from_bytes(signature[SIGNATURE_BYTES // 2 :], "little") >= ED25519_GROUP_ORDER:
        raise failure

    try:
        matching[0].verify(signature, message)
    except InvalidSignature:
        raise failure from None
