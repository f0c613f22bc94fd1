"""The probe set: the samples that the issuer commits to and the auditor tests with.

Members are drawn from the train split, on which the model was trained. Non-members
are drawn from the test split, which training never reads. The valid split is not
used, because it may steer early stopping. Members and non-members are shuffled together, so
a sample's position says nothing about its membership.

This module builds the tensors and metadata of ``probe.safetensors``:

* ``inputs.<m>``: float32 [n, T_m, d_m] per modality, zeros where m is absent;
* ``present``: uint8 [n, M], 1 where the modality is observed, columns in the order of
  the ``modalities`` metadata;
* ``label``: float32 [n];
* ``member``: uint8 [n], 1 for a training sample, 0 for a held-out one;
* ``attribute.<name>``: int64 [n] for each attribute both splits have;
* metadata ``modalities`` (a JSON list) and ``format`` = ``mbd-cert-probe/1``.

The trainer writes the file; :func:`probe_to_split` turns the tensors back into a
:class:`~trainer.data.Split`.

Stability: the tensor names, dtypes and metadata keys are the probe set format
``mbd-cert-probe/1``; changing them needs a new format string.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from mbd_cert.errors import MalformedData

from . import Corpus, Split
from ._common import DEFAULT_MODALITIES, check_count, validate_split

PROBE_FORMAT = "mbd-cert-probe/1"

_INPUT_PREFIX = "inputs."
_ATTRIBUTE_PREFIX = "attribute."


def build_probe_set(
    corpus: Corpus, *, n_members: int, n_nonmembers: int, seed: int
) -> dict[str, np.ndarray]:
    """Draw a probe set: members from the train split, non-members from the test split.

    Args:
        corpus: The corpus the model was trained on.
        n_members: Training samples to draw, without replacement.
        n_nonmembers: Test samples to draw, without replacement.
        seed: Seed of the draw and of the shuffle.

    Returns:
        The probe set tensors, named as in the module docstring.

    Raises:
        InputError: A count is below 1 or above its split's size, or ``seed`` is
            negative.
    """
    train, test = corpus.splits["train"], corpus.splits["test"]
    n_members = check_count("n_members", n_members, 1, len(train))
    n_nonmembers = check_count("n_nonmembers", n_nonmembers, 1, len(test))
    seed = check_count("seed", seed, 0)

    rng = np.random.default_rng(seed)
    member_rows = np.sort(rng.choice(len(train), size=n_members, replace=False))
    nonmember_rows = np.sort(rng.choice(len(test), size=n_nonmembers, replace=False))
    order = rng.permutation(n_members + n_nonmembers)

    def gather(train_values: np.ndarray, test_values: np.ndarray) -> np.ndarray:
        stacked = np.concatenate([train_values[member_rows], test_values[nonmember_rows]])
        return np.ascontiguousarray(stacked[order])

    tensors: dict[str, np.ndarray] = {}
    for modality in corpus.modalities:
        tensors[_INPUT_PREFIX + modality] = gather(
            train.features[modality], test.features[modality]
        ).astype(np.float32, copy=False)
    tensors["present"] = gather(train.present, test.present).astype(np.uint8)
    tensors["label"] = gather(train.labels, test.labels).astype(np.float32, copy=False)
    member = np.concatenate([np.ones(n_members, np.uint8), np.zeros(n_nonmembers, np.uint8)])
    tensors["member"] = np.ascontiguousarray(member[order])
    for attribute in sorted(set(train.attributes) & set(test.attributes)):
        tensors[_ATTRIBUTE_PREFIX + attribute] = gather(
            train.attributes[attribute], test.attributes[attribute]
        ).astype(np.int64, copy=False)
    return tensors


def probe_tensors_and_metadata(
    corpus: Corpus, *, n_members: int, n_nonmembers: int, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Build the tensors and metadata of ``probe.safetensors``.

    Args:
        corpus: The corpus the model was trained on.
        n_members: Training samples to draw.
        n_nonmembers: Test samples to draw.
        seed: Seed of the draw and of the shuffle.

    Returns:
        ``(tensors, metadata)``, ready for ``safetensors.numpy.save_file``.

    Raises:
        InputError: As for :func:`build_probe_set`.
    """
    tensors = build_probe_set(corpus, n_members=n_members, n_nonmembers=n_nonmembers, seed=seed)
    metadata = {"modalities": json.dumps(list(corpus.modalities)), "format": PROBE_FORMAT}
    return tensors, metadata


def probe_to_split(
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    *,
    source: str = "probe set",
) -> Split:
    """Turn probe set tensors back into a split.

    ``member`` is checked but not part of the split: read it from the tensors. Ids are
    ``probe-00000`` onwards, in file order.

    Args:
        tensors: The probe set tensors, for example from ``safetensors.numpy.load_file``.
        metadata: The file's metadata. Without it, the modalities must be exactly text,
            audio and vision, and the presence columns are taken in that order.
        source: File name used in error messages.

    Returns:
        The split; its modality order is that of the ``modalities`` metadata.

    Raises:
        MalformedData: The format string is unknown, a tensor is missing, unexpected or
            has the wrong dtype or shape, or a flag is not 0 or 1.
    """
    modalities = _modalities(tensors, metadata, source)

    for name in ("present", "label", "member"):
        if name not in tensors:
            raise MalformedData(
                f"{source}: tensor {name!r} is missing",
                hint="write the probe set with probe_tensors_and_metadata",
            )
    expected = {"present", "label", "member", *(_INPUT_PREFIX + m for m in modalities)}
    unexpected = sorted(
        k for k in tensors if k not in expected and not k.startswith(_ATTRIBUTE_PREFIX)
    )
    if unexpected:
        raise MalformedData(
            f"{source}: unexpected tensor(s) {unexpected}",
            hint=f"a {PROBE_FORMAT} file holds only inputs.*, present, "
            "label, member and attribute.*",
        )

    label = np.asarray(tensors["label"])
    if label.dtype != np.float32 or label.ndim != 1:
        raise MalformedData(
            f"{source}: tensor 'label' must be float32 [n], got {label.dtype} {list(label.shape)}",
            hint="rewrite the probe set",
        )
    n = label.shape[0]
    present = _flags(tensors, "present", (n, len(modalities)), source)
    _flags(tensors, "member", (n,), source)

    features = {}
    for modality in modalities:
        values = tensors.get(_INPUT_PREFIX + modality)
        if values is None:
            raise MalformedData(
                f"{source}: tensor 'inputs.{modality}' is missing",
                hint="the file needs one inputs.<m> per listed modality",
            )
        values = np.asarray(values)
        if values.ndim != 3 or values.shape[0] != n:
            raise MalformedData(
                f"{source}: tensor 'inputs.{modality}' must be [{n}, T, d], "
                f"got {list(values.shape)}",
                hint="rewrite the probe set",
            )
        features[modality] = values
    attributes = {
        name.removeprefix(_ATTRIBUTE_PREFIX): np.asarray(values)
        for name, values in tensors.items()
        if name.startswith(_ATTRIBUTE_PREFIX)
    }
    split = Split(
        features=features,
        present=present.astype(bool),
        labels=label,
        attributes=attributes,
        ids=[f"probe-{i:05d}" for i in range(n)],
    )
    validate_split(
        split,
        modalities,
        {m: int(v.shape[2]) for m, v in features.items()},
        {m: int(v.shape[1]) for m, v in features.items()},
        source=source,
    )
    return split


def _modalities(
    tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None, source: str
) -> list[str]:
    """Return the modality order from the metadata, or the default one when it is absent."""
    if metadata is None:
        found = sorted(
            k.removeprefix(_INPUT_PREFIX) for k in tensors if k.startswith(_INPUT_PREFIX)
        )
        if found != sorted(DEFAULT_MODALITIES):
            raise MalformedData(
                f"{source}: modalities {found} need the file's metadata to fix their order",
                hint="pass the metadata to probe_to_split",
            )
        return list(DEFAULT_MODALITIES)
    if metadata.get("format") != PROBE_FORMAT:
        raise MalformedData(
            f"{source}: metadata 'format' must be {PROBE_FORMAT!r}, got {metadata.get('format')!r}",
            hint="pass an mbd-cert probe set",
        )
    try:
        modalities = json.loads(metadata.get("modalities", ""))
    except json.JSONDecodeError as exc:
        raise MalformedData(
            f"{source}: metadata 'modalities' is not JSON ({exc})", hint="rewrite the probe set"
        ) from exc
    if (
        not isinstance(modalities, list)
        or not modalities
        or not all(isinstance(m, str) and m for m in modalities)
        or len(set(modalities)) != len(modalities)
    ):
        raise MalformedData(
            f"{source}: metadata 'modalities' must be a JSON list of distinct "
            f"names, got {metadata.get('modalities')!r}",
            hint="rewrite the probe set",
        )
    return modalities


def _flags(
    tensors: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...], source: str
) -> np.ndarray:
    values = np.asarray(tensors[name])
    if values.dtype != np.uint8 or values.shape != shape:
        raise MalformedData(
            f"{source}: tensor {name!r} must be uint8 {list(shape)}, got "
            f"{values.dtype} {list(values.shape)}",
            hint="rewrite the probe set",
        )
    if np.any(values > 1):
        raise MalformedData(
            f"{source}: tensor {name!r} must hold only 0 and 1", hint="rewrite the probe set"
        )
    return values
