"""Corpora for the bundled trainer: the in-memory layout, the registry and a summary.

Every loader returns a :class:`Corpus` whose splits hold float32 sequence features
``[n, T, d]`` per modality, a presence mask, sentiment labels in [-3, 3] and optional
integer attributes. A sample without some modality is normal input: its ``present``
entry is False and its features for that modality are zeros.

Registered corpora (:data:`CORPORA`):

* ``synthetic``: generated from a seed with known ground truth, the default
  (:mod:`trainer.data.synthetic`).
* ``mosei-subset``: 922 CMU-MOSEI videos from MMSA-style pickles
  (:mod:`trainer.data.mosei`).
* ``ict-mmmo``: ICT-MMMO HDF5 features with text missing for the training split
  (:mod:`trainer.data.ictmmmo`).
* ``mosi-text``: CMU-MOSI transcripts embedded offline, text only
  (:mod:`trainer.data.mosi_text`).
* ``mmsa``: a user's own MMSA-style pickle with its train, valid and test splits, named
  by the ``data_file`` option (:mod:`trainer.data.mmsa`).

The CMU datasets (CMU-MOSI, CMU-MOSEI, ICT-MMMO) are distributed by their authors for
non-commercial research only. Nothing from them ships with this package.

The data root of the real corpora is the ``root`` argument when given, else the
environment variable ``MBD_CERT_DATA``. Without either, it is ``../shared/data`` next
to the repository that contains the current working directory (the nearest parent
folder with a ``.git`` entry). Outside a repository it is ``../shared/data`` next to
the working directory itself.

Stability: internal to the trainer. Field names of :class:`Split` and :class:`Corpus`
follow the team's data contract and change only together with the trainer.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbd_cert.errors import InputError

from ._common import DEFAULT_MODALITIES, default_data_root, validate_corpus, validate_split
from ._unpickle import load_restricted

__all__ = [
    "CORPORA",
    "DEFAULT_MODALITIES",
    "Corpus",
    "CorpusEntry",
    "Split",
    "corpus_summary",
    "default_data_root",
    "load_corpus",
    "load_restricted",
    "validate_corpus",
    "validate_split",
]

SPLIT_NAMES = ("train", "valid", "test")


@dataclass
class Split:
    """One split of a corpus.

    Attributes:
        features: Modality name to float32 ``[n, T, d]``, zeros where the modality is
            absent.
        present: bool ``[n, M]``; column j is ``Corpus.modalities[j]``.
        labels: float32 ``[n]``, sentiment in [-3, 3] after the corpus's label
            transform.
        attributes: Attribute name to int64 ``[n]`` (for example ``audio_private``);
            may be empty.
        ids: Sample identifiers, unique within the corpus.
    """

    features: dict[str, np.ndarray]
    present: np.ndarray
    labels: np.ndarray
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Corpus:
    """A named corpus with its train, valid and test splits.

    Attributes:
        name: Registry name, for example ``synthetic``.
        modalities: Modality names in the column order of ``Split.present``.
        input_dims: Feature size d per modality.
        seq_len: Sequence length T per modality.
        splits: ``train``, ``valid`` and ``test``.
        info: Provenance: seeds, split rule, label transform, file digests, licence.
    """

    name: str
    modalities: list[str]
    input_dims: dict[str, int]
    seq_len: dict[str, int]
    splits: dict[str, Split]
    info: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class CorpusEntry:
    """A registered corpus: where its loader lives and whether it reads files.

    Attributes:
        name: Registry name passed to :func:`load_corpus`.
        loader: ``"module:function"``, imported on first use so that h5py and
            sentence-transformers load only for the corpora that need them.
        reads_files: True for corpora read from the data root.
        description: One line for help texts.
    """

    name: str
    loader: str
    reads_files: bool
    description: str

    def resolve(self) -> Callable[..., Corpus]:
        """Import and return the loader function.

        Returns:
            The loader, called as ``loader(root, seed, **options)``.
        """
        module_name, function_name = self.loader.split(":")
        module = importlib.import_module(module_name)
        loader: Callable[..., Corpus] = getattr(module, function_name)
        return loader


CORPORA: dict[str, CorpusEntry] = {
    entry.name: entry
    for entry in (
        CorpusEntry(
            "synthetic",
            "trainer.data.synthetic:load",
            False,
            "generated corpus with known ground truth (default)",
        ),
        CorpusEntry(
            "mosei-subset",
            "trainer.data.mosei:load",
            True,
            "922 CMU-MOSEI videos, text/audio/vision, own 70/15/15 split",
        ),
        CorpusEntry(
            "ict-mmmo",
            "trainer.data.ictmmmo:load",
            True,
            "ICT-MMMO clips, text missing in the training split",
        ),
        CorpusEntry(
            "mosi-text",
            "trainer.data.mosi_text:load",
            True,
            "CMU-MOSI transcripts embedded with all-MiniLM-L6-v2, text only",
        ),
        # One file named by the data_file option, not a folder under the data root.
        CorpusEntry(
            "mmsa",
            "trainer.data.mmsa:load",
            False,
            "your own MMSA-style pickle with train, valid and test splits",
        ),
    )
}


def load_corpus(name: str, root: str | Path | None = None, seed: int = 0, **options: Any) -> Corpus:
    """Load a registered corpus and check it against the data contract.

    Args:
        name: A key of :data:`CORPORA`.
        root: Data root holding the real corpora's folders, or the corpus folder
            itself. Defaults to :func:`default_data_root`. Ignored by ``synthetic``
            and ``mmsa``.
        seed: Generation seed (``synthetic``) or split seed (``mosei-subset``);
            recorded in ``info`` by every loader.
        **options: Loader-specific keyword options, for example ``n_train`` for
            ``synthetic``, ``cache_dir`` for ``mosi-text`` or ``data_file`` for ``mmsa``.

    Returns:
        The corpus, validated with :func:`validate_corpus`.

    Raises:
        InputError: ``name`` is not registered, an option is unknown, or ``seed`` is
            not a non-negative integer.
        FileMissing: The data folder or one of its files does not exist.
        MalformedData: A file or the loaded corpus breaks the expected layout.
    """
    entry = CORPORA.get(name)
    if entry is None:
        raise InputError(
            f"unknown corpus {name!r}; expected one of {sorted(CORPORA)}",
            hint="pass a registered corpus name",
            code="E_PARAMETER_INVALID",
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(
            f"seed must be an integer >= 0, got {seed!r}",
            hint="pass a non-negative integer seed",
            code="E_PARAMETER_INVALID",
        )

    loader = entry.resolve()
    parameters = inspect.signature(loader).parameters
    accepted = set(parameters) - {"root", "seed"}
    # A loader that takes **options checks the names itself.
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = sorted(set(options) - accepted)
    if unknown and not takes_any:
        raise InputError(
            f"unknown option(s) {unknown} for corpus {name!r}; "
            f"accepted options: {sorted(accepted)}",
            hint="remove the option or check its spelling",
            code="E_PARAMETER_INVALID",
        )

    data_root = None if root is None else Path(root)
    if entry.reads_files and data_root is None:
        data_root = default_data_root()
    corpus = loader(data_root, int(seed), **options)
    validate_corpus(corpus, source=f"corpus {name!r}")
    return corpus


def corpus_summary(corpus: Corpus) -> dict[str, Any]:
    """Summarise sizes, missing rates per modality and label statistics.

    Args:
        corpus: A corpus as returned by :func:`load_corpus`.

    Returns:
        A JSON-serialisable dict with ``name``, ``modalities``, ``input_dims``,
        ``seq_len`` and ``splits``. Each split has ``n``, ``missing_rate`` (share of
        samples where a modality is absent), ``labels`` (mean, std, min, max, share
        below zero) and ``attributes``. A binary attribute reports the share of ones,
        any other the number of distinct values.
    """
    splits: dict[str, Any] = {}
    for split_name, split in corpus.splits.items():
        n = len(split)
        missing = (
            {m: float(1.0 - split.present[:, j].mean()) for j, m in enumerate(corpus.modalities)}
            if n
            else {m: 0.0 for m in corpus.modalities}
        )
        labels = split.labels.astype(np.float64)
        label_stats = (
            {
                "mean": float(labels.mean()),
                "std": float(labels.std()),
                "min": float(labels.min()),
                "max": float(labels.max()),
                "negative_share": float((labels < 0).mean()),
            }
            if n
            else {}
        )
        attribute_stats: dict[str, Any] = {}
        for attribute_name, values in split.attributes.items():
            distinct = np.unique(values)
            if n and set(distinct.tolist()) <= {0, 1}:
                attribute_stats[attribute_name] = {"share_of_ones": float(values.mean())}
            else:
                attribute_stats[attribute_name] = {"distinct_values": int(distinct.size)}
        splits[split_name] = {
            "n": n,
            "missing_rate": missing,
            "labels": label_stats,
            "attributes": attribute_stats,
        }
    return {
        "name": corpus.name,
        "modalities": list(corpus.modalities),
        "input_dims": dict(corpus.input_dims),
        "seq_len": dict(corpus.seq_len),
        "splits": splits,
    }
