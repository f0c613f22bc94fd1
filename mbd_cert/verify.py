"""Independent verification of a Modality Deletion Certificate.

:func:`verify` runs the checks of SPEC.md, section 7, in order. Level 1 needs the
certificate, the released model and the issuer's public key, and no torch. Every check
recomputes what it compares from the files; nothing the certificate states about itself
is taken on trust, and only keys the caller passes are trusted.

Outcomes: unusable input raises an :class:`~mbd_cert.errors.InputError` (exit 2); a
false claim is recorded as a failed check in the returned report (exit 1).

Stability: public (:func:`verify`, :class:`VerifyOptions`).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mbd_cert import (
    _commitment,
    _groups,
    _paths,
    _safetensors,
    certificate,
    chain,
    mechanism,
    sealing,
)
from mbd_cert.arch import get_architecture
from mbd_cert.errors import (
    CalibrationInvalid,
    DeletionIncomplete,
    DigestMismatch,
    FileMissing,
    InputError,
    PolicyViolation,
    VerificationFailed,
)
from mbd_cert.report import CheckResult, VerificationReport
from mbd_cert.sensitivity import check_evidence

logger = logging.getLogger(__name__)

SENSITIVITY_METHODS = ("clip-bound", "reference-retrain", "declared")


@dataclass
class VerifyOptions:
    """Options of one verification run: trusted keys, level and policy.

    Attributes:
        trusted_keys: The issuer public keys the caller trusts; keys inside the
            certificate are never used.
        level: 1 (integrity), 2 (recompute) or 3 (leakage).
        bundle_dir: Directory holding the audit bundle files named in the certificate.
        max_epsilon: Policy: the cumulative epsilon must not exceed this.
        required_sensitivity_method: Policy: the certificate must use this method.
        allow_inconclusive: Treat inconclusive statistical checks as passing.
        alpha: Family-wise significance level of the level-2 residual tests; None
            takes ``update.residual_alpha`` from the certificate, else 0.01.
        progress: Called as ``progress(stage, done, total)`` during long stages.
        check_file_digest: Also recompute the whole-file SHA-256 of the model, one
            sequential pass over the file. Certificates without ``header_digest``
            (format 1.0) get this check regardless (SPEC.md, R-DIG-3).
        chain_dir: Directory holding the earlier certificates of the chain; None looks
            beside the certificate file.
        auditor_private_key: The auditor's X25519 private key: open the sealed audit
            bundle (in ``bundle_dir``, else beside the certificate) and use its files.
    """

    trusted_keys: Sequence[Ed25519PublicKey]
    level: int = 1
    bundle_dir: Path | None = None
    max_epsilon: float | None = None
    required_sensitivity_method: str | None = None
    allow_inconclusive: bool = False
    progress: Callable[[str, int, int], None] | None = None
    alpha: float | None = None
    check_file_digest: bool = False
    chain_dir: Path | None = None
    auditor_private_key: Any = None


def _check_options(options: VerifyOptions) -> None:
    if options.level not in (1, 2, 3):
        raise InputError(
            f"level must be 1, 2 or 3, got {options.level!r}", code="E_PARAMETER_INVALID"
        )
    if options.max_epsilon is not None and (
        isinstance(options.max_epsilon, bool)
        or not math.isfinite(options.max_epsilon)
        or options.max_epsilon <= 0
    ):
        raise InputError(
            f"max epsilon must be finite and > 0, got {options.max_epsilon!r}",
            hint="a limit of 0 would reject every certificate; omit the option for no limit",
            code="E_PARAMETER_INVALID",
        )
    method = options.required_sensitivity_method
    if method is not None and method not in SENSITIVITY_METHODS:
        raise InputError(
            f"required sensitivity method must be one of {', '.join(SENSITIVITY_METHODS)}, "
            f"got {method!r}",
            code="E_PARAMETER_INVALID",
        )
    if not options.trusted_keys:
        raise InputError(
            "no trusted issuer key was given",
            hint="pass the issuer's public key with --key",
            code="E_KEY_MISSING",
        )
    if options.alpha is not None and (isinstance(options.alpha, bool) or not 0 < options.alpha < 1):
        raise InputError(
            f"alpha must be in (0, 1), got {options.alpha!r}",
            hint="pass the family-wise significance level of the level-2 tests, e.g. 0.01",
            code="E_PARAMETER_INVALID",
        )
    if options.level >= 2 and importlib.util.find_spec("torch") is None:
        # SPEC R-LVL-1: levels 2 and 3 recompute with torch; without it they are
        # unavailable rather than silently skipped.
        raise InputError(
            f"verification level {options.level} needs torch, which is not installed",
            hint="install mbd-cert[torch], or run level 1",
            code="E_LEVEL_UNAVAILABLE",
        )
    if options.chain_dir is not None and not Path(options.chain_dir).is_dir():
        # A mistyped --chain is unusable input, not a missing link of the chain.
        problem = "not found" if not Path(options.chain_dir).exists() else "not a directory"
        raise InputError(
            f"chain directory {str(options.chain_dir)!r}: {problem}",
            hint="pass the directory that holds the chain-NNNNN.json copies (the issue "
            "output directory)",
            code="E_FILE_MISSING" if problem == "not found" else "E_PARAMETER_INVALID",
        )
    if options.level >= 2 and options.bundle_dir is None and options.auditor_private_key is None:
        raise InputError(
            f"level {options.level} needs the audit bundle",
            hint="pass --bundle DIR with diff.safetensors and probe.safetensors",
            code="E_BUNDLE_MISSING",
        )


def verify(
    cert_path: str | Path, model_path: str | Path, options: VerifyOptions
) -> VerificationReport:
    """Verify a certificate against a released model.

    Args:
        cert_path: The ``cert.json`` file.
        model_path: The released ``model.safetensors``.
        options: Keys, level and policy.

    Returns:
        The report; ``report.verified`` is False when any check failed.

    Raises:
        InputError: An input cannot be used (missing or malformed file, bad key,
            unsupported version, bad option).
    """
    _check_options(options)
    if options.auditor_private_key is not None:
        return _verify_sealed(Path(cert_path), Path(model_path), options)
    model_path = Path(model_path)

    # Step 1 (SPEC §7.1): parse strictly and validate against the bundled schema.
    doc = certificate.load_certificate(cert_path)
    report = VerificationReport(
        certificate_id=doc["certificate_id"],
        level=options.level,
        allow_inconclusive=options.allow_inconclusive,
    )
    report.checks.append(
        CheckResult("schema", "pass", f"format {doc['format_version']}", requirement="R-FMT-1")
    )
    if not model_path.exists():
        raise FileMissing(f"model not found: {model_path}", hint="pass the released model file")
    architecture = get_architecture(doc["subject_model"]["architecture"]["name"])
    # The schema leaves the config's members to the architecture; a config it rejects
    # is unusable input (exit 2), never a crash in the checks below.
    architecture.validate_config(doc["subject_model"]["architecture"]["config"])

    # Step 2 (SPEC §7.2): signature under a key the user trusts.
    report.run(
        "signature",
        "R-SIG-2",
        lambda: f"verified with key {certificate.check_signature(doc, options.trusted_keys)}",
    )

    # Step 3 (SPEC §7.3): digests recomputed from the released model file.
    header = _safetensors.read_header(model_path)
    report.run(
        "model-digest",
        "R-DIG-3",
        lambda: _commitment.check_commitment(
            doc["subject_model"]["post_deletion"],
            header,
            field="subject_model.post_deletion",
            check_file_digest=options.check_file_digest,
            progress=_bytes_progress(options.progress, "hashing model (bytes)"),
        ),
    )

    # Step 4 (SPEC §7.4): the deleted encoder is gone.
    report.run(
        "deleted-tensors-zero", "R-DEL-1", lambda: _check_deletion(doc, header, architecture)
    )

    # Step 5 (SPEC §7.5): the stated sigma gives the stated (epsilon, delta).
    report.run("calibration", "R-PRIV-3", lambda: _check_calibration(doc))

    # Step 6 (SPEC §7.6): the cumulative budget over the chain.
    chain_dir = Path(options.chain_dir) if options.chain_dir else Path(cert_path).parent
    report.run("accounting", "R-ACC-2", lambda: _check_accounting(doc, chain_dir, options))

    # Step 7 (SPEC §7.7): the caller's policy.
    if options.max_epsilon is None and options.required_sensitivity_method is None:
        report.skip(
            "policy", "R-POL-1", "no policy given (--max-epsilon, --require-sensitivity-method)"
        )
    else:
        report.run("policy", "R-POL-1", lambda: _check_policy(doc, options))

    # Step 8 (SPEC §7.8): audit bundle digests.
    if options.bundle_dir is None:
        report.skip("bundle-digest", "R-BUN-2", "no audit bundle given (--bundle)")
    else:
        bundle = Path(options.bundle_dir)
        report.run("bundle-digest", "R-BUN-2", lambda: _check_bundle(doc, bundle))

    if options.level >= 2:
        from mbd_cert import verify_recompute

        verify_recompute.run_level2(
            doc, model_path, Path(options.bundle_dir or "."), report, options
        )
    if options.level >= 3:
        from mbd_cert import verify_leakage

        verify_leakage.run_level3(doc, model_path, Path(options.bundle_dir or "."), report, options)
    for check in report.checks:
        logger.info("%s: %s (%s)", check.name, check.status, check.requirement or "-")
    return report


def _bytes_progress(progress: Callable[[str, int, int], None] | None,
                    stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


def _check_deletion(doc: Mapping[str, Any], header: Any, architecture: Any) -> str:
    modality = doc["deletion"]["modality"]
    config = doc["subject_model"]["architecture"]["config"]
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
            f"not listed {missing[:5]}, listed but not encoder tensors {extra[:5]}"
        )
    # Every modality deleted so far, not only this one: a later deletion must not bring
    # back an encoder that an earlier certificate removed (SPEC.md, R-DEL-1).
    count = 0
    for deleted in sorted(config.get("deleted_modalities", [])):
        names = _groups.eligible_names(
            list(header.tensors), architecture.encoder_prefixes(config, deleted)
        )
        for name in names:
            values = _safetensors.read_tensor(header, name)
            nonzero = int(np.count_nonzero(values))
            if nonzero:
                raise DeletionIncomplete(
                    f"tensor '{name}' of the deleted {deleted} encoder has {nonzero} "
                    "non-zero entries",
                    hint="the released model still holds the deleted encoder",
                )
        count += len(names)
    deleted_list = ", ".join(sorted(config.get("deleted_modalities", [])))
    return f"{count} encoder tensors of the deleted modalities ({deleted_list}) are all zero"


def _check_calibration(doc: Mapping[str, Any]) -> CheckResult:
    privacy = doc["privacy"]
    epsilon, delta = privacy["epsilon"], privacy["delta"]
    sensitivity, sigma = privacy["sensitivity"], privacy["sigma"]
    if privacy["sensitivity_method"] == "clip-bound":
        bound = 2.0 * doc["update"]["clip_norm"]
        if sensitivity < bound:
            raise CalibrationInvalid(
                f"privacy.sensitivity is {sensitivity!r}, below the clip bound "
                f"2 * clip_norm = {bound!r}"
            )
    if privacy["sensitivity_method"] == "reference-retrain":
        try:
            sensitivity_check = check_evidence(privacy, doc["update"]["clip_norm"])
        except ValueError as exc:
            raise CalibrationInvalid(str(exc), hint="R-PRIV-5") from exc
        logger.debug("%s", sensitivity_check)
    if privacy["noise_dimension"] != doc["saliency"]["mask_size"]:
        raise CalibrationInvalid(
            f"privacy.noise_dimension ({privacy['noise_dimension']}) differs from "
            f"saliency.mask_size ({doc['saliency']['mask_size']}): "
            "noise must cover every masked entry"
        )
    result = mechanism.check_calibration(epsilon, delta, sensitivity, sigma)
    if not result.ok:
        raise CalibrationInvalid(
            f"privacy.sigma = {sigma!r} gives delta {result.actual_delta:.6g} at epsilon "
            f"{epsilon!r}, more than the stated {delta!r}; the analytic Gaussian mechanism needs "
            f"sigma >= {result.required_sigma:.7g}",
            hint="the certificate overstates its privacy",
        )
    return CheckResult(
        "calibration",
        "pass",
        f"sigma {sigma:.7g} >= required {result.required_sigma:.7g} for "
        f"epsilon {epsilon}, delta {delta}, sensitivity {sensitivity:.6g}",
        requirement="R-PRIV-3",
        value=sigma,
        threshold=result.required_sigma,
    )


def _check_accounting(
    doc: Mapping[str, Any], chain_dir: Path, options: VerifyOptions
) -> CheckResult:
    # R-ACC-1, R-ACC-2 and R-CHAIN-1 to R-CHAIN-6 over every link of the chain.
    links, recomputed = chain.check_chain_accounting(doc, chain_dir, options.trusted_keys)
    account = doc["accounting"]
    return CheckResult(
        "accounting",
        "pass",
        f"cumulative epsilon {recomputed.epsilon:.6g} at delta {account['delta']} over "
        f"{len(links)} deletion(s) (mu-GDP; RDP {recomputed.rdp_epsilon:.6g}, naive "
        f"{recomputed.naive_epsilon:.6g})",
        requirement="R-ACC-2",
        value=recomputed.epsilon,
        threshold=account["cumulative_epsilon"],
        n=len(links),
    )


def _verify_sealed(cert_path: Path, model_path: Path, options: VerifyOptions) -> VerificationReport:
    """Open the sealed audit bundle into a private temporary directory, then verify with it.

    Step 0 (SPEC §4.5, R-SEAL-2): a sealed file that is not the committed one, or that
    does not authenticate, is a failed check. The other checks then run at level 1
    without a bundle.
    """
    doc = certificate.load_certificate(cert_path)
    search = Path(options.bundle_dir) if options.bundle_dir is not None else cert_path.parent
    with tempfile.TemporaryDirectory(prefix="mbd-cert-bundle-") as temp:
        try:
            detail = sealing.open_for_verification(
                doc, search, options.auditor_private_key, Path(temp)
            )
        except VerificationFailed as failure:
            fallback = replace(options, auditor_private_key=None, bundle_dir=None, level=1)
            report = verify(cert_path, model_path, fallback)
            report.checks.append(
                CheckResult(
                    "sealed-bundle", "fail", str(failure), code=failure.code, requirement="R-SEAL-2"
                )
            )
            return report
        opened = replace(options, auditor_private_key=None, bundle_dir=Path(temp))
        report = verify(cert_path, model_path, opened)
    report.checks.insert(1, CheckResult("sealed-bundle", "pass", detail, requirement="R-SEAL-2"))
    return report


def _check_policy(doc: Mapping[str, Any], options: VerifyOptions) -> CheckResult:
    cumulative = doc["accounting"]["cumulative_epsilon"]
    if options.max_epsilon is not None and cumulative > options.max_epsilon:
        raise PolicyViolation(
            f"cumulative epsilon {cumulative:.6g} exceeds the policy limit {options.max_epsilon:g}"
        )
    method = options.required_sensitivity_method
    if method is not None and doc["privacy"]["sensitivity_method"] != method:
        raise PolicyViolation(
            f"sensitivity method is {doc['privacy']['sensitivity_method']!r}, "
            f"the policy requires {method!r}"
        )
    return CheckResult(
        "policy",
        "pass",
        "cumulative epsilon and sensitivity method meet the policy",
        requirement="R-POL-1",
        value=cumulative,
        threshold=options.max_epsilon,
    )


def _check_bundle(doc: Mapping[str, Any], bundle: Path) -> str:
    checked = []
    for role in ("diff", "probe"):
        entry = doc["audit_bundle"][role]
        path = _paths.resolve_artefact(bundle, entry["path"])
        if not path.exists():
            raise FileMissing(
                f"audit bundle file not found: {path}", hint="pass the complete bundle"
            )
        digests = _safetensors.digest_file(path)
        for key in ("file_digest", "manifest_digest"):
            if getattr(digests, key) != entry[key]:
                raise DigestMismatch(
                    f"audit_bundle.{role}.{key}: expected {entry[key]}, "
                    f"got {getattr(digests, key)}",
                    hint=f"{entry['path']} is not the file the certificate commits to",
                )
        checked.append(entry["path"])
    return "digests match for " + ", ".join(checked)
