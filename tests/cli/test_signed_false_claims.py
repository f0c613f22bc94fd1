"""False claims signed by the trusted issuer: levels 2 and 3, and the attest subject.

A hostile issuer has the key, so each certificate here is edited and signed again.
Such a claim must fail with exit 1 at every level, never stop verification as unusable
input (exit 2) or crash it (exit 3), and must not reach an in-toto Statement
unchecked. What no level checks must be named in the report.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from cli_support import (
    TINY_ISSUE_OPTIONS,
    HonestRun,
    assert_check_failed,
    assert_clean,
    assert_input_error,
    resign,
    run_cli,
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


@pytest.fixture(scope="module")
def reference_retrain_run(honest_run: HonestRun,
                          tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An honest deletion whose sensitivity comes from the reference retrain."""
    out = tmp_path_factory.mktemp("reference-retrain") / "del"
    outcome = run_cli(["issue", "--checkpoint", honest_run.checkpoint, *TINY_ISSUE_OPTIONS,
                       "--sensitivity-method", "reference-retrain",
                       "--key", honest_run.private_key, "--out", out])
    assert outcome.exit_code == 0, outcome.stderr
    return out


def test_level2_recomputes_distances(reference_retrain_run: Path,
                                     honest_run: HonestRun) -> None:
    """R-PRIV-5: level 2 reruns the leave-one-out updates and checks each stated distance."""
    out = reference_retrain_run
    outcome = verify(out / "cert.json", out / "model.safetensors", honest_run.public_key,
                     "--level", "2", "--bundle", out, "--allow-inconclusive")
    assert_clean(outcome)
    assert _statuses(outcome)["sensitivity-evidence"] == "pass"
    detail = outcome.check_detail("sensitivity-evidence")
    assert "4 leave-one-out updates recomputed: distances match" in detail
    assert "neighbours drawn here" in detail
    evidence = json.loads((out / "cert.json").read_text())["privacy"]["sensitivity_evidence"]
    assert f"{max(evidence['distances']):.6g}" in detail


@pytest.mark.parametrize("field", ["distances", "left_out"])
def test_understated_distances_fail_level2(reference_retrain_run: Path, honest_run: HonestRun,
                                           tmp_path: Path, field: str) -> None:
    # Halved distances still satisfy level 1's arithmetic (the sensitivity is at least
    # the factor times the largest), so only the rerun of the updates sees them.
    out = tmp_path / "del"
    shutil.copytree(reference_retrain_run, out)
    doc = json.loads((out / "cert.json").read_text())
    evidence = doc["privacy"]["sensitivity_evidence"]
    if field == "distances":
        evidence["distances"] = [d / 2 for d in evidence["distances"]]
        evidence["max_distance"] /= 2
    else:
        evidence["left_out"] = [(i + 1) % 8 for i in evidence["left_out"]]
    write_json(out / "cert.json", resign(doc, honest_run.private_key))
    level1 = verify(out / "cert.json", out / "model.safetensors", honest_run.public_key)
    assert level1.exit_code == 0, level1.stderr
    outcome = verify(out / "cert.json", out / "model.safetensors", honest_run.public_key,
                     "--level", "2", "--bundle", out, "--allow-inconclusive")
    assert_check_failed(outcome, "sensitivity-evidence", "E_CALIBRATION_INVALID")
    detail = outcome.check_detail("sensitivity-evidence")
    assert ("recomputed" if field == "distances" else "draws") in detail


def test_honest_evidence_verifies_level1(reference_retrain_run: Path,
                                         honest_run: HonestRun) -> None:
    out = reference_retrain_run
    evidence = json.loads((out / "cert.json").read_text())["privacy"]["sensitivity_evidence"]
    assert {"runs", "seeds", "left_out", "max_distance", "clip_bound",
            "capped_at_clip_bound", "neighbour_relation"} <= set(evidence)
    outcome = verify(out / "cert.json", out / "model.safetensors", honest_run.public_key)
    assert outcome.exit_code == 0, outcome.stderr
    assert _statuses(outcome)["calibration"] == "pass"


# Evidence members that contradict the rest of the certificate: member -> edit.
EVIDENCE_EDITS = {
    "left_out-string": ("left_out", lambda e: ",".join(str(i) for i in e["left_out"])),
    "left_out-object": ("left_out", lambda e: {"1": 999}),
    "left_out-short": ("left_out", lambda e: e["left_out"][:1]),
    "left_out-long": ("left_out", lambda e: e["left_out"] + [7] * 1000),
    "seeds": ("seeds", lambda e: [[99, r] for r in range(1, e["runs"] + 1)]),
    "runs": ("runs", lambda e: 17),
    "max_distance": ("max_distance", lambda e: 1e-12),
    "clip_bound": ("clip_bound", lambda e: 5.0),
    "capped_at_clip_bound": ("capped_at_clip_bound", lambda e: True),
    "neighbour_relation": ("neighbour_relation", lambda e: "replace-one-sample"),
}


@pytest.mark.parametrize("edit", list(EVIDENCE_EDITS))
def test_inconsistent_evidence_fails_level1(reference_retrain_run: Path, honest_run: HonestRun,
                                            tmp_path: Path, edit: str) -> None:
    member, change = EVIDENCE_EDITS[edit]
    out = reference_retrain_run
    doc = json.loads((out / "cert.json").read_text())
    evidence = doc["privacy"]["sensitivity_evidence"]
    evidence[member] = change(evidence)
    cert = write_json(tmp_path / "cert.json", resign(doc, honest_run.private_key))
    outcome = verify(cert, out / "model.safetensors", honest_run.public_key)
    assert_check_failed(outcome, "calibration", "E_CALIBRATION_INVALID")
    detail = outcome.check_detail("calibration")
    assert f"privacy.sensitivity_evidence.{member} is" in detail
    assert "expected" in detail


def test_clip_bound_has_no_distance_line(honest_run: HonestRun) -> None:
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key,
                     "--level", "2", "--bundle", honest_run.out_dir, "--allow-inconclusive")
    assert_clean(outcome)
    assert "sensitivity-evidence" not in _statuses(outcome)


def _undeleted_digest_cert(honest_run: HonestRun, tmp_path: Path) -> Path:
    """Sign a certificate whose post_deletion.file_digest names the undeleted model."""
    undeleted = honest_run.checkpoint / "model.safetensors"
    doc = honest_run.load_cert()
    doc["subject_model"]["post_deletion"]["file_digest"] = (
        "sha256:" + hashlib.sha256(undeleted.read_bytes()).hexdigest())
    return write_json(tmp_path / "cert.json", resign(doc, honest_run.private_key))


def test_attest_without_model_is_usage_error(honest_run: HonestRun, tmp_path: Path) -> None:
    """R-ATT-1: without --model, attest exits 2 unless the claim is accepted."""
    cert = _undeleted_digest_cert(honest_run, tmp_path)
    out = tmp_path / "statement.json"
    outcome = run_cli(["attest", cert, "--out", out])
    assert_clean(outcome)
    assert outcome.exit_code == 2, outcome.stderr
    # An mbd-cert error with a hint, not click's bare usage text.
    assert "Usage:" not in outcome.stderr
    assert outcome.stderr.startswith("error [E_USAGE]: missing option --model: attest hashes "
                                     "the released model file")
    # The hint shows the whole command, with the model file beside the certificate.
    assert (f"hint: pass the model the certificate was issued for, as in 'mbd-cert attest "
            f"{cert} --model {tmp_path / 'model.safetensors'} --out {out}'") in outcome.stderr
    assert "--accept-claimed-digest" in outcome.stderr
    assert not out.exists()


def test_attest_model_rejects_claimed_digest(honest_run: HonestRun, tmp_path: Path) -> None:
    """R-ATT-1: a signed digest of another file fails against the hashed --model."""
    cert = _undeleted_digest_cert(honest_run, tmp_path)
    out = tmp_path / "statement.json"
    outcome = run_cli(["attest", cert, "--model", honest_run.model, "--out", out])
    assert_clean(outcome)
    assert outcome.exit_code == 1, outcome.stderr
    assert "[E_DIGEST_MISMATCH]" in outcome.stderr
    assert not out.exists()


def test_attest_accepting_claim_says_so(honest_run: HonestRun, tmp_path: Path) -> None:
    """R-ATT-1: with --accept-claimed-digest, stderr states that no model was hashed."""
    out = tmp_path / "statement.json"
    outcome = run_cli(["attest", honest_run.cert, "--accept-claimed-digest", "--out", out])
    assert outcome.exit_code == 0, outcome.stderr
    assert "no model file was hashed" in outcome.stderr
    subject = json.loads(out.read_text())["subject"][0]
    model_digest = hashlib.sha256(honest_run.model.read_bytes()).hexdigest()
    assert subject["digest"]["sha256"] == model_digest


def test_evidence_over_work_cap_is_unusable(reference_retrain_run: Path, honest_run: HonestRun,
                                            tmp_path: Path, monkeypatch) -> None:
    """R-LIM-6: reruns over the cap are unusable input at level 2, and issue refuses them."""
    # A certificate that states more reruns than level 2 replays must not pass with the
    # check skipped: stating 64 runs would then switch the rerun off (exit 2 instead).
    from mbd_cert import _work_limits

    monkeypatch.setattr(_work_limits, "MAX_EVIDENCE_SAMPLE_STEPS", 10)
    out = reference_retrain_run
    outcome = verify(out / "cert.json", out / "model.safetensors", honest_run.public_key,
                     "--level", "2", "--bundle", out, "--allow-inconclusive")
    assert_clean(outcome)
    assert outcome.exit_code == 2, outcome.stderr
    assert outcome.error_code == "E_LIMIT_EXCEEDED"
    issued = run_cli(["issue", "--checkpoint", honest_run.checkpoint, *TINY_ISSUE_OPTIONS,
                      "--sensitivity-method", "reference-retrain",
                      "--key", honest_run.private_key, "--out", tmp_path / "again"])
    assert issued.exit_code == 2, issued.stderr
    assert "reference-retrain runs" in issued.stderr
    assert not (tmp_path / "again").exists()


def test_update_over_work_cap_refused_at_issue(honest_run: HonestRun, tmp_path: Path,
                                               monkeypatch) -> None:
    """R-LIM-6: the issuer writes no certificate whose update level 2 would not replay."""
    from mbd_cert import _work_limits

    # The tiny run replays 2 steps over 32 probe samples, 64 sample-steps.
    monkeypatch.setattr(_work_limits, "MAX_UPDATE_SAMPLE_STEPS", 10)
    out = tmp_path / "out"
    issued = run_cli(["issue", "--checkpoint", honest_run.checkpoint, *TINY_ISSUE_OPTIONS,
                      "--key", honest_run.private_key, "--out", out])
    assert_clean(issued)
    assert issued.exit_code == 2, issued.stderr
    assert "[E_LIMIT_EXCEEDED]" in issued.stderr
    assert "64 sample-steps, more than the cap of 10" in issued.stderr
    assert not out.exists()


def test_verifier_neighbours_catch_chosen_seed(honest_run: HonestRun, tmp_path: Path,
                                               monkeypatch) -> None:
    # One run and safety factor 1 state the distance of a single neighbour that the
    # issuer's seed picked. The verifier's own neighbours (here all samples, so the test
    # does not depend on chance) include farther ones, which disprove the sensitivity.
    from mbd_cert import _sensitivity_evidence

    out = tmp_path / "del"
    issued = run_cli(["issue", "--checkpoint", honest_run.checkpoint, *TINY_ISSUE_OPTIONS,
                      "--sensitivity-method", "reference-retrain", "--reference-runs", "1",
                      "--safety-factor", "1", "--key", honest_run.private_key, "--out", out])
    assert issued.exit_code == 0, issued.stderr
    monkeypatch.setattr(_sensitivity_evidence, "EVIDENCE_SPOT_CHECKS", 10**6)
    outcome = verify(out / "cert.json", out / "model.safetensors", honest_run.public_key,
                     "--level", "2", "--bundle", out, "--allow-inconclusive")
    assert_check_failed(outcome, "sensitivity-evidence", "E_CALIBRATION_INVALID")
    assert "drawn by the verifier" in outcome.check_detail("sensitivity-evidence")
    assert "raise --safety-factor (2 or more)" in outcome.check_detail("sensitivity-evidence")
    assert "the stated runs matched" in outcome.check_detail("sensitivity-evidence")


@pytest.mark.parametrize("level", ["1", "2"])
def test_other_architecture_version_unusable(honest_run: HonestRun, tmp_path: Path,
                                             level: str) -> None:
    # R-ARCH-8: another version of the code may build other tensors from the same
    # config, so this verifier cannot decide the claim: exit 2, never a pass.
    doc = honest_run.load_cert()
    doc["subject_model"]["architecture"]["version"] = "2"
    cert = write_json(tmp_path / "cert.json", resign(doc, honest_run.private_key))
    outcome = verify(cert, honest_run.model, honest_run.public_key, "--level", level,
                     "--bundle", honest_run.out_dir)
    assert_input_error(outcome, "E_ARCHITECTURE_UNKNOWN")
    assert "version is '2'" in outcome.stderr


@pytest.mark.parametrize("field", ["saliency", "update"])
def test_other_objective_unavailable_at_level2(honest_run: HonestRun, tmp_path: Path,
                                               field: str) -> None:
    # R-LVL-1: level 2 recomputes the architecture's objectives under their recorded
    # names, so it would pass a claim about another objective that it never tested.
    doc = honest_run.load_cert()
    doc[field]["objective"] = "forget-everything"
    cert = write_json(tmp_path / "cert.json", resign(doc, honest_run.private_key))
    at_level1 = verify(cert, honest_run.model, honest_run.public_key)
    assert at_level1.exit_code == 0, at_level1.stderr
    at_level2 = verify(cert, honest_run.model, honest_run.public_key, "--level", "2",
                       "--bundle", honest_run.out_dir)
    assert_input_error(at_level2, "E_LEVEL_UNAVAILABLE")
    assert f"{field}.objective" in at_level2.stderr
