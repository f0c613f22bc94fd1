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



def _copy_checkpoint(source, target):
    """Copy a checkpoint directory's files to ``target``, to edit one of them."""
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target

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


def _help_text(command: str) -> str:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.mark.parametrize(("option", "text"), [
    ("--epochs INTEGER", "(epochs); an integer >= 1 [default: 100]"),
    ("--batch-size INTEGER", "Samples per optimiser step; an integer >= 1"),
    ("--learning-rate FLOAT", "AdamW step size; a number in (0, 1000]"),
    ("--weight-decay FLOAT", "coefficient; a number >= 0"),
    ("--modality-dropout FLOAT", "per sample and step; a number in [0, 1)"),
    ("--patience INTEGER", "before stopping; an integer >= 1"),
    ("--grad-clip FLOAT", "per step; a number > 0"),
    ("--probe-members INTEGER", "an integer >= 1 (capped at the train split's size)"),
    ("--probe-nonmembers INTEGER", "an integer >= 1 (capped at the test split's size)"),
    ("--hidden-dim INTEGER", "(units); an integer in [1, 65536] [default: 64]"),
    ("--fusion-hidden INTEGER", "(units); an integer in [1, 65536]"),
    ("--dropout FLOAT", "fusion; a number in [0, 1)"),
    ("--similarity-weight FLOAT", "similarity loss; a number >= 0"),
])
def test_train_help_states_range(option, text):
    help_text = _help_text("train")
    start = help_text.index(option)
    assert text in help_text[start:start + 200]


def test_train_help_covers_every_option():
    # Every hyper-parameter option states a range that the config check enforces.
    from trainer.config import FIELD_BOUNDS, option_name

    for option, field_name, _, _, _ in trainer_cli._HYPER_PARAMETERS:
        assert option_name(field_name) == option
        assert field_name in FIELD_BOUNDS


@pytest.mark.parametrize(("arguments", "hint"), [
    (["--epochs", "0"], "hint: pass --epochs as an integer >= 1"),
    (["--batch-size", "0"], "hint: pass --batch-size as an integer >= 1"),
    (["--learning-rate", "0"], "hint: pass --learning-rate as a number in (0, 1000]"),
    # Above about 1e37 AdamW's float32 step overflowed into an internal error.
    (["--learning-rate", "1e38"], "hint: pass --learning-rate as a number in (0, 1000]"),
    (["--grad-clip", "nan"], "hint: pass --grad-clip as a number > 0"),
    (["--hidden-dim", "0"], "hint: pass --hidden-dim as an integer in [1, 65536]"),
    (["--dropout", "1"], "hint: pass --dropout as a number in [0, 1)"),
    (["--similarity-weight", "-1"], "hint: pass --similarity-weight as a number >= 0"),
])
def test_train_range_hint_states_range(tmp_path, arguments, hint):
    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "x"), "--no-progress",
                                       *arguments])
    assert result.exit_code == 2, result.output
    assert "[E_PARAMETER_INVALID]" in result.stderr
    assert hint in result.stderr
    assert "--help" not in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("members", "nonmembers"), [("1", "1"), ("10", "9"), ("18", "1")])
def test_train_rejects_small_probe_set(tmp_path, members, nonmembers):
    # R-PRB-4: train wrote probe sets of 2 samples, which issue certified.
    arguments = FAST[:FAST.index("--probe-members")]
    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "x"), *arguments,
                                       "--no-progress", "--probe-members", members,
                                       "--probe-nonmembers", nonmembers])
    assert result.exit_code == 2, result.output
    total = int(members) + int(nonmembers)
    assert (f"[E_PARAMETER_INVALID]: the probe set would hold {total} samples ({members} "
            f"members, {nonmembers} non-members), and 'mbd-cert issue' rejects a probe set of "
            "fewer than 20") in result.stderr
    assert "hint: pass --probe-members and --probe-nonmembers of 10 or more" in result.stderr
    assert not (tmp_path / "x").exists()


def test_train_digest_mismatch_hint(tmp_path):
    # The hint named verify_digests=False, an argument no command-line option sets.
    folder = tmp_path / "data" / "cmu-mosi-text"
    folder.mkdir(parents=True)
    (folder / "label.csv").write_text("id,text,label,mode\nv1_1,good,1.0,train\n")
    result = CliRunner().invoke(main, ["train", "--corpus", "mosi-text", "--data-root",
                                       str(tmp_path / "data"), "--out", str(tmp_path / "x"),
                                       "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "[E_DATA_MALFORMED]: digest mismatch for data file" in result.stderr
    assert "hint: copy the file again from the published release" in result.stderr
    assert "'mbd-cert train' and 'mbd-cert evaluate' accept only the published files" \
        in result.stderr
    assert "load it in Python with trainer.data.load_corpus(name, root, " \
        "verify_digests=False)" in result.stderr
    assert not (tmp_path / "x").exists()


def test_train_seed_above_32_bits_is_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "x"),
                                       "--seed", str(2**32), *FAST])
    assert result.exit_code == 2, result.output
    assert "is not in the range 0<=x<=4294967295" in result.stderr
    assert not (tmp_path / "x").exists()


def test_issue_help_states_ranges():
    from mbd_cert.sensitivity import MAX_RUNS

    help_text = _help_text("issue")
    for option, text in [("--reference-runs", f"an integer in [1, {MAX_RUNS}]"),
                         ("--sensitivity FLOAT", "> 0"), ("--clip-norm", "> 0"),
                         ("--max-epsilon", "> 0"), ("--proxy-sample INTEGER", "[0, 10000]")]:
        start = help_text.index(option)
        assert text in help_text[start:start + 250], option


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
    copy = _copy_checkpoint(out, tmp_path / "copy")
    record = json.loads((copy / "training.json").read_text())
    record["corpus"]["split_ids"]["test"][0] = "someone-else"
    (copy / "training.json").write_text(json.dumps(record))
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(copy)])
    assert result.exit_code == 2
    assert "other samples" in result.stderr


def _copy_with_source(out, folder, edit):
    folder.mkdir()
    for path in out.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    record = json.loads((folder / "training.json").read_text())
    edit(record)
    (folder / "training.json").write_text(json.dumps(record))
    return folder


@pytest.mark.parametrize(
    ("source", "field"),
    [
        # A crafted training.json must not turn off the digest check of real data, nor
        # name a cache folder that evaluate would write the embeddings to.
        ({"name": "mosi-text", "options": {"verify_digests": False}}, "verify_digests"),
        ({"name": "mosi-text", "options": {"cache_dir": "elsewhere"}}, "cache_dir"),
        ({"name": "mosei-subset", "options": {"verify_digests": "no"}}, "verify_digests"),
        ({"name": "synthetic", "options": {"label_scale": "abc"}}, "label_scale"),
        ({"name": "synthetic", "options": {"noise_ar": "x"}}, "noise_ar"),
        ({"name": "synthetic", "data_root": 123}, "data_root"),
    ],
)
def test_evaluate_unsafe_recorded_corpus(checkpoint, tmp_path, source, field):
    out, _ = checkpoint
    data = tmp_path / "data" / "cmu-mosi-text"
    data.mkdir(parents=True)
    (data / "label.csv").write_text("id,text,label,mode\na_1,hello,1.0,train\n")

    def edit(record):
        record["corpus"]["source"].update({"data_root": str(data.parent), **source})

    copy = _copy_with_source(out, tmp_path / "copy", edit)
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(copy)])
    assert result.exit_code == 2, result.output
    assert field in result.stderr
    assert "training.json" in result.stderr
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("options", [{"n_train": 10**9}, {"seq_len": 10**7},
                                     {"n_speakers": 10**9},
                                     {"input_dims": {"text": 10**6, "audio": 16, "vision": 16}}])
def test_evaluate_huge_recorded_corpus(checkpoint, tmp_path, monkeypatch, options):
    from trainer.data import synthetic

    def must_not_generate(*args, **kwargs):
        raise AssertionError("the oversized corpus reached the generator")

    monkeypatch.setattr(synthetic, "generate", must_not_generate)
    out, _ = checkpoint

    def edit(record):
        record["corpus"]["source"]["options"] = options

    copy = _copy_with_source(out, tmp_path / "copy", edit)
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(copy)])
    assert result.exit_code == 2, result.output
    assert "training.json" in result.stderr
    assert next(iter(options)) in result.stderr


def test_evaluate_malformed_split_ids(checkpoint, tmp_path):
    out, _ = checkpoint

    def edit(record):
        record["corpus"]["split_ids"] = ["test"]

    copy = _copy_with_source(out, tmp_path / "copy", edit)
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(copy)])
    assert result.exit_code == 2, result.output
    assert "split_ids" in result.stderr


def test_evaluate_checks_shapes_before_build(checkpoint, tmp_path, monkeypatch):
    # Building allocates every parameter, gigabytes for a config near the parameter
    # cap, so evaluate must compare the config with the weights file first.
    import dataclasses

    from mbd_cert.arch import get_architecture
    from trainer import evaluate

    def must_not_build(config):
        raise AssertionError("the model was built before its weights were checked")

    guarded = dataclasses.replace(get_architecture("mbd-sentiment"), build=must_not_build)
    monkeypatch.setattr(evaluate, "get_architecture", lambda name: guarded)
    out, _ = checkpoint
    copy = _copy_checkpoint(out, tmp_path / "copy")
    document = json.loads((copy / "config.json").read_text())
    document["config"]["hidden_dim"] = 60_000
    (copy / "config.json").write_text(json.dumps(document))
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(copy)])
    assert result.exit_code == 2, result.output
    assert "E_MODEL_TENSORS_MISMATCH" in result.stderr


def test_register_on_plain_group():
    group = click.Group("tool")
    trainer_cli.register(group)
    assert set(group.commands) == {"train", "evaluate"}
    result = CliRunner().invoke(group, ["train", "--help"])
    assert result.exit_code == 0
    assert "--learning-rate" in result.stdout
