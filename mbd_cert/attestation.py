"""Export a certificate as an in-toto Statement, for supply-chain tooling.

The in-toto attestation framework (https://github.com/in-toto/attestation, spec v1)
wraps a claim about an artefact in a Statement: ``_type`` names the Statement version,
``subject`` lists the artefacts by digest, ``predicateType`` is a URI naming the
claim's schema, and ``predicate`` contains the claim. Here the subject is the released
model file and the predicate is the signed certificate (SPEC.md, section
"Attestation").

The predicate type URI is an identifier: nothing is fetched from it. Its last path
component is the predicate's major version; fields are only added within a major
version.

The Statement is not signed by this module. The certificate inside it carries its own
Ed25519 signature, which ``mbd-cert verify`` checks. Wrapping the Statement in a signed
envelope (DSSE) is left to the tooling that distributes it.

Stability: public (:func:`statement_for_certificate`, :data:`PREDICATE_TYPE`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mbd_cert.certificate import certificate_digest
from mbd_cert.errors import InputError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://mbd-cert.dev/modality-deletion/v1"
# The subject's name when the caller gives none: the file name `mbd-cert issue` writes.
DEFAULT_SUBJECT_NAME = "model.safetensors"


def _hex(digest: str, field: str) -> str:
    prefix = "sha256:"
    if not digest.startswith(prefix) or len(digest) != len(prefix) + 64:
        # The schema already enforces the digest form, so this is a bug in the caller.
        raise ValueError(f"{field} is not a sha256 digest: {digest!r}")
    return digest[len(prefix):]


def statement_for_certificate(
    doc: Mapping[str, Any], *, subject_name: str = DEFAULT_SUBJECT_NAME
) -> dict[str, Any]:
    """Build the in-toto Statement v1 for a validated certificate.

    The subject's ``digest.sha256`` is the SHA-256 of the whole released model file
    (``subject_model.post_deletion.file_digest``), which is what ``sha256sum`` and
    other supply-chain tools compute for the file. This function copies that claim
    unchecked, and a default verification does not check it either, so the caller
    compares it with the model file first (``mbd-cert attest --model`` does). The
    predicate contains the full signed certificate, so a consumer can verify its
    signature, plus copies of the claims that policies usually test and the
    certificate's digest.

    Args:
        doc: A certificate that passed schema validation
            (:func:`mbd_cert.certificate.load_certificate`).
        subject_name: The model's file name or path in the repository.

    Returns:
        The Statement as a JSON-compatible dict.

    Raises:
        InputError: ``E_PARAMETER_INVALID`` when ``subject_name`` is empty or has a
            character that :func:`check_subject_name` rejects.
    """
    check_subject_name(subject_name)
    post = doc["subject_model"]["post_deletion"]
    privacy = doc["privacy"]
    account = doc["accounting"]
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {
                "name": subject_name,
                "digest": {"sha256": _hex(post["file_digest"], "post_deletion.file_digest")},
            }
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "certificate_digest": certificate_digest(doc),
            "certificate_id": doc["certificate_id"],
            "format_version": doc["format_version"],
            "issuer_key_id": doc["issuer"]["key_id"],
            "modality": doc["deletion"]["modality"],
            "model_manifest_digest": post["manifest_digest"],
            "pre_deletion_file_digest": doc["subject_model"]["pre_deletion"]["file_digest"],
            "epsilon": privacy["epsilon"],
            "delta": privacy["delta"],
            "sensitivity_method": privacy["sensitivity_method"],
            "cumulative_epsilon": account["cumulative_epsilon"],
            "sequence_number": account["sequence_number"],
            "previous_certificate": account["previous_certificate"],
            "certificate": dict(doc),
        },
    }


def check_subject_name(subject_name: str,
                       hint: str = "pass the model's file name, such as model.safetensors",
                       ) -> None:
    """Reject a subject name that tools would show as other text or cannot encode.

    C0 and C1 control characters, DEL, U+2028, U+2029, the Unicode bidirectional
    formatting characters and characters that draw nothing (zero-width space, BOM, tag
    characters) change how the name displays, and a lone surrogate (a file
    name that is not valid UTF-8) has no UTF-8 encoding for the Statement's JSON.
    These are the characters :func:`mbd_cert._terminal.terminal_text` escapes.

    Raises:
        InputError: ``E_PARAMETER_INVALID``, showing the name with those characters
            escaped.
    """
    from mbd_cert._terminal import terminal_text

    escaped = terminal_text(subject_name)
    if not subject_name or escaped != subject_name:
        raise InputError(
            f"subject name must be a non-empty string without control, bidirectional "
            f"formatting, invisible or undecodable characters, got '{escaped}'",
            hint=hint,
            code="E_PARAMETER_INVALID",
        )


def dump_statement(statement: Mapping[str, Any]) -> bytes:
    """Serialise a Statement as indented UTF-8 JSON with a final newline."""
    text = json.dumps(statement, indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


__all__ = [
    "DEFAULT_SUBJECT_NAME",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "check_subject_name",
    "dump_statement",
    "statement_for_certificate",
]
