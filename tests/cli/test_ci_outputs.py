"""verify's --json and --junit outputs after an error or Ctrl-C, as CI pipelines read them.

A CI step uploads the JUnit file whatever the exit code, and parses stdout with
``--json``, so both must exist after a stopped run and name the certificate. The
interrupts are sent with ``signal.raise_signal`` from a monkeypatched verification step,
as in test_interrupts.py. verify-repo's counterparts are in test_verify_repo.py.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from xml.etree import ElementTree

import pytest
from cli_support import HonestRun, verify

from mbd_cert import __version__, _cli_commands
from mbd_cert import verify as verify_module
from mbd_cert._terminal import xml_text


def _interrupt_in_calibration(monkeypatch: pytest.MonkeyPatch) -> None:
    real = verify_module.check_calibration

    def interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(verify_module, "check_calibration", interrupted)


def _only_error(junit: Path) -> ElementTree.Element:
    suite = ElementTree.parse(junit).getroot()
    assert suite.tag == "testsuite"
    assert (suite.get("tests"), suite.get("errors"), suite.get("failures")) == ("1", "1", "0")
    [error] = suite.findall("./testcase/error")
    return error


def test_ctrl_c_writes_json_document(honest_run: HonestRun, monkeypatch):
    _interrupt_in_calibration(monkeypatch)
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key)
    assert outcome.exit_code == 130, outcome.stderr
    assert outcome.report is not None, outcome.stdout
    assert outcome.error_code == "E_INTERRUPTED"
    assert outcome.report["verified"] is False
    assert outcome.report["checks"] == []
    assert "before verification finished" in outcome.report["error"]["message"]
    assert outcome.report["error"]["hint"]
    assert outcome.stderr.strip() == "interrupted; the command did not finish"


def test_ctrl_c_writes_junit(honest_run: HonestRun, tmp_path: Path, monkeypatch):
    _interrupt_in_calibration(monkeypatch)
    junit = tmp_path / "junit.xml"
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key,
                     "--junit", junit)
    assert outcome.exit_code == 130, outcome.stderr
    assert outcome.error_code == "E_INTERRUPTED"
    error = _only_error(junit)
    assert error.get("message").startswith("E_INTERRUPTED: ")
    assert error.text is not None
    assert "the certificate is not verified" in error.text
    assert "\nhint: " in error.text
    assert ElementTree.parse(junit).getroot().get("name") == str(honest_run.cert)


def test_ctrl_c_after_document_adds_none(honest_run: HonestRun, monkeypatch):
    # A Ctrl-C between the finished report and the exit must not append a second
    # document, which would make stdout unparseable.
    real = _cli_commands.write_json_document

    def write_then_interrupt(document):
        real(document)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(_cli_commands, "write_json_document", write_then_interrupt)
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key)
    assert outcome.exit_code == 130, outcome.stderr
    assert outcome.report is not None, outcome.stdout
    assert outcome.report["verified"] is True
    assert "error" not in outcome.report


def test_missing_certificate_writes_junit(honest_run: HonestRun, tmp_path: Path):
    # R-REP-3: the file exists for a CI upload step, with the error in it.
    junit = tmp_path / "junit.xml"
    missing = tmp_path / "absent" / "cert.json"
    outcome = verify(missing, honest_run.model, honest_run.public_key, "--junit", junit)
    assert outcome.exit_code == 2, outcome.stderr
    assert outcome.error_code == "E_FILE_MISSING"
    error = _only_error(junit)
    assert error.get("message").startswith("E_FILE_MISSING: ")
    assert str(missing) in error.get("message")
    assert error.text is not None
    assert str(missing) in error.text
    assert "\nhint: " in error.text
    assert ElementTree.parse(junit).getroot().get("name") == str(missing)


@pytest.mark.parametrize(("setup", "code"), [
    ("missing-key", "E_FILE_MISSING"),
    ("malformed-certificate", "E_JSON_SYNTAX"),
    ("missing-model", "E_FILE_MISSING"),
])
def test_stopped_run_writes_junit(fresh_run: HonestRun, tmp_path: Path, setup: str,
                                  code: str):
    key = fresh_run.public_key
    if setup == "missing-key":
        key = tmp_path / "absent.pub"
    elif setup == "malformed-certificate":
        fresh_run.cert.write_text("{")
    else:
        fresh_run.model.unlink()
    junit = tmp_path / "junit.xml"
    outcome = verify(fresh_run.cert, fresh_run.model, key, "--junit", junit)
    assert outcome.exit_code == 2, outcome.stderr
    assert outcome.error_code == code
    assert _only_error(junit).get("message").startswith(f"{code}: ")
    assert _only_error(junit).get("type") == code


def test_internal_error_writes_junit(honest_run: HonestRun, tmp_path: Path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("step failed")

    monkeypatch.setattr(verify_module, "check_calibration", broken)
    junit = tmp_path / "junit.xml"
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key,
                     "--junit", junit)
    assert outcome.exit_code == 3, outcome.stderr
    error = _only_error(junit)
    assert error.get("message").startswith("E_INTERNAL: ")
    assert error.text is not None
    assert "RuntimeError: step failed" in error.text


def test_unusable_junit_path_verifies_nothing(honest_run: HonestRun, tmp_path: Path,
                                              monkeypatch):
    # R-REP-4: with nowhere to write the error, the path is checked before any input.
    calls = []
    monkeypatch.setattr(verify_module, "verify", lambda *args: calls.append(args))
    junit = tmp_path / "absent" / "junit.xml"
    outcome = verify(tmp_path / "missing.json", honest_run.model, honest_run.public_key,
                     "--junit", junit)
    assert outcome.exit_code == 2, outcome.stderr
    assert outcome.error_code == "E_FILE_MISSING"
    assert "--junit directory not found" in outcome.report["error"]["message"]
    assert calls == []
    assert not junit.parent.exists()


@pytest.mark.parametrize("target", ["cert.json", "model.safetensors", "key", "link",
                                    "diff.safetensors"])
def test_junit_over_an_input_rejected(fresh_run: HonestRun, tmp_path: Path, target: str,
                                      monkeypatch):
    # R-SEC-1: the JUnit file replaced the model or the certificate, and the run
    # exited 0. "link" is a hard link to the model; diff.safetensors is a bundle file.
    calls = []
    monkeypatch.setattr(verify_module, "verify", lambda *args: calls.append(args))
    key = tmp_path / "issuer.pub"
    shutil.copy(fresh_run.public_key, key)
    junit = {"key": key, "link": tmp_path / "model-link.safetensors"}.get(
        target, fresh_run.out_dir / target)
    if target == "link":
        junit.hardlink_to(fresh_run.model)
    before = junit.read_bytes()
    outcome = verify(fresh_run.cert, fresh_run.model, key, "--bundle", fresh_run.out_dir,
                     "--junit", junit)
    assert outcome.exit_code == 2, outcome.stderr
    assert outcome.error_code == "E_OUTPUT_IS_INPUT"
    assert "--junit" in outcome.report["error"]["message"]
    assert str(junit) in outcome.report["error"]["message"]
    assert junit.read_bytes() == before
    assert calls == []


def test_new_json_junit_beside_certificate_rejected(fresh_run: HonestRun):
    # A .json file there is read as a chain link or a certificate once it exists, so
    # the same command must not pass once and then fail on every later run.
    junit = fresh_run.out_dir / "report.json"
    assert not junit.exists()
    outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key,
                     "--junit", junit)
    assert outcome.exit_code == 2, outcome.stderr
    assert outcome.error_code == "E_OUTPUT_IS_INPUT"
    assert not junit.exists()


def test_junit_beside_the_certificate_allowed(fresh_run: HonestRun):
    # A JUnit file of an earlier run in the certificate's directory is an output.
    junit = fresh_run.out_dir / "junit.xml"
    junit.write_text("<testsuite/>")
    outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key,
                     "--junit", junit)
    assert outcome.exit_code == 0, outcome.stderr
    assert ElementTree.parse(junit).getroot().get("name") == str(fresh_run.cert)


# The level-1 checks in the order verify runs them, for a certificate without a
# sealed bundle.
LEVEL1_CHECKS = ["schema", "signature", "model-digest", "model-tensors", "model-finite",
                 "deleted-tensors-zero", "calibration", "accounting", "policy",
                 "bundle-digest"]


def test_report_lists_every_check(honest_run: HonestRun, tmp_path: Path):
    """R-REP-1: every check appears with a status, and a skipped check gives its reason."""
    junit = tmp_path / "junit.xml"
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key,
                     "--junit", junit)
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.report is not None
    checks = outcome.report["checks"]
    assert [check["name"] for check in checks] == LEVEL1_CHECKS
    for check in checks:
        assert check["status"] in {"pass", "fail", "inconclusive", "skipped"}, check
    # Without limits and without --bundle, the policy and bundle checks do not run.
    skipped = {check["name"]: check["detail"] for check in checks
               if check["status"] == "skipped"}
    assert set(skipped) == {"policy", "bundle-digest"}
    assert "no limits given" in skipped["policy"]
    assert "no audit bundle given" in skipped["bundle-digest"]
    cases = ElementTree.parse(junit).getroot().findall("./testcase")
    assert [case.get("name") for case in cases] == LEVEL1_CHECKS
    for case in cases:
        if case.get("name") in skipped:
            assert case.find("skipped").get("message") == skipped[case.get("name")]


def test_junit_names_the_certificate(honest_run: HonestRun, tmp_path: Path):
    # R-REP-2: the suite name and property tell which certificate the file is about.
    junit = tmp_path / "junit.xml"
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key,
                     "--junit", junit)
    assert outcome.exit_code == 0, outcome.stderr
    suite = ElementTree.parse(junit).getroot()
    assert suite.tag == "testsuite"
    assert suite.get("name") == str(honest_run.cert)
    assert suite.get("errors") == "0"
    properties = {p.get("name"): p.get("value") for p in suite.findall("./properties/property")}
    assert properties == {"certificate_id": honest_run.load_cert()["certificate_id"],
                          "mbd_cert_version": __version__}
    # Maven Surefire's test-report XSD (3.5.5) puts properties first in a suite.
    assert suite[0].tag == "properties"
    cases = suite.findall("./testcase")
    assert {case.get("classname") for case in cases} == {str(honest_run.cert)}
    assert len(cases) == int(suite.get("tests", "0"))


def test_junit_suite_name_escaped(honest_run: HonestRun, tmp_path: Path):
    # A path may carry characters that XML 1.0 cannot hold, and bidirectional
    # overrides that reorder what a CI page shows.
    directory = tmp_path / "rel\x1b[2Jease\u202e"
    directory.mkdir()
    cert = Path(shutil.copy(honest_run.cert, directory / "cert.json"))
    junit = tmp_path / "junit.xml"
    outcome = verify(cert, honest_run.model, honest_run.public_key, "--junit", junit)
    assert outcome.exit_code == 0, outcome.stderr
    name = ElementTree.parse(junit).getroot().get("name")
    assert name == xml_text(cert)
    assert "\x1b" not in name
    assert "\u202e" not in name
    assert json.loads(outcome.stdout)["verified"] is True
