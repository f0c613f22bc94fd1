"""Writing a checkpoint directory atomically.

The directory is assembled in a hidden temporary folder next to the destination and
renamed into place, so a crash or Ctrl-C never leaves a partial checkpoint behind.
With ``force`` an existing directory is moved aside first and deleted only after the
new one is in place.

Stability: internal to the trainer.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mbd_cert import _issue_outputs, _paths
from mbd_cert._interrupts import publishing
from mbd_cert._safetensors import write_safetensors
from mbd_cert.arch import BUILTIN_NAME
from mbd_cert.arch.mbd import ARCHITECTURE, MBDModel
from mbd_cert.checkpoint import MIN_ISSUE_PROBE_SAMPLES
from mbd_cert.errors import InputError
from trainer.evaluate import (
    CONFIG_FILE,
    EVAL_FILE,
    METRICS_FILE,
    MODEL_FILE,
    MODEL_FORMAT,
    PROBE_FILE,
    TRAINING_FILE,
)


def check_output_dir(target: Path, *, force: bool) -> None:
    """Reject an output path that cannot take a new checkpoint.

    Raises:
        InputError: ``target`` is a symbolic link or not a directory
            (``E_PARAMETER_INVALID``), or a non-empty directory while ``force`` is
            false (``E_OUTPUT_EXISTS``).
    """
    if target.is_symlink():
        raise InputError(f"output directory {target} is a symbolic link",
                         hint="pass the real directory path", code="E_PARAMETER_INVALID")
    # The rest is the rule issue and report apply to --out.
    _issue_outputs.check_output_dir(target, force=force)


def write_checkpoint(target: Path, model: MBDModel, corpus: Any, training: Mapping[str, Any],
                     metrics: Mapping[str, Any], *, probe_members: int, probe_nonmembers: int,
                     seed: int, force: bool) -> None:
    """Write the checkpoint files into a temporary folder, then rename it to ``target``.

    Raises:
        InputError: The output directory cannot take the checkpoint (see
            :func:`check_output_dir`) or a file cannot be written.
    """
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    try:
        tensors = {name: np.ascontiguousarray(value.detach().cpu().numpy())
                   for name, value in model.state_dict().items()}
        digests = write_safetensors(staging / MODEL_FILE, tensors, {
            "format": MODEL_FORMAT,
            "architecture": BUILTIN_NAME,
            "architecture_version": ARCHITECTURE.version,
        })
        probe_tensors, probe_metadata = probe_file_contents(
            corpus, members=probe_members, nonmembers=probe_nonmembers, seed=seed
        )
        write_safetensors(staging / PROBE_FILE, probe_tensors, probe_metadata)
        eval_tensors, eval_metadata = eval_file_contents(corpus)
        write_safetensors(staging / EVAL_FILE, eval_tensors, eval_metadata)
        write_json(staging / CONFIG_FILE, {
            "architecture": BUILTIN_NAME,
            "architecture_version": ARCHITECTURE.version,
            "config": model.config,
        })
        write_json(staging / TRAINING_FILE,
                   {**training, "model_manifest_digest": digests.manifest_digest})
        write_json(staging / METRICS_FILE, metrics)
        # Ctrl-C is held from here until the command has printed its result.
        with publishing():
            _install(staging, target, force=force)
    except OSError as exc:
        raise InputError(f"cannot write checkpoint directory {target}: {exc}",
                         code="E_FILE_UNWRITABLE") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def probe_counts(corpus: Any, *, members: int, nonmembers: int) -> tuple[int, int]:
    """Return the members and non-members drawn, capped at the train and test splits."""
    return (min(members, len(corpus.splits["train"].labels)),
            min(nonmembers, len(corpus.splits["test"].labels)))


def check_probe_counts(corpus: Any, *, members: int, nonmembers: int) -> None:
    """Reject, before training, probe counts that give a probe set issue rejects.

    Raises:
        InputError: The probe set would hold fewer than ``MIN_ISSUE_PROBE_SAMPLES``
            samples (SPEC.md, R-PRB-4; ``E_PARAMETER_INVALID``).
    """
    drawn_members, drawn_nonmembers = probe_counts(corpus, members=members,
                                                   nonmembers=nonmembers)
    total = drawn_members + drawn_nonmembers
    if total >= MIN_ISSUE_PROBE_SAMPLES:
        return
    hint = (f"pass --probe-members and --probe-nonmembers of {MIN_ISSUE_PROBE_SAMPLES // 2} "
            "or more (the default is 200 each)")
    if (drawn_members, drawn_nonmembers) != (members, nonmembers):
        hint += (f"; the corpus has only {len(corpus.splits['train'].labels)} train and "
                 f"{len(corpus.splits['test'].labels)} test samples to draw from")
    raise InputError(
        f"the probe set would hold {total} samples ({drawn_members} members, "
        f"{drawn_nonmembers} non-members), and 'mbd-cert issue' rejects a probe set of "
        f"fewer than {MIN_ISSUE_PROBE_SAMPLES} (SPEC.md, R-PRB-4)",
        hint=hint, code="E_PARAMETER_INVALID",
    )


def probe_file_contents(corpus: Any, *, members: int, nonmembers: int,
                        seed: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Return the tensors and metadata of ``probe.safetensors`` for ``corpus``.

    The counts are capped at the sizes of the train and test splits.
    """
    from trainer.data import probe

    n_members, n_nonmembers = probe_counts(corpus, members=members, nonmembers=nonmembers)
    tensors, metadata = probe.probe_tensors_and_metadata(
        corpus, n_members=n_members, n_nonmembers=n_nonmembers, seed=seed,
    )
    return dict(tensors), dict(metadata)


def eval_file_contents(corpus: Any) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Return the whole test split in the probe layout, every sample a non-member.

    ``mbd-cert issue`` reads it for the utility metrics of the released model.
    """
    from trainer.data.probe import PROBE_FORMAT

    split = corpus.splits["test"]
    rows = len(split.labels)
    tensors = {f"inputs.{m}": np.ascontiguousarray(split.features[m], dtype=np.float32)
               for m in corpus.modalities}
    tensors["present"] = np.asarray(split.present, dtype=np.uint8)
    tensors["label"] = np.asarray(split.labels, dtype=np.float32)
    tensors["member"] = np.zeros(rows, dtype=np.uint8)
    for name, values in split.attributes.items():
        tensors[f"attribute.{name}"] = np.asarray(values, dtype=np.int64)
    metadata = {"format": PROBE_FORMAT, "modalities": json.dumps(list(corpus.modalities))}
    return tensors, metadata


def corpus_record(corpus: Any, source: Mapping[str, Any] | None) -> dict[str, Any]:
    """Describe the corpus for ``training.json``: provenance, summary and split ids."""
    from trainer.data import corpus_summary

    return {
        "name": corpus.name,
        "source": json_safe(dict(source) if source is not None else {"name": corpus.name}),
        "info": json_safe(corpus.info),
        "summary": json_safe(corpus_summary(corpus)),
        "split_ids": {name: list(map(str, split.ids)) for name, split in corpus.splits.items()},
    }


def write_json(path: Path, value: Any, *, overwrite: bool = False) -> None:
    """Write ``value`` as indented JSON atomically, rejecting NaN and infinity.

    Raises:
        InputError: The file exists and ``overwrite`` is false, or it cannot be written.
        ValueError: ``value`` contains NaN or infinity (a bug in the caller).
    """
    text = json.dumps(value, indent=2, sort_keys=True, allow_nan=False) + "\n"
    _paths.atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def json_safe(value: Any) -> Any:
    """Convert numpy scalars, paths and tuples to JSON types; non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _install(staging: Path, target: Path, *, force: bool) -> None:
    # Check again: the directory may have appeared while the model was training.
    check_output_dir(target, force=force)
    if not target.exists():
        os.rename(staging, target)
        return
    if not any(target.iterdir()):
        target.rmdir()
        os.rename(staging, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    aside.rmdir()
    os.rename(target, aside)
    try:
        os.rename(staging, target)
    except OSError:
        os.rename(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)
