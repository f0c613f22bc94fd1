"""Loader of a user's own MMSA-style pickle: one file with its own train, valid and test splits.

Input: one pickle holding ``{"train": {...}, "valid": {...}, "test": {...}}``, the layout
the MMSA toolkit writes for CMU-MOSI, CMU-MOSEI and CH-SIMS. Each split is a dict with

* ``text`` [n, T, d] or [n, d]: text features. ``text_bert`` is read only when ``text``
  is absent. MMSA's own ``text_bert`` [n, 3, T] contains BERT token ids, attention mask
  and segment ids, not features, so it is rejected;
* ``audio`` and ``vision`` [n, T, d] or [n, d]: float features; [n, d] means T = 1;
* ``regression_labels`` [n] (or [n, 1]): sentiment in [-3, 3];
* optionally ``id`` or ``ids`` [n]: sample ids as strings, distinct over the file. Without
  them a sample's id is ``<split>/<row>``;
* optionally ``<modality>_lengths`` [n] (MMSA writes ``audio_lengths`` and
  ``vision_lengths``): the number of valid time steps of [n, T, d] features. Steps from
  that index on are padding, as MMSA's models read them with ``pack_padded_sequence``.

Other keys (``raw_text``, ``classification_labels``, ``annotations`` ...) are ignored and
listed in ``info["ignored_keys"]``. The file is read only through the restricted
unpickler of :mod:`trainer.data._unpickle`, which builds numpy arrays and plain
containers and nothing else.

Preparation (:mod:`trainer.data._mmsa_features`):

1. A sample is missing a modality when none of its values within its length is finite
   and non-zero: an all-zero row, an all-NaN row, a row of ``-inf``, or length 0. Missing
   is normal input. A sample with every modality missing is rejected.
2. Non-finite values of a present sample (``-inf`` in COVAREP acoustic features, for one)
   are replaced by that feature's mean over the finite train-split values of present
   samples, as :mod:`trainer.data.mosei` does. The counts go into ``info``.
3. Each modality is standardised per feature with the train split's mean and standard
   deviation over present samples and valid time steps. A modality absent from every
   train sample takes the statistics of the valid split, then of the test split.
4. Padding steps and absent samples are zeros, the layout the trainer expects.

The split is the file's own. The seed does not change it and is only recorded.

Licence: a pickle of CMU-MOSI or CMU-MOSEI carries their terms: the authors distribute
them for non-commercial research only.

Stability: internal to the trainer.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from mbd_cert.errors import FileMissing, InputError, MalformedData

from . import Corpus, Split
from ._common import DEFAULT_MODALITIES, LABEL_BOUND
from ._mmsa_features import RawSplit, prepare_features
from ._unpickle import loads_restricted

SPLITS = ("train", "valid", "test")
LABEL_KEY = "regression_labels"
TEXT_KEYS = ("text", "text_bert")
ID_KEYS = ("id", "ids")

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_LAYOUT_HINT = ("write the file as MMSA does: a dict with train, valid and test splits, each "
                "holding text, audio and vision float arrays [n, T, d] or [n, d] and "
                "regression_labels [n]")


def load(root: Path | None, seed: int, *, data_file: str | os.PathLike[str] | None = None,
         sha256: str | None = None) -> Corpus:
    """Load an MMSA-style pickle with its own train, valid and test splits.

    Args:
        root: Unused: this corpus is one file, named by ``data_file``.
        seed: Unused by the split, which is the file's own; recorded in ``info``.
        data_file: The pickle file.
        sha256: Expected ``"sha256:<hex>"`` of the file, as ``training.json`` records it;
            None skips the comparison.

    Returns:
        The corpus with modalities text, audio and vision.

    Raises:
        InputError: ``data_file`` or ``sha256`` is missing or malformed
            (``E_PARAMETER_INVALID``), the path is not a regular file
            (``E_FILE_NOT_REGULAR``), or it cannot be read (``E_FILE_UNREADABLE``).
        FileMissing: The file does not exist.
        MalformedData: The digest differs from ``sha256``, the file is not a pickle of
            numpy arrays and containers, or a split breaks the layout above.
    """
    path, data = _read_file(data_file)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if sha256 is not None:
        _check_digest(path, digest, sha256)

    loaded = loads_restricted(data, source=str(path))
    if not isinstance(loaded, dict):
        raise MalformedData(f"{path}: expected a dict of splits, got {type(loaded).__name__}",
                            hint=_LAYOUT_HINT)
    missing = [name for name in SPLITS if name not in loaded]
    if missing:
        raise MalformedData(
            f"{path}: split(s) {missing} missing; found keys {_key_names(loaded)}",
            hint="store the train, valid and test splits under those keys; make a valid "
            "split from part of the training samples if the file has none",
        )

    raw = {name: _read_split(path, name, loaded[name]) for name in SPLITS}
    _check_ids(path, raw)
    prepared = prepare_features(path, raw)

    splits = {
        name: Split(
            features=prepared.features[name],
            present=prepared.present[name],
            labels=raw[name].labels.astype(np.float32),
            attributes={},
            ids=raw[name].ids,
        )
        for name in SPLITS
    }
    ignored = sorted({key for name in SPLITS for key in raw[name].ignored})
    return Corpus(
        name="mmsa",
        modalities=list(DEFAULT_MODALITIES),
        input_dims={m: prepared.shapes[m][1] for m in DEFAULT_MODALITIES},
        seq_len={m: prepared.shapes[m][0] for m in DEFAULT_MODALITIES},
        splits=splits,
        info={
            "source": "MMSA-style pickle",
            "licence": "as the data in the file; CMU-MOSI and CMU-MOSEI are distributed by "
            "their authors for non-commercial research only",
            "file": str(path),
            "files": {path.name: digest},
            "sha256": digest,
            "seed": seed,
            "split_rule": "the file's own train, valid and test splits",
            "split_sizes": {name: len(raw[name].labels) for name in SPLITS},
            "label_transform": "none: regression_labels as stored, checked to lie in [-3, 3]",
            "text_key": raw["train"].text_key,
            "ignored_keys": ignored[:20],
            **prepared.info,
        },
    )


def _read_file(data_file: str | os.PathLike[str] | None) -> tuple[Path, bytes]:
    """Check the path and return it with the file's bytes, read once."""
    if data_file is None:
        raise InputError(
            "corpus 'mmsa' needs the pickle file to read",
            hint="pass --data-file PATH with the MMSA-style pickle",
            code="E_PARAMETER_INVALID",
        )
    if not isinstance(data_file, (str, os.PathLike)):
        raise InputError(
            f"data_file must be a path, got {type(data_file).__name__}",
            hint="pass the pickle file's path as a string",
            code="E_PARAMETER_INVALID",
        )
    path = Path(data_file)
    if not path.exists():
        raise FileMissing(f"data file not found: {path}",
                          hint="pass --data-file with the path of an existing pickle")
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise InputError(
            f"data file {path} is {kind}",
            hint="pass --data-file with the pickle file itself",
            code="E_FILE_NOT_REGULAR",
        )
    try:
        return path, path.read_bytes()
    except OSError as error:
        raise InputError(
            f"data file {path} cannot be read: {error.strerror or error}",
            hint="check the file's permissions",
            code="E_FILE_UNREADABLE",
        ) from error


def _check_digest(path: Path, actual: str, expected: object) -> None:
    if not isinstance(expected, str) or not _SHA256.fullmatch(expected):
        raise InputError(
            f"sha256 must be 'sha256:' and 64 lowercase hex digits, got {str(expected)[:80]!r}",
            hint="pass the digest that training.json records for the file",
            code="E_PARAMETER_INVALID",
        )
    if actual != expected:
        raise MalformedData(
            f"{path}: SHA-256 is {actual}, but the model was trained on a file with {expected}",
            hint="pass --data-file with the pickle the checkpoint was trained on",
        )


def _read_split(path: Path, name: str, split: object) -> RawSplit:
    """Check one split's keys, dtypes and shapes and return its arrays as float64."""
    where = f"{path}: split {name!r}"
    if not isinstance(split, dict):
        raise MalformedData(f"{where} must be a dict of arrays, got {type(split).__name__}",
                            hint=_LAYOUT_HINT)

    labels = _read_labels(where, split)
    n = labels.shape[0]
    text_key = next((key for key in TEXT_KEYS if key in split), "text")
    keys = {"text": text_key, "audio": "audio", "vision": "vision"}
    absent = [key for key in keys.values() if key not in split]
    if absent:
        raise MalformedData(
            f"{where}: key(s) {absent} missing; found keys {_key_names(split)}",
            hint="store every modality as an array; mark a sample without it by an all-zero "
            "or all-NaN row",
        )
    if text_key == "text_bert":
        _reject_token_ids(where, split["text_bert"])

    features: dict[str, np.ndarray] = {}
    lengths: dict[str, np.ndarray | None] = {}
    for modality, key in keys.items():
        features[modality] = _read_features(where, key, split[key], n)
        length_key = f"{modality}_lengths"
        lengths[modality] = None
        if length_key in split and features[modality].shape[1] > 1:
            lengths[modality] = _read_lengths(where, length_key, split[length_key], n,
                                              features[modality].shape[1])

    ids = _read_ids(where, split, n, name)
    used = {LABEL_KEY, *keys.values(), *ID_KEYS, *(f"{m}_lengths" for m in keys)}
    ignored = {key for key in split if isinstance(key, str) and key not in used}
    return RawSplit(features=features, lengths=lengths, labels=labels, ids=ids,
                    text_key=text_key, ignored=ignored)


def _read_labels(where: str, split: dict[Any, Any]) -> np.ndarray:
    if LABEL_KEY not in split:
        raise MalformedData(f"{where}: key {LABEL_KEY!r} missing; found keys {_key_names(split)}",
                            hint="store the sentiment scores in [-3, 3] under regression_labels")
    labels = split[LABEL_KEY]
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "fiu":
        raise MalformedData(
            f"{where}: {LABEL_KEY!r} must be a numeric numpy array, got {_describe(labels)}",
            hint="store the labels as a float32 array [n]",
        )
    if labels.ndim == 0 or labels.size != labels.shape[0]:
        raise MalformedData(
            f"{where}: {LABEL_KEY!r} must have one value per sample, got shape "
            f"{list(labels.shape)}",
            hint="store the labels as [n] or [n, 1]",
        )
    labels = labels.reshape(-1).astype(np.float64)
    if labels.size == 0:
        raise MalformedData(f"{where} is empty: {LABEL_KEY!r} has no samples",
                            hint="every split needs at least one sample")
    bad = ~np.isfinite(labels)
    if bad.any():
        raise MalformedData(
            f"{where}: {LABEL_KEY!r} contains {int(bad.sum())} NaN or infinite value(s), "
            f"first at row {int(np.flatnonzero(bad)[0])}",
            hint="drop those samples or give them a label",
        )
    if float(np.abs(labels).max()) > LABEL_BOUND:
        raise MalformedData(
            f"{where}: {LABEL_KEY!r} must lie in [-3, 3], got [{labels.min():.4g}, "
            f"{labels.max():.4g}]",
            hint="rescale the labels to the CMU sentiment scale -3 (very negative) to 3 "
            "(very positive)",
        )
    return labels


def _read_features(where: str, key: str, values: object, n: int) -> np.ndarray:
    if not isinstance(values, np.ndarray) or values.dtype.kind != "f":
        raise MalformedData(
            f"{where}: {key!r} must be a float numpy array, got {_describe(values)}",
            hint=f"store {key} as float32 [n, T, d] or [n, d]",
        )
    shape = list(values.shape)
    if values.ndim == 2:
        values = values[:, None, :]
    if values.ndim != 3 or values.shape[0] != n or values.shape[1] < 1 or values.shape[2] < 1:
        raise MalformedData(
            f"{where}: {key!r} must be [{n}, T, d] or [{n}, d] with T, d >= 1 to match "
            f"{n} regression_labels, got {shape}",
            hint="store one row per sample, in the order of regression_labels",
        )
    # NOTE: preparation works on float64 copies, so peak memory is several times the
    # size of the features in the file.
    return values.astype(np.float64)


def _reject_token_ids(where: str, values: object) -> None:
    if isinstance(values, np.ndarray) and values.ndim == 3 and values.shape[1] == 3:
        raise MalformedData(
            f"{where}: 'text_bert' {list(values.shape)} contains BERT token ids, attention mask "
            "and segment ids, not text features",
            hint="add text features [n, T, d] under the key 'text'",
        )


def _read_lengths(where: str, key: str, values: object, n: int, steps: int) -> np.ndarray:
    try:
        lengths = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        lengths = np.asarray([])
    valid = (lengths.dtype.kind in "fiu" and lengths.shape in ((n,), (n, 1))
             and bool(np.all(np.isfinite(lengths))))
    if valid:
        lengths = lengths.reshape(n)
        valid = bool(np.all(lengths == np.round(lengths))) and bool(
            np.all((lengths >= 0) & (lengths <= steps)))
    if not valid:
        raise MalformedData(
            f"{where}: {key!r} must be {n} whole numbers in [0, {steps}] (valid time steps "
            f"per sample), got {_describe(values)}",
            hint=f"fix {key} or remove it to count every time step as valid",
        )
    return lengths.astype(np.int64)


def _read_ids(where: str, split: dict[Any, Any], n: int, name: str) -> list[str]:
    key = next((k for k in ID_KEYS if k in split), None)
    if key is None:
        return [f"{name}/{row:05d}" for row in range(n)]
    values = split[key]
    items = values.tolist() if isinstance(values, np.ndarray) else values
    if not isinstance(items, (list, tuple)) or len(items) != n or not all(
            isinstance(item, str) for item in items):
        raise MalformedData(
            f"{where}: {key!r} must hold {n} strings, one per sample, got {_describe(values)}",
            hint=f"store the ids as a list of strings, or remove {key!r} to number samples",
        )
    return list(items)


def _check_ids(path: Path, raw: dict[str, RawSplit]) -> None:
    seen: dict[str, str] = {}
    for name in SPLITS:
        for sample_id in raw[name].ids:
            if sample_id in seen:
                raise MalformedData(
                    f"{path}: id {sample_id[:80]!r} appears twice (split {seen[sample_id]!r} "
                    f"and split {name!r})",
                    hint="give every sample a distinct id, or remove the id keys to number "
                    "samples by split and row",
                )
            seen[sample_id] = name


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array {list(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def _key_names(loaded: dict[Any, Any]) -> list[str]:
    """Name a dict's keys for a message: strings cut to 40 characters, others by type."""
    names = sorted(k[:40] if isinstance(k, str) else f"<{type(k).__name__}>" for k in loaded)
    return names[:20] + ([f"... {len(names) - 20} more"] if len(names) > 20 else [])
