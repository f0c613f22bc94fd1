"""Reading the released model and the audit bundle for levels 2 and 3, with layout checks.

:func:`load_bundle` reads the files a level-2 or level-3 check needs and rejects a
bundle whose tensors do not fit the model before any claim is tested.
:func:`rebuild_pre` rebuilds the pre-deletion model as ``post - diff``.

Stability: internal; :mod:`mbd_cert.verify_recompute` re-exports both names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mbd_cert import _paths
from mbd_cert._work_limits import check_activation_work
from mbd_cert.arch import Architecture, get_architecture
from mbd_cert.checkpoint import ProbeSet, read_probe_set, read_tensors
from mbd_cert.errors import InputError, MalformedData, MalformedSafetensors

# The objectives level 2 recomputes: the architecture's forget_objective and
# retain_objective, under the names the issuer records (SPEC.md, sections 6.2 and 6.3).
RECOMPUTED_OBJECTIVES = {
    "saliency.objective": "forget-prediction-gap",
    "update.objective": "retain-task-l1-deleted",
}


@dataclass
class Bundle:
    """Everything level 2 and 3 read, checked for layout, before any claim is tested."""

    architecture: Architecture
    modality: str
    config_pre: dict[str, Any]
    config_post: dict[str, Any]
    post: dict[str, np.ndarray]
    diff: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    probe: ProbeSet
    removed: list[str]
    eligible: list[str]


def load_bundle(doc: Mapping[str, Any], model_path: Path, bundle_dir: Path) -> Bundle:
    """Read the released model and the audit bundle and check their layout.

    Raises:
        InputError: A file is missing or malformed, a diff tensor names no model tensor
            or has the wrong shape or dtype (``E_DIFF_SHAPE``, ``E_DIFF_DTYPE``), or the
            certificate names an objective that level 2 does not recompute
            (``E_LEVEL_UNAVAILABLE``), or the architecture builds a model that contains one
            tensor under two names (``E_ARCHITECTURE_TENSORS_SHARED``).
        LimitExceeded: The forward passes over the probe set would compute more values
            than ``MAX_ACTIVATION_ENTRIES`` (``E_LIMIT_EXCEEDED``).
    """
    _require_recomputed_objectives(doc)
    architecture = get_architecture(doc["subject_model"]["architecture"]["name"])
    config_post = architecture.validate_config(doc["subject_model"]["architecture"]["config"])
    modality = doc["deletion"]["modality"]
    config_pre = dict(config_post)
    config_pre["deleted_modalities"] = [
        m for m in config_post.get("deleted_modalities", []) if m != modality
    ]
    post = read_tensors(model_path)
    diff_path = _paths.resolve_artefact(bundle_dir, doc["audit_bundle"]["diff"]["path"])
    probe_path = _paths.resolve_artefact(bundle_dir, doc["audit_bundle"]["probe"]["path"])
    raw = read_tensors(diff_path)
    diff: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    for key, array in raw.items():
        kind, _, name = key.partition(".")
        if kind not in ("diff", "mask") or name not in post:
            raise MalformedData(
                f"{diff_path}: tensor '{key}' is neither diff.<name> nor mask.<name> of a "
                "model tensor",
                hint="the diff belongs to another model; use the audit bundle of this certificate",
            )
        if tuple(array.shape) != tuple(post[name].shape):
            raise MalformedSafetensors(
                f"{diff_path}: '{key}' has shape {list(array.shape)}, the model tensor has "
                f"{list(post[name].shape)}",
                code="E_DIFF_SHAPE",
            )
        expected = np.float64 if kind == "diff" else np.bool_
        if array.dtype != expected:
            raise MalformedSafetensors(
                f"{diff_path}: '{key}' has dtype {array.dtype}, expected {np.dtype(expected)}",
                code="E_DIFF_DTYPE",
            )
        (diff if kind == "diff" else masks)[name] = array
    probe = read_probe_set(probe_path, modalities=config_post["modalities"])
    # Before any forward pass (R-LIM-7): the config can make one tiny probe sample cost
    # terabytes of activations.
    per_sample = (architecture.activation_entries(config_pre)
                  if architecture.activation_entries is not None else None)
    check_activation_work(per_sample, probe.size, source="certificate")
    removed = sorted(doc["deletion"]["removed_tensors"])
    # The issuer's rule, from the model that the pre-deletion config builds (R-SAL-1).
    # The build also rejects one tensor under two names (R-ARCH-9) before any check.
    from mbd_cert._torch_model import build_unloaded, eligible_parameters

    model = build_unloaded(architecture, config_pre, post)
    eligible = eligible_parameters(model, doc["saliency"]["eligible_groups"], removed)
    return Bundle(architecture, modality, config_pre, config_post, post, diff, masks, probe,
                  removed, eligible)


def _require_recomputed_objectives(doc: Mapping[str, Any]) -> None:
    """Reject a certificate whose mask or update claims an objective level 2 cannot recompute.

    Level 2 would otherwise recompute its own objective and report a pass for a claim
    about another one (SPEC.md, R-LVL-1).
    """
    for field, name in RECOMPUTED_OBJECTIVES.items():
        section, _, member = field.partition(".")
        stated = doc[section][member]
        if stated != name:
            raise InputError(
                f"{field} is {stated!r}; levels 2 and 3 recompute only {name!r}",
                hint="verify at level 1, or with a release that implements that objective",
                code="E_LEVEL_UNAVAILABLE",
            )


def rebuild_pre(bundle: Bundle) -> dict[str, np.ndarray]:
    """Return ``float64(post) - diff`` cast to each tensor's dtype (SPEC.md, R-DIFF-2)."""
    pre = {}
    for name, value in bundle.post.items():
        if name in bundle.diff:
            pre[name] = (value.astype(np.float64) - bundle.diff[name]).astype(value.dtype)
        else:
            pre[name] = value
    return pre
