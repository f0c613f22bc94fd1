"""The parameter diff of the audit bundle and the saliency mask digest (numpy only).

The diff file holds, for every changed tensor ``name``, a tensor ``diff.<name>`` of the
same shape and dtype F64 equal to ``float64(post) - float64(pre)``, and for every
eligible tensor a BOOL tensor ``mask.<name>`` (SPEC.md, section 4.3). The pre-deletion
value is then ``float64(post) - diff`` cast back to the model dtype, which the issuer
checks to be bit-exact before it signs, so the verifier can rebuild the pre-deletion
model and match its committed digests.

Stability: internal; the layout is fixed by format 1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np
import rfc8785

from mbd_cert.errors import IssuanceError, MalformedSafetensors

DIFF_PREFIX = "diff."
MASK_PREFIX = "mask."

# numpy dtype -> safetensors dtype name, for the dtypes the issuer writes.
_DTYPE_NAMES = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "U8",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
}


def _bits(array: np.ndarray) -> np.ndarray:
    """View a float array as unsigned integers of the same width for bitwise equality."""
    return np.ascontiguousarray(array).view(np.dtype(f"u{array.dtype.itemsize}"))


def build_diff(
    pre: Mapping[str, np.ndarray], post: Mapping[str, np.ndarray], changed: Iterable[str]
) -> dict[str, np.ndarray]:
    """Return ``{"diff.<name>": float64(post) - float64(pre)}`` for the changed tensors.

    Raises:
        IssuanceError: The pre-deletion tensor cannot be rebuilt bit-exactly from the
            post-deletion tensor and the diff (values so far apart in magnitude that
            their float64 difference rounds). The issuer then does not sign.
    """
    tensors: dict[str, np.ndarray] = {}
    for name in sorted(changed):
        before, after = pre[name], post[name]
        difference = after.astype(np.float64) - before.astype(np.float64)
        rebuilt = rebuild_pre(after, difference, name)
        if not np.array_equal(_bits(rebuilt), _bits(before)):
            raise IssuanceError(
                f"tensor '{name}': the pre-deletion values cannot be rebuilt exactly from the diff",
                hint="a released value more than 2**29 times the pre-deletion one, or the "
                "reverse, leaves float64 no room for the exact difference: noise far "
                "larger than the weights does this, so lower the sensitivity or raise "
                "epsilon; otherwise report it",
                code="E_DIFF_NOT_EXACT",
            )
        tensors[DIFF_PREFIX + name] = difference
    return tensors


def rebuild_pre(post: np.ndarray, difference: np.ndarray, name: str) -> np.ndarray:
    """Return ``post - diff`` in the post tensor's dtype (SPEC.md, R-DIFF-2).

    Raises:
        MalformedSafetensors: The diff's shape differs from the parameter's, or the diff
            is not F64 (nothing is broadcast or cast silently).
    """
    if tuple(difference.shape) != tuple(post.shape):
        raise MalformedSafetensors(
            f"diff tensor for '{name}' has shape {list(difference.shape)}, "
            f"but the model parameter has shape {list(post.shape)}",
            hint="the diff belongs to another model; use the audit bundle of this certificate",
            code="E_DIFF_SHAPE",
        )
    if difference.dtype != np.float64:
        raise MalformedSafetensors(
            f"diff tensor for '{name}' has dtype {difference.dtype}, expected float64 (F64)",
            hint="the diff must be written by 'mbd-cert issue'",
            code="E_DIFF_DTYPE",
        )
    rebuilt: np.ndarray = (post.astype(np.float64) - difference).astype(post.dtype)
    return rebuilt


def array_manifest_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """Return the manifest digest of in-memory arrays, as for a safetensors file.

    It equals the ``manifest_digest`` of a safetensors file holding exactly these
    arrays with empty metadata (SPEC.md, section 4.1), so the saliency mask digest can
    be checked against the mask tensors of the diff file.
    """
    entries = []
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        data = array.tobytes() if array.dtype != np.bool_ else array.astype(np.uint8).tobytes()
        entries.append(
            {
                "name": name,
                "dtype": _DTYPE_NAMES[array.dtype],
                "shape": list(array.shape),
                "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
            }
        )
    payload = rfc8785.dumps({"metadata": {}, "tensors": entries})
    return "sha256:" + hashlib.sha256(payload).hexdigest()
