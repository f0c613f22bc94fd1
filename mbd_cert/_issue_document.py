"""Lay out the signed content of a new certificate from the values that issuance computed.

:func:`mbd_cert._issue_steps.run` computes the mask, update, noise and utility, writes
the files, then calls :func:`certificate_document` to put them in the fields of SPEC.md
section 3. Signing happens afterwards, in the caller.

Stability: internal; the field names and the constants' values are part of format 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mbd_cert
from mbd_cert import _safetensors
from mbd_cert._commitment import digest_commitment, file_commitment
from mbd_cert.accounting import ChainAccount
from mbd_cert.arch import Architecture
from mbd_cert.chain import ChainLink
from mbd_cert.diff import array_manifest_digest
from mbd_cert.issue import IssueOptions

FORGET_OBJECTIVE = "forget-prediction-gap"
RETAIN_OBJECTIVE = "retain-task-l1-deleted"
# Scores closer than this (relative to the cut value) to the top-k cut may swap across
# devices and thread counts, so the verifier accepts swaps inside this band.
SCORE_TOLERANCE = 1e-6
# Significance level the certificate states for the level-2 residual tests. An honest
# certificate fails them with about this probability.
RESIDUAL_ALPHA = 0.01


def certificate_document(
    *,
    certificate_id: str,
    key_id: str,
    options: IssueOptions,
    architecture: Architecture,
    post_config: Mapping[str, Any],
    pre_header_digest: str,
    pre_digests: _safetensors.FileDigests,
    post_model: Path,
    post_digests: _safetensors.FileDigests,
    removed: Sequence[str],
    groups: Sequence[str],
    masks: Mapping[str, np.ndarray],
    cut: float,
    proxy_quality: dict[str, Any] | None,
    norm_before_clip: float,
    sensitivity: float,
    evidence: dict[str, Any] | None,
    sigma: float,
    account: ChainAccount,
    previous: Sequence[ChainLink],
    chain_listing: list[dict[str, Any]],
    diff_digests: _safetensors.FileDigests,
    probe_digests: _safetensors.FileDigests,
    sealed: dict[str, str] | None,
    utility: dict[str, Any],
) -> dict[str, Any]:
    """Build the unsigned certificate document of one deletion.

    ``issued_at`` is the current UTC time. The post-deletion commitment reads the
    safetensors header of ``post_model``.

    Args:
        certificate_id: The new certificate's UUID.
        key_id: Key id of the issuer's public key.
        options: The issue options (modality, privacy and update parameters).
        architecture: The model's architecture record.
        post_config: Architecture config of the model after the deletion.
        pre_header_digest: Header digest of the model before the deletion, taken in
            the same read as ``pre_digests``.
        pre_digests: Digests of the model before the deletion, of the bytes the
            deletion started from.
        post_model: Path of the written model after the deletion.
        post_digests: Digests of ``post_model``.
        removed: Names of the tensors removed outright (the modality's encoder).
        groups: Eligible mask groups.
        masks: Tensor name -> boolean saliency mask, one per eligible tensor.
        cut: Saliency score of the top-k cut.
        proxy_quality: Proxy-quality record, or None when the check was skipped.
        norm_before_clip: L2 norm of the update over the masked entries, before clipping.
        sensitivity: L2 sensitivity that calibrates the noise.
        evidence: Sensitivity evidence of a reference retrain, or None.
        sigma: Standard deviation of the Gaussian noise.
        account: Privacy account of the chain including this deletion.
        previous: Earlier certificates of the chain, oldest first.
        chain_listing: Entries of the chain copies written next to the certificate.
        diff_digests: Digests of the written diff.
        probe_digests: Digests of the written probe set.
        sealed: Record of the sealed audit bundle, or None without an auditor key.
        utility: Utility metrics before and after the deletion.

    Returns:
        The certificate content, ready for :func:`mbd_cert.certificate.sign_certificate`.

    Raises:
        InputError: A model file cannot be read, or its safetensors header is invalid
            (see :func:`mbd_cert._safetensors.read_header`).
    """
    mask_size = int(sum(int(m.sum()) for m in masks.values()))
    eligible_count = int(sum(m.size for m in masks.values()))
    return {
        "format_version": mbd_cert.FORMAT_VERSION,
        "certificate_id": certificate_id,
        "issued_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "issuer": {
            "key_id": key_id,
            **({"name": options.issuer_name} if options.issuer_name else {}),
        },
        "subject_model": {
            "architecture": {
                "name": architecture.name,
                "version": architecture.version,
                "config": post_config,
            },
            "pre_deletion": digest_commitment(pre_digests, pre_header_digest),
            "post_deletion": file_commitment(
                post_digests, _safetensors.read_header(post_model)
            ),
        },
        "deletion": {"modality": options.modality, "removed_tensors": sorted(removed)},
        "saliency": {
            "method": "swiftprune-fisher-diagonal",
            "objective": FORGET_OBJECTIVE,
            "top_k_fraction": options.top_k_fraction,
            "eligible_groups": list(groups),
            "eligible_count": eligible_count,
            "mask_size": mask_size,
            "mask_digest": array_manifest_digest(masks),
            "seed": options.seed,
            "tie_break": "score-descending-then-index",
            "score_dtype": "float64",
            "score_tolerance": SCORE_TOLERANCE,
            "cut_score": cut,
            **({"proxy_quality": proxy_quality} if proxy_quality is not None else {}),
        },
        "update": {
            "rule": "masked-preconditioned-gd",
            "objective": RETAIN_OBJECTIVE,
            "steps": options.steps,
            "learning_rate": options.learning_rate,
            "damping": options.damping,
            "clip_norm": options.clip_norm,
            "norm_before_clip": norm_before_clip,
            # Family-wise level of the verifier's level-2 residual tests (SPEC R-L2-6).
            "residual_alpha": RESIDUAL_ALPHA,
        },
        "privacy": {
            "mechanism": "analytic-gaussian",
            "epsilon": options.epsilon,
            "delta": options.delta,
            "sensitivity": sensitivity,
            "sensitivity_method": options.sensitivity_method,
            **({"sensitivity_evidence": evidence} if evidence is not None else {}),
            "sigma": sigma,
            "noise_dimension": mask_size,
        },
        "accounting": {
            "method": "mu-gdp",
            "sequence_number": len(previous) + 1,
            "previous_certificate": previous[-1].digest if previous else None,
            "chain": chain_listing,
            "mu": account.mu,
            "cumulative_epsilon": account.epsilon,
            "delta": options.delta,
            "naive_epsilon": account.naive_epsilon,
            "rdp_epsilon": account.rdp_epsilon,
        },
        "audit_bundle": {
            "confidential": True,
            "diff": _artefact("diff.safetensors", diff_digests),
            "probe": _artefact("probe.safetensors", probe_digests),
            **({"sealed": sealed} if sealed is not None else {}),
        },
        "metrics": {"utility": utility},
        "environment": {
            "mbd_cert_version": mbd_cert.__version__,
            "torch_version": torch.__version__,
            "device": "cpu",
            "dtype": "float64",
        },
    }


def _artefact(path: str, digests: Any) -> dict[str, Any]:
    return {
        "path": path,
        "file_digest": digests.file_digest,
        "manifest_digest": digests.manifest_digest,
    }


__all__ = [
    "FORGET_OBJECTIVE",
    "RESIDUAL_ALPHA",
    "RETAIN_OBJECTIVE",
    "SCORE_TOLERANCE",
    "certificate_document",
]
