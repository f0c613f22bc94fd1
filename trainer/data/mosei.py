"""Loader of the three-modality CMU-MOSEI subset stored as MMSA-style pickles.

Input: ``val_data.pkl`` (264 videos) and ``test_data.pkl`` (658 videos). Each is a
pickled dict of float32 arrays with one row per video, averaged over time:
``language`` [n, 768] (a BERT sentence vector), ``acoustic`` [n, 40] (COVAREP),
``visual`` [n, 35] (OpenFace) and ``labels`` [n]. The publisher's training split is not part of the
subset, so the two files are merged (922 rows) and split again 70/15/15 by a rule that
depends only on the seed and the row ids (see :func:`split_ids`).

Preparation, in order:

1. Check each file's SHA-256 against the published digest (skippable with
   ``verify_digests=False`` for another copy in the same layout).
2. Read the pickles with the restricted unpickler (numpy arrays and containers only).
3. Non-finite acoustic values (``-inf`` in one COVAREP column, 653 of 922 rows) are
   replaced by that feature's mean over the finite train-split values. The counts per
   split go into ``info``.
4. Each modality is standardised per feature with train-split mean and standard
   deviation (visual values reach about 1,200).
5. Features become sequences of length T = 1. Labels stay as given: the mean of the
   seven CMU-MOSEI label columns (sentiment and six emotion intensities), about
   -0.08 to 0.86, so read MAE and Pearson correlation before Acc2.

Licence: CMU-MOSEI is distributed by its authors for non-commercial research only.

Stability: internal to the trainer; the split rule is fixed so that results stay
comparable across releases.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mbd_cert.errors import MalformedData

from . import Corpus, Split
from ._common import (
    DEFAULT_MODALITIES,
    apply_standardiser,
    check_digests,
    fit_standardiser,
    resolve_corpus_dir,
)
from ._unpickle import loads_restricted

logger = logging.getLogger(__name__)

FOLDER_NAME = "cmu-mosei-subset"

# Published SHA-256 digests of the subset's files.
EXPECTED_SHA256 = {
    "val_data.pkl": "85c7e530fc1183dbedf4e706a0b77e632ba1b598997c6e86b6ab95d0d08cd81a",
    "test_data.pkl": "0e3ecd2b723c593f76017d54c350ad2a1d318298ca04da74b5fb335c1a6b17d7",
}

# Pickle key per modality; the modality order is the trainer's default.
_KEYS = {"text": "language", "audio": "acoustic", "vision": "visual"}

SPLIT_FRACTIONS = {"train": 0.70, "valid": 0.15}


def load(root: Path | None, seed: int, *, verify_digests: bool = True) -> Corpus:
    """Load the CMU-MOSEI subset.

    Args:
        root: Data root holding ``cmu-mosei-subset/``, or that folder itself.
        seed: Split seed, recorded in ``info``.
        verify_digests: Compare file digests with the published ones.

    Returns:
        The corpus: 645 train, 138 valid and 139 test videos, all three modalities
        observed, T = 1.

    Raises:
        FileMissing: The folder or a pickle is absent.
        MalformedData: A digest differs, a pickle contains anything but numpy arrays and
            containers, or an array has the wrong shape, dtype or non-finite values.
    """
    folder = resolve_corpus_dir(root, FOLDER_NAME, EXPECTED_SHA256)
    digests, contents = check_digests(folder, EXPECTED_SHA256, verify_digests)

    # Step 2: parse and merge the two files, keeping the file name in each id.
    parts = [_read_part(folder / name, contents[name]) for name in EXPECTED_SHA256]
    ids = [
        f"{name.removesuffix('.pkl')}/{row:04d}"
        for name, part in zip(EXPECTED_SHA256, parts, strict=True)
        for row in range(part["labels"].shape[0])
    ]
    for key in _KEYS.values():
        widths = {
            name: part[key].shape[1] for name, part in zip(EXPECTED_SHA256, parts, strict=True)
        }
        if len(set(widths.values())) != 1:
            raise MalformedData(
                f"{folder}: field {key!r} has different feature sizes per file: {widths}",
                hint="use files from one release",
            )
    merged = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    index_of = {sample_id: i for i, sample_id in enumerate(ids)}
    assignment = split_ids(ids, seed)
    rows = {
        name: np.array([index_of[i] for i in members], dtype=np.intp)
        for name, members in assignment.items()
    }
    empty = [name for name, r in rows.items() if r.size == 0]
    if empty:
        raise MalformedData(
            f"{folder}: field 'labels' has {len(ids)} rows in the two files, which leaves "
            f"split(s) {empty} empty after the 70/15/15 split",
            hint="pass the complete CMU-MOSEI subset; each split needs at least one row",
        )

    # Step 3: replace non-finite acoustic values by the train split's finite mean.
    acoustic = merged["acoustic"].astype(np.float64)
    train_acoustic = acoustic[rows["train"]]
    finite = np.isfinite(train_acoustic)
    counts = finite.sum(axis=0)
    sums = np.where(finite, train_acoustic, 0.0).sum(axis=0)
    # A feature with no finite train value falls back to 0 before standardisation.
    fill = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    bad = ~np.isfinite(acoustic)
    replaced = {name: int(bad[r].sum()) for name, r in rows.items()}
    columns = sorted(int(c) for c in np.flatnonzero(bad.any(axis=0)))
    acoustic = np.where(bad, fill[None, :], acoustic)
    merged["acoustic"] = acoustic
    if columns:
        logger.debug(
            "replaced %d non-finite acoustic values in columns %s", sum(replaced.values()), columns
        )

    # Step 4: standardise with train statistics.
    features = {}
    for modality, key in _KEYS.items():
        mean, scale = fit_standardiser(merged[key][rows["train"]])
        features[modality] = apply_standardiser(merged[key], mean, scale)[:, None, :]

    splits = {}
    for name, r in rows.items():
        splits[name] = Split(
            features={m: np.ascontiguousarray(v[r]) for m, v in features.items()},
            present=np.ones((r.size, len(DEFAULT_MODALITIES)), dtype=bool),
            labels=merged["labels"][r].astype(np.float32),
            attributes={},
            ids=list(assignment[name]),
        )

    return Corpus(
        name="mosei-subset",
        modalities=list(DEFAULT_MODALITIES),
        input_dims={m: int(features[m].shape[2]) for m in DEFAULT_MODALITIES},
        seq_len={m: 1 for m in DEFAULT_MODALITIES},
        splits=splits,
        info={
            "source": "CMU-MOSEI subset, MMSA-style pickles val_data.pkl + test_data.pkl",
            "licence": "CMU-MOSEI is distributed by its authors for non-commercial research only",
            "files": digests,
            "digests_verified": verify_digests,
            "split_seed": seed,
            "split_rule": _SPLIT_RULE,
            "split_sizes": {name: int(r.size) for name, r in rows.items()},
            "split_digest": _split_digest(assignment),
            "label_transform": "none: the label is the mean of the seven CMU-MOSEI label "
            "columns (sentiment and six emotion intensities); read MAE and Pearson "
            "correlation first, because the label is almost never negative",
            "acoustic_nonfinite_replaced": replaced,
            "acoustic_nonfinite_columns": columns,
            "acoustic_fill": "mean of the feature's finite train-split values",
            "standardisation": "per feature, train-split mean and standard deviation",
            "time_steps": "features are time averages, T = 1",
        },
    )


_SPLIT_RULE = (
    "rows sorted by sha256('<seed>:<id>'); first round(0.70 n) train, next "
    "round(0.15 n) valid, the rest test"
)


def split_ids(ids: list[str], seed: int) -> dict[str, list[str]]:
    """Split ids 70/15/15 by the SHA-256 of ``"<seed>:<id>"``.

    The rule uses no random number generator, so the split does not change with the
    numpy version.

    Args:
        ids: Unique sample ids.
        seed: Split seed.

    Returns:
        ``train``, ``valid`` and ``test`` id lists, each sorted by the hash order.
    """
    order = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    n_train = round(SPLIT_FRACTIONS["train"] * len(ids))
    n_valid = round(SPLIT_FRACTIONS["valid"] * len(ids))
    return {
        "train": order[:n_train],
        "valid": order[n_train : n_train + n_valid],
        "test": order[n_train + n_valid :],
    }


def _split_digest(assignment: dict[str, list[str]]) -> str:
    text = "\n".join(
        f"{name}\t{i}" for name in ("train", "valid", "test") for i in assignment[name]
    )
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _read_part(path: Path, data: bytes) -> dict[str, np.ndarray]:
    """Parse one pickle's bytes and check its keys, shapes, dtypes and finiteness."""
    loaded: Any = loads_restricted(data, source=str(path))
    if not isinstance(loaded, dict):
        raise MalformedData(
            f"{path}: expected a dict of arrays, got {type(loaded).__name__}",
            hint="pass an MMSA-style pickle",
        )
    expected_keys = [*_KEYS.values(), "labels"]
    missing = [k for k in expected_keys if k not in loaded]
    if missing:
        raise MalformedData(
            f"{path}: missing key(s) {missing}; found {_key_names(loaded)}",
            hint="pass an MMSA-style pickle with language, acoustic, visual and labels",
        )

    part = {}
    for key in expected_keys:
        value = loaded[key]
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.ndim == 0:
            raise MalformedData(
                f"{path}: field {key!r} must be a float array with one row per video, got "
                f"{getattr(value, 'dtype', type(value).__name__)} "
                f"{list(getattr(value, 'shape', []))}",
                hint="pass an MMSA-style pickle",
            )
        part[key] = value

    # Labels: one finite value in [-3, 3] per row; [n, 1] is accepted as [n].
    n = part["labels"].shape[0]
    if part["labels"].size != n:
        raise MalformedData(
            f"{path}: field 'labels' must have one value per row, got shape "
            f"{list(part['labels'].shape)}",
            hint="pass regression labels",
        )
    part["labels"] = part["labels"].reshape(n)
    if not np.all(np.isfinite(part["labels"])):
        raise MalformedData(
            f"{path}: field 'labels' contains NaN or infinite values",
            hint="remove or fix those rows",
        )
    if np.any(np.abs(part["labels"]) > 3.0):
        raise MalformedData(
            f"{path}: field 'labels' must lie in [-3, 3], got max |label| "
            f"{float(np.abs(part['labels']).max()):.4g}",
            hint="rescale the labels to the CMU sentiment range",
        )

    # Features: [n, d], finite except for the acoustic ones.
    for key in _KEYS.values():
        if part[key].ndim != 2 or part[key].shape[0] != n or part[key].shape[1] < 1:
            raise MalformedData(
                f"{path}: field {key!r} must be [{n}, d] with d >= 1, got {list(part[key].shape)}",
                hint="pass time-averaged features",
            )
    for key in ("language", "visual"):
        if not np.all(np.isfinite(part[key])):
            raise MalformedData(
                f"{path}: field {key!r} contains NaN or infinite values",
                hint="only the acoustic features may be non-finite",
            )
    if np.any(np.isnan(part["acoustic"])) or np.any(np.isposinf(part["acoustic"])):
        # NOTE: the published files have only -inf. NaN and +inf are replaced the same
        # way, but logged, because they suggest a different copy of the data.
        logger.warning("%s: acoustic features contain NaN or +inf; replacing them", path)
    return part


def _key_names(loaded: dict[Any, Any]) -> list[str]:
    """Name a pickled dict's keys for a message: strings as such, other keys by type.

    ``str()`` of an arbitrary key can fail (an int of more than 4,300 digits) or be
    huge, so only string keys are shown, each cut to 40 characters, at most 20.
    """
    names = sorted(k[:40] if isinstance(k, str) else f"<{type(k).__name__}>" for k in loaded)
    return names[:20] + ([f"... {len(names) - 20} more"] if len(names) > 20 else [])
