"""Level-1 checks of the released model, the caller's policy and the bundle digests.

:func:`mbd_cert.verify.verify` runs these as steps 4, 7 and 8 of SPEC.md section 7.
Each raises a :class:`~mbd_cert.errors.VerificationFailed` subclass for a false claim,
and the report records it as a failed check. :func:`require_architecture_version`
belongs to step 1 and raises an ``InputError`` instead, because it finds unusable
input.

Stability: internal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mbd_cert import _groups, _paths, _safetensors, chain
from mbd_cert._numbers import exact_number
from mbd_cert.arch import CODE_ARCHITECTURE_UNKNOWN
from mbd_cert.errors import (
    POLICY_VIOLATION_HINT,
    ChainBroken,
    DeletionIncomplete,
    DigestMismatch,
    FileMissing,
    InputError,
    ModelNonfinite,
    PolicyViolation,
)
from mbd_cert.report import CheckResult

_OTHER_MODEL_HINT = ("the model file does not match the certificate (see model-digest): "
                     "pass the model released with this certificate")


def require_architecture_version(doc: Mapping[str, Any], architecture: Any) -> None:
    """Check that the installed architecture has the version the certificate records.

    Another version of an architecture's code may build other tensors from the same
    config, or compute other objectives, so its checks would test another claim. The
    issuer rejects a checkpoint of another version in the same way.

    Raises:
        InputError: ``E_ARCHITECTURE_UNKNOWN`` (exit 2) when the versions differ.
    """
    recorded = doc["subject_model"]["architecture"]["version"]
    if recorded != architecture.version:
        raise InputError(
            f"subject_model.architecture.version is {recorded!r}, but the installed "
            f"architecture {architecture.name!r} has version {architecture.version!r}",
            hint=f"install the release that provides architecture {architecture.name!r} "
            f"at version {recorded!r}",
            code=CODE_ARCHITECTURE_UNKNOWN,
        )


def check_deletion(doc: Mapping[str, Any], header: Any, architecture: Any, *,
                   model_matches: bool = True) -> str:
    """Check that the deleted encoders are listed and zero in the model (R-DEL-1).

    ``model_matches`` is False when the model-digest check failed. A failure below
    then most likely comes from another model file, so its hint names the model file
    instead of the issuer.

    Raises:
        DeletionIncomplete: The listing differs from the encoder tensors, or one of them
            has non-zero entries.
    """
    modality = doc["deletion"]["modality"]
    # With defaults filled in, so that a field left out means what the model builder
    # reads (a certificate without "modalities" still has three, R-CHAIN-9).
    config = architecture.validate_config(doc["subject_model"]["architecture"]["config"])
    if modality not in config.get("deleted_modalities", []):
        raise DeletionIncomplete(
            f"the certified config does not mark {modality!r} as deleted "
            "(subject_model.architecture.config.deleted_modalities)"
        )
    prefixes = architecture.encoder_prefixes(config, modality)
    expected = _groups.eligible_names(list(header.tensors), prefixes)
    claimed = sorted(doc["deletion"]["removed_tensors"])
    if claimed != expected:
        missing = sorted(set(expected) - set(claimed))
        extra = sorted(set(claimed) - set(expected))
        raise DeletionIncomplete(
            f"deletion.removed_tensors differs from the {modality} encoder tensors of the model: "
            f"not listed {missing[:5]}, listed but not encoder tensors {extra[:5]}",
            hint="" if model_matches else _OTHER_MODEL_HINT,
        )
    # Every modality deleted so far, not only this one: a later deletion must not bring
    # back an encoder that an earlier certificate removed (SPEC.md, R-DEL-1).
    count = 0
    for deleted in sorted(config.get("deleted_modalities", [])):
        names = _groups.eligible_names(
            list(header.tensors), architecture.encoder_prefixes(config, deleted)
        )
        for name in names:
            nonzero = _safetensors.count_nonzero_entries(header, name)
            if nonzero:
                raise DeletionIncomplete(
                    f"tensor '{name}' of the deleted {deleted} encoder has {nonzero} "
                    "entries whose bytes are not all zero (a -0.0 counts: its sign bit "
                    "can copy the sign of the trained weight)",
                    hint="the released model still holds the deleted encoder"
                    if model_matches else _OTHER_MODEL_HINT,
                )
        count += len(names)
    _check_no_unlisted_deletion(config, header, architecture, model_matches)
    deleted_list = ", ".join(sorted(config.get("deleted_modalities", [])))
    return f"{count} encoder tensors of the deleted modalities ({deleted_list}) are all zero"


# The metadata 'mbd-cert issue' writes into a released model, and nothing else: any
# other entry could carry data of a deleted encoder past every check (R-DEL-2).
RELEASED_MODEL_FORMAT = "mbd-cert-model/1"


def check_model_layout(doc: Mapping[str, Any], header: Any, architecture: Any) -> CheckResult:
    """Check the released model's metadata, header bytes, dtypes, names and shapes (R-DEL-2).

    Raises:
        DeletionIncomplete: The metadata contains other entries, the header is not in
            the issuer's form, the tensors do not share one float dtype, or they differ
            from those the architecture builds from the certified config.
    """
    # With its defaults filled in: a certificate may leave out fields that have one.
    config = architecture.validate_config(doc["subject_model"]["architecture"]["config"])
    expected_metadata = {"format": RELEASED_MODEL_FORMAT,
                         "architecture": doc["subject_model"]["architecture"]["name"]}
    if header.metadata != expected_metadata:
        extra = sorted(set(header.metadata) - set(expected_metadata))
        raise DeletionIncomplete(
            f"the model's header metadata is not the one a release has: expected "
            f"{expected_metadata}, found keys {sorted(header.metadata)[:5]}"
            + (f" ({len(extra)} unexpected)" if extra else ""),
            hint="metadata can carry data of a deleted encoder; a released model holds "
            "only format and architecture",
        )
    _check_canonical_header(header)
    _check_dtypes(doc, header, architecture)
    if architecture.tensor_shapes is None:
        return CheckResult("model-tensors", "skipped",
                           f"header, metadata and dtypes checked; architecture "
                           f"{architecture.name!r} does not list its tensors without torch, "
                           "so level 2 compares them when it rebuilds the model",
                           requirement="R-DEL-2")
    expected = architecture.tensor_shapes(config)
    found = {name: tuple(info.shape) for name, info in header.tensors.items()}
    extra = sorted(set(found) - set(expected))
    missing = sorted(set(expected) - set(found))
    reshaped = sorted(name for name in set(found) & set(expected)
                      if found[name] != expected[name])
    if extra or missing or reshaped:
        parts = [f"{label} {names[:3]}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                 for label, names in (("not in the architecture:", extra),
                                      ("missing:", missing), ("other shape:", reshaped))
                 if names]
        raise DeletionIncomplete(
            "the model's tensors differ from those the certified config builds: "
            + "; ".join(parts),
            hint="a tensor outside the architecture can hold a deleted encoder; pass the "
            "model released with this certificate",
        )
    dtypes = ("" if architecture.weight_dtype else
              "; the architecture fixes no dtype, so the dtypes are those the signed "
              "pre-deletion commitment states, and a real dtype wider than the weights "
              "need is not detected")
    return CheckResult("model-tensors", "pass",
                       f"{len(found)} tensors with the names, shapes and dtypes the certified "
                       f"config builds; header and metadata as issue writes them{dtypes}",
                       requirement="R-DEL-2")


def check_model_finite(nonfinite: Mapping[str, int]) -> str:
    """Check that no floating-point weight of the released model is NaN or infinite (R-DEL-3).

    Args:
        nonfinite: Count per floating-point tensor, from the model-digest read.

    Raises:
        ModelNonfinite: Some tensor has such an entry; names the first and the totals.
    """
    bad = sorted(name for name, count in nonfinite.items() if count)
    if bad:
        total = sum(nonfinite[name] for name in bad)
        raise ModelNonfinite(
            f"the model has {total} NaN or infinite weights in {len(bad)} tensors, "
            f"{nonfinite[bad[0]]} of them in '{bad[0]}'",
            hint="a NaN's payload bits can carry data of a deleted encoder, and no trained "
            "model issue certifies has such weights; pass the model released with this "
            "certificate",
        )
    return f"all entries of {len(nonfinite)} floating-point tensors are finite"


_COMPLEX_DTYPES = frozenset({"C64"})


def dtype_differences(dtypes: Mapping[str, str], weight_dtype: str | None,
                      committed: Mapping[str, str | None]) -> list[tuple[str, str, str]]:
    """Return (name, dtype, expected) for each tensor whose dtype breaks R-DEL-2.

    A widened tensor (F32 stored as F64 or C64) has room for other data beside the
    weights. The dtype is ``weight_dtype`` when the architecture declares one, for
    buffers as well as parameters, and otherwise the dtype that the signed pre-deletion
    commitment records, which an honest release keeps for every tensor. The issuer
    applies the same rule to the checkpoint before any work, with the checkpoint's own
    dtypes as the commitment.

    Args:
        dtypes: The safetensors dtype of each tensor, such as ``"F32"``.
        weight_dtype: The architecture's ``weight_dtype``, or None.
        committed: The committed dtype of each tensor (None where none is committed).

    Returns:
        The differing tensors in the order of ``dtypes``; ``expected`` reads
        "complex, and the architecture fixes no dtype" for a complex dtype that only
        the commitment vouches for.
    """
    differing = []
    for name, dtype in dtypes.items():
        # The commitment is the issuer's own statement, so it cannot vouch for a
        # complex dtype: the imaginary half of a real model's weight is never read.
        if weight_dtype is None and dtype in _COMPLEX_DTYPES:
            differing.append((name, dtype, "complex, and the architecture fixes no dtype"))
            continue
        expected = weight_dtype or committed.get(name)
        if dtype != expected:
            differing.append((name, dtype, f"expected {expected}"))
    return differing


def _check_dtypes(doc: Mapping[str, Any], header: Any, architecture: Any) -> None:
    """Fail when a tensor's dtype is not the one the release keeps for it (R-DEL-2)."""
    committed = doc["subject_model"]["pre_deletion"]["tensors"]
    differing = dtype_differences(
        {name: info.dtype for name, info in header.tensors.items()},
        architecture.weight_dtype,
        {name: entry.get("dtype") for name, entry in committed.items()})
    if differing:
        raise DeletionIncomplete(
            f"{len(differing)} tensors of the model have another dtype than the release "
            f"keeps: {[f'{name} {dtype} ({why})' for name, dtype, why in differing[:3]]}",
            hint="a wider or complex dtype can carry data of a deleted encoder beside the "
            "weights; pass the model released with this certificate",
        )


def _check_canonical_header(header: Any) -> None:
    """Fail unless the header bytes are exactly those the issuer's writer produces.

    JSON leaves whitespace, key order, escapes and the order of the data section
    free, and each is room for hidden data that no digest comparison notices.
    """
    entries = [(name, info.dtype, tuple(info.shape)) for name, info in header.tensors.items()]
    expected = _safetensors.canonical_header_bytes(entries, header.metadata)
    if _safetensors.read_header_bytes(header) != expected:
        raise DeletionIncomplete(
            "the model's header is not in the form 'mbd-cert issue' writes (compact JSON, "
            "tensors ordered by dtype alignment and name, metadata by key, space padding)",
            hint="whitespace, key order and data order in a header can carry data of a "
            "deleted encoder; pass the model released with this certificate",
        )


def _check_no_unlisted_deletion(config: Mapping[str, Any], header: Any,
                                architecture: Any, model_matches: bool) -> None:
    """Fail when a modality not listed as deleted has an all-zero encoder (R-CHAIN-9).

    That is what a certified deletion leaves, and no trained encoder is all zero. A
    released model copied into a checkpoint with its training config would otherwise
    start a new chain, and its budget, from zero.
    """
    deleted = set(config.get("deleted_modalities", []))
    for modality in config.get("modalities", []):
        if modality in deleted:
            continue
        names = _groups.eligible_names(list(header.tensors),
                                       architecture.encoder_prefixes(config, modality))
        # By value: -0.0 is what a deletion leaves too, as far as this rule goes.
        if not names or any(_safetensors.count_nonzero_entries(header, name, ignore_sign=True)
                            for name in names):
            continue
        if not model_matches:
            # Usually the model of a later deletion, passed with an earlier certificate.
            raise ChainBroken(
                f"the {modality} encoder of the model is all zero, but the certificate does "
                f"not list {modality!r} as deleted: the model may come from a later deletion",
                hint=_OTHER_MODEL_HINT,
            )
        raise ChainBroken(
            f"the {modality} encoder of the released model is all zero, as a certified "
            f"deletion leaves it, but the config does not list {modality!r} as deleted: "
            "an earlier deletion is missing from the chain",
            hint="ask the issuer for the chain that starts at the model's first deletion",
        )


def check_policy(
    doc: Mapping[str, Any],
    links: Sequence[chain.ChainLink],
    *,
    max_epsilon: float | None,
    max_delta: float | None,
    required_method: str | None,
    accepted_methods: Sequence[str],
) -> CheckResult:
    """Apply the caller's policy to the certificate and every link of its chain (R-POL-1).

    Raises:
        PolicyViolation: A limit is exceeded or a link uses a method the policy refuses.
    """
    # All violations are reported together, so one CI run lists everything to change.
    violations: list[str] = []
    cumulative = doc["accounting"]["cumulative_epsilon"]
    if max_epsilon is not None and cumulative > max_epsilon:
        violations.append(
            f"cumulative epsilon {exact_number(cumulative)} exceeds the policy limit "
            f"{exact_number(max_epsilon)}"
        )
    delta = doc["accounting"]["delta"]
    if max_delta is not None and delta > max_delta:
        violations.append(
            f"accounting.delta {exact_number(delta)} exceeds the policy limit "
            f"{exact_number(max_delta)}: "
            "the cumulative epsilon holds only with that failure probability"
        )
    # R-POL-1: the method applies to every link, because an earlier link's noise is
    # part of the released model. When the accounting check failed, no chain was
    # walked, so only the newest certificate is checked and the detail states this.
    docs: list[tuple[int, str, Mapping[str, Any]]] = [
        (link.sequence_number, link.source, link.doc) for link in links
    ] or [(int(doc["accounting"]["sequence_number"]), "<current>", doc)]
    accepted = list(accepted_methods)
    for number, source, link_doc in docs:
        method = link_doc["privacy"]["sensitivity_method"]
        if source != "<current>":
            where = f"earlier certificate {number} of the chain ({source}): "
        else:
            # In a chain the newest link is named too. Alone, it needs no name.
            where = f"this certificate (number {number} of the chain): " if len(docs) > 1 else ""
        if required_method is not None and method != required_method:
            violations.append(f"{where}sensitivity method is {method!r}, "
                              f"the policy requires {required_method!r}")
        elif accepted and method not in accepted:
            violations.append(f"{where}sensitivity method is {method!r}, "
                              f"the policy accepts {accepted}")
    scope = (f"{len(links)} certificate(s) of the chain" if links else
             "the newest certificate only (the chain could not be walked)")
    # Without a walked chain the earlier links are unchecked, which the reader must know.
    unchecked = "" if links else f"; checked on {scope}"
    hint = POLICY_VIOLATION_HINT
    if len(violations) == 1:
        raise PolicyViolation(violations[0] + unchecked, hint=hint)
    if violations:
        # Numbered, so that a reader (and verify-repo's table) can tell them apart.
        numbered = "; ".join(f"({number}) {violation}"
                             for number, violation in enumerate(violations, start=1))
        raise PolicyViolation(f"{len(violations)} policy violations: {numbered}{unchecked}",
                              hint=hint)
    return CheckResult(
        "policy",
        "pass",
        f"cumulative epsilon, delta and sensitivity methods meet the policy on {scope}",
        requirement="R-POL-1",
        value=cumulative,
        threshold=max_epsilon,
    )


def check_bundle(doc: Mapping[str, Any], bundle: Path, *, level: int) -> str:
    """Check the audit bundle files against the certificate's digests (R-BUN-2).

    ``level`` is the verification level, which decides the hint for a missing file.
    At level 1 only ``verify --bundle`` reads the bundle, so that hint offers to drop it.

    Raises:
        FileMissing: A bundle file is absent.
        DigestMismatch: A file is not the one the certificate commits to.
    """
    checked = []
    for role in ("diff", "probe"):
        entry = doc["audit_bundle"][role]
        path = _paths.resolve_artefact(bundle, entry["path"])
        if not path.exists():
            if level == 1:
                hint = (f"restore {entry['path']} in the --bundle directory, or drop "
                        "--bundle: level 1 then skips the bundle-digest check")
            else:
                hint = ("levels 2 and 3 need the audit bundle: pass its directory with "
                        "--bundle (verify), put its files beside the certificate "
                        "(verify-repo), or give the sealed audit-bundle.sealed and "
                        "--auditor-private-key")
            if (bundle / "audit-bundle.sealed").is_file():
                hint = ("this directory holds the sealed bundle audit-bundle.sealed: pass "
                        "the auditor's --auditor-private-key (verify or verify-repo) to "
                        "open it")
            raise FileMissing(f"audit bundle file not found: {path}", hint=hint)
        digests = _safetensors.digest_file(path)
        for key in ("file_digest", "manifest_digest"):
            if getattr(digests, key) != entry[key]:
                raise DigestMismatch(
                    f"audit_bundle.{role}.{key}: expected {entry[key]}, "
                    f"got {getattr(digests, key)}",
                    hint=f"{entry['path']} is not the file the certificate commits to: pass "
                    "the audit bundle issued with this certificate (the directory that "
                    "'mbd-cert issue' wrote, or its sealed bundle)",
                )
        checked.append(entry["path"])
    return "digests match for " + ", ".join(checked)
