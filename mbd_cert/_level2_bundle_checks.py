"""Level-2 checks of the audit bundle against the certificate's commitments (R-L2-1 to R-L2-3).

The checks compare the rebuilt pre-deletion model with its committed tensor digests,
the diff's mask tensors with ``saliency.mask_digest`` and the diff's support with the
mask. They only read the bundle and need no torch.

Stability: internal; :mod:`mbd_cert.verify_recompute` runs them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import rfc8785

from mbd_cert import _recompute
from mbd_cert._groups import unlisted_zero_encoders
from mbd_cert._level2_bundle import Bundle
from mbd_cert.report import FAIL, PASS, CheckResult

CODE_MASK_MISMATCH = "E_MASK_MISMATCH"
CODE_DIFF_OUTSIDE_MASK = "E_DIFF_OUTSIDE_MASK"


def _digest(array: np.ndarray) -> str:
    data = np.ascontiguousarray(array)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    little_endian = data.astype(data.dtype.newbyteorder("<"))
    return "sha256:" + hashlib.sha256(little_endian.tobytes()).hexdigest()


def _check_pre_rebuild(doc: Mapping[str, Any], pre: Mapping[str, np.ndarray],
                       bundle: Bundle) -> str:
    committed = doc["subject_model"]["pre_deletion"]["tensors"]
    names = sorted(set(committed) | set(pre))
    for name in names:
        if name not in committed or name not in pre:
            raise _fail_digest(
                f"tensor '{name}' is in only one of the rebuilt and committed models")
        entry = committed[name]
        digest = _digest(pre[name])
        if list(pre[name].shape) != list(entry["shape"]) or digest != entry["digest"]:
            raise _fail_digest(
                f"rebuilt pre-deletion tensor '{name}' (post - diff): expected "
                f"{entry['digest']}, got {digest}"
            )
    for name in names:
        values = pre[name]
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            from mbd_cert.errors import ModelNonfinite

            raise ModelNonfinite(
                f"rebuilt pre-deletion tensor '{name}' (post - diff) has NaN or infinite "
                "values, so no saliency, update or residual can be computed from it",
                hint="the diff or the committed pre-deletion model is not a usable model",
            )
    # R-DIFF-1: the diff is exactly float64(post) - float64(pre). Other values can
    # rebuild the same pre-deletion model (low bits lost in the cast, -0.0 for +0.0),
    # and those bits would carry data in the bundle.
    inexact = {}
    for name, difference in bundle.diff.items():
        expected = bundle.post[name].astype(np.float64) - pre[name].astype(np.float64)
        count = int(np.count_nonzero(expected.view(np.uint64) != np.ascontiguousarray(
            difference, dtype=np.float64).view(np.uint64)))
        if count:
            inexact[name] = count
    if inexact:
        from mbd_cert.errors import DigestMismatch

        first = sorted(inexact)[0]
        raise DigestMismatch(
            f"{sum(inexact.values())} diff entries are not float64(post) - float64(pre) "
            f"bit for bit ({inexact[first]} in 'diff.{first}'), although post - diff "
            "rebuilds the committed model (R-DIFF-1)",
            hint="the spare bits of such a diff can carry other data; ask the issuer for "
            "the bundle issue wrote",
            code="E_DIFF_NOT_EXACT",
        )
    # R-CHAIN-9 on the model the deletion started from: a released model copied into a
    # fresh checkpoint keeps its zeroed encoder, and deleting that modality again as a
    # first deletion would restart the budget.
    zeroed = unlisted_zero_encoders(bundle.architecture, bundle.config_pre, pre)
    if zeroed:
        from mbd_cert.errors import ChainBroken

        raise ChainBroken(
            f"the rebuilt pre-deletion model's {zeroed[0]} encoder is all zero, as a "
            f"certified deletion leaves it, but the pre-deletion config does not list "
            f"{zeroed[0]!r} as deleted: an earlier deletion is missing from the chain",
            hint="ask the issuer for the chain that starts at the model's first deletion",
        )
    return f"post - diff reproduces all {len(names)} committed pre-deletion tensor digests"


def _fail_digest(message: str) -> Exception:
    from mbd_cert.errors import DigestMismatch

    return DigestMismatch(message, hint="the diff does not belong to this model and certificate")


def _check_mask_commitment(doc: Mapping[str, Any], bundle: Bundle) -> str:
    from mbd_cert.errors import VerificationFailed

    saliency = doc["saliency"]
    if not bundle.eligible:
        raise VerificationFailed(
            f"saliency.eligible_groups {saliency['eligible_groups']} match no tensor of the "
            "model besides the removed ones, so there is no mask to check",
            code=CODE_MASK_MISMATCH,
        )
    if sorted(bundle.masks) != bundle.eligible:
        missing = sorted(set(bundle.eligible) - set(bundle.masks))
        extra = sorted(set(bundle.masks) - set(bundle.eligible))
        raise VerificationFailed(
            "the mask tensors of the diff are not the eligible tensors of "
            f"saliency.eligible_groups: no mask for {missing[:5]}, mask but not eligible "
            f"{extra[:5]}",
            code=CODE_MASK_MISMATCH,
        )
    entries = [
        {"name": n, "dtype": "BOOL", "shape": list(bundle.masks[n].shape),
         "digest": _digest(bundle.masks[n])}
        for n in sorted(bundle.masks)
    ]
    digest = "sha256:" + hashlib.sha256(
        rfc8785.dumps({"metadata": {}, "tensors": entries})).hexdigest()
    count = sum(int(m.size) for m in bundle.masks.values())
    size = sum(int(m.sum()) for m in bundle.masks.values())
    expected_k = _recompute.mask_count(count, saliency["top_k_fraction"])
    problems = []
    if digest != saliency["mask_digest"]:
        problems.append(f"saliency.mask_digest: expected {saliency['mask_digest']}, got {digest}")
    if count != saliency["eligible_count"]:
        problems.append(
            f"saliency.eligible_count: expected {saliency['eligible_count']}, got {count}")
    if size != saliency["mask_size"] or size != expected_k:
        problems.append(
            f"saliency.mask_size: certificate {saliency['mask_size']}, mask tensors {size}, "
            f"rule k = ceil(top_k_fraction x eligible_count) {expected_k}"
        )
    if problems:
        raise VerificationFailed("; ".join(problems), code=CODE_MASK_MISMATCH)
    return f"mask tensors match saliency.mask_digest: {size} of {count} eligible entries"


def _check_diff_support(bundle: Bundle) -> CheckResult:
    outside = 0
    first = ""
    for name, values in sorted(bundle.diff.items()):
        if name in bundle.removed:
            continue
        allowed = bundle.masks.get(name, np.zeros(values.shape, dtype=bool))
        # By bits, as R-DEL-1 tests zero: a diff of -0.0 rebuilds the same pre-deletion
        # value, so its sign bit would carry data freely. An honest x - x is +0.0.
        outside_bits = np.ascontiguousarray(values[~allowed], dtype=np.float64).view(np.uint64)
        count = int(np.count_nonzero(outside_bits))
        if count and not first:
            first = name
        outside += count
    status = PASS if outside == 0 else FAIL
    detail = (
        "the diff changes only masked entries and the deleted encoder"
        if outside == 0
        else f"the diff changes {outside} entries outside the mask and the deleted encoder, "
        f"first in tensor '{first}'"
    )
    return CheckResult("diff-support", status, detail, code=None if outside == 0 else
                       CODE_DIFF_OUTSIDE_MASK, requirement="R-L2-3", value=outside, threshold=0)

