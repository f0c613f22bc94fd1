"""Every command shows sigma and epsilon with the same digits: those of cert.json.

inspect, issue, report and verify used to round sigma to 7, 6 and 4 significant
digits, so one certificate showed three different sigmas.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import HonestRun, run_cli

from mbd_cert._cli_issue import _print_summary


def _flat(text: str) -> str:
    """Return ``text`` without spaces, line breaks and table borders (rich folds cells)."""
    return "".join(char for char in text if char not in " \n│┃")


@pytest.fixture(scope="module")
def sigma(honest_run: HonestRun) -> str:
    text = repr(float(honest_run.load_cert()["privacy"]["sigma"]))
    # A sigma with few digits would pass whatever the rounding.
    assert len(text.lstrip("0.").replace(".", "")) > 9, text
    return text


def test_inspect_and_verify_show_sigma(honest_run: HonestRun, sigma: str) -> None:
    inspected = run_cli(["inspect", honest_run.cert])
    assert inspected.exit_code == 0, inspected.stderr
    assert f"sigma{sigma}on" in _flat(inspected.stdout)
    verified = run_cli(["verify", honest_run.cert, honest_run.model, "--key",
                        honest_run.public_key])
    assert verified.exit_code == 0, verified.stderr
    assert f"sigma{sigma}>=required" in _flat(verified.stdout)


def test_issue_summary_shows_sigma(honest_run: HonestRun, sigma: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    doc = honest_run.load_cert()
    _print_summary(doc, "audio", honest_run.out_dir)
    summary = capsys.readouterr().out
    assert f"sigma {sigma}," in summary
    cumulative = repr(float(doc["accounting"]["cumulative_epsilon"])).removesuffix(".0")
    assert f"cumulative epsilon {cumulative} at delta 1e-05" in summary


def test_report_table_shows_sigma(honest_run: HonestRun, sigma: str, tmp_path: Path) -> None:
    out = tmp_path / "report"
    outcome = run_cli(["report", "--out", out, honest_run.cert])
    assert outcome.exit_code == 0, outcome.stderr
    assert f"<td>{sigma}</td>" in (out / "index.html").read_text()
