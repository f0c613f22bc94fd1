"""The torch half of :func:`mbd_cert.issue.issue`: mask, update, noise, outputs.

:func:`run` runs the deletion steps of SPEC.md section 6 in order, on two threads, and
writes the output files. :mod:`mbd_cert._issue_preflight` checks the inputs first,
:mod:`mbd_cert._issue_utility` computes the utility metrics,
:mod:`mbd_cert._issue_release` writes the files, :mod:`mbd_cert._issue_document` lays out
the certificate's fields and :mod:`mbd_cert._issue_outputs` stages the output directory
and moves it into place.

Stability: internal.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from mbd_cert import _safetensors, certificate, signing
from mbd_cert._background import Background, Cancelled, FirstComer
from mbd_cert._determinism import require_deterministic
from mbd_cert._issue_document import certificate_document
from mbd_cert._issue_options import default_eligible_groups
from mbd_cert._issue_outputs import create_staging, set_modes, swap_in
from mbd_cert._issue_preflight import (
    check_deletion,
    removed_tensors,
    require_eligible_parameters,
)
from mbd_cert._issue_privacy import (
    apply_noise,
    calibrated_sigma,
    chain_account,
    draw_noise,
    sensitivity_for,
)
from mbd_cert._issue_release import write_release
from mbd_cert._issue_utility import (
    utility_after_deletion,
    utility_before_deletion,
    utility_member,
)
from mbd_cert._torch_model import build_model, probe_batch, torch_threads
from mbd_cert.arch import Architecture, Batch, _mbd_gradients
from mbd_cert.checkpoint import ProbeSet
from mbd_cert.diff import MASK_PREFIX, build_diff
from mbd_cert.errors import InputError, IssuanceError
from mbd_cert.issue import IssueOptions
from mbd_cert.proxy_quality import ClosedForm, forget_value, measure_proxy_quality
from mbd_cert.saliency import gradient_moments, saliency_scores, top_k_mask
from mbd_cert.sensitivity import reference_retrain
from mbd_cert.update import masked_update

logger = logging.getLogger(__name__)

# stats.MIN_NORMALITY_SAMPLES, repeated because mbd_cert.stats imports scipy.stats
# (0.4 s); a unit test keeps the two equal.
NORMALITY_MIN_ENTRIES = 20


def _warn_zero_cut(scores: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> None:
    """Warn that the k-th largest |score| is 0, so part of the mask is arbitrary.

    Entries of score 0 tie, and the ranking breaks ties by flat index (R-SAL-2), so
    those masked entries are the first ones in tensor order, not salient ones.
    """
    zero = int(sum(np.count_nonzero(masks[n] & (scores[n] == 0.0)) for n in masks))
    masked = int(sum(np.count_nonzero(m) for m in masks.values()))
    nonzero = int(sum(np.count_nonzero(v) for v in scores.values()))
    logger.warning(
        "the saliency score at the mask's cut is 0: %d of the %d masked entries have score "
        "0, so they were chosen by flat index among ties, not by saliency, and the noise "
        "lands on them whether or not they hold the modality. The forget objective's "
        "per-sample gradients vanish there (an objective with batch statistics can cancel "
        "them). Check the forget objective, or lower --top-k so the mask holds at most "
        "the %d entries of non-zero score", zero, masked, nonzero)


def run(**kwargs: Any) -> dict[str, Any]:
    """Run the deletion and write the outputs; see :func:`mbd_cert.issue.issue`.

    Torch runs with ``options.threads`` intra-op threads meanwhile, restored afterwards.
    """
    # Stages started on a second thread are cancelled and joined when _run leaves, by
    # an exception or after taking their results.
    with torch_threads(kwargs["options"].threads), contextlib.ExitStack() as tasks:
        return _run(tasks=tasks, **kwargs)


def _run(
    *,
    tasks: contextlib.ExitStack,
    config_doc: Mapping[str, Any],
    model_path: Path,
    pre_model: _safetensors.LoadedFile,
    probe: ProbeSet,
    probe_path: Path,
    probe_digests: _safetensors.FileDigests,
    evaluation: ProbeSet | None,
    out_dir: Path,
    options: IssueOptions,
    private_key: Any,
    progress: Callable[[str, int, int], None] | None,
    eval_path: Path | None = None,
    eval_digests: _safetensors.FileDigests | None = None,
    previous: Sequence[Any] = (),
) -> dict[str, Any]:
    """Run the deletion and write the outputs; see :func:`mbd_cert.issue.issue`.

    ``pre_model``, ``probe_digests`` and ``eval_digests`` come from reads that hashed
    the bytes they parsed (R-ISS-5).
    """
    pre_tensors = pre_model.tensors
    architecture, config, deleted = check_deletion(config_doc, pre_model, probe, options,
                                                   previous)
    modality = options.modality
    column = probe.modalities.index(modality)

    model_pre = build_model(architecture, config, pre_tensors)
    batch = probe_batch(probe)
    groups = options.eligible_groups or default_eligible_groups(modality)
    removed = removed_tensors(architecture, config, modality, pre_tensors)
    names = require_eligible_parameters(model_pre, groups, removed, modality)
    forget_weights = torch.from_numpy(probe.present[:, column].astype(np.float64))

    def forget(model: torch.nn.Module, sub: Mapping[str, Any]) -> torch.Tensor:
        return architecture.forget_objective(model, cast(Batch, sub), modality)

    # Level 2 recomputes the mask from this objective, so it must be deterministic.
    # An objective that vmap refuses fails where vmap first runs it (R-ARCH-7).
    hint = ("remove the randomness, .item() calls and Python branches on tensor values "
            "from the objective and the model's forward pass (a verifier could not "
            "recompute the mask or the update); nothing was written")
    forget_name = f"the forget objective of architecture {architecture.name!r}"
    retain_name = f"the retain objective of architecture {architecture.name!r}"
    # The built-in objectives on a model of the built-in modules are deterministic, so
    # they need no test run. Their gradients are written out for the late layers
    # (mbd_cert.arch._mbd_gradients), which returns None for any other pairing.
    forget_gradients = _mbd_gradients.for_architecture(
        architecture, model_pre, cast(Batch, batch), modality, forget=True)
    if forget_gradients is None:
        require_deterministic(forget, model_pre, batch, objective_name=forget_name,
                              hint=hint)

    def retain(model: torch.nn.Module, sub: Mapping[str, Any]) -> torch.Tensor:
        return architecture.retain_objective(model, cast(Batch, sub), modality)

    def report(stage: str, total: int) -> Callable[[int], None] | None:
        if progress is None:
            return None
        return lambda done: progress(stage, done, total)

    independent = architecture.independent_samples

    # Step 2 (SPEC §6.1): structural removal. It comes first in time because the
    # update's preconditioner (the Fisher of the retain objective on the eligible
    # tensors) does not depend on the mask, so a second thread computes it while this
    # one computes the saliency scores (mbd_cert._background).
    post_config = dict(config)
    post_config["deleted_modalities"] = sorted([*deleted, modality])
    start = dict(pre_tensors)
    for name in removed:
        start[name] = np.zeros_like(pre_tensors[name])
    retain_weights = torch.ones(probe.size, dtype=torch.float64)
    logger.info("structural removal: %d tensors of the %s encoder set to zero",
                len(removed), modality)

    def update_fisher(
        stopping: threading.Event,
    ) -> tuple[torch.nn.Module, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]],
               Any]:
        def check(done: int) -> None:
            # Called after each chunk of samples, so a cancel waits for one chunk.
            if stopping.is_set():
                raise Cancelled("the update's Fisher was cancelled")

        removed_model = build_model(architecture, post_config, start)
        retain_gradients = _mbd_gradients.for_architecture(
            architecture, removed_model, cast(Batch, batch), modality, forget=False)
        # Level 2 recomputes the update from the retain objective on this model. A
        # failure here reaches the main thread when it collects the Fisher, before
        # anything is written.
        if retain_gradients is None:
            require_deterministic(retain, removed_model, batch, objective_name=retain_name,
                                  hint=hint)
        return removed_model, gradient_moments(
            removed_model, sorted(names), retain, batch, retain_weights, check,
            independent_samples=independent, objective_name=retain_name, hint=hint,
            closed_form=retain_gradients), retain_gradients

    preconditioner = tasks.enter_context(Background(update_fisher,
                                                    name="mbd-cert update Fisher"))

    # Step 1 (SPEC §6.2): saliency of the forget objective on the pre-deletion model.
    gradient, fisher = gradient_moments(
        model_pre, names, forget, batch, forget_weights, report("saliency", probe.size),
        independent_samples=independent, objective_name=forget_name, hint=hint,
        closed_form=forget_gradients,
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
    masked = int(sum(np.count_nonzero(m) for m in masks.values()))
    logger.info("saliency mask: %d of %d eligible entries in %d tensors (top-k %g)",
                masked, sum(v.size for v in scores.values()), len(names),
                options.top_k_fraction)
    if cut == 0.0:
        _warn_zero_cut(scores, masks)
    if masked < NORMALITY_MIN_ENTRIES:
        logger.warning(
            "only %d masked entries: level 2 needs at least %d for its normality test and "
            "reports it inconclusive with fewer. Raise --top-k, or widen --eligible",
            masked, NORMALITY_MIN_ENTRIES)

    # Step 5, first half: the pre-deletion utility metrics need only the checkpoint.
    # The second thread computes them on model_pre once its proxy check is done. The
    # main thread requests them only after that thread has finished.
    utility_before = FirstComer(lambda: utility_before_deletion(
        architecture, config, pre_tensors, evaluation, modality, reuse=model_pre))
    # Jobs the main thread offers the second one once its check is done; None ends them.
    offered: queue.Queue[FirstComer[Any] | None] = queue.Queue()

    def check_proxy(stopping: threading.Event) -> dict[str, Any] | None:
        quality = None
        if options.proxy_sample_size:
            value = forget_value(forget, batch, forget_weights,
                                 independent_samples=independent,
                                 closed_form=_closed_form(architecture, modality,
                                                          forget_gradients))
            quality = measure_proxy_quality(
                model_pre, scores, masks, value, sample_size=options.proxy_sample_size,
                seed=options.seed, stopping=stopping,
                local_parameters=architecture.local_parameters,
            ).to_json()
        if not stopping.is_set():
            utility_before.run_if_unclaimed()
        # Then run the jobs the main thread offers, until it sends None.
        while not stopping.is_set():
            try:
                job = offered.get(timeout=0.01)
            except queue.Empty:
                continue
            if job is None:
                break
            job.run_if_unclaimed()
        return quality

    # The proxy check reads only model_pre, which nothing else uses from here on, so it
    # runs on the second thread while this one runs steps 3 to 6 up to the certificate.
    proxy_check = tasks.enter_context(Background(check_proxy, name="mbd-cert proxy check"))

    # Step 3 (SPEC §6.3): deterministic masked update on the retain objective, clipped.
    if progress is not None:
        progress("update", 0, options.steps)
    model_removed, (retain_gradient, retain_fisher), retain_gradients = preconditioner.result()
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
        fisher=retain_fisher,
        closed_form=retain_gradients,
        gradient=retain_gradient,
    )
    if progress is not None:
        progress("update", options.steps, options.steps)
    logger.info("masked update: %d steps, displacement L2 norm %.6g before the clip, "
                "scaled by %.6g", options.steps, update.norm_before_clip, update.scale)

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
    sigma = calibrated_sigma(previous, options, sensitivity)
    account = chain_account(list(previous), options, sigma, sensitivity)  # R-CHAIN-5
    logger.info("noise: sigma %.6g for epsilon %g, delta %g, sensitivity %.6g (%s)",
                sigma, options.epsilon, options.delta, sensitivity,
                options.sensitivity_method)
    noise = draw_noise({n: masks[n].shape for n in names}, sigma, options.noise_seed)
    post_tensors, changed = apply_noise(pre_tensors, start, removed, names, masks,
                                        update.displacement, noise, sigma,
                                        options.sensitivity_method)

    # Step 5, second half: the released model's utility, on held-out samples.
    # It goes to the second thread if that one is free by now, while this one writes.
    # model_removed is not used after the noise, so it becomes the released model.
    utility_after = FirstComer(lambda: utility_after_deletion(
        architecture, post_config, post_tensors, evaluation, modality, reuse=model_removed))
    offered.put(utility_after)

    # Step 6 (SPEC §6.5): write everything into a temporary directory, then swap it in.
    diff_tensors: dict[str, np.ndarray] = build_diff(pre_tensors, post_tensors, changed)
    for name in names:
        diff_tensors[MASK_PREFIX + name] = masks[name]
    staging = create_staging(out_dir)
    try:
        certificate_id = str(uuid.uuid4())
        written = write_release(
            staging, architecture_name=architecture.name, model_path=model_path,
            pre_model=pre_model, post_tensors=post_tensors, diff_tensors=diff_tensors,
            probe_path=probe_path, probe_digests=probe_digests, eval_path=eval_path,
            eval_digests=eval_digests, previous=previous, auditor_key=options.auditor_key,
            certificate_id=certificate_id)

        # The released model's metrics first: the second thread may still be busy.
        after = utility_after.result()
        offered.put(None)
        proxy_quality = proxy_check.result()
        utility = utility_member(evaluation, utility_before.result(), after)
        doc = certificate_document(
            certificate_id=certificate_id,
            key_id=signing.key_id(private_key.public_key()),
            options=options,
            architecture=architecture,
            post_config=post_config,
            pre_header_digest=pre_model.header_digest,
            pre_digests=pre_model.digests,
            post_model=staging / "model.safetensors",
            post_digests=written.post_digests,
            removed=removed,
            groups=groups,
            masks=masks,
            cut=cut,
            proxy_quality=proxy_quality,
            norm_before_clip=update.norm_before_clip,
            sensitivity=sensitivity,
            evidence=evidence,
            sigma=sigma,
            account=account,
            previous=previous,
            chain_listing=written.chain_listing,
            diff_digests=written.diff_digests,
            probe_digests=written.probe_digests,
            sealed=written.sealed,
            utility=utility,
        )
        signed, text = certificate.sign_and_dump(doc, private_key)
        (staging / "cert.json").write_bytes(text)
        set_modes(staging)
        swap_in(staging, out_dir, force=options.force)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        # A full disk or a read-only file system is unusable output, not a bug (exit 2).
        raise InputError(
            f"failed to write the outputs of issue into {out_dir}: {exc.strerror or exc}",
            hint="free disk space or pass another --out directory",
            code="E_FILE_UNWRITABLE",
        ) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote certificate %s to %s", signed["certificate_id"], out_dir)
    return signed


def _closed_form(architecture: Architecture, modality: str,
                 gradients: _mbd_gradients.LateLayerGradients | None) -> ClosedForm | None:
    """Return a function computing the zeroed forget values for ``modality``, or None.

    None means that the architecture has no ``zeroed_forget``. ``gradients`` are the
    built-in forget objective's, if the architecture has it. They
    contain the encoders' outputs on the probe set, which spares the closed form one
    encoder pass.
    """
    zeroed = architecture.zeroed_forget
    if zeroed is None:
        return None

    def closed_form(model: torch.nn.Module, rows: Mapping[str, Any],
                    entries: Sequence[tuple[str, int]]) -> torch.Tensor | None:
        values: torch.Tensor | None = None
        if gradients is not None:
            values = gradients.zeroed_forget(model, cast(Batch, rows), entries)
        if values is None:
            values = zeroed(model, cast(Batch, rows), modality, entries)
        return values

    return closed_form
