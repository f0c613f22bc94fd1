"""Read the inputs of an issue and check them against the chain the deletion continues.

:func:`previous_chain` loads the earlier certificates and checks that the checkpoint's
model is the one the last of them released. :func:`read_inputs` then reads the config,
the model, the probe set and the evaluation set, each in one pass that hashes the bytes
it parses (SPEC.md, R-ISS-5).

Stability: internal.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mbd_cert import _safetensors, certificate, chain, errors
from mbd_cert._issue_checks import check_evaluation_set, check_labels, check_probe_size
from mbd_cert.checkpoint import ProbeSet, load_probe_set, read_config

if TYPE_CHECKING:  # mbd_cert.issue imports this module
    from mbd_cert.issue import IssueOptions

logger = logging.getLogger(__name__)



def previous_chain(checkpoint_dir: Path, options: IssueOptions) -> list[chain.ChainLink]:
    """Load the chain this deletion continues, oldest first; empty for a first deletion.

    The previous certificate is ``options.previous`` or, when the checkpoint directory is
    the output of an earlier ``issue``, its ``cert.json``. Its own earlier links are
    looked up beside it (the ``chain-NNNNN.json`` copies the issuer writes).

    Raises:
        InputError: The previous certificate is missing or malformed.
        VerificationFailed: Its chain is broken (``E_CHAIN_*``).
        IssuanceError: The checkpoint's model is not the model the previous
            certificate released (``E_CHAIN_BROKEN``).
    """
    path = options.previous
    if path is None and (checkpoint_dir / "cert.json").is_file():
        path = checkpoint_dir / "cert.json"
    if path is None:
        return []
    doc = certificate.load_certificate(path)
    links = chain.walk_chain(doc, Path(path).parent)
    model_path = checkpoint_dir / "model.safetensors"
    if not model_path.exists():
        raise errors.FileMissing(f"model not found: {model_path}")
    digests = _safetensors.digest_file(model_path)
    released = doc["subject_model"]["post_deletion"]
    if digests.manifest_digest != released["manifest_digest"]:
        raise errors.IssuanceError(
            f"{model_path} has manifest digest {digests.manifest_digest}, but the previous "
            f"certificate {path} released {released['manifest_digest']}",
            hint="continue a chain from the model the previous deletion released",
            code="E_CHAIN_BROKEN",
        )
    return links


def config_from_certificate(doc: dict[str, Any]) -> dict[str, Any]:
    """Rebuild a checkpoint ``config.json`` from a certificate's released architecture."""
    architecture = doc["subject_model"]["architecture"]
    return {
        "architecture": architecture["name"],
        "architecture_version": architecture["version"],
        "config": dict(architecture["config"]),
    }


def warn_other_issuers(previous: Sequence[chain.ChainLink], private_key: Any) -> None:
    """Warn when earlier certificates of the chain were signed with other keys.

    Such a chain is valid, but a verifier must then trust every issuer key of it.
    """
    from mbd_cert import signing

    own_key_id = signing.key_id(private_key.public_key())
    others = sorted({link.doc["issuer"]["key_id"] for link in previous} - {own_key_id})
    if others:
        logger.warning(
            "earlier certificates of this chain were signed with other keys (%s). "
            "Verifiers will need --key for each of them as well as for this key %s",
            ", ".join(others), own_key_id)


@dataclass(frozen=True)
class IssueInputs:
    """The files a deletion uses, with the digests of the bytes that were parsed.

    ``eval_path`` and ``evaluation`` are None when no evaluation set was given.
    """

    config_doc: dict[str, Any]
    model_path: Path
    pre_model: _safetensors.LoadedFile
    probe: ProbeSet
    probe_path: Path
    probe_digests: _safetensors.FileDigests
    evaluation: ProbeSet | None
    eval_path: Path | None
    eval_digests: _safetensors.FileDigests | None


def read_inputs(checkpoint_dir: Path, previous: Sequence[chain.ChainLink],
                eval_set: Path | None, modality: str) -> IssueInputs:
    """Read the config, model, probe set and evaluation set of the deletion.

    Args:
        checkpoint_dir: The checkpoint, or the output directory of an earlier issue.
        previous: The chain from :func:`previous_chain`; empty for a first deletion.
        eval_set: The evaluation set; None takes ``eval.safetensors`` of the
            checkpoint directory when there is one.
        modality: The modality to delete, which the evaluation set should observe.

    Returns:
        The inputs, as read.

    Raises:
        InputError: A file is missing or malformed, the probe set breaks an issuer
            rule (``E_DATA_MALFORMED``), or the model changed since
            :func:`previous_chain` checked it (``E_SAFETENSORS_CHANGED``).
    """
    probe_path = checkpoint_dir / "probe.safetensors"
    if not previous:
        config_doc = read_config(checkpoint_dir / "config.json")
    else:
        # The model is the one the previous certificate released (checked above), so
        # its config is the certified one. A config.json beside it may be the training
        # config, which does not list the earlier deletions.
        config_doc = config_from_certificate(previous[-1].doc)
        if (checkpoint_dir / "config.json").exists() and \
                read_config(checkpoint_dir / "config.json") != config_doc:
            logger.warning("%s differs from the config the previous certificate released; "
                           "using the certificate's", checkpoint_dir / "config.json")
        if not probe_path.exists():
            probe_path = checkpoint_dir / previous[-1].doc["audit_bundle"]["probe"]["path"]
    model_path = checkpoint_dir / "model.safetensors"
    if not model_path.exists():
        raise errors.FileMissing(f"model not found: {model_path}")
    # Each input is read in one pass that hashes the bytes it parses, so the digests
    # committed, and the copies written, can be checked against what was used (R-ISS-5).
    # NOTE: a first deletion reads config.json above, on its own. A checkout that
    # replaces it and the model between the two reads pairs the new model with the old
    # config.
    pre_model = _safetensors.load_file(model_path)
    if previous:
        check_released_model(model_path, pre_model.digests, previous[-1])
    probe, probe_digests = load_probe_set(probe_path)
    # Rules that only the issuer applies (SPEC.md, R-PRB-3 to R-PRB-5).
    check_labels(probe, probe_path)
    check_probe_size(probe, probe_path)
    if eval_set is None and (checkpoint_dir / "eval.safetensors").exists():
        eval_set = checkpoint_dir / "eval.safetensors"
    evaluation = None
    eval_digests = None
    if eval_set is None:
        logger.warning(
            "no evaluation set: the certificate's utility metrics will only state that "
            "none was given, and they are the only sign of a release that lost its "
            "utility. Pass --eval-set with held-out samples in the probe layout "
            "(mbd-cert train writes eval.safetensors)")
    else:
        evaluation, eval_digests = load_probe_set(eval_set, modalities=probe.modalities)
        check_evaluation_set(evaluation, eval_set, modality)
    return IssueInputs(
        config_doc=config_doc,
        model_path=model_path,
        pre_model=pre_model,
        probe=probe,
        probe_path=probe_path,
        probe_digests=probe_digests,
        evaluation=evaluation,
        eval_path=eval_set,
        eval_digests=eval_digests,
    )


def check_released_model(model_path: Path, loaded: _safetensors.FileDigests,
                         link: chain.ChainLink) -> None:
    """Check that the model read is still the one the previous certificate released.

    :func:`previous_chain` checked the file before it was read for the deletion, so a
    mismatch here means the file changed in between.

    Raises:
        MalformedSafetensors: ``E_SAFETENSORS_CHANGED`` when the manifest digests differ.
    """
    released = link.doc["subject_model"]["post_deletion"]["manifest_digest"]
    if loaded.manifest_digest != released:
        raise errors.MalformedSafetensors(
            f"{model_path}: file changed while issue was running: it had the manifest "
            f"digest {released} that the previous certificate released, and then "
            f"{loaded.manifest_digest} when it was read for the deletion",
            code="E_SAFETENSORS_CHANGED",
            hint="keep the checkpoint's files unchanged until issue finishes and run issue "
            "again. Nothing was written",
        )

