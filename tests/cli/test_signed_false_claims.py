"""False claims signed by the trusted issuer at verification levels 2 and 3.

A hostile issuer has the key, so each certificate here is edited and signed again.
Such a claim must fail with exit 1 at every level, never stop verification as unusable
input (exit 2) or crash it (exit 3).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import (
    HonestRun,
    assert_check_failed,
    resign,
    verify,
    write_json,
)


def _statuses(outcome) -> dict[str, str]:
    assert outcome.report is not None, outcome.stderr
    return {check["name"]: check["status"] for check in outcome.report["checks"]}


@pytest.mark.parametrize("modality", ["smell", "text"])
@pytest.mark.parametrize("level", ["2", "3"])
def test_wrong_deletion_modality_keeps_level1_verdict(
        honest_run: HonestRun, tmp_path: Path, modality: str, level: str) -> None:
    # "smell" is no modality of the config, and "text" is one that is not deleted. The
    # level-2 bundle reader cannot use either, but level 1 has already found the claim
    # false, so the run exits 1.
    doc = honest_run.load_cert()
    doc["deletion"]["modality"] = modality
    cert = write_json(tmp_path / "cert.json", resign(doc, honest_run.private_key))
    outcome = verify(cert, honest_run.model, honest_run.public_key, "--level", level,
                     "--bundle", honest_run.out_dir)
    assert_check_failed(outcome, "deleted-tensors-zero", "E_DELETION_INCOMPLETE")
    statuses = _statuses(outcome)
    assert statuses["level-2"] == "skipped"
    assert "pre-rebuild" not in statuses
    assert "level 1 failed (deleted-tensors-zero)" in outcome.check_detail("level-2")
    if level == "3":
        assert statuses["level-3"] == "skipped"


def test_policy_failure_skips_level2_with_hint(honest_run: HonestRun) -> None:
    # The honest certificate states delta 1e-5.
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key,
                     "--level", "2", "--bundle", honest_run.out_dir, "--max-delta", "1e-6")
    assert_check_failed(outcome, "policy", "E_POLICY_VIOLATION")
    assert _statuses(outcome)["level-2"] == "skipped"
    detail = outcome.check_detail("level-2")
    assert "level 1 failed (policy)" in detail
    assert "without the policy limits" in detail
