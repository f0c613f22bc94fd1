"""The verifier record in every JSON report and JUnit suite (SPEC.md, R-REP-5)."""

from __future__ import annotations

import json

import pytest

from mbd_cert import __version__, _tool_version
from mbd_cert.report import VerificationReport, error_report


class _Distribution:
    def __init__(self, text: str | None) -> None:
        self.text = text

    def read_text(self, name: str) -> str | None:
        assert name == "direct_url.json"
        return self.text


@pytest.fixture
def installed(monkeypatch):
    def install(text: str | None) -> dict:
        monkeypatch.setattr(_tool_version.importlib.metadata, "distribution",
                            lambda name: _Distribution(text))
        _tool_version.verifier_record.cache_clear()
        return _tool_version.verifier_record()

    yield install
    _tool_version.verifier_record.cache_clear()


def test_git_install_names_its_commit(installed):
    record = installed(json.dumps({"url": "git+https://example.invalid/mbd-cert",
                                   "vcs_info": {"vcs": "git", "commit_id": "ab" * 20}}))
    assert record == {"name": "mbd-cert", "version": __version__, "commit": "ab" * 20}


@pytest.mark.parametrize("text", [None, json.dumps({"dir_info": {"editable": True}}),
                                  "not json", json.dumps(["a list"])])
def test_other_installs_have_no_commit(installed, text):
    assert installed(text)["commit"] is None


def test_reports_carry_the_record(installed):
    record = installed(None)
    assert VerificationReport(certificate_id="c", level=1).to_json()["verifier"] == record
    assert error_report("E_INPUT", "message")["verifier"] == record
