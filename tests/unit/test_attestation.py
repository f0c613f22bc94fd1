"""The in-toto Statement export: schema validity, the subject digest, the predicate."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from mbd_cert import signing
from mbd_cert.attestation import PREDICATE_TYPE, STATEMENT_TYPE, statement_for_certificate
from mbd_cert.certificate import certificate_digest, load_certificate
from mbd_cert.cli import main
from mbd_cert.errors import InputError

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "data" / "in-toto-statement-v1.schema.json"
FAST = ["--epochs", "1", "--batch-size", "256", "--hidden-dim", "8", "--shared-dim", "4",
        "--private-dim", "2", "--fusion-hidden", "8", "--probe-members", "10",
        "--probe-nonmembers", "10", "--no-progress"]


@pytest.fixture(scope="module")
def issued(tmp_path_factory):
    base = tmp_path_factory.mktemp("attest")
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--out", str(base / "ck"), "--seed", "0", *FAST])
    assert result.exit_code == 0, result.output
    private_path, _ = signing.write_keypair(base / "issuer")
    result = runner.invoke(main, ["issue", "--checkpoint", str(base / "ck"), "--modality",
                                  "audio", "--epsilon", "1", "--key", str(private_path),
                                  "--out", str(base / "deleted")])
    assert result.exit_code == 0, result.output
    return base / "deleted"


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    # The Statement's URIs are checked only with a uri checker installed (the dev
    # extra's rfc3986-validator); without one jsonschema passes any string.
    assert "uri" in jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_statement_validates_against_schema(issued, validator):
    statement = statement_for_certificate(load_certificate(issued / "cert.json"))
    errors = sorted(validator.iter_errors(statement), key=str)
    assert errors == []


def test_schema_rejects_broken_statements(issued, validator):
    statement = statement_for_certificate(load_certificate(issued / "cert.json"))
    broken = {
        "wrong _type": {**statement, "_type": "https://in-toto.io/Statement/v0.1"},
        "no subject": {**statement, "subject": []},
        "no digest": {**statement, "subject": [{"name": "model.safetensors"}]},
        "upper-case hex": {**statement, "subject": [
            {"name": "m", "digest": {"sha256": "A" * 64}}]},
        "no predicateType": {k: v for k, v in statement.items() if k != "predicateType"},
    }
    for name, document in broken.items():
        assert not validator.is_valid(document), name


def test_subject_digest_is_model_file_sha256(issued):
    """R-ATT-1: the subject digest is the SHA-256 of the whole released model file."""
    statement = statement_for_certificate(load_certificate(issued / "cert.json"))
    expected = hashlib.sha256((issued / "model.safetensors").read_bytes()).hexdigest()
    assert statement["subject"] == [{"name": "model.safetensors", "digest": {"sha256": expected}}]
    assert statement["_type"] == STATEMENT_TYPE
    assert statement["predicateType"] == PREDICATE_TYPE


def test_predicate_carries_signed_certificate(issued):
    """R-ATT-2: the predicate contains the signed certificate and its certificate_digest."""
    doc = load_certificate(issued / "cert.json")
    predicate = statement_for_certificate(doc)["predicate"]
    assert predicate["certificate"] == doc
    assert predicate["certificate_digest"] == certificate_digest(doc)
    assert predicate["issuer_key_id"] == doc["issuer"]["key_id"]
    assert predicate["modality"] == "audio"


# The predicate members of SPEC.md section 17. Predicate type v1 may add members but
# never drop one, because dropping or renaming one needs predicate type v2.
PREDICATE_V1_MEMBERS = {
    "certificate_digest", "certificate_id", "format_version", "issuer_key_id", "modality",
    "model_manifest_digest", "pre_deletion_file_digest", "epsilon", "delta",
    "sensitivity_method", "cumulative_epsilon", "sequence_number", "previous_certificate",
    "certificate",
}


def test_predicate_type_v1_keeps_members(issued):
    """R-ATT-3: predicate type v1 names the major version and keeps every v1 member."""
    doc = load_certificate(issued / "cert.json")
    statement = statement_for_certificate(doc)
    assert statement["predicateType"] == "https://mbd-cert.dev/modality-deletion/v1"
    assert PREDICATE_V1_MEMBERS <= set(statement["predicate"])
    predicate = statement["predicate"]
    assert predicate["sequence_number"] == doc["accounting"]["sequence_number"]
    assert predicate["epsilon"] == doc["privacy"]["epsilon"]
    assert predicate["model_manifest_digest"] == \
        doc["subject_model"]["post_deletion"]["manifest_digest"]


def test_statement_does_not_alias_certificate(issued):
    doc = load_certificate(issued / "cert.json")
    original = copy.deepcopy(doc)
    statement_for_certificate(doc)["predicate"]["certificate"]["certificate_id"] = "changed"
    assert doc == original


def test_bad_subject_name_rejected(issued):
    doc = load_certificate(issued / "cert.json")
    for name in ("", "model\n.safetensors"):
        with pytest.raises(InputError) as caught:
            statement_for_certificate(doc, subject_name=name)
        assert caught.value.code == "E_PARAMETER_INVALID"


def test_attest_command_writes_statement(issued, tmp_path, validator):
    out = tmp_path / "statement.json"
    result = CliRunner().invoke(main, ["attest", str(issued / "cert.json"), "--out", str(out),
                                       "--model", str(issued / "model.safetensors")])
    assert result.exit_code == 0, result.output
    assert validator.is_valid(json.loads(out.read_text()))
    again = CliRunner().invoke(main, ["attest", str(issued / "cert.json"), "--out", str(out),
                                      "--model", str(issued / "model.safetensors")])
    assert again.exit_code == 2
    assert "E_FILE_EXISTS" in again.stderr


def test_attest_out_directory_exits_2(issued, tmp_path):
    # A directory is no file to write, with or without --force.
    for extra in ([], ["--force"]):
        result = CliRunner().invoke(main, ["attest", str(issued / "cert.json"), "--out",
                                           str(tmp_path), "--model",
                                           str(issued / "model.safetensors"), *extra])
        assert result.exit_code == 2
        assert "--out names a directory" in result.stderr
        assert "statement.json" in result.stderr


def test_attest_wrong_model_exits_1(issued, tmp_path):
    """R-ATT-1: attest rejects a --model whose digest differs from the certificate's."""
    import numpy as np
    from safetensors.numpy import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(other))
    result = CliRunner().invoke(main, ["attest", str(issued / "cert.json"), "--out",
                                       str(tmp_path / "s.json"), "--model", str(other)])
    assert result.exit_code == 1
    assert "E_DIGEST_MISMATCH" in result.stderr
    assert not (tmp_path / "s.json").exists()


def test_attest_garbage_model_exits_2(issued, tmp_path):
    """R-ATT-1: a --model that is no safetensors file is unusable input."""
    # Not a safetensors file at all: unusable input, not a false claim.
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not the model")
    result = CliRunner().invoke(main, ["attest", str(issued / "cert.json"), "--out",
                                       str(tmp_path / "s.json"), "--model", str(other)])
    assert result.exit_code == 2
    assert "E_SAFETENSORS_" in result.stderr
    assert not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("name", ["model\x9b.safetensors", "model\u202e.safetensors",
                                  "model\udcff.safetensors", "model\x85.safetensors",
                                  "model\u200b.safetensors", "model\U000e0041.safetensors"])
def test_subject_name_hidden_characters_rejected(issued, name):
    # R-ATT-4: C1 controls, bidirectional overrides and invisible characters (a
    # zero-width space, a tag character) display as other text, and a lone
    # surrogate (a file name that is not UTF-8) cannot be written as UTF-8 JSON.
    doc = load_certificate(issued / "cert.json")
    with pytest.raises(InputError) as caught:
        statement_for_certificate(doc, subject_name=name)
    assert caught.value.code == "E_PARAMETER_INVALID"
    assert name not in caught.value.message


def test_attest_model_name_not_utf8_exits_2(issued, tmp_path):
    import os
    import shutil

    model = tmp_path / os.fsdecode(b"model\xff.safetensors")
    shutil.copy(issued / "model.safetensors", model)
    out = tmp_path / "statement.json"
    arguments = ["attest", str(issued / "cert.json"), "--model", str(model), "--out", str(out)]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 2, result.output
    assert "[E_PARAMETER_INVALID]" in result.stderr
    assert "model\\xff.safetensors" in result.stderr
    assert "--subject-name" in result.stderr
    assert not out.exists()
    named = CliRunner().invoke(main, [*arguments, "--subject-name", "model.safetensors"])
    assert named.exit_code == 0, named.output
    assert json.loads(out.read_text())["subject"][0]["name"] == "model.safetensors"


def test_attest_output_line_escaped(issued, tmp_path):
    out = tmp_path / "statement\u202e.json"
    result = CliRunner().invoke(main, ["attest", str(issued / "cert.json"), "--model",
                                       str(issued / "model.safetensors"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "\u202e" not in result.stdout
    assert "statement\\u202e.json" in result.stdout
