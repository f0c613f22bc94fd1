"""The ``inspect --json`` document: its members, its error document and the guide's table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cli_support import HonestRun, assert_clean, run_cli, write_json

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "user-guide.md"
ERROR_MEMBERS = {"inspect_version", "certificate_id", "verified", "error"}


def _guide_table() -> str:
    """Return the user guide's table of ``inspect --json`` members."""
    text = GUIDE.read_text()
    start = text.index("`inspect --json` writes")
    match = re.search(r"\n\| member \| value \|\n(?:\|.*\n)+", text[start:])
    assert match is not None, "the guide has no table of inspect --json members"
    return match.group(0)


def test_guide_lists_every_member(honest_run: HonestRun) -> None:
    summary = run_cli(["inspect", honest_run.cert, "--json"]).report
    assert summary is not None
    table = _guide_table()
    missing = [name for name in summary if f"`{name}`" not in table]
    nested = [*summary["architecture"], *summary["chain"], *summary["audit_bundle"],
              *summary["audit_bundle"]["diff"]]
    missing += [name for name in nested if not re.search(rf"\b{name}\b", table)]
    assert not missing, f"members of inspect --json missing from the user guide: {missing}"


@pytest.mark.parametrize(
    ("arguments", "code"),
    [(["{missing}", "--json"], "E_FILE_MISSING"),
     (["{config}", "--json"], "E_FORMAT_VERSION_INVALID"),
     (["--json"], "E_USAGE"),
     (["--json", "{cert}", "--bogus"], "E_USAGE")],
    ids=["missing-file", "not-a-certificate", "missing-argument", "unknown-option"],
)
def test_error_document_has_inspect_shape(honest_run: HonestRun, tmp_path: Path,
                                          arguments: list[str], code: str) -> None:
    # It used to be verify's error report (report_version, checks), which the
    # documentation of inspect never mentioned.
    config = write_json(tmp_path / "config.json", {"hidden_dim": 8})
    paths = {"missing": tmp_path / "none.json", "config": config, "cert": honest_run.cert}
    outcome = run_cli(["inspect", *(argument.format(**paths) for argument in arguments)])
    assert_clean(outcome)
    assert outcome.exit_code == 2, outcome.stderr
    assert outcome.error_code == code, outcome.stdout
    assert outcome.report is not None
    assert set(outcome.report) == ERROR_MEMBERS
    assert outcome.report["inspect_version"] == "1.0"
    assert outcome.report["certificate_id"] is None
    assert outcome.report["verified"] is False
    assert set(outcome.report["error"]) == {"code", "message", "hint"}


def test_summary_has_no_error_member(honest_run: HonestRun) -> None:
    outcome = run_cli(["inspect", honest_run.cert, "--json"])
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.report is not None
    assert "error" not in outcome.report
    assert outcome.report["inspect_version"] == "1.0"
