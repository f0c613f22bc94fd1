"""Training of the Missing-by-Design sentiment model on a corpus, with checkpoint output.

:func:`train` fits :class:`mbd_cert.arch.mbd.MBDModel` with AdamW on the five losses of
:mod:`trainer.losses`. During training each observed modality of each sample is dropped
with probability ``modality_dropout`` (one observed modality always stays), so the
model learns every missing pattern. Training stops early when the validation MAE (all
modalities) has not improved for ``patience`` epochs, and the best weights are kept.

The output directory is built next to its destination and renamed into place, so it
never contains a partial checkpoint. It contains ``model.safetensors``, ``config.json``,
``probe.safetensors``, ``eval.safetensors`` (the test split in the probe layout, for the
issuer's utility metrics), ``training.json`` and ``metrics.json``; nothing is pickled.
The directory is created with mode 0700, because the probe set contains training samples.

Stability: internal to the trainer. The checkpoint layout is read by ``mbd-cert issue``
and changes only together with it.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbd_cert.arch.mbd import MBDModel
from mbd_cert.errors import InputError, MalformedData
from trainer import _checkpoint_io, _distributed, _progress
from trainer.config import MAX_SEED, TrainingConfig
from trainer.evaluate import evaluate, predict
from trainer.losses import LOSS_NAMES, training_losses

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Result of :func:`train`.

    Attributes:
        out_dir: The written checkpoint directory.
        model: The model with the best validation weights, in eval mode.
        training: Contents of ``training.json``.
        metrics: Contents of ``metrics.json`` (test split).
        wrote: Whether this process wrote ``out_dir``; under ``torchrun`` only rank 0
            does.
    """

    out_dir: Path
    model: MBDModel
    training: dict[str, Any]
    metrics: dict[str, Any]
    wrote: bool = True


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Return the torch device for ``device``: None or "auto" picks CUDA when available.

    Raises:
        InputError: CUDA is requested but not available, or the name is not a device.
    """
    # NOTE: CUDA training has not run on real hardware yet. The gpu-marked test in
    # tests/trainer/test_train.py covers it where a GPU exists.
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device {device!r} is not a torch device",
                         hint="use cpu, cuda or auto", code="E_PARAMETER_INVALID") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but torch finds no CUDA device",
                         hint="use --device cpu or auto", code="E_PARAMETER_INVALID")
    if resolved.type not in ("cpu", "cuda"):
        raise InputError(f"device {device!r} is not supported; use cpu or cuda",
                         code="E_PARAMETER_INVALID")
    return resolved


def modality_dropout(present: torch.Tensor, probability: float,
                     generator: torch.Generator) -> torch.Tensor:
    """Drop each observed modality with ``probability``, keeping one per sample.

    Args:
        present: Bool [n, M] on the CPU.
        probability: Drop probability per observed modality, in [0, 1).
        generator: CPU generator; the result depends only on it and the inputs.

    Returns:
        Bool [n, M], a subset of ``present``. A sample that had at least one observed
        modality keeps at least one, chosen uniformly among its observed ones when all
        were dropped. A sample with none observed stays without any.
    """
    kept = present & (torch.rand(present.shape, generator=generator) >= probability)
    lost_all = present.any(dim=1) & ~kept.any(dim=1)
    scores = torch.where(present, torch.rand(present.shape, generator=generator), -1.0)
    choice = torch.nn.functional.one_hot(scores.argmax(dim=1), present.shape[1]).bool()
    return kept | (choice & lost_all[:, None])


def train(
    corpus: Any,
    config: TrainingConfig | Mapping[str, Any] | None,
    out_dir: str | Path,
    *,
    seed: int,
    device: str | torch.device | None = None,
    progress: bool = True,
    force: bool = False,
    corpus_source: Mapping[str, Any] | None = None,
    cpu_threads: int | None = 1,
    mixed_precision: str = "auto",
) -> TrainResult:
    """Train a model on ``corpus`` and write the checkpoint directory ``out_dir``.

    Args:
        corpus: A ``trainer.data.Corpus`` with ``train``, ``valid`` and ``test`` splits.
        config: Training hyper-parameters; a mapping is read with
            :meth:`TrainingConfig.from_mapping`, None takes every default.
        out_dir: Checkpoint directory to create.
        seed: Seed of parameter initialisation, batch order and modality dropout.
        device: "cpu", "cuda", "auto" or None (both pick CUDA when available).
        progress: Show a progress bar on stderr.
        force: Replace ``out_dir`` if it exists and is not empty.
        corpus_source: How to load the corpus again (``name``, ``data_root``, ``seed``,
            ``options``), recorded in ``training.json`` so that ``evaluate`` can
            reload it.
        cpu_threads: Torch intra-op threads during training, restored afterwards; None
            keeps the current setting. The default model's operations are too small to
            gain from threads: on a 2-core machine shared with other processes one
            thread ran a step in about 20 ms and two threads in 160 ms or more.
        mixed_precision: "auto" (bf16 autocast on CUDA where supported, else fp16
            with a GradScaler; float32 on CPU), "off", "bf16" or "fp16" (CUDA only).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the run is data-parallel: see
    :mod:`trainer._distributed`. Every rank returns the result, and only rank 0
    writes ``out_dir``.

    Returns:
        The trained model, the training record and the test metrics.

    Raises:
        InputError: A hyper-parameter or the seed is invalid, the batch size is
            smaller than the number of data-parallel processes, the probe set would
            hold fewer samples than ``mbd-cert issue`` accepts, the device is
            unavailable, ``out_dir`` exists and is not empty without ``force``, or the
            validation MAE becomes NaN or infinite (``E_TRAINING_DIVERGED``).
        MalformedData: The corpus lacks a split, a split is empty, or features hold
            NaN or infinite values.
    """
    training_config = _as_training_config(config)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be an integer in [0, 2**32 - 1], got {seed!r}",
                         hint="pass --seed with a value in that range, such as 0",
                         code="E_PARAMETER_INVALID")
    if cpu_threads is not None and (isinstance(cpu_threads, bool)
                                    or not isinstance(cpu_threads, int) or cpu_threads < 1):
        raise InputError(f"cpu_threads must be an integer >= 1 or None, got {cpu_threads!r}",
                         code="E_PARAMETER_INVALID")
    world_size = _distributed.requested_world_size()
    if training_config.batch_size < world_size:
        # _fit skips a batch with fewer rows than ranks, so it would take no step at all.
        raise InputError(
            f"batch size {training_config.batch_size} is smaller than the {world_size} "
            "data-parallel processes; each process needs at least one sample per batch",
            hint=f"pass --batch-size {world_size} or more, or start fewer processes "
            "(torchrun --nproc_per_node)",
            code="E_PARAMETER_INVALID",
        )
    target = Path(out_dir)
    _checkpoint_io.check_output_dir(target, force=force)
    torch_device = resolve_device(device)
    _check_corpus(corpus)
    _checkpoint_io.check_probe_counts(corpus, members=training_config.probe_members,
                                      nonmembers=training_config.probe_nonmembers)
    context = _distributed.init_from_env(torch_device)
    torch_device = _distributed.device_for(torch_device, context)
    precision = _distributed.resolve_precision(mixed_precision, torch_device)

    started = time.monotonic()
    with _deterministic(seed, torch_device, cpu_threads):
        model_config = {
            "modalities": list(corpus.modalities),
            "input_dims": dict(corpus.input_dims),
            "seq_len": dict(corpus.seq_len),
            **training_config.model,
        }
        model = MBDModel(model_config, seed=seed).to(torch_device)
        _distributed.seed_rank(seed, context)
        history, best_epoch = _fit(model, corpus, training_config, seed, torch_device,
                                   progress and context.is_main, context, precision)
        model.eval()
        metrics = {"split": "test", **evaluate(model, corpus.splits["test"], corpus)}
    seconds = time.monotonic() - started

    training = {
        "seed": seed,
        "device": str(torch_device),
        "world_size": context.world_size,
        "precision": precision.name,
        "cpu_threads": torch.get_num_threads() if cpu_threads is None else cpu_threads,
        "torch_version": torch.__version__,
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "best_valid_mae": history[best_epoch - 1]["valid_mae"] if history else None,
        "seconds": round(seconds, 3),
        "training_config": training_config.as_dict(),
        "history": history,
        "corpus": _checkpoint_io.corpus_record(corpus, corpus_source),
    }
    if context.is_main:
        _checkpoint_io.write_checkpoint(
            target, model, corpus, training, metrics,
            probe_members=training_config.probe_members,
            probe_nonmembers=training_config.probe_nonmembers,
            seed=seed, force=force,
        )
    _distributed.barrier(context)
    _distributed.shutdown(context)
    logger.info("trained %d epochs in %.1f s, best epoch %d, checkpoint %s",
                len(history), seconds, best_epoch, target)
    return TrainResult(out_dir=target, model=model, training=training, metrics=metrics,
                       wrote=context.is_main)


def _fit(model: MBDModel, corpus: Any, config: TrainingConfig, seed: int,
         device: torch.device, progress: bool, context: _distributed.Distributed,
         precision: _distributed.Precision) -> tuple[list[dict[str, Any]], int]:
    train_split = corpus.splits["train"]
    inputs = {m: torch.as_tensor(train_split.features[m], dtype=torch.float32, device=device)
              for m in model.modalities}
    present_cpu = torch.as_tensor(np.asarray(train_split.present, dtype=bool))
    labels = torch.as_tensor(train_split.labels, dtype=torch.float32, device=device)
    valid = corpus.splits["valid"]
    rows = int(labels.shape[0])
    # Batch order and modality dropout come from one CPU generator, so a seed gives the
    # same sequence of batches on CPU and GPU.
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    losses = _distributed.wrap(model, training_losses, context, device)
    scaler = _distributed.grad_scaler(precision, device)

    history: list[dict[str, Any]] = []
    best_mae = float("inf")
    best_epoch = 0
    best_state: dict[str, torch.Tensor] = {}
    epochs_without_gain = 0
    with _progress.progress_bar(progress, config.epochs) as advance:
        for epoch in range(1, config.epochs + 1):
            epoch_started = time.monotonic()
            model.train()
            sums = dict.fromkeys((*LOSS_NAMES, "total"), 0.0)
            seen = 0
            order = torch.randperm(rows, generator=generator)
            for start in range(0, rows, config.batch_size):
                # Every rank draws the whole batch's dropout, so the generators agree.
                batch_index = order[start:start + config.batch_size]
                batch_really = present_cpu[batch_index]
                batch_dropped = modality_dropout(batch_really, config.modality_dropout,
                                                 generator)
                if int(batch_index.shape[0]) < context.world_size:
                    # NOTE: a last batch smaller than the world size would leave a rank
                    # without samples, so every rank skips it.
                    continue
                share = _distributed.shard(torch.arange(int(batch_index.shape[0])), context)
                index, really, dropped = batch_index[share], batch_really[share], \
                    batch_dropped[share]
                index_device = index.to(device)
                with _distributed.autocast(precision, device):
                    total, terms = losses(
                        {m: values[index_device] for m, values in inputs.items()},
                        dropped.to(device),
                        really.to(device),
                        labels[index_device],
                        config.loss_weights,
                        config.task_loss,
                    )
                optimizer.zero_grad(set_to_none=True)
                weight = _distributed.share_weight(int(index.shape[0]),
                                                   int(batch_index.shape[0]), context)
                scaler.scale(total * weight if weight != 1.0 else total).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                count = int(index.shape[0])
                seen += count
                sums["total"] += float(total.detach()) * count
                for name, value in terms.items():
                    sums[name] += float(value.detach()) * count

            # Ranks hold equal weights; rank 0's value keeps their stopping decisions equal.
            valid_mae = _distributed.broadcast_float(_validation_mae(model, valid), context,
                                                     device)
            if not math.isfinite(valid_mae):
                raise InputError(
                    f"training diverged: validation MAE is {valid_mae} after epoch {epoch}",
                    hint="lower --learning-rate or --grad-clip",
                    code="E_TRAINING_DIVERGED",
                )
            train_means = {name: value / max(seen, 1) for name, value in sums.items()}
            record = {
                "epoch": epoch,
                "train": train_means,
                "valid_mae": valid_mae,
                "seconds": round(time.monotonic() - epoch_started, 3),
            }
            history.append(record)
            if valid_mae < best_mae - config.min_improvement:
                best_mae, best_epoch, epochs_without_gain = valid_mae, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                epochs_without_gain += 1
            advance(f"loss {train_means['total']:.3f}  valid MAE {valid_mae:.3f} "
                    f"(best {best_mae:.3f} @ {best_epoch})")
            if epochs_without_gain >= config.patience:
                logger.debug("early stop after epoch %d (best %d)", epoch, best_epoch)
                break
    model.load_state_dict(best_state)
    return history, best_epoch


def _validation_mae(model: MBDModel, split: Any) -> float:
    prediction = predict(model, split.features, np.asarray(split.present, dtype=bool))
    return float(np.mean(np.abs(prediction - np.asarray(split.labels, dtype=np.float64))))


def _as_training_config(config: TrainingConfig | Mapping[str, Any] | None) -> TrainingConfig:
    if config is None:
        return TrainingConfig()
    if isinstance(config, TrainingConfig):
        return config.validated()
    return TrainingConfig.from_mapping(config)


def _check_corpus(corpus: Any) -> None:
    for name in ("train", "valid", "test"):
        split = corpus.splits.get(name)
        if split is None or len(split.labels) == 0:
            raise MalformedData(f"corpus {corpus.name!r} has no samples in split {name!r}",
                                hint="training needs non-empty train, valid and test splits")
        for modality in corpus.modalities:
            if not np.all(np.isfinite(split.features[modality])):
                raise MalformedData(
                    f"corpus {corpus.name!r} split {name!r}: features of {modality!r} hold "
                    "NaN or infinite values",
                    hint="clean the features (the loaders replace them for known corpora)",
                )


@contextmanager
def _deterministic(seed: int, device: torch.device, threads: int | None) -> Iterator[None]:
    # The model and the training loop draw from their own seeded generators, so seeding
    # Python, numpy and torch here mainly fixes library code that uses the global RNGs.
    if device.type == "cuda":
        # cuBLAS needs this workspace setting for deterministic matrix products.
        # NOTE: it has no effect when CUDA was already initialised in this process.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.set_num_threads(previous_threads)
