"""Write the files of an issue into its staging directory, as the certificate commits them.

:func:`write_release` writes the released model, the diff with its masks, the copies
of the probe and evaluation sets, the copies of the earlier certificates and, with an
auditor key, the sealed audit bundle. Before it writes a copy of an input, it checks
that the input is still the bytes the deletion read (SPEC.md, R-ISS-5).

Stability: internal.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mbd_cert import _safetensors
from mbd_cert.chain import ChainLink, write_chain_copies
from mbd_cert.sealing import seal_bundle

MODEL_FORMAT = "mbd-cert-model/1"


@dataclass(frozen=True)
class ReleaseFiles:
    """Digests of the files written, and the entries the certificate lists for them."""

    post_digests: _safetensors.FileDigests
    diff_digests: _safetensors.FileDigests
    probe_digests: _safetensors.FileDigests
    chain_listing: list[dict[str, Any]]
    sealed: dict[str, str] | None


def write_release(
    staging: Path,
    *,
    architecture_name: str,
    model_path: Path,
    pre_model: _safetensors.LoadedFile,
    post_tensors: Mapping[str, np.ndarray],
    diff_tensors: Mapping[str, np.ndarray],
    probe_path: Path,
    probe_digests: _safetensors.FileDigests,
    eval_path: Path | None,
    eval_digests: _safetensors.FileDigests | None,
    previous: Sequence[ChainLink],
    auditor_key: Any,
    certificate_id: str,
) -> ReleaseFiles:
    """Write every output file but the certificate into ``staging``.

    ``pre_model``, ``probe_digests`` and ``eval_digests`` come from the reads that
    hashed the bytes they parsed.

    Raises:
        MalformedSafetensors: ``E_SAFETENSORS_CHANGED`` when the model, the probe set
            or the evaluation set changed since it was read.
        OSError: A file cannot be written.
    """
    model_meta = {"format": MODEL_FORMAT, "architecture": architecture_name}
    # The certificate commits the digests of the bytes the deletion read. A model
    # file that differs from them now was rewritten during the run (R-ISS-5).
    _safetensors.check_unchanged(model_path, pre_model.digests,
                                 _safetensors.file_digest(model_path),
                                 digest_of="the file now")
    post_digests = _safetensors.write_safetensors(
        staging / "model.safetensors", post_tensors, model_meta
    )
    diff_digests = _safetensors.write_safetensors(
        staging / "diff.safetensors", diff_tensors, {"format": "mbd-cert-diff/1"}
    )
    # The copies must be the bytes the probe and evaluation sets were parsed from,
    # and a file rewritten since it was read is not (R-ISS-5). A copy with the file
    # digest of those bytes has the same tensor digests, so those are not recomputed.
    shutil.copyfile(probe_path, staging / "probe.safetensors")
    _safetensors.check_unchanged(probe_path, probe_digests,
                                 _safetensors.file_digest(staging / "probe.safetensors"),
                                 digest_of="its copy in the output")
    if eval_path is not None:
        # Kept so that a later deletion from this directory reports utility too.
        shutil.copyfile(eval_path, staging / "eval.safetensors")
        assert eval_digests is not None, "issue() passes eval_digests with eval_path"
        _safetensors.check_unchanged(eval_path, eval_digests,
                                     _safetensors.file_digest(staging / "eval.safetensors"),
                                     digest_of="its copy in the output")
    chain_listing = write_chain_copies(previous, staging)
    sealed = None
    if auditor_key is not None:
        sealed = seal_bundle(
            staging,
            ["diff.safetensors", "probe.safetensors"],
            auditor_key,
            certificate_id,
        )

    return ReleaseFiles(post_digests=post_digests, diff_digests=diff_digests,
                        probe_digests=probe_digests, chain_listing=chain_listing,
                        sealed=sealed)
