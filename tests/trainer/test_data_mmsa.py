"""Tests of the mmsa corpus: a user's own MMSA-style pickle, through the loader and the CLI.

The tests write small pickles with pickle.dumps; the loader reads them only through the
restricted unpickler.
"""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
from click.testing import CliRunner

from mbd_cert.cli import main
from mbd_cert.errors import InputError, MalformedData
from trainer.data import load_corpus

FAST = ["--epochs", "2", "--batch-size", "128", "--hidden-dim", "8", "--shared-dim", "4",
        "--private-dim", "2", "--fusion-hidden", "8", "--probe-members", "10",
        "--probe-nonmembers", "10", "--no-progress"]
SIZES = {"train": 24, "valid": 8, "test": 12}


def make_split(n: int, name: str, seed: int = 0) -> dict[str, object]:
    """Return one split in MMSA's layout: text [n, 3, 6], audio [n, 4, 5], vision [n, 7]."""
    rng = np.random.default_rng([seed, n])
    return {
        "text": rng.normal(size=(n, 3, 6)).astype(np.float32),
        "audio": rng.normal(size=(n, 4, 5)).astype(np.float32),
        "vision": rng.normal(size=(n, 7)).astype(np.float32),
        "regression_labels": rng.uniform(-3, 3, n).astype(np.float32),
        "id": np.array([f"{name}_clip{i}" for i in range(n)]),
        "raw_text": [f"sentence {i}" for i in range(n)],
        "classification_labels": np.zeros(n, dtype=np.float32),
    }


def make_data() -> dict[str, dict[str, object]]:
    return {name: make_split(n, name) for name, n in SIZES.items()}


def write(tmp_path, data, name="data.pkl"):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else pickle.dumps(data))
    return path


def with_missing(data):
    """Mark samples without a modality in each of the ways the loader recognises."""
    train = data["train"]
    train["audio"][0] = 0.0                      # all zero
    train["vision"][1] = np.nan                  # all NaN
    train["audio_lengths"] = np.full(24, 4)
    train["audio_lengths"][2] = 0                # length 0
    train["audio_lengths"][3] = 2                # two valid steps, then padding
    train["audio"][3, 2:] = np.nan
    train["audio"][4, 1, 0] = -np.inf            # one non-finite value of a present sample
    data["test"]["text"][5] = 0.0
    return data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mmsa")
    path = write(folder, with_missing(make_data()))
    out = folder / "model"
    result = CliRunner().invoke(main, ["train", "--corpus", "mmsa", "--data-file", str(path),
                                       "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    return path, out


def test_train_records_file_and_digest(trained):
    path, out = trained
    record = json.loads((out / "training.json").read_text())
    source = record["corpus"]["source"]
    assert source["name"] == "mmsa"
    assert source["options"]["data_file"] == str(path.resolve())
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert source["options"]["sha256"] == digest
    assert record["corpus"]["split_ids"]["test"][0] == "test_clip0"


def test_evaluate_reloads_recorded_file(trained):
    _, out = trained
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(out), "--split", "valid"])
    assert result.exit_code == 0, result.output
    assert "mmsa / valid (n = 8)" in result.stdout


def test_evaluate_rejects_changed_file(trained, tmp_path):
    _, out = trained
    other = write(tmp_path, make_data() | {"valid": make_split(8, "valid", seed=1)})
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(out),
                                       "--data-file", str(other)])
    assert result.exit_code == 2, result.output
    assert "[E_DATA_MALFORMED]" in result.stderr
    assert "SHA-256" in result.stderr
    assert "--data-file" in result.stderr


def test_evaluate_data_root_rejected(trained, tmp_path):
    _, out = trained
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(out),
                                       "--data-root", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "[E_PARAMETER_INVALID]" in result.stderr


@pytest.mark.parametrize(("options", "text"), [
    ({"sha256": None}, "options.sha256 must be a string"),
    ({"data_file": 7}, "options.data_file must be a string"),
    ({"verify_digests": False}, "options.verify_digests is not an option"),
])
def test_evaluate_unsafe_recorded_options(trained, tmp_path, options, text):
    _, out = trained
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in out.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    record = json.loads((copy / "training.json").read_text())
    record["corpus"]["source"]["options"].update(options)
    (copy / "training.json").write_text(json.dumps(record))
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(copy)])
    assert result.exit_code == 2, result.output
    assert "[E_DATA_MALFORMED]" in result.stderr
    assert text in result.stderr


def test_missing_modalities_marked_absent(tmp_path):
    corpus = load_corpus("mmsa", data_file=write(tmp_path, with_missing(make_data())))
    train = corpus.splits["train"]
    text, audio, vision = range(3)
    assert not train.present[0, audio]
    assert not train.present[1, vision]
    assert not train.present[2, audio]
    assert train.present[3, audio]
    assert not corpus.splits["test"].present[5, text]
    assert corpus.info["absent_samples"]["train"] == {"text": 0, "audio": 2, "vision": 1}
    # Absent samples and padding steps are zeros, and the valid steps keep their data.
    assert np.all(train.features["audio"][[0, 2]] == 0)
    assert np.all(train.features["vision"][1] == 0)
    assert np.all(train.features["audio"][3, 2:] == 0)
    assert np.any(train.features["audio"][3, :2] != 0)
    assert corpus.info["nonfinite_replaced"]["train"]["audio"] == 1
    assert corpus.info["ignored_keys"] == ["classification_labels", "raw_text"]
    assert corpus.seq_len == {"text": 3, "audio": 4, "vision": 1}


def test_mmsa_without_ids_numbers_samples(tmp_path):
    data = make_data()
    for split in data.values():
        del split["id"]
    corpus = load_corpus("mmsa", data_file=write(tmp_path, data))
    assert corpus.splits["valid"].ids[:2] == ["valid/00000", "valid/00001"]


def test_recorded_digest_checked(tmp_path):
    path = write(tmp_path, make_data())
    with pytest.raises(MalformedData, match="SHA-256"):
        load_corpus("mmsa", data_file=path, sha256="sha256:" + "0" * 64)
    with pytest.raises(InputError, match="64 lowercase hex"):
        load_corpus("mmsa", data_file=path, sha256="abc")


def _break(edit):
    data = make_data()
    edit(data)
    return data


# (case, file content, text the message must contain)
MALFORMED = [
    ("not a pickle", b"id,text\n1,hello\n", "not a valid pickle"),
    ("global", b"cos\nsystem\n(S'touch PWNED'\ntR.", "os.system"),
    ("list on top", [1, 2, 3], "expected a dict of splits"),
    ("missing split", _break(lambda d: d.pop("valid")), "'valid'"),
    ("missing modality key", _break(lambda d: d["train"].pop("vision")), "'vision'"),
    ("missing labels", _break(lambda d: d["test"].pop("regression_labels")),
     "'regression_labels' missing"),
    ("rows differ", _break(lambda d: d["train"].update(audio=np.ones((23, 4, 5), np.float32))),
     "'audio' must be [24, T, d]"),
    ("steps differ", _break(lambda d: d["test"].update(text=np.ones((12, 2, 6), np.float32))),
     "'text' has a different [T, d] per split"),
    ("integer features", _break(lambda d: d["train"].update(vision=np.ones((24, 7), np.int64))),
     "'vision' must be a float numpy array"),
    ("string labels", _break(lambda d: d["train"].update(
        regression_labels=np.array(["1"] * 24))), "'regression_labels' must be a numeric"),
    ("NaN label", _break(lambda d: d["valid"]["regression_labels"].__setitem__(3, np.nan)),
     "NaN or infinite value(s), first at row 3"),
    ("label range", _break(lambda d: d["test"]["regression_labels"].__setitem__(0, 5.0)),
     "must lie in [-3, 3]"),
    ("empty split", _break(lambda d: d.update(test=make_split(0, "test"))), "empty"),
    ("token ids", _break(lambda d: [s.update(text_bert=np.ones((len(s["id"]), 3, 50)))
                                   or s.pop("text") for s in d.values()]), "token ids"),
    ("all absent", _break(lambda d: [d["train"][m].__setitem__(4, 0.0)
                                     for m in ("text", "audio", "vision")]),
     "every modality absent"),
    ("bad lengths", _break(lambda d: d["train"].update(audio_lengths=np.full(24, 9))),
     "'audio_lengths' must be 24 whole numbers in [0, 4]"),
    ("duplicate id", _break(lambda d: d["test"]["id"].__setitem__(0, "train_clip0")),
     "appears twice"),
]


@pytest.mark.parametrize(("content", "text"), [case[1:] for case in MALFORMED],
                         ids=[case[0] for case in MALFORMED])
def test_train_malformed_pickle_exits_2(tmp_path, monkeypatch, content, text):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, content)
    result = CliRunner().invoke(main, ["train", "--corpus", "mmsa", "--data-file", str(path),
                                       "--out", str(tmp_path / "model"), *FAST])
    assert result.exit_code == 2, result.output
    assert "[E_DATA_MALFORMED]" in result.stderr
    assert text in " ".join(result.stderr.split())
    assert "hint:" in result.stderr
    assert not (tmp_path / "model").exists()
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(("arguments", "code", "text"), [
    (["--corpus", "mmsa"], "E_PARAMETER_INVALID", "--corpus mmsa needs --data-file"),
    (["--data-file", "x.pkl"], "E_PARAMETER_INVALID", "--data-file is read only with"),
    (["--corpus", "mmsa", "--data-file", "x.pkl", "--data-root", "."], "E_PARAMETER_INVALID",
     "--data-root is for the published corpora"),
    (["--corpus", "mmsa", "--data-file", "absent.pkl"], "E_FILE_MISSING", "absent.pkl"),
    (["--corpus", "mmsa", "--data-file", "."], "E_FILE_NOT_REGULAR", "is a directory"),
])
def test_train_data_file_options(tmp_path, monkeypatch, arguments, code, text):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, make_data(), "x.pkl")
    result = CliRunner().invoke(main, ["train", *arguments, "--out", "model", *FAST])
    assert result.exit_code == 2, result.output
    assert f"[{code}]" in result.stderr
    assert text in result.stderr


def test_train_help_describes_data_file():
    result = CliRunner().invoke(main, ["train", "--help"])
    help_text = " ".join(result.output.split())
    assert "--data-file PATH" in help_text
    assert "regression_labels [n] in [-3, 3]" in help_text
    assert "SHA-256" in help_text


def test_real_data_doc_example_loads(tmp_path, monkeypatch):
    # docs/real-data.md shows how to write a file in this layout; a reader copies it.
    import pathlib
    import re
    import runpy

    doc = pathlib.Path(__file__).parents[2] / "docs" / "real-data.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1
    script = tmp_path / "make_pickle.py"
    script.write_text(blocks[0], encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script))
    corpus = load_corpus("mmsa", data_file=tmp_path / "mine.pkl")
    assert corpus.info["split_sizes"] == {"train": 200, "valid": 40, "test": 60}
    assert corpus.info["ignored_keys"] == []
