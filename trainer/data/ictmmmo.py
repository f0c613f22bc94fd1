"""Loader of ICT-MMMO feature files (HDF5), a corpus whose training split has no text.

Input: one HDF5 file per modality and split, each with a single dataset ``d1``:

* ``audio_{split}.h5`` [n, 20, 74]: COVAREP features, clipped to [-255, 255];
* ``video_{split}.h5`` [n, 20, 36]: FACET features, modality ``vision`` here;
* ``text_{valid,test}_emb.h5`` [n, 20, 300]: GloVe word vectors;
* ``y_{split}.h5`` [n]: the clip's rating, 1 (very negative) to 5 (very positive).

The published split is kept: 220 train, 40 valid and 80 test clips.

The training clips' text was never published in this form. Their text features are
zeros with ``present`` False: normal input, not an error, and a realistic test of
training with a modality missing.

Preparation:

* Labels are centred: ``rating - 3``, because 3 is the neutral rating; they lie in
  [-2, 2] and the usual Acc2, F1 and Acc7 conventions apply to them.
* Audio and vision are standardised per feature with the train split's mean and
  standard deviation over all clips and time steps. Text is standardised with the
  valid split's statistics, because the train split has no text.

Licence: ICT-MMMO is distributed by its authors for non-commercial research only.

Stability: internal to the trainer.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from mbd_cert.errors import TORCH_EXTRA_HINT, InputError, MalformedData

from . import Corpus, Split
from ._common import (
    DEFAULT_MODALITIES,
    apply_standardiser,
    check_digests,
    fit_standardiser,
    resolve_corpus_dir,
)

FOLDER_NAME = "ict-mmmo"

# Published SHA-256 digests of the corpus files.
EXPECTED_SHA256 = {
    "audio_train.h5": "4c37e59d75bf1fe17baf6d607e4e7eef228b9b16a145f64c9624d2fc8fcb1666",
    "audio_valid.h5": "37b39911ee143d712e36d1fcba5b41400d2b40bef9de3da419de7344486eb8e9",
    "audio_test.h5": "1d701dc193b3e4404e35b97165fd33af19aff50d193a744488ec4c87ea0d6c44",
    "video_train.h5": "2b7d7d442c1ef7aae0c06d19a845baeb5f8685ee844900f30d6cce643da42452",
    "video_valid.h5": "43a44a63e369bca2fc86c54fa42d9b3b30c03657b8f7287bdae60341f4767d8c",
    "video_test.h5": "d0bfeb4a0ca249ac766b9c426146e4765b783463112e78665231a82c7b02f176",
    "text_valid_emb.h5": "ff332edc367c23495f0a0194fc5a2b83d217565a6a9ab402f98cbbb60bdc3b95",
    "text_test_emb.h5": "8f3bcab7716c482c209c393098fabe6362fa66b58eb9de5ebd4529c2cb53476b",
    "y_train.h5": "872872ba80f2076a2f5287ace2e3cb72dff7abaa01e1906073c1d50a15a84d6e",
    "y_valid.h5": "e164e98d53b01e558af6eb232fdc0ca8660f8bd3e76469ca12bef124688a4c8f",
    "y_test.h5": "17a83a344f15fc751bf10a052ade48d0944959052b30f33bc2c5216a31ea59ee",
}

SPLITS = ("train", "valid", "test")

# Rating scale of ICT-MMMO: 1 (very negative) to 5 (very positive), 3 neutral.
NEUTRAL_RATING = 3.0

# Largest dataset read, in float64 bytes: this or 64 times the file's size, whichever
# is larger. The published files hold at most 2.6 MB each.
MAX_DATASET_BYTES = 256 << 20
DATASET_BYTES_PER_FILE_BYTE = 64
RATING_RANGE = (1.0, 5.0)


def _file_name(modality: str, split: str) -> str | None:
    """Return the file of one modality and split, or None where none was published."""
    if modality == "text":
        return None if split == "train" else f"text_{split}_emb.h5"
    prefix = "video" if modality == "vision" else "audio"
    return f"{prefix}_{split}.h5"


def load(root: Path | None, seed: int, *, verify_digests: bool = True) -> Corpus:
    """Load ICT-MMMO with its published split.

    Args:
        root: Data root holding ``ict-mmmo/``, or that folder itself.
        seed: Unused by the split, which is fixed; recorded in ``info``.
        verify_digests: Compare file digests with the published ones.

    Returns:
        The corpus: audio [n, 20, 74], vision [n, 20, 36], text [n, 20, 300] (zeros and
        absent for the 220 training clips), labels ``rating - 3``.

    Raises:
        InputError: h5py is not installed.
        FileMissing: The folder or a file is absent.
        MalformedData: A digest differs, a file lacks dataset ``d1``, or shapes,
            values or ratings are invalid.
    """
    try:
        import h5py
    except ImportError as exc:
        raise InputError(
            "the ict-mmmo corpus needs h5py, which is not installed",
            hint=f"h5py comes with the torch extra: {TORCH_EXTRA_HINT}",
        ) from exc

    folder = resolve_corpus_dir(root, FOLDER_NAME, EXPECTED_SHA256)
    digests, contents = check_digests(folder, EXPECTED_SHA256, verify_digests)

    raw: dict[str, dict[str, np.ndarray | None]] = {}
    ratings: dict[str, np.ndarray] = {}
    for split in SPLITS:
        name = f"y_{split}.h5"
        ratings[split] = _read_ratings(h5py, folder / name, contents[name])
        raw[split] = {}
        for modality in DEFAULT_MODALITIES:
            file = _file_name(modality, split)
            raw[split][modality] = None if file is None else _read_dataset(
                h5py, folder / file, contents[file])
        _check_split_shapes(folder, split, raw[split], ratings[split].shape[0])

    widths = _check_feature_shapes(folder, raw)

    # Standardisation statistics: train for audio and vision, valid for text.
    statistics = {}
    for modality in DEFAULT_MODALITIES:
        source_split = "valid" if modality == "text" else "train"
        values = raw[source_split][modality]
        assert values is not None  # _check_feature_shapes guarantees it
        statistics[modality] = fit_standardiser(values)

    splits = {}
    for split in SPLITS:
        n = ratings[split].shape[0]
        features = {}
        present = np.zeros((n, len(DEFAULT_MODALITIES)), dtype=bool)
        for column, modality in enumerate(DEFAULT_MODALITIES):
            values = raw[split][modality]
            steps, dim = widths[modality]
            if values is None:
                features[modality] = np.zeros((n, steps, dim), dtype=np.float32)
                continue
            features[modality] = apply_standardiser(values, *statistics[modality])
            present[:, column] = True
        splits[split] = Split(
            features=features,
            present=present,
            labels=(ratings[split] - NEUTRAL_RATING).astype(np.float32),
            attributes={},
            ids=[f"{split}/{i:04d}" for i in range(n)],
        )

    return Corpus(
        name="ict-mmmo",
        modalities=list(DEFAULT_MODALITIES),
        input_dims={m: widths[m][1] for m in DEFAULT_MODALITIES},
        seq_len={m: widths[m][0] for m in DEFAULT_MODALITIES},
        splits=splits,
        info={
            "source": "ICT-MMMO HDF5 feature files (dataset d1)",
            "licence": "ICT-MMMO is distributed by its authors for non-commercial research only",
            "files": digests,
            "digests_verified": verify_digests,
            "seed": seed,
            "split_rule": "published split: 220 train, 40 valid, 80 test clips",
            "label_transform": "label = rating - 3 (neutral rating 3; ratings 1 to 5)",
            "text_missing": "no text features were published for the train split; those "
            "samples have text absent",
            "standardisation": "per feature over clips and time steps; audio and vision "
            "with train-split statistics, text with valid-split statistics",
            "modality_files": {
                "text": "text_*_emb.h5",
                "audio": "audio_*.h5",
                "vision": "video_*.h5",
            },
        },
    )


def _read_dataset(h5py: object, path: Path, data: bytes) -> np.ndarray:
    """Read dataset ``d1`` from the file's bytes as float64 and check that it is finite.

    ``path`` names the file in messages; the bytes are the ones whose digest was checked.
    """
    try:
        with h5py.File(io.BytesIO(data), "r") as handle:  # type: ignore[attr-defined]
            link = handle.get("d1", getlink=True)
            if link is None:
                raise MalformedData(
                    f"{path}: dataset 'd1' not found; found {sorted(handle)[:20]}",
                    hint="pass the ICT-MMMO feature files",
                )
            # A soft or external link, or a dataset stored in other files (external
            # raw storage, virtual datasets), would read data from outside the file.
            if not isinstance(link, h5py.HardLink):  # type: ignore[attr-defined]
                raise MalformedData(
                    f"{path}: 'd1' is a link ({type(link).__name__}), not a dataset "
                    "stored in the file",
                    hint="pass the ICT-MMMO feature files; copy linked data into the file",
                )
            dataset = handle["d1"]
            if not isinstance(dataset, h5py.Dataset):  # type: ignore[attr-defined]
                raise MalformedData(
                    f"{path}: 'd1' must be a dataset, got a {type(dataset).__name__}",
                    hint="pass the ICT-MMMO feature files",
                )
            if dataset.external or dataset.is_virtual:
                raise MalformedData(
                    f"{path}: dataset 'd1' keeps its data in other files",
                    hint="pass the ICT-MMMO feature files; copy the data into the file",
                )
            if dataset.dtype.kind not in "fiu":
                raise MalformedData(
                    f"{path}: dataset 'd1' must be numeric, got {dataset.dtype}",
                    hint="pass the ICT-MMMO feature files",
                )
            # Compressed or unwritten chunks let a small file declare a huge dataset.
            limit = max(MAX_DATASET_BYTES, DATASET_BYTES_PER_FILE_BYTE * len(data))
            if dataset.size * 8 > limit:
                raise MalformedData(
                    f"{path}: dataset 'd1' declares shape {list(dataset.shape)}, "
                    f"{dataset.size * 8} bytes as float64, more than the {limit} allowed "
                    "for a file of this size",
                    hint="pass the ICT-MMMO feature files",
                )
            values = np.asarray(dataset[()], dtype=np.float64)
    except (OSError, RuntimeError, KeyError) as exc:
        # h5py raises RuntimeError or KeyError for some broken links and objects.
        raise MalformedData(
            f"{path}: not a readable HDF5 file ({exc})", hint="copy the file again"
        ) from exc
    if not np.all(np.isfinite(values)):
        raise MalformedData(
            f"{path}: dataset 'd1' contains "
            f"{int((~np.isfinite(values)).sum())} NaN or infinite values",
            hint="copy the file again",
        )
    return values


def _read_ratings(h5py: object, path: Path, data: bytes) -> np.ndarray:
    ratings = _read_dataset(h5py, path, data)
    if ratings.ndim == 2 and ratings.shape[1] == 1:
        ratings = ratings[:, 0]
    if ratings.ndim != 1:
        raise MalformedData(
            f"{path}: dataset 'd1' must be [n] ratings, got {list(ratings.shape)}",
            hint="pass the ICT-MMMO rating files",
        )
    if ratings.size == 0:
        raise MalformedData(
            f"{path}: dataset 'd1' contains no ratings, so that split would be empty",
            hint="pass the ICT-MMMO rating files",
        )
    low, high = RATING_RANGE
    if ratings.size and (ratings.min() < low or ratings.max() > high):
        raise MalformedData(
            f"{path}: ratings must lie in [{low:g}, {high:g}], got "
            f"[{ratings.min():g}, {ratings.max():g}]",
            hint="pass the ICT-MMMO rating files",
        )
    return ratings


def _check_split_shapes(
    folder: Path, split: str, values: dict[str, np.ndarray | None], n: int
) -> None:
    for modality, array in values.items():
        if array is None:
            continue
        name = _file_name(modality, split)
        if array.ndim != 3 or array.shape[0] != n:
            raise MalformedData(
                f"{folder / str(name)}: dataset 'd1' must be [{n}, T, d] to "
                f"match y_{split}.h5, got {list(array.shape)}",
                hint="use files of one release",
            )


def _check_feature_shapes(
    folder: Path, raw: dict[str, dict[str, np.ndarray | None]]
) -> dict[str, tuple[int, int]]:
    """Check that each modality has the same (T, d) in every split that has it."""
    widths: dict[str, tuple[int, int]] = {}
    for modality in DEFAULT_MODALITIES:
        shapes = {
            split: raw[split][modality].shape[1:]  # type: ignore[union-attr]
            for split in SPLITS
            if raw[split][modality] is not None
        }
        if len(set(shapes.values())) != 1:
            raise MalformedData(
                f"{folder}: modality {modality!r} has different [T, d] per split: {shapes}",
                hint="use files of one release",
            )
        steps, dim = next(iter(shapes.values()))
        widths[modality] = (int(steps), int(dim))
    return widths
