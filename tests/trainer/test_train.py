"""Tests of trainer.train and trainer.evaluate on tiny corpora built in memory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mbd_factories import build_corpus, tiny_config
from safetensors import safe_open

from mbd_cert.arch.mbd import MBDModel
from mbd_cert.checkpoint import read_probe_set
from mbd_cert.errors import InputError
from trainer import train as train_module
from trainer.config import TrainingConfig
from trainer.evaluate import evaluate, load_checkpoint, predict
from trainer.train import modality_dropout, resolve_device, train

FAST = {"epochs": 8, "batch_size": 32, "learning_rate": 3e-3, "patience": 8,
        "probe_members": 20, "probe_nonmembers": 20,
        "model": {"hidden_dim": 16, "shared_dim": 8, "private_dim": 4, "fusion_hidden": 16}}
OUTPUT_FILES = {"model.safetensors", "config.json", "probe.safetensors", "eval.safetensors",
                "training.json", "metrics.json"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    corpus = build_corpus(seed=0)
    out = tmp_path_factory.mktemp("runs") / "model"
    result = train(corpus, FAST, out, seed=0, progress=False)
    return corpus, result


def test_short_run_lowers_validation_mae(trained):
    corpus, result = trained
    history = result.training["history"]
    assert result.training["best_valid_mae"] < history[0]["valid_mae"]
    valid = corpus.splits["valid"].labels
    constant_mae = float(np.mean(np.abs(valid - corpus.splits["train"].labels.mean())))
    assert result.training["best_valid_mae"] < 0.8 * constant_mae


def test_run_writes_every_output_file(trained):
    corpus, result = trained
    assert {p.name for p in result.out_dir.iterdir()} == OUTPUT_FILES
    with safe_open(str(result.out_dir / "model.safetensors"), framework="numpy") as handle:
        metadata = handle.metadata()
        names = set(handle.keys())
    assert metadata["format"] == "mbd-cert-model/1"
    assert metadata["architecture"] == "mbd-sentiment"
    assert names == set(result.model.state_dict())

    config = json.loads((result.out_dir / "config.json").read_text())
    assert config["architecture"] == "mbd-sentiment"
    assert config["architecture_version"] == "1"
    assert config["config"]["modalities"] == corpus.modalities
    assert config["config"]["hidden_dim"] == 16

    probe = read_probe_set(result.out_dir / "probe.safetensors", modalities=corpus.modalities)
    assert probe.size == 40
    assert int(probe.member.sum()) == 20
    held_out = read_probe_set(result.out_dir / "eval.safetensors", modalities=corpus.modalities)
    assert held_out.size == len(corpus.splits["test"].labels)
    assert not held_out.member.any()


def test_training_record_contents(trained):
    corpus, result = trained
    record = json.loads((result.out_dir / "training.json").read_text())
    assert record["seed"] == 0
    assert record["device"] == "cpu"
    assert record["epochs_run"] == len(record["history"])
    assert 1 <= record["best_epoch"] <= record["epochs_run"]
    assert set(record["history"][0]["train"]) == {
        "task", "similarity", "orthogonality", "reconstruction", "preservation", "total"}
    assert record["corpus"]["split_ids"]["test"] == corpus.splits["test"].ids
    assert record["training_config"]["batch_size"] == 32
    assert record["model_manifest_digest"].startswith("sha256:")


def test_metrics_file_views(trained):
    _, result = trained
    metrics = json.loads((result.out_dir / "metrics.json").read_text())
    assert metrics["split"] == "test"
    assert set(metrics["views"]) == {"all", "missing:text", "missing:audio", "missing:vision"}
    for view in metrics["views"].values():
        assert {"mae", "pearson_r", "acc2_non_negative", "acc2_positive", "f1_non_negative",
                "f1_positive", "acc7", "n"} <= set(view)
    assert metrics["views"]["all"]["mae"] < metrics["views"]["missing:text"]["mae"] + 0.05


def test_checkpoint_round_trip_same_predictions(trained):
    corpus, result = trained
    loaded = load_checkpoint(result.out_dir)
    test = corpus.splits["test"]
    assert np.array_equal(predict(loaded.model, test.features, test.present),
                          predict(result.model, test.features, test.present))
    assert loaded.training["best_epoch"] == result.training["best_epoch"]


def test_same_seed_same_weights(trained, tmp_path):
    corpus, result = trained
    again = train(corpus, FAST, tmp_path / "again", seed=0, progress=False)
    for name, value in result.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], value), name


def test_global_torch_settings_restored(trained, tmp_path):
    corpus, _ = trained
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    train(corpus, {**FAST, "epochs": 1}, tmp_path / "one", seed=1, progress=False,
          cpu_threads=1)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_non_empty_output_dir_rejected(tmp_path, monkeypatch):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    def never(*args, **kwargs):
        raise AssertionError("training must not start")

    monkeypatch.setattr(train_module, "_fit", never)
    with pytest.raises(InputError) as info:
        train(build_corpus(), FAST, out, seed=0, progress=False)
    assert info.value.code == "E_OUTPUT_EXISTS"
    assert (out / "keep.txt").read_text() == "mine"


def test_force_replaces_output_dir(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    train(build_corpus(), {**FAST, "epochs": 1}, out, seed=0, progress=False, force=True)
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_empty_output_dir_accepted(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    train(build_corpus(), {**FAST, "epochs": 1}, out, seed=0, progress=False)
    assert {p.name for p in out.iterdir()} == OUTPUT_FILES


def test_output_path_file_rejected(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        train(build_corpus(), FAST, target, seed=0, progress=False, force=True)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    from trainer import _checkpoint_io

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(_checkpoint_io, "probe_file_contents", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        train(build_corpus(), {**FAST, "epochs": 1}, tmp_path / "out", seed=0,
              progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("config", "field"), [
    ({"epochs": 0}, "epochs"),
    ({"learning_rate": -1.0}, "learning_rate"),
    ({"modality_dropout": 1.0}, "modality_dropout"),
    ({"task_loss": "huber"}, "task_loss"),
    ({"model": {"modalities": ["text"]}}, "model"),
    ({"colour": 3}, "colour"),
])
def test_invalid_training_config_rejected(config, field):
    with pytest.raises(InputError, match=field):
        TrainingConfig.from_mapping(config)


@pytest.mark.parametrize(("field", "inside", "outside"), [
    ("epochs", 1, 0), ("batch_size", 1, 0), ("patience", 1, 0), ("probe_members", 1, 0),
    ("learning_rate", 1e-9, 0.0), ("weight_decay", 0.0, -1e-9), ("grad_clip", 1e-9, 0.0),
    ("modality_dropout", 0.0, 1.0), ("min_improvement", 0.0, -1e-9),
    ("model.hidden_dim", 65536, 65537), ("model.shared_dim", 1, 0),
    ("model.dropout", 0.999, 1.0), ("model.output_scale", 1e-9, 0.0),
    ("loss_weights.similarity", 0.0, -1e-9),
])
def test_stated_bounds_match_checks(field, inside, outside):
    # The range that --help and the hints state is the one the config check applies.
    from trainer.config import FIELD_BOUNDS

    def mapping(value):
        section, _, key = field.partition(".")
        return {section: {key: value}} if key else {section: value}

    TrainingConfig.from_mapping(mapping(inside))
    with pytest.raises(InputError) as caught:
        TrainingConfig.from_mapping(mapping(outside))
    assert f"must be {FIELD_BOUNDS[field].text()}" in caught.value.message


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_invalid_seed_rejected(tmp_path, seed):
    # numpy's global generator takes 32-bit seeds; a larger one was an internal error.
    with pytest.raises(InputError, match="seed"):
        train(build_corpus(), FAST, tmp_path / "x", seed=seed, progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU-only case")
def test_cuda_request_without_cuda_rejected():
    with pytest.raises(InputError, match="cuda"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_modality_dropout_keeps_one_per_sample():
    generator = torch.Generator().manual_seed(0)
    present = torch.rand(2000, 3, generator=generator) > 0.3
    present[:10] = False  # samples without any modality stay without
    dropped = modality_dropout(present, 0.5, generator)
    assert not torch.any(dropped & ~present)
    assert torch.all(dropped.any(dim=1) == present.any(dim=1))
    observed = int(present.sum())
    rate = 1.0 - int(dropped.sum()) / observed
    # Each observed modality is dropped with p = 0.5, minus the rescued ones.
    assert 0.35 < rate < 0.5


def test_evaluate_views_of_deleted_model():
    corpus = build_corpus(seed=1, sizes=(20, 20, 30))
    model = MBDModel(tiny_config(deleted_modalities=["audio"]), seed=0)
    result = evaluate(model, corpus.splits["test"], corpus)
    assert set(result["views"]) == {"all", "missing:text", "deleted:audio", "missing:vision"}
    assert result["deleted_modalities"] == ["audio"]
    deleted = result["views"]["deleted:audio"]
    assert deleted["max_abs_change_vs_all"] == 0.0
    assert deleted["mae"] == result["views"]["all"]["mae"]


def test_evaluate_rejects_other_modalities():
    corpus = build_corpus(sizes=(5, 5, 5))
    config = tiny_config(modalities=["text", "audio"],
                         input_dims={"text": 6, "audio": 4}, seq_len={"text": 4, "audio": 3})
    with pytest.raises(InputError, match="modalities"):
        evaluate(MBDModel(config), corpus.splits["test"], corpus)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_one_epoch_on_cuda(tmp_path):
    corpus = build_corpus(seed=0)
    result = train(corpus, {**FAST, "epochs": 1}, tmp_path / "gpu", seed=0, device="cuda",
                   progress=False)
    assert result.training["device"].startswith("cuda")
    assert next(result.model.parameters()).is_cuda
    loaded = load_checkpoint(result.out_dir)
    test = corpus.splits["test"]
    np.testing.assert_allclose(predict(loaded.model, test.features, test.present),
                               predict(result.model, test.features, test.present),
                               rtol=0, atol=1e-5)


def test_diverged_training_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "_validation_mae", lambda model, split: float("nan"))
    with pytest.raises(InputError) as info:
        train(build_corpus(), {**FAST, "epochs": 2}, tmp_path / "nan", seed=0, progress=False)
    assert info.value.code == "E_TRAINING_DIVERGED"
    assert not (tmp_path / "nan").exists()


def test_small_corpus_probe_set_rejected(tmp_path):
    # R-PRB-4: the split sizes cap the probe counts, so a small corpus gave a probe set
    # that issue rejects. Train rejects it before training.
    corpus = build_corpus(seed=0, sizes=(8, 4, 6))
    with pytest.raises(InputError) as caught:
        train(corpus, FAST, tmp_path / "model", seed=0, progress=False)
    assert caught.value.code == "E_PARAMETER_INVALID"
    assert caught.value.message.startswith(
        "the probe set would hold 14 samples (8 members, 6 non-members)")
    assert "the corpus has only 8 train and 6 test samples" in caught.value.hint
    assert not (tmp_path / "model").exists()
