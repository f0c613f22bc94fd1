"""Check the checkpoint, the probe set and the options against each other before a deletion.

:func:`check_deletion` runs before any model is built, so a deletion that cannot be
certified, or that a verifier could not afford to recompute, fails before any work.
:func:`removed_tensors` and :func:`require_eligible_parameters` name the tensors the
deletion zeroes and those the mask may select.

Stability: internal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mbd_cert import _safetensors
from mbd_cert._groups import eligible_names
from mbd_cert._issue_checks import (
    check_probe_coverage,
    reject_nonfinite,
    reject_unlisted_deletion,
    reject_weight_dtype,
)
from mbd_cert._torch_model import eligible_parameters
from mbd_cert._work_limits import (
    check_activation_work,
    check_evidence_work,
    check_operation_work,
    check_update_work,
)
from mbd_cert.arch import Architecture, get_architecture
from mbd_cert.checkpoint import ProbeSet
from mbd_cert.errors import InputError, IssuanceError, MalformedData

if TYPE_CHECKING:
    from mbd_cert.issue import IssueOptions

logger = logging.getLogger(__name__)

# verify_leakage.MIN_GROUP, repeated because mbd_cert.verify_leakage imports
# scipy.optimize; a unit test keeps the two equal.
MEMBERSHIP_MIN_GROUP = 10


def check_deletion(
    config_doc: Mapping[str, Any],
    pre_model: _safetensors.LoadedFile,
    probe: ProbeSet,
    options: IssueOptions,
    previous: Sequence[Any],
) -> tuple[Architecture, dict[str, Any], list[str]]:
    """Check that the checkpoint's model can lose ``options.modality`` in a certificate.

    Returns:
        The architecture, the validated config and the modalities deleted before.

    Raises:
        InputError: The modality or the probe set does not fit the model, a weight has a
            dtype the release cannot keep, or the work a verifier would repeat is over
            its limits.
        MalformedData: The config names another version of the architecture.
        IssuanceError: The modality is already deleted or is the last one left, the
            chain lists fewer deletions than the model has (``E_CHAIN_BROKEN``), no
            probe sample observes the modality, or a weight is not finite.
    """
    pre_tensors = pre_model.tensors
    architecture = get_architecture(str(config_doc["architecture"]))
    version = config_doc.get("architecture_version")
    if version != architecture.version:
        # The same check as evaluate's: another version of the code may build other
        # tensors from the same config, and the certificate records this release's.
        raise MalformedData(
            f"checkpoint config: architecture_version is {version!r}, this release has "
            f"{architecture.version!r} of {architecture.name!r}",
            hint="issue with the release the checkpoint was trained with, or train it "
            "again with this one",
        )
    # The released model keeps the checkpoint's dtypes, so level 1's dtype rule holds
    # for the checkpoint too (R-DEL-2).
    reject_weight_dtype(architecture, {
        name: info.dtype for name, info in pre_model.header.tensors.items()})
    config = architecture.validate_config(config_doc["config"])
    modality = options.modality
    deleted = list(config.get("deleted_modalities", []))
    remaining = [m for m in config["modalities"] if m not in deleted]
    if modality not in config["modalities"]:
        raise InputError(
            f"modality {modality!r} is not in the model's modalities {config['modalities']}",
            hint=f"pass --modality with one that the model still uses: {', '.join(remaining)}",
            code="E_PARAMETER_INVALID",
        )
    if modality in deleted:
        raise IssuanceError(
            f"modality {modality!r} is already deleted from this model (deleted: "
            f"{', '.join(deleted)})",
            hint=f"pass --modality with one that the model still uses: {', '.join(remaining)}",
        )
    if len(deleted) > len(previous):
        # Each certified deletion adds one modality, so the chain needs at least as many
        # links. Without them the budget would restart from zero (SPEC.md, R-CHAIN-9).
        raise IssuanceError(
            f"the checkpoint's model already has {', '.join(map(repr, deleted))} deleted, "
            f"but the chain before it has {len(previous)} certificate(s)",
            hint="pass --previous with the certificate of the last deletion, or issue from "
            "that deletion's output directory",
            code="E_CHAIN_BROKEN",
        )
    reject_unlisted_deletion(architecture, config, pre_tensors)
    reject_nonfinite(pre_tensors, "the checkpoint's model", hint=(
        "train the model again: a verifier rejects NaN or infinite weights (R-DEL-3)"))
    if not [m for m in config["modalities"] if m != modality and m not in deleted]:
        raise IssuanceError(
            f"cannot delete {modality!r}: {', '.join(map(repr, deleted))} already deleted, "
            "and a model must keep at least one modality",
            hint="retrain without this data, or retire the model",
        )
    if probe.modalities != list(config["modalities"]):
        raise InputError(
            f"probe set modalities {probe.modalities} differ from the model's "
            f"{config['modalities']}",
            code="E_DATA_MALFORMED",
        )
    check_probe_coverage(probe, modality, deleted)
    members = int(np.count_nonzero(probe.member))
    if min(members, probe.size - members) < MEMBERSHIP_MIN_GROUP:
        logger.warning(
            "the probe set has %d members and %d non-members: level 3's membership probe "
            "needs %d of each and will report inconclusive. Pass a probe set with both "
            "(mbd-cert train writes one)", members, probe.size - members,
            MEMBERSHIP_MIN_GROUP)
    check_update_work(options.steps, probe.size, source="issue options")
    check_activation_work(architecture.activation_entries(config)
                          if architecture.activation_entries is not None else None,
                          probe.size, source="checkpoint config and probe set")
    reference_runs = (options.reference_runs
                      if options.sensitivity_method == "reference-retrain" else 0)
    if reference_runs:
        check_evidence_work(reference_runs, options.steps, probe.size, source="issue options")
    check_operation_work(architecture.forward_operations(config)
                         if architecture.forward_operations is not None else None,
                         options.steps, probe.size, runs=reference_runs,
                         source="checkpoint config, probe set and issue options")
    return architecture, config, deleted


def removed_tensors(
    architecture: Any, config: Mapping[str, Any], modality: str, tensors: Mapping[str, np.ndarray]
) -> list[str]:
    """Return the tensors of the ``modality`` encoder, which the deletion zeroes.

    Raises:
        IssuanceError: The model has none (``E_EMPTY_DELETION``).
    """
    prefixes = architecture.encoder_prefixes(config, modality)
    removed = eligible_names(list(tensors), prefixes)
    if not removed:
        raise IssuanceError(
            f"the model has no encoder tensor for modality {modality!r}",
            hint="an empty deletion cannot be certified (SPEC.md, R-ISS-3)",
            code="E_EMPTY_DELETION",
        )
    return removed


def require_eligible_parameters(model: torch.nn.Module, groups: Sequence[str],
                                removed: Sequence[str], modality: str) -> list[str]:
    """Return the tensors of ``groups`` that the mask may select, outside ``removed``.

    Raises:
        InputError: No tensor is eligible (``E_PARAMETER_INVALID``).
    """
    names = eligible_parameters(model, groups, removed)
    if not names:
        only_removed = bool(eligible_parameters(model, groups, []))
        raise InputError(
            f"the eligible groups {groups} match no tensor of the model"
            + (f" outside the {modality} encoder, which the deletion removes" if only_removed
               else ""),
            hint="the mask selects from tensors the released model keeps: pass --eligible "
            "with other prefixes (the default is fusion and the modality's generator); "
            "'mbd-cert inspect' on the checkpoint's model lists the tensor names",
            code="E_PARAMETER_INVALID")
    return names
