"""Tests of the synthetic corpus, the corpus registry and the data contract checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mbd_cert.errors import InputError, MalformedData
from trainer.data import (
    CORPORA,
    Split,
    corpus_summary,
    load_corpus,
    validate_corpus,
)
from trainer.data.synthetic import SyntheticConfig, generate

MODALITIES = ["text", "audio", "vision"]


def ridge_test_r(train_x, train_y, test_x, test_y, alpha=1.0):
    """Fit ridge regression on standardised train features; return Pearson r on test."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-8
    a, b = (train_x - mean) / std, (test_x - mean) / std
    weights = np.linalg.solve(
        a.T @ a + alpha * np.eye(a.shape[1]), a.T @ (train_y - train_y.mean())
    )
    return float(np.corrcoef(b @ weights, test_y)[0, 1])


def observed_time_mean(split, modality):
    """Return time-averaged features and labels of the samples that observe ``modality``."""
    rows = split.present[:, MODALITIES.index(modality)]
    return split.features[modality][rows].mean(axis=1), split.labels[rows], rows


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("synthetic", seed=0)


def test_synthetic_default_shapes(corpus):
    assert corpus.modalities == MODALITIES
    assert corpus.input_dims == {"text": 32, "audio": 16, "vision": 16}
    assert corpus.seq_len == {"text": 8, "audio": 8, "vision": 8}
    sizes = {name: len(split) for name, split in corpus.splits.items()}
    assert sizes == {"train": 1200, "valid": 300, "test": 300}
    for split in corpus.splits.values():
        n = len(split)
        for modality in MODALITIES:
            assert split.features[modality].dtype == np.float32
            assert split.features[modality].shape == (n, 8, corpus.input_dims[modality])
        assert split.present.dtype == np.bool_
        assert split.present.shape == (n, 3)
        assert split.labels.dtype == np.float32
        assert sorted(split.attributes) == ["audio_private", "vision_private"]
        assert all(v.dtype == np.int64 for v in split.attributes.values())


def test_synthetic_same_seed_identical():
    first, second = load_corpus("synthetic", seed=7), load_corpus("synthetic", seed=7)
    for name in ("train", "valid", "test"):
        a, b = first.splits[name], second.splits[name]
        assert a.ids == b.ids
        assert np.array_equal(a.present, b.present)
        assert np.array_equal(a.labels, b.labels)
        for modality in MODALITIES:
            assert np.array_equal(a.features[modality], b.features[modality])
        for attribute in a.attributes:
            assert np.array_equal(a.attributes[attribute], b.attributes[attribute])


def test_synthetic_other_seed_differs():
    first, second = load_corpus("synthetic", seed=0), load_corpus("synthetic", seed=1)
    assert not np.array_equal(first.splits["train"].labels, second.splits["train"].labels)
    assert not np.array_equal(
        first.splits["train"].features["audio"], second.splits["train"].features["audio"]
    )


def test_synthetic_split_size_leaves_others(corpus):
    bigger_test = load_corpus("synthetic", seed=0, n_test=50)
    for name in ("train", "valid"):
        assert np.array_equal(bigger_test.splits[name].labels, corpus.splits[name].labels)
        assert np.array_equal(
            bigger_test.splits[name].features["text"], corpus.splits[name].features["text"]
        )


def test_synthetic_one_modality_per_sample(corpus):
    for split in corpus.splits.values():
        assert split.present.any(axis=1).all()


def test_synthetic_missing_rate_and_zeros(corpus):
    train = corpus.splits["train"]
    # 20 % absent per modality, a little less after re-adding one to empty samples.
    missing = 1.0 - train.present.mean(axis=0)
    assert np.all((missing > 0.15) & (missing < 0.25))
    for column, modality in enumerate(MODALITIES):
        absent = ~train.present[:, column]
        assert np.all(train.features[modality][absent] == 0.0)
        assert np.all(np.abs(train.features[modality][~absent]).sum(axis=(1, 2)) > 0)


def test_synthetic_no_missing_when_rate_zero():
    corpus = load_corpus("synthetic", seed=0, missing_rate=0.0, n_train=100)
    assert corpus.splits["train"].present.all()


def test_synthetic_labels_in_range(corpus):
    labels = corpus.splits["train"].labels
    assert labels.min() >= -3.0
    assert labels.max() <= 3.0
    # label = clip(1.5 z): standard deviation close to 1.5, both signs present.
    assert 1.3 < labels.std() < 1.6
    assert 0.4 < (labels < 0).mean() < 0.6


@pytest.mark.parametrize("attribute", ["audio_private", "vision_private"])
def test_attribute_independent_of_label(corpus, attribute):
    train = corpus.splits["train"]
    values = train.attributes[attribute]
    assert set(np.unique(values).tolist()) == {0, 1}
    assert 0.4 < values.mean() < 0.6
    # Drawn independently: |r| has standard deviation 1/sqrt(1200) = 0.029 under
    # independence, so 0.12 is a four-sigma bound.
    r = np.corrcoef(values, train.labels)[0, 1]
    assert abs(r) < 0.12


def test_audio_carries_sentiment(corpus):
    train_x, train_y, _ = observed_time_mean(corpus.splits["train"], "audio")
    test_x, test_y, _ = observed_time_mean(corpus.splits["test"], "audio")
    # Measured 0.61 with seed 0 (ridge on time-averaged audio features).
    assert ridge_test_r(train_x, train_y, test_x, test_y) > 0.4


@pytest.mark.parametrize(
    ("attribute", "carrier", "others"),
    [
        ("audio_private", "audio", ["text", "vision"]),
        ("vision_private", "vision", ["text", "audio"]),
    ],
)
def test_attribute_only_in_its_modality(attribute, carrier, others):
    corpus = load_corpus("synthetic", seed=0, n_test=2000, missing_rate=0.0)
    train, test = corpus.splits["train"], corpus.splits["test"]

    def r_from(modality):
        return ridge_test_r(
            train.features[modality].mean(axis=1),
            train.attributes[attribute].astype(float),
            test.features[modality].mean(axis=1),
            test.attributes[attribute].astype(float),
        )

    assert r_from(carrier) > 0.5
    for modality in others:
        # Chance level: |r| has standard deviation about 1/sqrt(2000) = 0.022.
        assert abs(r_from(modality)) < 0.1


def test_synthetic_unknown_option():
    with pytest.raises(InputError, match="unknown synthetic option"):
        load_corpus("synthetic", n_samples=10)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("n_train", 0),
        ("missing_rate", 1.0),
        ("noise_ar", -0.1),
        ("seq_len", 2.5),
        ("input_dims", {"text": 32, "audio": 4, "vision": 16}),
        ("label_scale", float("nan")),
    ],
)
def test_synthetic_invalid_option(option, value):
    with pytest.raises(InputError) as caught:
        load_corpus("synthetic", **{option: value})
    assert caught.value.code == "E_PARAMETER_INVALID"
    assert option in str(caught.value)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("n_train", 10**9),
        ("n_speakers", 10**9),
        ("seq_len", 10**7),
        ("input_dims", {"text": 10**6, "audio": 16, "vision": 16}),
        ("input_dims", 5),
        ("label_scale", "abc"),
        ("label_scale", True),
        ("noise_ar", "x"),
        ("missing_rate", None),
        ("sentiment_gain", {"text": None, "audio": 0.5, "vision": 0.5}),
    ],
)
def test_synthetic_huge_or_mistyped_option(option, value):
    # Calls validated() alone, so that a missing bound fails here without allocating.
    with pytest.raises(InputError) as caught:
        SyntheticConfig(**{option: value}).validated()
    assert caught.value.code == "E_PARAMETER_INVALID"
    assert option in str(caught.value)


def test_synthetic_bound_allows_benchmark_scale():
    # bench_issue_vs_retrain --scale 10 multiplies n_train by 10.
    SyntheticConfig(n_train=12_000).validated()


def test_load_corpus_unknown_name():
    with pytest.raises(InputError) as caught:
        load_corpus("mosei")
    assert caught.value.code == "E_PARAMETER_INVALID"


def test_load_corpus_negative_seed():
    with pytest.raises(InputError, match="seed"):
        load_corpus("synthetic", seed=-1)


def test_registry_names():
    assert sorted(CORPORA) == ["ict-mmmo", "mmsa", "mosei-subset", "mosi-text", "synthetic"]
    assert CORPORA["synthetic"].reads_files is False
    assert CORPORA["mmsa"].reads_files is False


def test_corpus_summary(corpus):
    summary = corpus_summary(corpus)
    assert summary["name"] == "synthetic"
    assert summary["splits"]["train"]["n"] == 1200
    missing = summary["splits"]["train"]["missing_rate"]
    assert set(missing) == set(MODALITIES)
    assert all(0.0 < rate < 0.3 for rate in missing.values())
    labels = summary["splits"]["test"]["labels"]
    assert labels["min"] >= -3.0
    assert labels["max"] <= 3.0
    assert set(labels) == {"mean", "std", "min", "max", "negative_share"}
    assert 0.4 < summary["splits"]["train"]["attributes"]["audio_private"]["share_of_ones"] < 0.6


def test_config_fields_recorded(corpus):
    assert corpus.info["seed"] == 0
    assert corpus.info["config"] == dataclasses.asdict(SyntheticConfig())


# Data contract checks, applied to broken copies of a small synthetic corpus.


def small_corpus():
    return generate(SyntheticConfig(n_train=20, n_valid=5, n_test=5), seed=3)


def broken(mutate):
    corpus = small_corpus()
    mutate(corpus.splits["train"])
    return corpus


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda s: s.labels.__setitem__(0, np.nan), "labels"),
        (lambda s: s.labels.__setitem__(0, 3.5), "labels"),
        (lambda s: setattr(s, "labels", s.labels.astype(np.float64)), "labels"),
        (lambda s: setattr(s, "present", s.present[:, :2]), "present"),
        (lambda s: s.present.__setitem__(0, False), "present"),
        (
            lambda s: s.features.__setitem__("audio", s.features["audio"][:, :, :3]),
            "features.audio",
        ),
        (lambda s: s.features["text"].__setitem__((0, 0, 0), np.inf), "features.text"),
        (lambda s: setattr(s, "ids", s.ids[:-1]), "ids"),
        (
            lambda s: s.attributes.__setitem__(
                "audio_private", s.attributes["audio_private"].astype(np.int32)
            ),
            "attributes.audio_private",
        ),
    ],
)
def test_validate_rejects(mutate, field):
    with pytest.raises(MalformedData) as caught:
        validate_corpus(broken(mutate), source="test corpus")
    message = str(caught.value)
    assert "test corpus split 'train'" in message
    assert f"field {field!r}" in message


def test_validate_rejects_nonzero_absent_features():
    corpus = small_corpus()
    train = corpus.splits["train"]
    row = int(np.flatnonzero(~train.present[:, 1])[0])
    train.features["audio"][row] = 1.0
    with pytest.raises(MalformedData, match="must be zero for samples where"):
        validate_corpus(corpus, source="test corpus")


def test_validate_rejects_ids_shared_across_splits():
    corpus = small_corpus()
    corpus.splits["test"].ids[0] = corpus.splits["train"].ids[0]
    with pytest.raises(MalformedData, match="repeats 1 id"):
        validate_corpus(corpus, source="test corpus")


def test_split_len():
    split = Split(features={}, present=np.zeros((4, 0), bool), labels=np.zeros(4, np.float32))
    assert len(split) == 4
