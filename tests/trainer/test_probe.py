"""Tests of the probe set tensors, their metadata and the way back to a split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mbd_cert.errors import InputError, MalformedData
from trainer.data import load_corpus
from trainer.data.probe import build_probe_set, probe_tensors_and_metadata, probe_to_split

MODALITIES = ["text", "audio", "vision"]


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("synthetic", seed=0, n_train=200, n_valid=20, n_test=100)


@pytest.fixture(scope="module")
def probe(corpus):
    return probe_tensors_and_metadata(corpus, n_members=64, n_nonmembers=48, seed=5)


def test_probe_tensor_names_and_dtypes(probe):
    tensors, _ = probe
    expected = {
        "inputs.text": (np.float32, (112, 8, 32)),
        "inputs.audio": (np.float32, (112, 8, 16)),
        "inputs.vision": (np.float32, (112, 8, 16)),
        "present": (np.uint8, (112, 3)),
        "label": (np.float32, (112,)),
        "member": (np.uint8, (112,)),
        "attribute.audio_private": (np.int64, (112,)),
        "attribute.vision_private": (np.int64, (112,)),
    }
    assert sorted(tensors) == sorted(expected)
    for name, (dtype, shape) in expected.items():
        assert tensors[name].dtype == dtype, name
        assert tensors[name].shape == shape, name
        assert tensors[name].flags.c_contiguous, name


def test_probe_metadata_exact(probe):
    _, metadata = probe
    assert metadata == {"modalities": json.dumps(MODALITIES), "format": "mbd-cert-probe/1"}
    assert json.loads(metadata["modalities"]) == MODALITIES


def test_probe_member_counts(probe):
    tensors, _ = probe
    assert int(tensors["member"].sum()) == 64
    assert set(np.unique(tensors["member"]).tolist()) == {0, 1}
    assert set(np.unique(tensors["present"]).tolist()) <= {0, 1}
    # Shuffled: the members do not form one block at the start.
    assert not np.all(tensors["member"][:64] == 1)


def row_keys(features, labels):
    """Return one hashable key per sample, from its label and text and audio inputs."""
    return {
        (float(label), text.tobytes(), audio.tobytes())
        for label, text, audio in zip(labels, features["text"], features["audio"], strict=True)
    }


def test_members_from_train_nonmembers_from_test(corpus, probe):
    tensors, _ = probe
    train, test = corpus.splits["train"], corpus.splits["test"]
    train_keys = row_keys(train.features, train.labels)
    test_keys = row_keys(test.features, test.labels)
    inputs = {m: tensors[f"inputs.{m}"] for m in MODALITIES}
    for row, is_member in enumerate(tensors["member"]):
        key = (
            float(tensors["label"][row]),
            inputs["text"][row].tobytes(),
            inputs["audio"][row].tobytes(),
        )
        if is_member:
            assert key in train_keys
            assert key not in test_keys
        else:
            assert key in test_keys
            assert key not in train_keys
    # Drawn without replacement: no sample twice.
    probe_keys = row_keys(inputs, tensors["label"])
    assert len(probe_keys) == 112


def test_probe_deterministic_by_seed(corpus):
    first = build_probe_set(corpus, n_members=30, n_nonmembers=30, seed=1)
    second = build_probe_set(corpus, n_members=30, n_nonmembers=30, seed=1)
    other = build_probe_set(corpus, n_members=30, n_nonmembers=30, seed=2)
    for name in first:
        assert np.array_equal(first[name], second[name]), name
    assert not np.array_equal(first["label"], other["label"])


def test_probe_file_round_trip(tmp_path, corpus, probe):
    tensors, metadata = probe
    path = tmp_path / "probe.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    split = probe_to_split(load_file(str(path)), metadata)
    assert len(split) == 112
    assert list(split.features) == MODALITIES
    assert np.array_equal(split.present, tensors["present"].astype(bool))
    assert np.array_equal(split.labels, tensors["label"])
    for modality in MODALITIES:
        assert np.array_equal(split.features[modality], tensors[f"inputs.{modality}"])
    assert np.array_equal(split.attributes["audio_private"], tensors["attribute.audio_private"])
    assert split.ids[0] == "probe-00000"


def test_probe_to_split_without_metadata(probe):
    tensors, _ = probe
    split = probe_to_split(tensors)
    assert list(split.features) == MODALITIES


def test_probe_to_split_honours_metadata_order(probe):
    tensors, _ = probe
    order = ["vision", "text", "audio"]
    metadata = {"modalities": json.dumps(order), "format": "mbd-cert-probe/1"}
    columns = [MODALITIES.index(m) for m in order]
    reordered = altered(tensors, present=np.ascontiguousarray(tensors["present"][:, columns]))
    split = probe_to_split(reordered, metadata)
    assert list(split.features) == order
    assert np.array_equal(split.present[:, 0], tensors["present"][:, 2].astype(bool))


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("n_members", 0),
        ("n_members", 201),
        ("n_nonmembers", 101),
        ("n_nonmembers", 2.0),
        ("seed", -1),
    ],
)
def test_build_probe_invalid_count(corpus, argument, value):
    arguments = {"n_members": 10, "n_nonmembers": 10, "seed": 0, argument: value}
    with pytest.raises(InputError) as caught:
        build_probe_set(corpus, **arguments)
    assert caught.value.code == "E_PARAMETER_INVALID"
    assert argument in str(caught.value)


def altered(tensors, **changes):
    copy = dict(tensors)
    for name, value in changes.items():
        if value is None:
            del copy[name]
        else:
            copy[name] = value
    return copy


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label": None}, "tensor 'label' is missing"),
        ({"inputs.audio": None}, "need the file's metadata"),
        ({"extra": np.zeros(3, np.float32)}, "unexpected tensor"),
        ({"present": np.ones((112, 3), np.int64)}, "tensor 'present' must be uint8"),
        ({"member": np.full(112, 2, np.uint8)}, "must hold only 0 and 1"),
        ({"label": np.zeros(112, np.float64)}, "tensor 'label' must be float32"),
        ({"inputs.text": np.zeros((111, 8, 32), np.float32)}, "'inputs.text' must be"),
    ],
)
def test_probe_to_split_rejects(probe, change, message):
    tensors, _ = probe
    with pytest.raises(MalformedData, match=message):
        probe_to_split(altered(tensors, **change))


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"modalities": json.dumps(MODALITIES), "format": "mbd-cert-probe/2"}, "'format'"),
        ({"modalities": "text,audio", "format": "mbd-cert-probe/1"}, "not JSON"),
        ({"modalities": json.dumps(["text", "text"]), "format": "mbd-cert-probe/1"}, "distinct"),
    ],
)
def test_probe_to_split_rejects_metadata(probe, metadata, message):
    tensors, _ = probe
    with pytest.raises(MalformedData, match=message):
        probe_to_split(tensors, metadata, source="probe.safetensors")
