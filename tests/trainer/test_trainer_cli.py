"""Tests of the train and evaluate commands (trainer.cli) through click's CliRunner."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from mbd_cert.cli import main
from trainer import cli as trainer_cli

FAST = ["--epochs", "2", "--batch-size", "128", "--hidden-dim", "8", "--shared-dim", "4",
        "--private-dim", "2", "--fusion-hidden", "8", "--probe-members", "10",
        "--probe-nonmembers", "10", "--no-progress"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model"
    result = CliRunner().invoke(main, ["train", "--out", str(out), "--seed", "3", *FAST])
    assert result.exit_code == 0, result.output
    return out, result


def test_train_prints_one_result_line(checkpoint):
    out, result = checkpoint
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("trained 2 epochs")
    assert str(out) in lines[0]
    record = json.loads((out / "training.json").read_text())
    assert record["seed"] == 3
    assert record["training_config"]["model"]["hidden_dim"] == 8
    assert record["corpus"]["source"] == {"name": "synthetic", "data_root": None, "seed": 0}


def test_train_existing_dir_exits_2(checkpoint):
    out, _ = checkpoint
    result = CliRunner().invoke(main, ["train", "--out", str(out), *FAST])
    assert result.exit_code == 2
    assert "E_OUTPUT_EXISTS" in result.stderr


def test_train_bad_hyper_parameter_exits_2(tmp_path):
    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "x"),
                                       "--modality-dropout", "1.5", *FAST])
    assert result.exit_code == 2
    assert "modality_dropout" in result.stderr


def test_evaluate_table_and_json(checkpoint, tmp_path):
    out, _ = checkpoint
    report = tmp_path / "metrics.json"
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(out), "--split", "valid",
                                       "--json", str(report)])
    assert result.exit_code == 0, result.output
    for view in ("all", "missing:text", "missing:audio", "missing:vision"):
        assert view in result.stdout
    document = json.loads(report.read_text())
    assert document["split"] == "valid"
    assert document["n"] == 300
    assert set(document["views"]) == {"all", "missing:text", "missing:audio", "missing:vision"}


def test_evaluate_missing_checkpoint_exits_2(tmp_path):
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "E_FILE_MISSING" in result.stderr


def test_evaluate_other_corpus_split_rejected(checkpoint, tmp_path):
    out, _ = checkpoint
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in out.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    record = json.loads((copy / "training.json").read_text())
    record["corpus"]["split_ids"]["test"][0] = "someone-else"
    (copy / "training.json").write_text(json.dumps(record))
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(copy)])
    assert result.exit_code == 2
    assert "other samples" in result.stderr


def test_register_on_plain_group():
    group = click.Group("tool")
    trainer_cli.register(group)
    assert set(group.commands) == {"train", "evaluate"}
    result = CliRunner().invoke(group, ["train", "--help"])
    assert result.exit_code == 0
    assert "--learning-rate" in result.stdout
