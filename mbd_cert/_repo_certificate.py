"""Verification of one certificate of a verify-repo run, with its warnings.

:func:`verify_one` pairs the certificate with its model, verifies it under the policy,
records unusable input and bugs in the result instead of raising them, and adds a
warning for confidential files published beside it.

Stability: internal; :mod:`mbd_cert._cli_ci` calls it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mbd_cert import errors
from mbd_cert._confidential_files import ScanCache, published_confidential_files
from mbd_cert._repo_results import RepoResult
from mbd_cert._repo_search import model_for

if TYPE_CHECKING:
    from mbd_cert.chain import ChainFileCache

logger = logging.getLogger(__name__)


def verify_one(root: Path, certificate: Path, policy: Any, keys: Sequence[Any],
               auditor_key: Any = None, scan_cache: ScanCache | None = None,
               chain_file_cache: ChainFileCache | None = None) -> RepoResult:
    """Verify one certificate under the policy, recording unusable input and bugs in the result.

    With ``auditor_key`` (an X25519 private key) and a policy level of 2 or 3, a
    certificate whose audit bundle was sealed is verified with the sealed file beside
    it. Other certificates read the plain bundle files from their directory. The two
    caches are shared by the calls of one run, so that a directory holding many
    certificates is scanned once.
    """
    from mbd_cert._terminal import terminal_text
    from mbd_cert.verify import VerifyOptions, verify

    model = model_for(certificate)
    result = RepoResult(certificate.relative_to(root).as_posix(),
                        model.relative_to(root).as_posix(), exit_code=0)
    methods = policy.required_sensitivity_methods
    needs_bundle = policy.required_level >= 2
    options = VerifyOptions(
        trusted_keys=keys,
        level=policy.required_level,
        bundle_dir=certificate.parent if needs_bundle else None,
        max_epsilon=policy.max_cumulative_epsilon,
        max_delta=policy.max_delta,
        # verify() applies the methods to every certificate of the chain (R-POLF-2).
        accepted_sensitivity_methods=methods,
        allow_inconclusive=policy.allow_inconclusive,
        auditor_private_key=auditor_key if needs_bundle and _is_sealed(certificate) else None,
        chain_file_cache=chain_file_cache,
    )
    try:
        if model.is_symlink():
            # A link can point outside the repository, and CI would then report a model
            # the repository does not contain as verified.
            raise errors.InputError(
                f"model is a symbolic link: {result.model}",
                hint="commit the model file itself beside the certificate",
                code="E_UNSAFE_PATH",
            )
        if not model.exists():
            raise errors.FileMissing(
                f"model not found: {result.model}",
                hint="put the released model beside the certificate: cert.json pairs with "
                "model.safetensors, NAME.cert.json with NAME.safetensors",
            )
        report = verify(certificate, model, options)
        result.report = report
        result.exit_code = 0 if report.verified else 1
    except errors.MbdCertError as error:
        result.exit_code = error.exit_code
        result.error = {"code": error.code, "message": error.message, "hint": error.hint}
    # A bug while verifying one certificate must not hide the results of the others;
    # it still makes the run exit 3.
    except Exception as exc:
        logger.debug("internal error on %s", result.certificate, exc_info=True)
        result.exit_code = 3
        result.error = {"code": "E_INTERNAL",
                        "message": f"internal error: {type(exc).__name__}: {exc}",
                        "hint": "this is a bug in mbd-cert; rerun with -vv and report it"}
    from mbd_cert.certificate import load_certificate

    try:
        result.certificate_doc = load_certificate(certificate)
    except errors.MbdCertError:
        pass  # verification above reports it
    if result.certificate_doc is not None:
        published = published_confidential_files(root, certificate, scan_cache,
                                                  result.certificate_doc)
    else:
        published = []
    result.confidential_files = list(published)
    if published:
        # Escaped here, because JUnit's system-err and the JSON report carry the text
        # as it is, and a file name with a line break could fake another warning line.
        names = ", ".join(terminal_text(name) for name in published)
        result.warnings.append(
            f"{names}: confidential files of the issuer (the audit bundle "
            "rebuilds the pre-deletion model, and the probe and evaluation sets contain "
            "data samples); publish them only where auditors alone can read them, or "
            "publish audit-bundle.sealed instead and pass --auditor-private-key. Once "
            "committed, they stay in the version history after you delete them")
    return result


def _is_sealed(certificate: Path) -> bool:
    """Return whether the certificate records a sealed audit bundle (False if unreadable)."""
    from mbd_cert.certificate import load_certificate

    try:
        bundle = load_certificate(certificate)["audit_bundle"]
    except errors.MbdCertError:
        return False  # verify() reports the unreadable certificate
    return isinstance(bundle, dict) and "sealed" in bundle
