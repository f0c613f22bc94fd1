"""The torch half of :func:`mbd_cert.issue.issue`: mask, update, noise, outputs.

Stability: internal.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

import mbd_cert
from mbd_cert import _safetensors, certificate, mechanism, signing
from mbd_cert._commitment import file_commitment
from mbd_cert._groups import eligible_names
from mbd_cert._torch_model import build_model, predict, probe_batch
from mbd_cert._work_limits import check_update_work
from mbd_cert.arch import Batch, get_architecture
from mbd_cert.chain import write_chain_copies
from mbd_cert.checkpoint import ProbeSet
from mbd_cert.diff import MASK_PREFIX, array_manifest_digest, build_diff
from mbd_cert.errors import InputError, IssuanceError
from mbd_cert.issue import IssueOptions, chain_account, draw_noise, sensitivity_for
from mbd_cert.metrics import regression_metrics
from mbd_cert.proxy_quality import forget_value, measure_proxy_quality
from mbd_cert.saliency import gradient_moments, saliency_scores, top_k_mask
from mbd_cert.sealing import seal_bundle
from mbd_cert.sensitivity import reference_retrain
from mbd_cert.update import masked_update

logger = logging.getLogger(__name__)

MODEL_FORMAT = "mbd-cert-model/1"
FORGET_OBJECTIVE = "forget-prediction-gap"
RETAIN_OBJECTIVE = "retain-task-l1-deleted"
# Scores closer than this (relative to the cut value) to the top-k cut may swap across
# devices and thread counts, so the verifier accepts swaps inside this band.
SCORE_TOLERANCE = 1e-6
# Significance level the certificate states for the level-2 residual tests. An honest
# certificate fails them with about this probability.
RESIDUAL_ALPHA = 0.01


def default_eligible_groups(modality: str) -> list[str]:
    """Return the default mask groups: the fusion network and the modality's generator.

    The deleted modality's own encoder is removed outright, and the head and the
    other encoders carry most of the utility, so noise is kept off them.
    """
    return ["fusion", f"generators.{modality}"]


# Torch intra-op threads during issuance come from ``IssueOptions.threads`` (default 1).
# The default model's operations are small, so threads mostly wait for each other. On
# a 2-core machine shared with other processes, `mbd-cert issue` on the synthetic
# checkpoint used 5.3 s of CPU with one thread and 18 to 32 s with two (measured,
# docs/benchmarks.md). The trainer defaults to one thread as well.


def run(**kwargs: Any) -> dict[str, Any]:
    """Run the deletion and write the outputs; see :func:`mbd_cert.issue.issue`.

    Torch runs with ``options.threads`` intra-op threads meanwhile, restored afterwards.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(kwargs["options"].threads)
    try:
        return _run(**kwargs)
    finally:
        torch.set_num_threads(previous)


def _run(
    *,
    config_doc: Mapping[str, Any],
    model_path: Path,
    pre_tensors: dict[str, np.ndarray],
    probe: ProbeSet,
    probe_path: Path,
    evaluation: ProbeSet | None,
    out_dir: Path,
    options: IssueOptions,
    private_key: Any,
    progress: Callable[[str, int, int], None] | None,
    eval_path: Path | None = None,
    previous: Sequence[Any] = (),
) -> dict[str, Any]:
    """Run the deletion and write the outputs; see :func:`mbd_cert.issue.issue`."""
    architecture = get_architecture(str(config_doc["architecture"]))
    config = architecture.validate_config(config_doc["config"])
    modality = options.modality
    if modality not in config["modalities"]:
        raise InputError(
            f"modality {modality!r} is not in the model's modalities {config['modalities']}",
            code="E_PARAMETER_INVALID",
        )
    deleted = list(config.get("deleted_modalities", []))
    if modality in deleted:
        raise IssuanceError(f"modality {modality!r} is already deleted from this model")
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
    check_update_work(options.steps, probe.size, source="issue options")
    torch.manual_seed(options.seed)
    column = probe.modalities.index(modality)

    # Step 1 (SPEC §6.2): saliency of the forget objective on the pre-deletion model.
    model_pre = build_model(architecture, config, pre_tensors)
    batch = probe_batch(probe)
    groups = options.eligible_groups or default_eligible_groups(modality)
    removed = _removed_tensors(architecture, config, modality, pre_tensors)
    names = [n for n in eligible_names(list(pre_tensors), groups) if n not in removed]
    if not names:
        raise InputError(f"the eligible groups {groups} match no tensor of the model")
    forget_weights = torch.from_numpy(probe.present[:, column].astype(np.float64))
    if float(forget_weights.sum()) == 0.0:
        raise IssuanceError(f"no probe sample has modality {modality!r} observed")

    def forget(model: torch.nn.Module, sub: Mapping[str, Any]) -> torch.Tensor:
        return architecture.forget_objective(model, cast(Batch, sub), modality)

    def report(stage: str, total: int) -> Callable[[int], None] | None:
        if progress is None:
            return None
        return lambda done: progress(stage, done, total)

    independent = architecture.independent_samples
    gradient, fisher = gradient_moments(
        model_pre, names, forget, batch, forget_weights, report("saliency", probe.size),
        independent_samples=independent,
    )
    parameters = dict(model_pre.named_parameters())
    scores = saliency_scores({n: parameters[n] for n in names}, gradient, fisher)
    nonfinite = int(sum(np.count_nonzero(~np.isfinite(v)) for v in scores.values()))
    if nonfinite:
        raise IssuanceError(
            f"{nonfinite} saliency scores are not finite: the model or the probe set has "
            "values too large for the score (SPEC.md, R-SAL-4)",
            hint="check the checkpoint for NaN, infinite or extreme weights",
            code="E_SCORES_NONFINITE",
        )
    masks, cut = top_k_mask(scores, options.top_k_fraction)
    mask_size = int(sum(int(m.sum()) for m in masks.values()))
    eligible_count = int(sum(m.size for m in masks.values()))
    proxy_quality = None
    if options.proxy_sample_size:
        proxy_quality = measure_proxy_quality(
            model_pre,
            scores,
            masks,
            forget_value(forget, batch, forget_weights, independent_samples=independent),
            sample_size=options.proxy_sample_size,
            seed=options.seed,
        ).to_json()

    # Step 2 (SPEC §6.1): structural removal.
    post_config = dict(config)
    post_config["deleted_modalities"] = sorted([*config.get("deleted_modalities", []), modality])
    start = dict(pre_tensors)
    for name in removed:
        start[name] = np.zeros_like(pre_tensors[name])
    model_removed = build_model(architecture, post_config, start)

    # Step 3 (SPEC §6.3): deterministic masked update on the retain objective, clipped.
    def retain(model: torch.nn.Module, sub: Mapping[str, Any]) -> torch.Tensor:
        return architecture.retain_objective(model, cast(Batch, sub), modality)

    retain_weights = torch.ones(probe.size, dtype=torch.float64)
    if progress is not None:
        progress("update", 0, options.steps)
    update = masked_update(
        model_removed,
        masks,
        retain,
        batch,
        retain_weights,
        steps=options.steps,
        learning_rate=options.learning_rate,
        damping=options.damping,
        clip_norm=options.clip_norm,
        independent_samples=independent,
    )
    if progress is not None:
        progress("update", options.steps, options.steps)

    # Step 4 (SPEC §6.4): analytic Gaussian noise on every masked entry.
    sensitivity = sensitivity_for(options)
    evidence = None
    if options.sensitivity_method == "reference-retrain":
        estimate = reference_retrain(
            model_removed,
            masks,
            retain,
            batch,
            update,
            runs=options.reference_runs,
            safety_factor=options.safety_factor,
            seed=options.seed,
            steps=options.steps,
            learning_rate=options.learning_rate,
            damping=options.damping,
            clip_norm=options.clip_norm,
            progress=report("reference retrain", options.reference_runs),
            independent_samples=independent,
        )
        sensitivity, evidence = estimate.sensitivity, estimate.evidence()
    sigma = mechanism.analytic_gaussian_sigma(options.epsilon, options.delta, sensitivity)
    account = chain_account(list(previous), options, sigma, sensitivity)  # R-CHAIN-5
    noise = draw_noise({n: masks[n].shape for n in names}, sigma, options.noise_seed)
    post_tensors = dict(start)
    for name in names:
        before = pre_tensors[name].astype(np.float64)
        moved = before + update.displacement[name] + np.where(masks[name], noise[name], 0.0)
        post_tensors[name] = np.where(masks[name], moved, before).astype(pre_tensors[name].dtype)
    changed = sorted(set(removed) | {n for n in names if masks[n].any()})

    # Step 5: utility before and after, on held-out samples.
    utility = _utility(
        architecture, config, post_config, pre_tensors, post_tensors, evaluation, modality
    )

    # Step 6 (SPEC §6.5): write everything into a temporary directory, then swap it in.
    diff_tensors: dict[str, np.ndarray] = build_diff(pre_tensors, post_tensors, changed)
    for name in names:
        diff_tensors[MASK_PREFIX + name] = masks[name]
    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=parent))
    try:
        model_meta = {"format": MODEL_FORMAT, "architecture": architecture.name}
        pre_digests = _safetensors.digest_file(model_path)
        post_digests = _safetensors.write_safetensors(
            staging / "model.safetensors", post_tensors, model_meta
        )
        diff_digests = _safetensors.write_safetensors(
            staging / "diff.safetensors", diff_tensors, {"format": "mbd-cert-diff/1"}
        )
        shutil.copyfile(probe_path, staging / "probe.safetensors")
        probe_digests = _safetensors.digest_file(staging / "probe.safetensors")
        if eval_path is not None:
            # Kept so that a later deletion from this directory reports utility too.
            shutil.copyfile(eval_path, staging / "eval.safetensors")
        chain_listing = write_chain_copies(previous, staging)
        certificate_id = str(uuid.uuid4())
        sealed = None
        if options.auditor_key is not None:
            sealed = seal_bundle(
                staging,
                ["diff.safetensors", "probe.safetensors"],
                options.auditor_key,
                certificate_id,
            )

        key_id = signing.key_id(private_key.public_key())
        doc: dict[str, Any] = {
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
                "pre_deletion": file_commitment(pre_digests, _safetensors.read_header(model_path)),
                "post_deletion": file_commitment(
                    post_digests, _safetensors.read_header(staging / "model.safetensors")
                ),
            },
            "deletion": {"modality": modality, "removed_tensors": sorted(removed)},
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
                "norm_before_clip": update.norm_before_clip,
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
        signed = certificate.sign_certificate(doc, private_key)
        (staging / "cert.json").write_bytes(certificate.dump_certificate(signed))
        _set_modes(staging)
        _swap_in(staging, out_dir, force=options.force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote certificate %s to %s", signed["certificate_id"], out_dir)
    return signed


def _removed_tensors(
    architecture: Any, config: Mapping[str, Any], modality: str, tensors: Mapping[str, np.ndarray]
) -> list[str]:
    prefixes = architecture.encoder_prefixes(config, modality)
    removed = eligible_names(list(tensors), prefixes)
    if not removed:
        raise IssuanceError(
            f"the model has no encoder tensor for modality {modality!r}",
            hint="an empty deletion cannot be certified (SPEC.md, R-ISS-3)",
            code="E_EMPTY_DELETION",
        )
    return removed


def _artefact(path: str, digests: Any) -> dict[str, Any]:
    return {
        "path": path,
        "file_digest": digests.file_digest,
        "manifest_digest": digests.manifest_digest,
    }


def _utility(
    architecture: Any,
    config: Mapping[str, Any],
    post_config: Mapping[str, Any],
    pre_tensors: Mapping[str, np.ndarray],
    post_tensors: Mapping[str, np.ndarray],
    evaluation: ProbeSet | None,
    modality: str,
) -> dict[str, Any]:
    if evaluation is None:
        return {"split": "none", "note": "no evaluation set was given"}
    batch = probe_batch(evaluation, dtype=torch.float32)
    pre = build_model(architecture, config, pre_tensors, dtype=torch.float32)
    post = build_model(architecture, post_config, post_tensors, dtype=torch.float32)
    missing = dict(batch)
    present = batch["present"].clone()
    present[:, evaluation.modalities.index(modality)] = False
    missing["present"] = present
    label = evaluation.label.astype(np.float64)
    return {
        "split": "eval",
        "n": evaluation.size,
        "before": {
            "all": regression_metrics(predict(pre, batch), label),
            f"missing_{modality}": regression_metrics(predict(pre, missing), label),
        },
        "after": {f"deleted_{modality}": regression_metrics(predict(post, batch), label)},
    }


# The released model, the certificate and the chain copies are public; the audit
# bundle reveals pre-deletion weights and training samples (SPEC.md, section 12).
_PRIVATE_FILES = ("diff.safetensors", "probe.safetensors", "eval.safetensors")


def _set_modes(staging: Path) -> None:
    """Make public outputs readable under the user's umask and keep the bundle private."""
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o755 & ~umask)
    for path in staging.iterdir():
        private = path.name in _PRIVATE_FILES or path.suffix == ".sealed"
        path.chmod(0o600 if private else 0o644 & ~umask)


def _swap_in(staging: Path, out_dir: Path, *, force: bool) -> None:
    """Move the finished staging directory to ``out_dir`` (replacing it only with force)."""
    if out_dir.exists():
        if not force and any(out_dir.iterdir()):
            raise InputError(
                f"output directory {out_dir} appeared while issuing",
                hint="another process writes there; choose another --out",
                code="E_OUTPUT_EXISTS",
            )
        backup = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        out_dir.rename(backup)
        staging.rename(out_dir)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        staging.rename(out_dir)
