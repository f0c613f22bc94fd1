"""Crafted corpus files: each must be rejected with an InputError, never crash or blow up.

The files are small fakes in the layout of the real corpora, loaded with
``verify_digests=False`` as a user's own copy would be.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import h5py
import numpy as np
import pytest

from mbd_cert.errors import InputError, LimitExceeded, MalformedData
from trainer.data import load_corpus, mosi_text
from trainer.data._unpickle import loads_restricted

ICT_FILES = [
    "audio_train", "audio_valid", "audio_test", "video_train", "video_valid", "video_test",
    "text_valid_emb", "text_test_emb", "y_train", "y_valid", "y_test",
]  # fmt: skip
ICT_SIZES = {"train": 12, "valid": 6, "test": 6}


class ZeroStrides:
    """Pickles to numpy.ndarray(shape, dtype, buffer, 0, strides 0): any size from 8 bytes."""

    def __init__(self, shape):
        self.shape = shape

    def __reduce__(self):
        return (np.ndarray, (self.shape, "<f4", b"\0" * 8, 0, (0,) * len(self.shape)))


def mosei_part(n, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "language": rng.normal(size=(n, 8)).astype(np.float32),
        "acoustic": rng.normal(size=(n, 4)).astype(np.float32),
        "visual": rng.normal(size=(n, 5)).astype(np.float32),
        "labels": rng.uniform(-1, 1, size=(n, 1)).astype(np.float32),
    }


def write_mosei(root, val, test):
    folder = root / "cmu-mosei-subset"
    folder.mkdir(parents=True)
    for name, part in (("val_data.pkl", val), ("test_data.pkl", test)):
        data = part if isinstance(part, bytes) else pickle.dumps(part, protocol=4)
        (folder / name).write_bytes(data)
    return root


def load_mosei(root):
    return load_corpus("mosei-subset", root, verify_digests=False)


def test_mosei_fake_loads(tmp_path):
    corpus = load_mosei(write_mosei(tmp_path, mosei_part(40), mosei_part(40, 1)))
    assert {name: len(split) for name, split in corpus.splits.items()} == {
        "train": 56, "valid": 12, "test": 12,
    }  # fmt: skip


def test_zero_stride_ndarray_refused():
    # 4 TB of float32 from an 82-byte pickle, before the fix.
    data = pickle.dumps({"labels": ZeroStrides((10**12,))}, protocol=4)
    with pytest.raises(MalformedData, match="refusing to call numpy.ndarray"):
        loads_restricted(data)


def test_reconstruct_with_declared_shape_refused():
    # _reconstruct(ndarray, (10**9,), 'f4') allocates 4 GB without any data behind it.
    data = (
        b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        b"J\x00\xca\x9a;\x85X\x02\x00\x00\x00f4\x87R."
    )
    with pytest.raises(MalformedData, match="declared shape"):
        loads_restricted(data)


def _in_subprocess(data: bytes) -> subprocess.CompletedProcess:
    code = (
        "import sys\n"
        "from mbd_cert.errors import MalformedData\n"
        "from trainer.data._unpickle import loads_restricted\n"
        "try:\n"
        "    loads_restricted(sys.stdin.buffer.read())\n"
        "except MalformedData as exc:\n"
        "    print('refused:', exc.message)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], input=data, capture_output=True, timeout=60, check=False
    )


def test_deep_tuple_key_refused():
    # {((((...)))): 1} nested 200,000 deep: hashing the key crashed the interpreter.
    depth = 200_000
    data = b"\x80\x02}" + b"(" * depth + b"t" * depth + b"K\x01s."
    result = _in_subprocess(data)
    assert result.returncode == 0, result.stderr[-500:]
    assert b"refused: " in result.stdout
    assert b"nests deeper" in result.stdout


def test_shared_tuple_key_refused():
    # t = (t, t) repeated 40 times as a dict key: hashing takes 2**40 steps.
    body = b")q\x000" + b"h\x00h\x00\x86q\x000" * 40 + b"h\x00"
    result = _in_subprocess(b"\x80\x02}" + body + b"K\x01s.")
    assert result.returncode == 0, result.stderr[-500:]
    assert b"refused: " in result.stdout


def test_deep_dtype_refused():
    # numpy.dtype([("a", [("a", ... )])]) raised RecursionError.
    depth = 100_000
    data = (
        b"\x80\x02cnumpy\ndtype\n"
        + b"((X\x01\x00\x00\x00a" * depth
        + b"X\x02\x00\x00\x00f4"
        + b"tl" * depth
        + b"\x85R."
    )
    with pytest.raises(MalformedData):
        loads_restricted(data)


def test_mosei_huge_int_key_named(tmp_path):
    # str() of a 5,000-digit int raises ValueError, which the key listing hit.
    part = {10**5000: 1, "other": 2}
    with pytest.raises(MalformedData, match="<int>"):
        load_mosei(write_mosei(tmp_path, part, mosei_part(40)))


@pytest.mark.parametrize("rows", [0, 1])
def test_mosei_too_few_rows(tmp_path, rows):
    with pytest.raises(MalformedData, match="empty after the 70/15/15 split"):
        load_mosei(write_mosei(tmp_path, mosei_part(rows), mosei_part(rows, 1)))


def test_mosei_zero_width_features(tmp_path):
    part = mosei_part(40)
    part["language"] = part["language"][:, :0]
    other = mosei_part(40, 1)
    other["language"] = other["language"][:, :0]
    with pytest.raises(MalformedData, match="d >= 1"):
        load_mosei(write_mosei(tmp_path, part, other))


def _ict_array(name, rng):
    split = next(s for s in ICT_SIZES if s in name)
    if name.startswith("y_"):
        return rng.integers(1, 6, size=ICT_SIZES[split]).astype(np.float64)
    width = {"audio": 3, "video": 4, "text": 5}[name.split("_")[0]]
    return rng.normal(size=(ICT_SIZES[split], 2, width)).astype(np.float32)


def write_ict(root, tweak=None):
    folder = root / "ict-mmmo"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ICT_FILES:
        values = _ict_array(name, rng)
        with h5py.File(folder / f"{name}.h5", "w") as handle:
            if tweak and name in tweak:
                tweak[name](handle, values, root)
            else:
                handle["d1"] = values
    return root


def load_ict(root):
    return load_corpus("ict-mmmo", root, verify_digests=False)


def test_ict_fake_loads(tmp_path):
    assert len(load_ict(write_ict(tmp_path)).splits["train"]) == 12


def _external_storage(handle, values, root):
    outside = root / "outside.bin"
    outside.write_bytes(values.astype("<f4").tobytes())
    external = [(str(outside), 0, 10**6)]
    handle.create_dataset("d1", shape=values.shape, dtype="<f4", external=external)


def _external_link(handle, values, root):
    with h5py.File(root / "outside.h5", "w") as other:
        other["d1"] = values
    handle["d1"] = h5py.ExternalLink(str(root / "outside.h5"), "/d1")


def _soft_loop(handle, values, root):
    handle["d1"] = h5py.SoftLink("/d1")


def _group(handle, values, root):
    handle.create_group("d1")


def _bomb(handle, values, root):
    # 30 GB of float32 declared, a few kB on disk: chunks never written.
    handle.create_dataset("d1", shape=(20000, 20, 20000), dtype="f4", chunks=(1, 20, 20000))


def _empty(handle, values, root):
    handle["d1"] = values[:0]


@pytest.mark.parametrize(
    ("tweak", "message"),
    [
        (_external_storage, "keeps its data in other files"),
        (_external_link, "is a link"),
        (_soft_loop, "is a link"),
        (_group, "must be a dataset"),
        (_bomb, "declares shape"),
    ],
)
def test_ict_crafted_audio_refused(tmp_path, tweak, message):
    with pytest.raises(MalformedData, match=message):
        load_ict(write_ict(tmp_path, {"audio_train": tweak}))


def test_ict_empty_split_refused(tmp_path):
    tweak = {name: _empty for name in ("audio_test", "video_test", "text_test_emb", "y_test")}
    with pytest.raises(MalformedData, match="contains no ratings"):
        load_ict(write_ict(tmp_path, tweak))


# CMU-MOSI transcripts: label.csv, loaded with fake embeddings so that no model runs.

MOSI_HEADER = b"id,text,label,mode\n"
MOSI_ROWS = (b"v1_1,good film,2.6,train\nv1_2,bad,-2.0,train\nv2_1,meh,-1.0,dev\n"
             b"v3_1,fine,0.4,test\n")


@pytest.fixture
def fake_embeddings(monkeypatch):
    def embed(texts, **kwargs):
        rows = np.arange(len(texts), dtype=np.float32)[:, None]
        return np.tile(np.linspace(-1.0, 1.0, 384, dtype=np.float32), (len(texts), 1)) + rows

    monkeypatch.setattr(mosi_text, "embed_transcripts", embed)


def write_mosi(root, data):
    folder = root / "cmu-mosi-text"
    folder.mkdir(parents=True)
    (folder / "label.csv").write_bytes(data)
    return folder / "label.csv"


def load_mosi(root):
    return load_corpus("mosi-text", root, verify_digests=False, cache_dir=root / "cache")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # csv.Error escaped as a traceback for the next two.
        (MOSI_HEADER + MOSI_ROWS + b"v9_1," + b"a" * 200_000 + b",1.0,train\n",
         r"line 6: field larger than field limit \(131072\)"),
        (MOSI_HEADER + MOSI_ROWS + b'v9_1,"open quote,1.0,train\n',
         "line 6: unexpected end of data"),
        (MOSI_HEADER + MOSI_ROWS + b"v9_1,te\0xt,1.0,train\n", "NUL byte at offset"),
        ((MOSI_HEADER + MOSI_ROWS).decode().encode("utf-16-le"), "NUL byte at offset 1,"),
        # The surplus field was dropped without a word.
        (MOSI_HEADER + MOSI_ROWS + b"v9_1,text,1.0,train,surplus\n",
         "line 6: 5 fields, but the header has 4"),
        (b"id,text,label,mode,label\n" + MOSI_ROWS,
         r"column\(s\) \['label'\] repeated in the header"),
        # float() took these as 1.0, 2.5 and infinity.
        (MOSI_HEADER + MOSI_ROWS + b"v9_1,text,0_1,train\n", "field 'label' must be a number"),
        (MOSI_HEADER + MOSI_ROWS + "v9_1,text,２.5,train\n".encode(),
         "field 'label' must be a number"),
        (MOSI_HEADER + MOSI_ROWS + b"v9_1,text,inf,train\n", "field 'label' must be a number"),
        (MOSI_HEADER + MOSI_ROWS + b"v9_1,text,1e308,train\n", "got '1e308'"),
        (MOSI_HEADER + MOSI_ROWS + b"v9_1,text,NaN,train\n", "got 'NaN'"),
        (MOSI_HEADER + MOSI_ROWS + b"v9_1,text," + b"1" * 100_000 + b",train\n",
         r"got '1{40}'\.\.\. \(fix"),
        (MOSI_HEADER + MOSI_ROWS + b",text,1.0,train\n", "line 6: field 'id' is empty"),
        # An empty split left NaN features from the standardiser.
        (MOSI_HEADER + b"v1_1,good,2.6,train\nv3_1,fine,0.4,test\n", "no rows with mode 'dev'"),
        (MOSI_HEADER + b"v2_1,meh,-1.0,dev\nv3_1,fine,0.4,test\n", "no rows with mode 'train'"),
    ],
    ids=["huge-field", "open-quote", "nul", "utf-16", "extra-field", "repeated-column",
         "underscore", "fullwidth-digit", "infinity", "1e308", "nan", "long-label", "empty-id",
         "no-dev", "no-train"],
)
def test_mosi_crafted_csv_rejected(tmp_path, fake_embeddings, data, message):
    write_mosi(tmp_path, data)
    with pytest.raises(MalformedData, match=message):
        load_mosi(tmp_path)


@pytest.mark.parametrize(
    "data",
    [
        b"\xef\xbb\xbf" + MOSI_HEADER + MOSI_ROWS,
        (MOSI_HEADER + MOSI_ROWS).replace(b"\n", b"\r\n"),
        (MOSI_HEADER + MOSI_ROWS).replace(b"\n", b"\r"),
        MOSI_HEADER + MOSI_ROWS + b'v9_1,"a ""quoted"", two-line\ntext",+.5,train\n\n',
        b"mode,label,text,id,speaker\ntrain,2.6,good,v1_1,a\ntrain,2e0,bad,v1_2,b\n"
        b"dev, 0.1 ,meh,v2_1,c\ntest,-1,fine,v3_1,d\n",
    ],
    ids=["bom", "crlf", "cr", "quoting", "column-order"],
)
def test_mosi_csv_variants_load(tmp_path, fake_embeddings, data):
    write_mosi(tmp_path, data)
    corpus = load_mosi(tmp_path)
    assert [len(corpus.splits[name]) for name in ("valid", "test")] == [1, 1]
    assert corpus.splits["train"].ids[:2] == ["v1_1", "v1_2"]


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_mosi_csv_not_regular_file(tmp_path, kind):
    # Reported as "data file not found" before, although the path exists.
    folder = tmp_path / "cmu-mosi-text"
    folder.mkdir()
    if kind == "directory":
        (folder / "label.csv").mkdir()
    else:
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs on this platform")
        os.mkfifo(folder / "label.csv")
    with pytest.raises(InputError) as caught:
        load_mosi(tmp_path)
    assert type(caught.value) is InputError
    assert caught.value.code == "E_FILE_NOT_REGULAR"
    assert str(folder / "label.csv") in caught.value.message


def test_mosi_csv_size_capped(tmp_path):
    # A sparse file costs no disk, and the size is checked before a byte is read.
    path = write_mosi(tmp_path, b"")
    with open(path, "r+b") as handle:
        handle.truncate(mosi_text.MAX_CSV_BYTES + 1)
    with pytest.raises(LimitExceeded) as caught:
        load_mosi(tmp_path)
    assert caught.value.code == "E_INPUT_TOO_LARGE"
    assert "the published label.csv has 0.2 MB" in caught.value.hint


def test_mosi_csv_rows_capped(tmp_path, fake_embeddings, monkeypatch):
    monkeypatch.setattr(mosi_text, "MAX_ROWS", 4)
    write_mosi(tmp_path, MOSI_HEADER + MOSI_ROWS)
    load_mosi(tmp_path)
    write_mosi(tmp_path / "more", MOSI_HEADER + MOSI_ROWS + b"v9_1,text,1.0,train\n")
    with pytest.raises(LimitExceeded) as caught:
        load_mosi(tmp_path / "more")
    assert caught.value.code == "E_LIMIT_EXCEEDED"
    assert "more than 4 rows" in caught.value.message


def test_mosi_rows_cap_bounds_embeddings():
    assert mosi_text.MAX_ROWS * mosi_text.EMBEDDING_DIM <= 2**25


@pytest.mark.parametrize("corpus", ["mosei-subset", "ict-mmmo"])
def test_loader_parses_the_bytes_it_hashed(tmp_path, monkeypatch, corpus):
    # The loaders hashed each file, then opened it again to parse it, so a file swapped
    # in between was loaded unchecked. Here every file is emptied right after hashing.
    import trainer.data.ictmmmo as ictmmmo
    import trainer.data.mosei as mosei

    module = mosei if corpus == "mosei-subset" else ictmmmo
    if corpus == "mosei-subset":
        write_mosei(tmp_path, mosei_part(40), mosei_part(40, 1))
    else:
        write_ict(tmp_path)
    hashed = module.check_digests

    def then_swap(folder, expected, verify):
        result = hashed(folder, expected, verify)
        for name in expected:
            (folder / name).write_bytes(b"")
        return result

    monkeypatch.setattr(module, "check_digests", then_swap)
    loaded = load_corpus(corpus, tmp_path, verify_digests=False)
    assert len(loaded.splits["train"]) > 0
