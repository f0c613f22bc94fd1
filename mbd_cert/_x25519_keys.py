"""X25519 key files of auditors: writing a key pair and loading either half.

The audit bundle is sealed to an auditor's X25519 public key (:mod:`mbd_cert.sealing`).
These files are distinct from the issuer's Ed25519 signing keys, and loading one kind
where the other is expected is rejected with a hint (``E_KEY_INVALID``).

Stability: internal; :mod:`mbd_cert.sealing` re-exports the public functions.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from mbd_cert import _json, _paths
from mbd_cert._ed25519_keys import key_kind
from mbd_cert.errors import KeyInvalid

# A PEM X25519 key is under 200 bytes; the cap only stops a wrong file early.
MAX_KEY_FILE_BYTES = 64 * 1024
# File name stem of a key pair written into an existing directory.
DEFAULT_AUDITOR_KEY_NAME = "auditor"


def write_x25519_keypair(prefix: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write a new X25519 key pair: ``PREFIX.key`` (PKCS#8 PEM, mode 0o600) and ``PREFIX.pub``.

    An existing directory as ``prefix`` gets ``auditor.key`` and ``auditor.pub``, as
    ``keygen`` writes ``issuer.key`` and ``issuer.pub`` into one for a signing key.

    Raises:
        InputError: A file exists and ``force`` is false, or writing failed.
    """
    private_path, public_path = _paths.key_pair_paths(prefix, DEFAULT_AUDITOR_KEY_NAME,
                                                      force=force)
    key = X25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    for path, data, mode in ((private_path, private_pem, 0o600), (public_path, public_pem, 0o644)):
        with _paths.atomic_output(path, overwrite=force) as output:
            os.chmod(output.temp_path, mode)  # before any key byte is written
            output.file.write(data)
    return private_path, public_path


def load_recipient_key(path: Path) -> X25519PublicKey:
    """Load an auditor's X25519 public key: SubjectPublicKeyInfo PEM or 32 raw bytes.

    Raises:
        KeyInvalid: The file contains another kind of key or is not a key (exit code 2).
    """
    data = _json.read_bytes_capped(path, what="X25519 public key", max_bytes=MAX_KEY_FILE_BYTES)
    if b"PRIVATE KEY" in data:
        raise KeyInvalid(f"{path}: this is a private key; --auditor-key takes the public key",
                         hint="pass the .pub file written by 'mbd-cert keygen --kind x25519'")
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyInvalid(f"{path}: the PEM block is not a valid public key") from exc
    elif len(data) == 32:
        key = X25519PublicKey.from_public_bytes(data)
    else:
        raise KeyInvalid(f"{path}: is {len(data)} bytes, not a PEM or 32-byte X25519 public key")
    if not isinstance(key, X25519PublicKey):
        raise _wrong_kind(key, path, "--auditor-key", "the auditor's X25519 public key")
    return key


def load_auditor_private_key(path: Path) -> X25519PrivateKey:
    """Load an auditor's X25519 private key (unencrypted PKCS#8 PEM).

    Raises:
        KeyInvalid: The file contains another kind of key or is not a private key.
    """
    data = _json.read_bytes_capped(path, what="X25519 private key", max_bytes=MAX_KEY_FILE_BYTES)
    if not data.strip():
        # What a CI job gets when the secret it writes to the file is not set.
        raise KeyInvalid(
            f"{path}: the auditor private key file is empty",
            hint="if a CI secret fills this file, check that the secret is set and "
            "available to this job",
        )
    if b"-----BEGIN PUBLIC KEY-----" in data:
        raise KeyInvalid(
            f"{path}: contains a public key, expected the auditor's private key",
            hint="pass the .key file written by 'mbd-cert keygen --kind x25519', not .pub",
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyInvalid(
            f"{path}: not an unencrypted PEM private key",
            hint="pass the .key file written by 'mbd-cert keygen --kind x25519'",
        ) from exc
    if not isinstance(key, X25519PrivateKey):
        raise _wrong_kind(key, path, "--auditor-private-key",
                          "the auditor's X25519 private key")
    return key


def _wrong_kind(key: object, path: Path, option: str, expected: str) -> KeyInvalid:
    hint = "create one with 'mbd-cert keygen --kind x25519'"
    if isinstance(key, (Ed25519PublicKey, Ed25519PrivateKey)):
        hint = ("this is an issuer's Ed25519 signing key; audit bundles are sealed to an "
                "auditor's X25519 key pair from 'mbd-cert keygen --kind x25519'")
    private = "private" if "Private" in type(key).__name__ else "public"
    return KeyInvalid(
        f"{path} ({option}): contains a {private} key of kind {key_kind(key)}, expected "
        f"{expected}",
        hint=hint,
    )
