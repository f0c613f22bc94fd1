"""verify-repo's table: the result column."""

from __future__ import annotations

import pytest

from mbd_cert._repo_results import RepoResult, render_table
from mbd_cert.report import CheckResult, VerificationReport

WARNING = "models/diff.safetensors: confidential file of the issuer"


def _report(*statuses: str) -> VerificationReport:
    report = VerificationReport(certificate_id="urn:uuid:0", level=1)
    for number, status in enumerate(statuses):
        code = "E_DIGEST_MISMATCH" if status == "fail" else None
        report.record(CheckResult(f"check-{number}", status, f"detail {number}", code=code))
    return report


def _table(results: list[RepoResult], capsys: pytest.CaptureFixture[str],
           run_result: RepoResult | None = None) -> str:
    codes = [result.exit_code for result in results]
    if run_result is not None:
        codes.append(run_result.exit_code)
    render_table(results, max(codes), level=1, has_policy=True, run_result=run_result)
    # Cells wrap inside the table's borders, so compare with the borders taken out.
    return " ".join(capsys.readouterr().out.replace("│", " ").split())


def test_failed_row_with_warning(capsys: pytest.CaptureFixture[str]) -> None:
    result = RepoResult("models/cert.json", "models/model.safetensors", exit_code=1,
                        report=_report("pass", "fail"), warnings=[WARNING])
    table = _table([result], capsys)
    # "NOT VERIFIED (warning)" would read as if the failure were only a warning.
    assert "NOT VERIFIED (warning)" not in table
    assert "models/cert.json NOT VERIFIED 2 checks" in table
    assert "warning [1] below" in table
    assert f"[1] warning: {WARNING}" in table


def test_error_row_with_warning(capsys: pytest.CaptureFixture[str]) -> None:
    result = RepoResult("models/cert.json", "models/model.safetensors", exit_code=2,
                        error={"code": "E_FILE_MISSING", "message": "model not found",
                               "hint": ""}, warnings=[WARNING])
    table = _table([result], capsys)
    assert "E_FILE_MISSING (warning)" not in table
    assert "warning [1] below" in table


def test_verified_row_with_warning(capsys: pytest.CaptureFixture[str]) -> None:
    result = RepoResult("models/cert.json", "models/model.safetensors", exit_code=0,
                        report=_report("pass"), warnings=[WARNING])
    assert "models/cert.json verified (warning)" in _table([result], capsys)
