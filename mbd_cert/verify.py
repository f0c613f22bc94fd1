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

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from mbd_cert import (
    _commitment,
    _safetensors,
    certificate,
    chain,
    sealing,
)
from mbd_cert._calibration import check_calibration
from mbd_cert._level1_checks import (
    check_bundle,
    check_deletion,
    check_model_finite,
    check_model_layout,
    check_policy,
    require_architecture_version,
)
from mbd_cert._numbers import exact_number
from mbd_cert.arch import get_architecture
from mbd_cert.errors import (
    TORCH_EXTRA_HINT,
    FileMissing,
    InputError,
    VerificationFailed,
)
from mbd_cert.report import CheckResult, VerificationReport

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
        required_sensitivity_method: Policy: every certificate of the chain must use
            this method.
        accepted_sensitivity_methods: Policy: every certificate of the chain must use
            one of these methods; empty accepts all.
        max_delta: Policy: the delta at which the cumulative epsilon is stated
            (``accounting.delta``) must not exceed this.
        allow_inconclusive: Treat inconclusive statistical checks as passing.
        alpha: Family-wise significance level of the level-2 residual tests; None
            takes 0.01, or ``update.residual_alpha`` of the certificate if larger.
        progress: Called as ``progress(stage, done, total)`` during long stages.
        check_file_digest: Also recompute the whole-file SHA-256 of the model, one
            sequential pass over the file. Certificates without ``header_digest``
            (format 1.0) get this check regardless (SPEC.md, R-DIG-3).
        chain_dir: Directory holding the earlier certificates of the chain; None looks
            beside the certificate file.
        auditor_private_key: The auditor's X25519 private key: open the sealed audit
            bundle (in ``bundle_dir``, else beside the certificate) and use its files.
        chain_file_cache: Digests of the chain-directory files that earlier
            verifications of the same run have parsed. Pass one cache to every call
            when many certificates share a directory (``verify-repo`` does); None
            parses the directory afresh.
        threads: Torch intra-op CPU threads while levels 2 and 3 run (restored
            afterwards). One suits the bundled model and a shared machine; a model with
            large layers may gain from more. The verdict does not depend on it beyond
            floating-point reduction order, which level 2 tolerates (R-SAL-3).
    """

    trusted_keys: Sequence[Ed25519PublicKey]
    level: int = 1
    bundle_dir: Path | None = None
    max_epsilon: float | None = None
    required_sensitivity_method: str | None = None
    accepted_sensitivity_methods: Sequence[str] = ()
    max_delta: float | None = None
    allow_inconclusive: bool = False
    progress: Callable[[str, int, int], None] | None = None
    alpha: float | None = None
    check_file_digest: bool = False
    chain_dir: Path | None = None
    auditor_private_key: Any = None
    chain_file_cache: chain.ChainFileCache | None = None
    threads: int = 1


def _check_options(options: VerifyOptions) -> None:
    if options.level not in (1, 2, 3):
        raise InputError(
            f"level must be 1, 2 or 3, got {options.level!r}", code="E_PARAMETER_INVALID"
        )
    threads = options.threads
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 1024:
        raise InputError(
            f"threads (--threads) must be an integer in [1, 1024], got {threads!r}",
            hint="pass 1 for the bundled model, or the number of cores for a large one",
            code="E_PARAMETER_INVALID",
        )
    if options.max_epsilon is not None and (
        isinstance(options.max_epsilon, bool)
        or not math.isfinite(options.max_epsilon)
        or options.max_epsilon <= 0
    ):
        raise InputError(
            f"max_epsilon (--max-epsilon) must be finite and > 0, got {options.max_epsilon!r}",
            hint="pass the largest cumulative epsilon you accept, in natural-log units, "
            "such as 4, or omit the option for no limit",
            code="E_PARAMETER_INVALID",
        )
    if options.max_delta is not None and (
        isinstance(options.max_delta, bool) or not 0 < options.max_delta < 1
    ):
        raise InputError(
            f"max_delta (--max-delta) must be in (0, 1), got {options.max_delta!r}",
            hint="pass the largest delta you accept, e.g. 1e-5",
            code="E_PARAMETER_INVALID",
        )
    methods = [options.required_sensitivity_method, *options.accepted_sensitivity_methods]
    for method in methods:
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
            hint=f"{TORCH_EXTRA_HINT}, or run level 1",
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
            hint="pass --bundle DIR with diff.safetensors and probe.safetensors, or, "
            "when the issuer sealed them into audit-bundle.sealed, "
            "--auditor-private-key KEY",
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
    return _verify_checked(cert_path, model_path, options)


def _verify_checked(cert_path: str | Path, model_path: str | Path, options: VerifyOptions,
                    sealed: CheckResult | None = None) -> VerificationReport:
    """Run the checks of SPEC section 7 on options that :func:`_check_options` accepted.

    ``sealed`` is the result of the sealed-bundle check when the caller opened, or
    declined to open, a sealed audit bundle. It is reported at step 8, before the
    bundle's digests. A sealed bundle that did not pass leaves no bundle to read.
    """
    model_path = Path(model_path)

    # Step 1 (SPEC §7.1): parse strictly and validate against the bundled schema.
    doc = certificate.load_certificate(cert_path)
    report = VerificationReport(
        certificate_id=doc["certificate_id"],
        level=options.level,
        allow_inconclusive=options.allow_inconclusive,
    )
    report.record(
        CheckResult("schema", "pass", f"format {doc['format_version']}", requirement="R-FMT-1")
    )
    if not model_path.exists():
        raise FileMissing(f"model not found: {model_path}", hint="pass the released model file")
    architecture = get_architecture(doc["subject_model"]["architecture"]["name"])
    require_architecture_version(doc, architecture)
    # The schema leaves the config's members to the architecture; a config it rejects
    # is unusable input (exit 2), never a crash in the checks below.
    architecture.validate_config(doc["subject_model"]["architecture"]["config"])

    # Step 2 (SPEC §7.2): signature under a key the user trusts.
    signed = report.run(
        "signature",
        "R-SIG-2",
        lambda: f"verified with key {certificate.check_signature(doc, options.trusted_keys)}",
    )

    # Step 3 (SPEC §7.3): digests recomputed from the released model file.
    # The same read counts NaN and infinite weights for step 4 (R-DEL-3).
    header = _safetensors.read_header(model_path)
    nonfinite: dict[str, int] = {}
    model_matches = report.run(
        "model-digest",
        "R-DIG-3",
        lambda: _commitment.check_commitment(
            doc["subject_model"]["post_deletion"],
            header,
            field="subject_model.post_deletion",
            check_file_digest=options.check_file_digest,
            progress=_bytes_progress(options.progress, "hashing model (bytes)"),
            nonfinite=nonfinite,
            pre_deletion=doc["subject_model"]["pre_deletion"],
        ),
    )

    # Step 4 (SPEC §7.4): nothing outside the architecture, no NaN or infinite weight,
    # and the deleted encoder is gone.
    report.run("model-tensors", "R-DEL-2",
               lambda: check_model_layout(doc, header, architecture))
    report.run("model-finite", "R-DEL-3", lambda: check_model_finite(nonfinite))
    report.run(
        "deleted-tensors-zero", "R-DEL-1",
        lambda: check_deletion(doc, header, architecture, model_matches=model_matches),
    )

    # Step 5 (SPEC §7.5): the stated sigma gives the stated (epsilon, delta).
    report.run("calibration", "R-PRIV-3", lambda: check_calibration(doc))

    # Step 6 (SPEC §7.6): the cumulative budget over the chain. R-CHAIN-10: the links of
    # an unsigned certificate are not looked up. Its verdict is already a failure, and
    # the lookup parses every *.json file of the directory, so unsigned certificates
    # sharing one directory would cost a parse of each file per certificate.
    chain_dir = Path(options.chain_dir) if options.chain_dir else Path(cert_path).parent
    walked: list[chain.ChainLink] = []
    if signed:
        report.run("accounting", "R-ACC-2",
                   lambda: _check_accounting(doc, chain_dir, options, walked))
        report.earlier_links = [link.doc for link in walked[:-1]]
    else:
        report.skip("accounting", "R-CHAIN-10",
                    "not run: signature did not pass, so the chain links the certificate "
                    "names are not the ones a trusted issuer certified")

    # Step 7 (SPEC §7.7): the caller's policy, on every link of the chain.
    if (options.max_epsilon is None and options.max_delta is None
            and options.required_sensitivity_method is None
            and not options.accepted_sensitivity_methods):
        report.skip("policy", "R-POL-1", "no limits given (verify: --max-epsilon, "
                    "--max-delta, --require-sensitivity-method; a verify-repo policy file: "
                    "max_cumulative_epsilon, max_delta, required_sensitivity_methods)")
    else:
        report.run("policy", "R-POL-1", lambda: check_policy(
            doc, walked, max_epsilon=options.max_epsilon, max_delta=options.max_delta,
            required_method=options.required_sensitivity_method,
            accepted_methods=options.accepted_sensitivity_methods))

    # Step 8 (SPEC §7.8): the sealed bundle, when one was given, then the audit bundle
    # digests.
    if sealed is not None:
        report.record(sealed)
    if sealed is not None and sealed.status != "pass":
        report.skip("bundle-digest", "R-BUN-2",
                    f"not run: the sealed-bundle check did not pass (sealed-bundle: "
                    f"{sealed.status}), so there is no bundle file to trust")
    elif options.bundle_dir is None:
        report.skip("bundle-digest", "R-BUN-2",
                    "no audit bundle given: level 1 does not read it (verify --bundle DIR, "
                    "or a policy of level 2 or 3 for verify-repo)")
    else:
        bundle = Path(options.bundle_dir)
        report.run("bundle-digest", "R-BUN-2",
                   lambda: check_bundle(doc, bundle, level=options.level))

    # R-LVL-3: levels 2 and 3 read only files that a trusted signature commits to.
    # Any other file is unauthenticated input, and its checks cannot change a verdict
    # that has already failed.
    gates = [c for c in report.checks
             if c.name in ("signature", "model-digest", "sealed-bundle", "bundle-digest")
             and c.status != "pass"]
    # Name the checks that failed. A check that was skipped because one of them failed
    # (the sealed bundle of an unsigned certificate, the digests of a bundle never
    # opened) is a consequence, so it is named only when nothing failed.
    unauthenticated = ([c.name for c in gates if c.status == "fail"]
                       or [c.name for c in gates])
    if options.level >= 2 and unauthenticated:
        for level in range(2, options.level + 1):
            report.skip(f"level-{level}", "R-LVL-3",
                        f"not run: {', '.join(unauthenticated)} did not pass, so the model "
                        "and bundle files are not the ones a trusted issuer certified")
        return _finish(report)
    # R-LVL-4: after a failed level-1 check the verdict is already a failure. The
    # level-2 readers would reject some false claims as unusable input (exit 2).
    failed = [c.name for c in report.checks if c.status == "fail"]
    if options.level >= 2 and failed:
        reason = (f"not run: level 1 failed ({', '.join(failed)}), so verification has "
                  "already failed and levels 2 and 3 cannot change the verdict")
        if failed == ["policy"]:
            reason += ("; to see their checks, verify again without the policy limits "
                       "that failed")
        for level in range(2, options.level + 1):
            report.skip(f"level-{level}", "R-LVL-4", reason)
        return _finish(report)
    if options.level >= 2:
        # Imported here: level 1 runs without torch.
        from mbd_cert import verify_recompute
        from mbd_cert._torch_model import torch_threads

        with torch_threads(options.threads):
            verify_recompute.run_level2(
                doc, model_path, Path(options.bundle_dir or "."), report, options
            )
            if options.level >= 3:
                from mbd_cert import verify_leakage

                verify_leakage.run_level3(doc, model_path, Path(options.bundle_dir or "."),
                                          report, options)
    return _finish(report)


def _finish(report: VerificationReport) -> VerificationReport:
    logger.info("%d checks: %s", len(report.checks),
                "verified" if report.verified else "not verified")
    return report


def _bytes_progress(progress: Callable[[str, int, int], None] | None,
                    stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


def _check_accounting(
    doc: Mapping[str, Any], chain_dir: Path, options: VerifyOptions,
    walked: list[chain.ChainLink],
) -> CheckResult:
    # R-ACC-1 to R-ACC-3 and R-CHAIN-1 to R-CHAIN-9 over every link of the chain. The
    # links go to ``walked`` for the policy check.
    links, recomputed = chain.check_chain_accounting(
        doc, chain_dir, options.trusted_keys, file_cache=options.chain_file_cache)
    walked.extend(links)
    account = doc["accounting"]
    return CheckResult(
        "accounting",
        "pass",
        # The certified value first: it is what policies and other commands show.
        f"cumulative epsilon {exact_number(account['cumulative_epsilon'])} at delta "
        f"{exact_number(account['delta'])} over {len(links)} deletion(s), not below the "
        f"mu-GDP recomputation {exact_number(recomputed.epsilon)} (RDP "
        f"{exact_number(recomputed.rdp_epsilon)}; naive sum "
        f"{exact_number(recomputed.naive_epsilon)} at delta "
        f"{exact_number(recomputed.naive_delta)})",
        requirement="R-ACC-2",
        value=recomputed.epsilon,
        threshold=account["cumulative_epsilon"],
        n=len(links),
    )


def _verify_sealed(cert_path: Path, model_path: Path, options: VerifyOptions) -> VerificationReport:
    """Open the sealed audit bundle into a private temporary directory, then verify with it.

    Step 8 (SPEC §7.8, R-SEAL-2): a sealed file that is not the committed one, or that
    does not authenticate, is a failed ``sealed-bundle`` check; the other checks then
    run without a bundle, and levels 2 and 3 are skipped naming it. The sealed file is
    opened only for a certificate whose signature verifies under a trusted key
    (R-LVL-3): anyone can seal to the auditor's public key.
    """
    doc = certificate.load_certificate(cert_path)
    without_bundle = replace(options, auditor_private_key=None, bundle_dir=None)
    try:
        certificate.check_signature(doc, options.trusted_keys)
    except VerificationFailed:
        return _verify_checked(cert_path, model_path, without_bundle, CheckResult(
            "sealed-bundle", "skipped", "not opened: the certificate's signature did not "
            "verify under a trusted key", requirement="R-LVL-3"))
    search = Path(options.bundle_dir) if options.bundle_dir is not None else cert_path.parent
    with tempfile.TemporaryDirectory(prefix="mbd-cert-bundle-") as temp:
        try:
            detail = sealing.open_for_verification(
                doc, search, options.auditor_private_key, Path(temp)
            )
        except VerificationFailed as failure:
            return _verify_checked(cert_path, model_path, without_bundle, CheckResult(
                "sealed-bundle", "fail", str(failure), code=failure.code,
                requirement="R-SEAL-2"))
        opened = replace(options, auditor_private_key=None, bundle_dir=Path(temp))
        return _verify_checked(cert_path, model_path, opened, CheckResult(
            "sealed-bundle", "pass", detail, requirement="R-SEAL-2"))
