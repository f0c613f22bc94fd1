"""The certificate document: loading, signing bytes, signing and digests.

A certificate is a JSON object (SPEC.md, section 3). Its signature covers the RFC 8785
canonical bytes of every member except ``signature`` (SPEC.md, R-SIG-1). This module
never trusts a key named inside the certificate: callers pass the keys they trust.

Stability: public; the functions here follow the format version in
:data:`mbd_cert.FORMAT_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from mbd_cert import _git_lfs, _json, canonical, signing
from mbd_cert.errors import LimitExceeded, MalformedCertificate, UnsupportedVersion

# A certificate of a model with 100,000 tensors stays below this; anything larger is
# refused before parsing (SPEC.md, R-LIM-1).
MAX_CERTIFICATE_BYTES = 64 * 1024 * 1024

# Commas, colons and opening brackets bound the number of JSON values from above. The
# largest certificate the schema admits has about 4.9 million: two maps of 100,000
# tensors of rank 16, plus 100,000 removed tensor names. 64 MiB of tiny values took a
# minute and 2 GB to parse, so such text is refused before parsing (R-LIM-1).
MAX_CERTIFICATE_SEPARATORS = 6_000_000

SIGNATURE_FIELD = "signature"


def signing_payload(doc: Mapping[str, Any]) -> bytes:
    """Return the bytes the issuer signs: RFC 8785 bytes of ``doc`` without its signature.

    Raises:
        MalformedCertificate: A value cannot appear in signed content (``-0.0``, an
            integer beyond 2**53 - 1, a non-finite number).
    """
    unsigned = {key: value for key, value in doc.items() if key != SIGNATURE_FIELD}
    return canonical.canonical_bytes(unsigned)


def certificate_digest(doc: Mapping[str, Any]) -> str:
    """Return ``sha256:<hex>`` of the canonical bytes of the whole signed certificate.

    This digest links a certificate to the next one in a chain (SPEC.md, R-CHAIN-1).
    """
    return "sha256:" + hashlib.sha256(canonical.canonical_bytes(dict(doc))).hexdigest()


def sign_certificate(doc: Mapping[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return a copy of ``doc`` with its ``signature`` member filled in.

    The key id in ``issuer.key_id`` must belong to ``private_key``; a mismatch is a bug
    in the caller, so it raises ``ValueError``.
    """
    public_key = private_key.public_key()
    key_id = signing.key_id(public_key)
    if doc["issuer"]["key_id"] != key_id:
        raise ValueError("issuer.key_id does not match the signing key")
    signed = dict(doc)
    signed.pop(SIGNATURE_FIELD, None)
    value = signing.sign(private_key, signing_payload(signed))
    signed[SIGNATURE_FIELD] = {"algorithm": "ed25519", "key_id": key_id, "value": value}
    return signed


def check_signature(doc: Mapping[str, Any], trusted_keys: Sequence[Ed25519PublicKey]) -> str:
    """Verify the certificate's signature against the keys the user trusts.

    Returns:
        The key id that verified.

    Raises:
        UntrustedKey: No trusted key has the certificate's key id.
        SignatureInvalid: The signature does not verify, or ``signature.key_id`` and
            ``issuer.key_id`` differ.
    """
    from mbd_cert.errors import SignatureInvalid

    signature = doc[SIGNATURE_FIELD]
    if signature["key_id"] != doc["issuer"]["key_id"]:
        raise SignatureInvalid(
            "signature.key_id differs from issuer.key_id",
            hint="the certificate was edited after signing; ask the issuer for a new one",
        )
    signing.verify_signature(
        trusted_keys, signature["key_id"], signing_payload(doc), signature["value"]
    )
    return str(signature["key_id"])


def _check_size(data: bytes, source: str) -> None:
    """Apply R-LIM-1's caps: at most 64 MiB, and at most 6,000,000 separators.

    Raises:
        LimitExceeded: ``E_INPUT_TOO_LARGE``.
    """
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise LimitExceeded(
            f"{source} is {len(data)} bytes; the maximum is {MAX_CERTIFICATE_BYTES}",
            code="E_INPUT_TOO_LARGE",
        )
    separators = data.count(b",") + data.count(b":") + data.count(b"[")
    if separators > MAX_CERTIFICATE_SEPARATORS:
        raise LimitExceeded(
            f"{source} has {separators} commas, colons and brackets, more than the "
            f"{MAX_CERTIFICATE_SEPARATORS} a certificate of the largest model has",
            hint="pass the cert.json written by 'mbd-cert issue'",
            code="E_INPUT_TOO_LARGE",
        )


def parse_certificate(data: bytes, *, source: str = "certificate") -> dict[str, Any]:
    """Parse and validate certificate bytes: strict JSON, then the bundled schema.

    Raises:
        MalformedCertificate: Invalid JSON, a duplicate key, a non-finite number, or a
            schema violation; the message names the field.
        UnsupportedVersion: The format major version is unknown to this release.
        LimitExceeded: The document is larger or deeper than the caps.
    """
    _check_size(data, source)
    try:
        doc = _json.load_json_strict(data, what=source, max_bytes=MAX_CERTIFICATE_BYTES)
    except MalformedCertificate as error:
        if error.code == "E_JSON_ENCODING":
            # The generic hint (save the file as UTF-8) invites editing a signed file.
            error.hint = ("this is not the file the issuer signed, which is UTF-8 JSON "
                          "without a byte order mark: get the original cert.json from the "
                          "issuer instead of converting this copy")
        raise
    if not isinstance(doc, dict):
        raise MalformedCertificate(
            f"{source}: top level is {type(doc).__name__}, expected a JSON object",
            hint="pass the cert.json written by 'mbd-cert issue'",
        )
    # Imported here because jsonschema and its format checkers take about 75 ms to
    # load, and a first deletion (mbd-cert issue without a chain) parses no certificate.
    from mbd_cert import schema

    # Every schema keyword starts with "$", which a key can only spell as "$ or \u0024,
    # and the strict loader already refused non-finite numbers and deep nesting. So
    # the walk over every value is needed only when one of the two spellings occurs.
    schema.validate_certificate(doc, scan_values=b'"$' in data or b"\\u0024" in data)
    return doc


def load_certificate(path: str | Path) -> dict[str, Any]:
    """Read ``path`` with the size cap and return the validated certificate.

    Raises:
        FileMissing: The file does not exist.
        InputError: The path is not a regular file or cannot be read.
        MalformedCertificate, UnsupportedVersion, LimitExceeded: See
            :func:`parse_certificate`.
    """
    data = _json.read_bytes_capped(
        path, what="certificate", max_bytes=MAX_CERTIFICATE_BYTES,
        missing_hint="pass the cert.json that 'mbd-cert issue' wrote in its --out directory",
    )
    if _git_lfs.is_pointer(data):
        raise MalformedCertificate(
            f"certificate file {str(path)!r} is a Git LFS pointer file, not the "
            "certificate it points to",
            hint=_git_lfs.FETCH_HINT,
        )
    if _looks_like_safetensors(data):
        raise MalformedCertificate(
            f"certificate file {str(path)!r} is a safetensors file, not a certificate",
            hint="this argument takes the certificate (cert.json), not the model; "
            "'mbd-cert verify' takes both, in the order CERT MODEL",
        )
    try:
        return parse_certificate(data, source=str(path))
    except (MalformedCertificate, UnsupportedVersion) as error:
        # The schema's messages name the field but not the file. A command that reads
        # several certificates (a chain, verify-repo) must name the one that failed.
        if str(path) not in error.message:
            error.message = f"{path}: {error.message}"
        raise


def _looks_like_safetensors(data: bytes) -> bool:
    # A safetensors file starts with an 8-byte little-endian header length and then
    # the JSON header; a certificate starts with its JSON text.
    if len(data) < 10 or data[8:9] != b"{":
        return False
    length = int.from_bytes(data[:8], "little")
    return 2 <= length <= len(data) - 8


def dump_certificate(doc: Mapping[str, Any]) -> bytes:
    """Serialise a certificate for people to read (indented, UTF-8, final newline).

    The file need not be canonical: the signature covers the canonical form of the
    parsed content, not the file's bytes.
    """
    canonical.canonical_bytes(dict(doc))  # refuse what could not be signed or verified
    return _readable_bytes(doc)


def sign_and_dump(doc: Mapping[str, Any],
                  private_key: Ed25519PrivateKey) -> tuple[dict[str, Any], bytes]:
    """Return :func:`sign_certificate`'s result and its :func:`dump_certificate` bytes.

    Signing builds the canonical bytes of everything but the signature, which checks
    the same values as :func:`dump_certificate`, so only the signature member is
    checked again. The full check took 2.3 ms for a CMU-MOSEI certificate (36 KB),
    timed once in one process with ``time.perf_counter``.
    """
    signed = sign_certificate(doc, private_key)
    canonical.canonical_bytes(dict(signed[SIGNATURE_FIELD]))
    return signed, _readable_bytes(signed)


def _readable_bytes(doc: Mapping[str, Any]) -> bytes:
    text = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False)
    data = (text + "\n").encode("utf-8")
    _check_size(data, "certificate to write")  # the caps parse_certificate applies
    return data
