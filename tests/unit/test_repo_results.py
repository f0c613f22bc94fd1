"""verify-repo's table: the result column and the check counts."""

from __future__ import annotations

import pytest

from mbd_cert._repo_results import RepoResult, check_counts, render_table
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


@pytest.mark.parametrize(("statuses", "expected"), [
    (("fail",), "1 check: 0 passed, 1 failed, 0 skipped"),
    (("pass", "skipped"), "2 checks: 1 passed, 0 failed, 1 skipped"),
    ((), "0 checks: 0 passed, 0 failed, 0 skipped"),
])
def test_check_counts_number(statuses: tuple[str, ...], expected: str) -> None:
    assert check_counts(_report(*statuses).checks) == expected


def test_repository_row_counts_one_check(capsys: pytest.CaptureFixture[str]) -> None:
    verified = RepoResult("models/cert.json", "models/model.safetensors", exit_code=0,
                          report=_report("pass"))
    run_result = RepoResult("verify-repo", "", exit_code=1, report=_report("fail"))
    table = _table([verified], capsys, run_result=run_result)
    assert "(verify-repo: the repository) FAILED 1 check: 0 passed, 1 failed" in table
