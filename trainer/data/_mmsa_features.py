"""Presence, cleaning and standardisation of the features read from an MMSA-style pickle.

:mod:`trainer.data.mmsa` checks the file's layout. This module turns its arrays into the
trainer's data contract, which is float32 ``[n, T, d]`` per modality plus a presence
mask, with zeros where a sample lacks the modality or a time step is padding.

Stability: private to :mod:`trainer.data`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbd_cert.errors import MalformedData

from ._common import DEFAULT_MODALITIES, apply_standardiser, fit_standardiser

SPLITS = ("train", "valid", "test")

MISSING_RULE = ("a sample lacks a modality when none of its values within its length is "
                "finite and non-zero (all-zero or all-NaN rows, length 0)")


@dataclass
class RawSplit:
    """One split as stored in the file, checked for layout but not yet cleaned.

    Attributes:
        features: Modality to float64 ``[n, T, d]``, possibly non-finite.
        lengths: Modality to int64 ``[n]`` valid time steps, or None when all count.
        labels: float64 ``[n]`` in [-3, 3].
        ids: Sample ids.
        text_key: The key the text features came from.
        ignored: Keys of the split that the loader does not read.
    """

    features: dict[str, np.ndarray]
    lengths: dict[str, np.ndarray | None]
    labels: np.ndarray
    ids: list[str]
    text_key: str
    ignored: set[str] = field(default_factory=set)


@dataclass
class PreparedFeatures:
    """Features in the trainer's layout, with what preparation did for ``Corpus.info``."""

    features: dict[str, dict[str, np.ndarray]]
    present: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, int]]
    info: dict[str, Any]


def prepare_features(path: Path, raw: dict[str, RawSplit]) -> PreparedFeatures:
    """Mark absent samples, fill non-finite values and standardise with train statistics.

    Args:
        path: The pickle file, for messages.
        raw: ``train``, ``valid`` and ``test`` as read from the file.

    Returns:
        The features, the presence masks, (T, d) per modality and the counts for ``info``.

    Raises:
        MalformedData: A modality has another (T, d) in one split than in another, or a
            sample has every modality absent.
    """
    shapes = _check_shapes(path, raw)

    # Step 1: valid time steps and presence per sample.
    steps = {name: {m: _valid_steps(raw[name], m) for m in DEFAULT_MODALITIES}
             for name in SPLITS}
    present = {
        name: np.stack([_is_present(raw[name].features[m], steps[name][m])
                        for m in DEFAULT_MODALITIES], axis=1)
        for name in SPLITS
    }
    for name in SPLITS:
        _check_some_present(path, name, present[name], raw[name].ids)

    features: dict[str, dict[str, np.ndarray]] = {name: {} for name in SPLITS}
    replaced: dict[str, dict[str, int]] = {name: {} for name in SPLITS}
    statistics_split: dict[str, str | None] = {}
    for column, modality in enumerate(DEFAULT_MODALITIES):
        # The rows and steps that carry data: present samples, before their padding.
        used = {name: steps[name][modality] & present[name][:, column, None]
                for name in SPLITS}
        values = {name: raw[name].features[modality] for name in SPLITS}

        # Step 2: replace non-finite values by the feature's finite train-split mean.
        fill = _finite_mean(values["train"][used["train"]], shapes[modality][1])
        for name in SPLITS:
            bad = ~np.isfinite(values[name]) & used[name][:, :, None]
            replaced[name][modality] = int(bad.sum())
            # Values outside ``used`` become zeros in step 4 anyway, and zeroing them
            # now keeps NaN out of the arithmetic.
            values[name] = np.where(bad, fill, np.where(used[name][:, :, None],
                                                        values[name], 0.0))

        # Step 3: standardise with the first split, in train, valid, test order, that
        # has the modality at all.
        source = next((name for name in SPLITS if used[name].any()), None)
        statistics_split[modality] = source
        if source is None:
            mean, scale = np.zeros(shapes[modality][1]), np.ones(shapes[modality][1])
        else:
            mean, scale = fit_standardiser(values[source][used[source]])

        # Step 4: zeros for absent samples and padding steps.
        for name in SPLITS:
            standardised = apply_standardiser(values[name], mean, scale)
            standardised[~used[name]] = 0.0
            features[name][modality] = np.ascontiguousarray(standardised)

    return PreparedFeatures(
        features=features,
        present=present,
        shapes=shapes,
        info={
            "missing_rule": MISSING_RULE,
            "absent_samples": {name: {m: int((~present[name][:, j]).sum())
                                      for j, m in enumerate(DEFAULT_MODALITIES)}
                               for name in SPLITS},
            "lengths_used": sorted({m for name in SPLITS for m in DEFAULT_MODALITIES
                                    if raw[name].lengths[m] is not None}),
            "nonfinite_replaced": replaced,
            "nonfinite_fill": "mean of the feature's finite train-split values of present "
            "samples, 0 where there is none",
            "standardisation": "per feature over present samples and valid time steps",
            "standardisation_split": statistics_split,
        },
    )


def _check_shapes(path: Path, raw: dict[str, RawSplit]) -> dict[str, tuple[int, int]]:
    """Return (T, d) per modality, which must be the same in every split."""
    shapes: dict[str, tuple[int, int]] = {}
    for modality in DEFAULT_MODALITIES:
        per_split = {name: tuple(int(s) for s in raw[name].features[modality].shape[1:])
                     for name in SPLITS}
        if len(set(per_split.values())) != 1:
            key = raw["train"].text_key if modality == "text" else modality
            raise MalformedData(
                f"{path}: {key!r} has a different [T, d] per split: "
                f"{ {name: list(shape) for name, shape in per_split.items()} }",
                hint="write every split with the same features, padded to the same number "
                "of time steps",
            )
        steps, dim = per_split["train"]
        shapes[modality] = (steps, dim)
    return shapes


def _valid_steps(split: RawSplit, modality: str) -> np.ndarray:
    """Return bool ``[n, T]``: True for time steps before the sample's length."""
    n, steps, _ = split.features[modality].shape
    lengths = split.lengths[modality]
    if lengths is None:
        return np.ones((n, steps), dtype=bool)
    return np.arange(steps)[None, :] < lengths[:, None]


def _is_present(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Return bool ``[n]``: True where a valid step contains a finite, non-zero value."""
    informative = np.isfinite(values) & (values != 0) & valid[:, :, None]
    return np.asarray(informative.any(axis=(1, 2)))


def _check_some_present(path: Path, name: str, present: np.ndarray, ids: list[str]) -> None:
    rows = np.flatnonzero(~present.any(axis=1))
    if rows.size:
        raise MalformedData(
            f"{path}: split {name!r} has {rows.size} sample(s) with every modality absent "
            f"(all values zero or non-finite), first id {ids[int(rows[0])][:80]!r}",
            hint="drop those samples from the file, or fill in at least one modality",
        )


def _finite_mean(values: np.ndarray, dim: int) -> np.ndarray:
    """Return the mean of each feature's finite values in ``[k, d]``, 0 where none is."""
    finite = np.isfinite(values)
    counts = finite.sum(axis=0)
    sums = np.where(finite, values, 0.0).sum(axis=0)
    fill: np.ndarray = np.divide(sums, counts, out=np.zeros(dim), where=counts > 0)
    return fill
