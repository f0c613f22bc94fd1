"""Helpers shared by the corpus loaders: data root, file digests, scaling, validation.

Validation raises :class:`mbd_cert.errors.MalformedData` with the file (or corpus) and
the field that breaks the data contract, so that a bad copy of a dataset is reported
before training starts instead of surfacing as NaN losses.

Stability: private to :mod:`trainer.data`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mbd_cert.checkpoint import LABEL_BOUND as LABEL_BOUND
from mbd_cert.errors import FileMissing, InputError, MalformedData

if TYPE_CHECKING:
    from . import Corpus, Split

DEFAULT_MODALITIES = ("text", "audio", "vision")

DATA_ROOT_ENV = "MBD_CERT_DATA"

# A feature whose train-split standard deviation is below this is constant: it is
# centred but not scaled, so that it stays zero instead of being blown up to noise.
MIN_STD = 1e-6


def default_data_root() -> Path:
    """Return the folder that holds the real corpora.

    This is ``$MBD_CERT_DATA`` when set. Otherwise it is ``../shared/data`` next to the
    nearest parent of the working directory that contains ``.git``, or next to the
    working directory when no parent does.

    Returns:
        The data root. It may not exist: loaders report that with ``FileMissing``.
    """
    from_env = os.environ.get(DATA_ROOT_ENV)
    if from_env:
        return Path(from_env)
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / ".git").exists():
            return folder.parent / "shared" / "data"
    return cwd.parent / "shared" / "data"


def resolve_corpus_dir(root: Path | None, folder_name: str, required: Iterable[str]) -> Path:
    """Find a corpus folder: ``root/folder_name``, or ``root`` itself if it has the files.

    Args:
        root: The data root, or the corpus folder itself.
        folder_name: The corpus's folder name under the data root.
        required: File names that must exist in the corpus folder.

    Returns:
        The corpus folder.

    Raises:
        FileMissing: Neither candidate folder exists, or a required file is absent.
        InputError: A required file is a directory, a FIFO or a device
            (``E_FILE_NOT_REGULAR``).
    """
    base = default_data_root() if root is None else Path(root)
    required = list(required)
    candidate = base / folder_name
    if not candidate.is_dir() and all((base / name).is_file() for name in required):
        candidate = base
    if not candidate.is_dir():
        raise FileMissing(
            f"corpus folder not found: {candidate}",
            hint=f"pass --data-root (or set {DATA_ROOT_ENV}) with the folder that holds "
            f"{folder_name}/",
        )
    for name in required:
        path = candidate / name
        if path.exists() and not path.is_file():
            # Something exists at the path, so "not found" would mislead. Hashing a FIFO
            # would also block until another process writes to it.
            kind = "a directory" if path.is_dir() else "not a regular file"
            raise InputError(
                f"data file {path} is {kind}",
                hint="copy the corpus file itself into the corpus folder",
                code="E_FILE_NOT_REGULAR",
            )
        if not path.is_file():
            raise FileMissing(
                f"data file not found: {path}",
                hint="copy the complete corpus folder",
            )
    return candidate


def check_digests(folder: Path, expected: Mapping[str, str],
                  verify: bool) -> tuple[dict[str, str], dict[str, bytes]]:
    """Read the named files once, hash them and compare with the published digests.

    The caller parses the returned bytes, not the files again, so the data it loads
    is the data whose digest was checked even if a file changes in between.

    Args:
        folder: The corpus folder.
        expected: File name to expected SHA-256 hex digest.
        verify: Compare with ``expected``. When False the digests are only recorded, for
            a user's own copy of a dataset in the same layout.

    Returns:
        ``(digests, contents)``: file name to ``"sha256:<hex>"``, and to the bytes read.

    Raises:
        MalformedData: A digest differs from the expected one.
    """
    digests: dict[str, str] = {}
    contents: dict[str, bytes] = {}
    for name, expected_hex in expected.items():
        data = (folder / name).read_bytes()
        digests[name] = compare_digest(folder / name, hashlib.sha256(data).hexdigest(),
                                       expected_hex, verify)
        contents[name] = data
    return digests, contents


def compare_digest(path: Path, actual_hex: str, expected_hex: str, verify: bool) -> str:
    """Compare a data file's SHA-256 with the published one.

    Args:
        path: The data file, for the message.
        actual_hex: Its SHA-256 as 64 lowercase hex digits.
        expected_hex: The published SHA-256.
        verify: Compare; when False the digest is only returned.

    Returns:
        ``"sha256:<actual_hex>"``.

    Raises:
        MalformedData: ``verify`` is set and the digests differ.
    """
    if verify and actual_hex != expected_hex:
        # The command line has no option to skip the check, so the hint names the
        # Python call for a user's own copy of the corpus.
        raise MalformedData(
            f"digest mismatch for data file {path}: expected sha256:{expected_hex}, got "
            f"sha256:{actual_hex}",
            hint="copy the file again from the published release. 'mbd-cert train' and "
            "'mbd-cert evaluate' accept only the published files. To train on your own "
            "copy in this layout, load it in Python with trainer.data.load_corpus(name, "
            "root, verify_digests=False) and pass the corpus to trainer.train.train",
        )
    return f"sha256:{actual_hex}"


def fit_standardiser(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the per-feature mean and scale over all axes but the last.

    Args:
        values: float array ``[..., d]`` from the split that defines the statistics.

    Returns:
        ``(mean, scale)``, both float64 ``[d]``; scale is the standard deviation, or 1
        where that is below ``MIN_STD``.
    """
    flat = values.reshape(-1, values.shape[-1]).astype(np.float64)
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    scale = np.where(std < MIN_STD, 1.0, std)
    return mean, scale


def apply_standardiser(values: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Return ``(values - mean) / scale`` as float32."""
    return np.asarray((values.astype(np.float64) - mean) / scale, dtype=np.float32)


def check_count(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """Check an integer argument against its bounds.

    Raises:
        InputError: ``value`` is not an integer in ``[minimum, maximum]``.
    """
    upper = "" if maximum is None else f" and <= {maximum}"
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or \
            value < minimum or (maximum is not None and value > maximum):
        raise InputError(
            f"{name} must be an integer >= {minimum}{upper}, got {value!r}",
            hint=f"pass a valid {name}",
            code="E_PARAMETER_INVALID",
        )
    return int(value)


def _fail(source: str, field: str, problem: str) -> MalformedData:
    return MalformedData(
        f"{source}: field {field!r} {problem}",
        hint="regenerate or copy the data again; the loader output must follow the "
        "trainer data contract",
    )


def validate_split(
    split: Split,
    modalities: list[str],
    input_dims: Mapping[str, int],
    seq_len: Mapping[str, int],
    *,
    source: str,
) -> None:
    """Check one split against the data contract.

    Checks dtypes and shapes, finite values, zeros where a modality is absent, at least
    one observed modality per sample, labels in [-3, 3] and unique ids.

    Args:
        split: The split to check.
        modalities: Modality names in presence-column order.
        input_dims: Expected feature size per modality.
        seq_len: Expected sequence length per modality.
        source: File or corpus and split named in error messages.

    Raises:
        MalformedData: The first rule the split breaks, naming ``source`` and the field.
    """
    labels = split.labels
    if not isinstance(labels, np.ndarray) or labels.dtype != np.float32 or labels.ndim != 1:
        raise _fail(source, "labels", f"must be float32 [n], got {_describe(labels)}")
    n = labels.shape[0]
    if not np.all(np.isfinite(labels)):
        raise _fail(
            source, "labels", f"contains {int((~np.isfinite(labels)).sum())} NaN or infinite values"
        )
    if n and float(np.abs(labels).max()) > LABEL_BOUND:
        raise _fail(
            source,
            "labels",
            f"must lie in [-3, 3], got max |label| {float(np.abs(labels).max()):.4g}",
        )

    present = split.present
    expected_present = (n, len(modalities))
    if (
        not isinstance(present, np.ndarray)
        or present.dtype != np.bool_
        or present.shape != expected_present
    ):
        raise _fail(
            source, "present", f"must be bool {list(expected_present)}, got {_describe(present)}"
        )
    if n and not present.any(axis=1).all():
        rows = np.flatnonzero(~present.any(axis=1))
        raise _fail(
            source,
            "present",
            f"has {rows.size} sample(s) with no observed modality, first at row {int(rows[0])}",
        )

    if sorted(split.features) != sorted(modalities):
        raise _fail(
            source, "features", f"must have keys {sorted(modalities)}, got {sorted(split.features)}"
        )
    for column, modality in enumerate(modalities):
        _validate_features(
            split.features[modality],
            present[:, column],
            (n, seq_len[modality], input_dims[modality]),
            source,
            f"features.{modality}",
        )

    for attribute, values in split.attributes.items():
        if not isinstance(values, np.ndarray) or values.dtype != np.int64 or values.shape != (n,):
            raise _fail(
                source, f"attributes.{attribute}", f"must be int64 [{n}], got {_describe(values)}"
            )
    if len(split.ids) != n:
        raise _fail(source, "ids", f"must have {n} entries, got {len(split.ids)}")
    if len(set(split.ids)) != n:
        raise _fail(source, "ids", "contains duplicates")


def _validate_features(
    values: Any, observed: np.ndarray, shape: tuple[int, int, int], source: str, field: str
) -> None:
    if not isinstance(values, np.ndarray) or values.dtype != np.float32 or values.shape != shape:
        raise _fail(source, field, f"must be float32 {list(shape)}, got {_describe(values)}")
    if not np.all(np.isfinite(values)):
        raise _fail(
            source, field, f"contains {int((~np.isfinite(values)).sum())} NaN or infinite values"
        )
    absent = ~observed
    if absent.any() and np.any(values[absent] != 0):
        raise _fail(source, field, "must be zero for samples where the modality is absent")


def validate_corpus(corpus: Corpus, *, source: str) -> None:
    """Check a corpus and each of its splits against the data contract.

    Args:
        corpus: The corpus to check.
        source: Name used in error messages, for example ``corpus 'ict-mmmo'``.

    Raises:
        MalformedData: The corpus or a split breaks the contract.
    """
    if sorted(corpus.splits) != ["test", "train", "valid"]:
        raise _fail(source, "splits", f"must be train, valid and test, got {sorted(corpus.splits)}")
    modalities = list(corpus.modalities)
    if not modalities or len(set(modalities)) != len(modalities):
        raise _fail(source, "modalities", f"must be distinct names, got {modalities}")
    for table_name, table in (("input_dims", corpus.input_dims), ("seq_len", corpus.seq_len)):
        if sorted(table) != sorted(modalities) or any(
            not isinstance(v, int) or v < 1 for v in table.values()
        ):
            raise _fail(
                source, table_name, f"must map each modality to an integer >= 1, got {table}"
            )
    seen_ids: set[str] = set()
    for split_name, split in corpus.splits.items():
        validate_split(
            split,
            modalities,
            corpus.input_dims,
            corpus.seq_len,
            source=f"{source} split {split_name!r}",
        )
        overlap = seen_ids.intersection(split.ids)
        if overlap:
            raise _fail(
                f"{source} split {split_name!r}",
                "ids",
                f"repeats {len(overlap)} id(s) of another split, e.g. {sorted(overlap)[0]!r}",
            )
        seen_ids.update(split.ids)


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {list(value.shape)}"
    return type(value).__name__
