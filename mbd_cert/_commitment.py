"""File commitments of the subject model: build them (issuer) and check them (verifier).

A commitment (SPEC.md, section 4.1) binds a safetensors file by its header digest (the
SHA-256 of the length prefix and the JSON header, padding included), its manifest
digest and one digest per tensor. R-ST-1 makes the tensors tile the data section
exactly, so the header bytes and the tensor digests together fix every byte of the
file. Each tensor is hashed on its own, so a multi-gigabyte model is checked by
several threads at once. The whole-file SHA-256 is still recorded for tools that only
know file digests, but checking it means one sequential pass over the file, so the
verifier does that only on request or for certificates without a header digest.

Stability: internal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from mbd_cert import _safetensors
from mbd_cert._safetensors_digest import format_digest
from mbd_cert._safetensors_read import open_checked, read_exact
from mbd_cert.errors import DigestMismatch

__all__ = ["check_commitment", "digest_commitment", "file_commitment", "header_digest"]


def header_digest(header: _safetensors.SafetensorsHeader) -> str:
    """Compute the SHA-256 of the file's first ``8 + N`` bytes (SPEC.md, R-DIG-4).

    Args:
        header: A validated header; its file must not have changed since.

    Returns:
        ``"sha256:<hex>"``.

    Raises:
        MalformedSafetensors: ``E_SAFETENSORS_CHANGED`` when the file changed since
            ``header`` was read.
        InputError: ``E_FILE_UNREADABLE`` when the file cannot be read.
    """
    with open_checked(header) as handle:
        handle.seek(0)
        # read_header has already bounded data_start by the 100,000,000-byte cap.
        raw = read_exact(handle, header.data_start, header.path)
    return format_digest(hashlib.sha256(raw))


def file_commitment(
    digests: _safetensors.FileDigests, header: _safetensors.SafetensorsHeader
) -> dict[str, Any]:
    """Build the ``pre_deletion`` or ``post_deletion`` member of a certificate.

    Args:
        digests: All digests of the file, the whole-file digest included.
        header: The file's validated header.

    Returns:
        ``file_digest``, ``header_digest``, ``manifest_digest`` and ``tensors``.

    Raises:
        ValueError: ``digests`` has no whole-file digest.
        MalformedSafetensors: As :func:`header_digest`.
        InputError: As :func:`header_digest`.
    """
    return digest_commitment(digests, header_digest(header))


def digest_commitment(digests: _safetensors.FileDigests, header_sha256: str) -> dict[str, Any]:
    """Build a commitment from digests taken in one read of the file.

    Args:
        digests: All digests of the file, the whole-file digest included.
        header_sha256: The header digest (R-DIG-4) of the same bytes as ``digests``.

    Returns:
        As :func:`file_commitment`.

    Raises:
        ValueError: ``digests`` has no whole-file digest.
    """
    if digests.file_digest is None:
        raise ValueError("the commitment needs the whole-file digest; pass with_file_digest=True")
    return {
        "file_digest": digests.file_digest,
        "header_digest": header_sha256,
        "manifest_digest": digests.manifest_digest,
        "tensors": {
            name: {"dtype": t.dtype, "shape": list(t.shape), "digest": t.digest}
            for name, t in sorted(digests.tensors.items())
        },
    }


def check_commitment(
    committed: Mapping[str, Any],
    header: _safetensors.SafetensorsHeader,
    *,
    field: str,
    check_file_digest: bool,
    progress: Callable[[int, int], None] | None = None,
    nonfinite: dict[str, int] | None = None,
    pre_deletion: Mapping[str, Any] | None = None,
) -> str:
    """Recompute a file's digests and compare them with its commitment (SPEC.md, R-DIG-3).

    Args:
        committed: The commitment from the certificate.
        header: The file's validated header.
        field: The commitment's place in the certificate, for messages
            (``subject_model.post_deletion``).
        check_file_digest: Also check ``file_digest``. It is checked regardless when
            the commitment has no ``header_digest`` (format 1.0), because then nothing
            else binds the header bytes.
        progress: Called as ``progress(done, total)`` in bytes while the file is hashed.
        nonfinite: When given, filled in the same read, before any comparison, with
            the count of NaN and infinite entries of each floating-point tensor.
        pre_deletion: The certificate's commitment to the model before the deletion.
            When the file matches it, the hint names the file as the model the
            deletion started from.

    Returns:
        A one-line summary of what matched.

    Raises:
        DigestMismatch: A recomputed digest differs from the committed one.
        MalformedSafetensors: The file is invalid or changed during the check.
        InputError: The file cannot be read.
    """
    committed_header = committed.get("header_digest")
    whole = check_file_digest or committed_header is None
    digests = _safetensors.digest_file(header.path, with_file_digest=whole, progress=progress,
                                       count_nonfinite=nonfinite is not None)
    # digest_file reads the header again; this raises if the file changed in between,
    # so both reads saw the same file.
    open_checked(header).close()
    if nonfinite is not None and digests.nonfinite is not None:
        nonfinite.update(digests.nonfinite)

    expected_tensors: Mapping[str, Any] = committed["tensors"]
    mismatched = sorted(
        name
        for name in set(expected_tensors) | set(digests.tensors)
        if name not in expected_tensors
        or name not in digests.tensors
        or expected_tensors[name]["digest"] != digests.tensors[name].digest
        or expected_tensors[name]["dtype"] != digests.tensors[name].dtype
        or list(expected_tensors[name]["shape"]) != list(digests.tensors[name].shape)
    )
    if mismatched:
        first = mismatched[0]
        expected = expected_tensors.get(first, {}).get("digest", "absent")
        got = digests.tensors[first].digest if first in digests.tensors else "absent"
        hint = ("the model is not the one the certificate was issued for: pass the model "
                "file released with this certificate, or the certificate issued for this "
                "model (a repository commits the two together)")
        if pre_deletion is not None \
                and digests.manifest_digest == pre_deletion.get("manifest_digest"):
            hint = ("this is the model before the deletion, whose digest the certificate "
                    "records as subject_model.pre_deletion: pass the released "
                    "model.safetensors that 'mbd-cert issue' wrote with this certificate")
        raise DigestMismatch(
            f"digest mismatch for tensor '{first}': expected {expected}, got {got}"
            + (f" ({len(mismatched) - 1} more tensors differ)" if len(mismatched) > 1 else ""),
            hint=hint,
        )
    if digests.manifest_digest != committed["manifest_digest"]:
        raise DigestMismatch(
            f"{field}.manifest_digest: expected {committed['manifest_digest']}, "
            f"got {digests.manifest_digest}",
            hint="the model's metadata or tensor list differs from the certified one",
        )
    checked = ["manifest", f"{len(digests.tensors)} tensors"]
    if committed_header is not None:
        got_header = header_digest(header)
        if got_header != committed_header:
            raise DigestMismatch(
                f"{field}.header_digest: expected {committed_header}, got {got_header}",
                hint="the file's header bytes (tensor order, offsets or padding) differ "
                "from the certified file",
            )
        checked.append("header")
    if whole:
        if digests.file_digest != committed["file_digest"]:
            raise DigestMismatch(
                f"{field}.file_digest: expected {committed['file_digest']}, "
                f"got {digests.file_digest}",
                hint="the file's header bytes differ from the certified file",
            )
        checked.append("whole file")
    return f"manifest {digests.manifest_digest} matches ({', '.join(checked)} checked)"
