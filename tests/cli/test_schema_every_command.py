"""Every command that reads a certificate validates it against the bundled schema.

mbd_cert.certificate imports the schema module only inside parse_certificate, so that a
first deletion does not load jsonschema. These tests check that each reader still
validates. The certificate has a field of the wrong type and is signed again, so only
the schema check can reject it. Each command must exit with code 2 and name the field.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import HonestRun, assert_clean, resign, run_cli, write_json

FIELD = "privacy.epsilon"


def _break_schema(run: HonestRun, path: Path) -> Path:
    doc = run.load_cert()
    doc.pop("signature")
    doc["privacy"]["epsilon"] = "1.0"  # The schema expects a number.
    return write_json(path, resign(doc, run.private_key))


def _assert_schema_error(arguments: list[object]) -> None:
    outcome = run_cli(arguments)
    assert_clean(outcome)
    assert outcome.exit_code == 2, outcome.stderr
    assert "[E_CERT_MALFORMED]" in outcome.stderr
    assert f"certificate field {FIELD} is invalid" in outcome.stderr


def _commands(run: HonestRun, cert: Path, tmp_path: Path) -> dict[str, list[object]]:
    issue_options = ["--modality", "vision", "--epsilon", "1", "--steps", "2",
                     "--key", run.private_key, "--out", tmp_path / "out"]
    return {
        "verify": ["verify", cert, run.model, "--key", run.public_key],
        "verify-level-2": ["verify", cert, run.model, "--key", run.public_key, "--level",
                           "2", "--bundle", run.out_dir],
        "inspect": ["inspect", cert],
        "inspect-json": ["inspect", "--json", cert],
        "attest": ["attest", cert, "--model", run.model, "--out", tmp_path / "s.json"],
        "report": ["report", cert, "--out", tmp_path / "report"],
        "evaluate": ["evaluate", "--checkpoint", run.out_dir],
        "issue-previous": ["issue", "--checkpoint", run.checkpoint, *issue_options,
                           "--previous", cert],
        "issue-from-output": ["issue", "--checkpoint", run.out_dir, *issue_options],
    }


@pytest.mark.parametrize("command", ["verify", "verify-level-2", "inspect", "inspect-json",
                                     "attest", "report", "evaluate", "issue-previous",
                                     "issue-from-output"])
def test_command_rejects_schema_violation(fresh_run: HonestRun, tmp_path: Path,
                                          command: str) -> None:
    cert = _break_schema(fresh_run, fresh_run.cert)
    _assert_schema_error(_commands(fresh_run, cert, tmp_path)[command])
    assert not (tmp_path / "out").exists()


def test_verify_repo_rejects_schema_violation(fresh_run: HonestRun, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "model").mkdir(parents=True)
    _break_schema(fresh_run, root / "model" / "cert.json")
    (root / "model" / "model.safetensors").write_bytes(fresh_run.model.read_bytes())
    # With --json the certificate's error is in the document on stdout and on stderr.
    outcome = run_cli(["verify-repo", root, "--key", fresh_run.public_key, "--json"])
    assert_clean(outcome)
    assert outcome.exit_code == 2, outcome.stdout
    assert "error [E_CERT_MALFORMED]: model/cert.json: " in outcome.stderr
    assert f"certificate field {FIELD} is invalid" in outcome.stderr
    assert outcome.report is not None
    (result,) = outcome.report["results"]
    assert result["error"]["code"] == "E_CERT_MALFORMED"
    assert f"certificate field {FIELD} is invalid" in result["error"]["message"]
    table = run_cli(["verify-repo", root, "--key", fresh_run.public_key])
    assert table.exit_code == 2
    assert "E_CERT_MALFORMED" in table.stdout
