"""Policy over a whole chain, and levels 2 and 3 on unauthenticated files.

Each test reproduces a way a certificate once passed a policy or reached the level-2
parsers that it should not have reached.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_support import (
    TINY_ISSUE_OPTIONS,
    HonestRun,
    assert_check_failed,
    assert_clean,
    flip_signature_s,
    publish_sealed,
    run_cli,
    safetensors_bytes,
    verify,
    write_json,
)


@pytest.fixture(scope="module")
def declared_then_clip(honest_run: HonestRun,
                       tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A chain whose first link declares a tiny sensitivity and whose second is clip-bound."""
    root = tmp_path_factory.mktemp("declared-chain")
    first, second = root / "first", root / "second"
    outcome = run_cli(["issue", "--checkpoint", honest_run.checkpoint, *TINY_ISSUE_OPTIONS,
                       "--sensitivity-method", "declared", "--sensitivity", "2e-6",
                       "--key", honest_run.private_key, "--out", first])
    assert outcome.exit_code == 0, outcome.stderr
    outcome = run_cli(["issue", "--checkpoint", first, "--modality", "vision", "--epsilon", "1",
                       "--steps", "2", "--key", honest_run.private_key, "--out", second])
    assert outcome.exit_code == 0, outcome.stderr
    return second


def test_required_method_applies_to_earlier_links(declared_then_clip: Path,
                                                  honest_run: HonestRun) -> None:
    outcome = verify(declared_then_clip / "cert.json", declared_then_clip / "model.safetensors",
                     honest_run.public_key, "--require-sensitivity-method", "clip-bound")
    assert_check_failed(outcome, "policy", "E_POLICY_VIOLATION")
    detail = outcome.check_detail("policy")
    assert "earlier certificate 1 of the chain" in detail
    assert "'declared'" in detail


def test_policy_names_every_violation(declared_then_clip: Path,
                                      honest_run: HonestRun) -> None:
    # Neither link uses the required method, and the budget is exceeded too: one run
    # names all three, so a CI user does not fix them one run at a time.
    outcome = verify(declared_then_clip / "cert.json", declared_then_clip / "model.safetensors",
                     honest_run.public_key, "--require-sensitivity-method", "reference-retrain",
                     "--max-epsilon", "0.5")
    assert_check_failed(outcome, "policy", "E_POLICY_VIOLATION")
    detail = outcome.check_detail("policy")
    assert "3 policy violations" in detail
    assert "exceeds the policy limit 0.5" in detail
    assert "earlier certificate 1 of the chain" in detail
    assert "'declared'" in detail
    assert "this certificate (number 2 of the chain): sensitivity method is 'clip-bound'" in detail


def test_required_method_passes_single_link(declared_then_clip: Path,
                                                        honest_run: HonestRun) -> None:
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key,
                     "--require-sensitivity-method", "clip-bound")
    assert outcome.exit_code == 0, outcome.stdout
    assert "1 certificate(s) of the chain" in outcome.check_detail("policy")


@pytest.mark.parametrize(("limit", "exit_code"), [("1e-6", 1), ("1e-5", 0), ("0.5", 0)])
def test_max_delta_policy(honest_run: HonestRun, limit: str, exit_code: int) -> None:
    # The honest certificate states delta 1e-5.
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key,
                     "--max-delta", limit)
    assert outcome.exit_code == exit_code, outcome.stdout
    if exit_code:
        assert_check_failed(outcome, "policy", "E_POLICY_VIOLATION")
        assert "accounting.delta 1e-05 exceeds the policy limit 1e-06" in \
            outcome.check_detail("policy")


@pytest.mark.parametrize("limit", ["0", "1", "-1e-5", "nan"])
def test_max_delta_out_of_range_is_unusable(honest_run: HonestRun, limit: str) -> None:
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key,
                     "--max-delta", limit)
    assert_clean(outcome)
    assert outcome.exit_code == 2
    assert outcome.error_code == "E_PARAMETER_INVALID"


def _probe_with_deep_metadata(path: Path) -> None:
    # A probe set whose metadata would crash a naive JSON parser: it must never be
    # parsed when the certificate does not commit to it.
    header = json.dumps({"__metadata__": {"format": "mbd-cert-probe/1",
                                          "modalities": "[" * 5000}})
    path.write_bytes(safetensors_bytes(header))


@pytest.mark.parametrize("tamper", ["signature", "bundle"])
def test_levels_2_and_3_skip_unauthenticated_files(fresh_run: HonestRun, tmp_path: Path,
                                                   tamper: str) -> None:
    cert = fresh_run.cert
    if tamper == "signature":
        doc = fresh_run.load_cert()
        doc["signature"]["value"] = flip_signature_s(doc["signature"]["value"])
        cert = write_json(tmp_path / "cert.json", doc)
        shutil.copy(fresh_run.diff, tmp_path / "diff.safetensors")
        bundle = tmp_path
    else:
        bundle = fresh_run.out_dir
    _probe_with_deep_metadata(bundle / "probe.safetensors")
    outcome = verify(cert, fresh_run.model, fresh_run.public_key, "--level", "3",
                     "--bundle", bundle)
    assert_clean(outcome)
    assert outcome.exit_code == 1, outcome.stderr
    statuses = {c["name"]: c["status"] for c in outcome.report["checks"]}
    assert statuses["level-2"] == statuses["level-3"] == "skipped"
    assert "pre-rebuild" not in statuses
    failed = "signature" if tamper == "signature" else "bundle-digest"
    assert statuses[failed] == "fail"
    assert failed in outcome.check_detail("level-2")


def test_calibration_detail_names_method(
        declared_then_clip: Path, honest_run: HonestRun) -> None:
    first = declared_then_clip.parent / "first"
    declared = verify(first / "cert.json", first / "model.safetensors", honest_run.public_key)
    assert declared.exit_code == 0, declared.stdout
    assert "declared by the issuer and not checked" in declared.check_detail("calibration")
    clip = verify(honest_run.cert, honest_run.model, honest_run.public_key)
    assert "sensitivity is the clip bound" in clip.check_detail("calibration")


def test_evidence_without_runs_no_crash(honest_run: HonestRun, tmp_path: Path) -> None:
    # The schema requires distances but not runs. An edited, unsigned certificate that
    # omits it must fail its signature, not crash the calibration detail.
    doc = honest_run.load_cert()
    doc["privacy"]["sensitivity_method"] = "reference-retrain"
    doc["privacy"]["sensitivity_evidence"] = {
        "method": "reference-retrain", "distances": [1e-4, 2e-4], "safety_factor": 2.0}
    cert = write_json(tmp_path / "cert.json", doc)
    outcome = verify(cert, honest_run.model, honest_run.public_key)
    assert_check_failed(outcome, "signature", "E_SIGNATURE_INVALID")
    assert "estimated from 2 reference rerun(s)" in outcome.check_detail("calibration")


def test_unsigned_cert_keeps_bundle_sealed(
        sealed_run: tuple[Path, Path], honest_run: HonestRun, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Anyone can seal files to the auditor's public key, so a certificate that fails
    # its signature must not get its sealed file decrypted and parsed (R-LVL-3).
    from mbd_cert import sealing

    out, auditor_key = sealed_run
    for name in ("model.safetensors", "audit-bundle.sealed"):
        shutil.copy(out / name, tmp_path / name)
    doc = json.loads((out / "cert.json").read_text())
    doc["issuer"]["name"] = "edited after signing"
    cert = write_json(tmp_path / "cert.json", doc)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the sealed bundle was opened")

    monkeypatch.setattr(sealing, "open_for_verification", never)
    outcome = verify(cert, tmp_path / "model.safetensors", honest_run.public_key,
                     "--level", "2", "--auditor-private-key", auditor_key)
    assert_check_failed(outcome, "signature", "E_SIGNATURE_INVALID")
    assert outcome.report["level"] == 2
    statuses = {c["name"]: c["status"] for c in outcome.report["checks"]}
    assert statuses["sealed-bundle"] == "skipped"
    assert statuses["level-2"] == "skipped"


def test_unsigned_sealed_report_names_failed_check(
        sealed_run: tuple[Path, Path], honest_run: HonestRun, tmp_path: Path) -> None:
    # The report of an edited certificate with a sealed bundle. The sealed check comes at
    # step 8 (SPEC section 7), the bundle-digest detail gives why no bundle was read, and
    # the level checks name the check that failed (R-LVL-3), not the skipped sealed check.
    out, auditor_key = sealed_run
    publish_sealed(out, tmp_path)
    doc = json.loads((tmp_path / "cert.json").read_text())
    doc["privacy"]["epsilon"] = 2.0
    cert = write_json(tmp_path / "cert.json", doc)
    outcome = verify(cert, tmp_path / "model.safetensors", honest_run.public_key,
                     "--level", "3", "--auditor-private-key", auditor_key)
    assert_check_failed(outcome, "signature", "E_SIGNATURE_INVALID")
    names = [c["name"] for c in outcome.report["checks"]]
    assert names.index("signature") < names.index("sealed-bundle")
    assert names.index("policy") < names.index("sealed-bundle")
    assert names.index("sealed-bundle") + 1 == names.index("bundle-digest")
    bundle = outcome.check_detail("bundle-digest")
    assert "sealed-bundle: skipped" in bundle
    assert "level 1 does not read it" not in bundle
    for level in ("level-2", "level-3"):
        detail = outcome.check_detail(level)
        assert detail.startswith("not run: signature did not pass"), detail
        assert "sealed-bundle" not in detail


def test_failed_sealed_bundle_skips_levels_naming_it(
        sealed_run: tuple[Path, Path], honest_run: HonestRun, tmp_path: Path) -> None:
    out, auditor_key = sealed_run
    publish_sealed(out, tmp_path)
    sealed = tmp_path / "audit-bundle.sealed"
    data = bytearray(sealed.read_bytes())
    data[-1] ^= 0x01
    sealed.write_bytes(bytes(data))
    outcome = verify(tmp_path / "cert.json", tmp_path / "model.safetensors",
                     honest_run.public_key, "--level", "2", "--auditor-private-key",
                     auditor_key)
    assert_check_failed(outcome, "sealed-bundle", "E_DIGEST_MISMATCH")
    assert outcome.report["level"] == 2
    names = [c["name"] for c in outcome.report["checks"]]
    assert names.index("sealed-bundle") + 1 == names.index("bundle-digest")
    assert "sealed-bundle: fail" in outcome.check_detail("bundle-digest")
    assert outcome.check_detail("level-2").startswith("not run: sealed-bundle did not pass")


def test_signed_cert_opens_sealed_bundle(sealed_run: tuple[Path, Path],
                                                    honest_run: HonestRun,
                                                    tmp_path: Path) -> None:
    out, auditor_key = sealed_run
    publish_sealed(out, tmp_path)
    outcome = verify(tmp_path / "cert.json", tmp_path / "model.safetensors",
                     honest_run.public_key, "--level", "2", "--allow-inconclusive",
                     "--auditor-private-key", auditor_key)
    assert outcome.exit_code == 0, outcome.stdout
    statuses = {c["name"]: c["status"] for c in outcome.report["checks"]}
    assert statuses["sealed-bundle"] == "pass"
    assert statuses["saliency-mask"] == "pass"


def test_missing_bundle_hint_names_sealed(sealed_run: tuple[Path, Path],
                                                     honest_run: HonestRun,
                                                     tmp_path: Path) -> None:
    out, _ = sealed_run
    publish_sealed(out, tmp_path)
    outcome = verify(tmp_path / "cert.json", tmp_path / "model.safetensors",
                     honest_run.public_key, "--level", "2", "--bundle", tmp_path)
    assert_clean(outcome)
    assert outcome.exit_code == 2
    assert outcome.error_code == "E_FILE_MISSING"
    assert "--auditor-private-key" in outcome.stderr


def test_released_model_without_chain_rejected(honest_run: HonestRun, tmp_path: Path) -> None:
    # The released model copied into a fresh checkpoint without cert.json: a second
    # deletion would be "deletion 1" and restart the budget (SPEC.md, R-CHAIN-9).
    from mbd_cert.issue import config_from_certificate

    fresh = tmp_path / "fresh-checkpoint"
    fresh.mkdir()
    for name in ("model.safetensors", "probe.safetensors", "eval.safetensors"):
        shutil.copy(honest_run.out_dir / name, fresh / name)
    write_json(fresh / "config.json", config_from_certificate(honest_run.load_cert()))
    outcome = run_cli(["issue", "--checkpoint", fresh, "--modality", "vision", "--epsilon", "1",
                       "--steps", "2", "--key", honest_run.private_key, "--out", tmp_path / "out"])
    assert_clean(outcome)
    assert outcome.exit_code == 1, outcome.stderr
    assert "[E_CHAIN_BROKEN]" in outcome.stderr
    assert "'audio' deleted" in outcome.stderr
    assert "--previous" in outcome.stderr
    assert not (tmp_path / "out").exists()
    # With the previous certificate named, the same checkpoint continues the chain.
    outcome = run_cli(["issue", "--checkpoint", fresh, "--modality", "vision", "--epsilon", "1",
                       "--steps", "2", "--key", honest_run.private_key, "--out", tmp_path / "out",
                       "--previous", honest_run.cert])
    assert outcome.exit_code == 0, outcome.stderr


def _released_with_training_config(honest_run: HonestRun, directory: Path) -> Path:
    """A checkpoint holding the released model beside the training config and data."""
    directory.mkdir()
    for name in ("config.json", "probe.safetensors", "eval.safetensors"):
        shutil.copy(honest_run.checkpoint / name, directory / name)
    shutil.copy(honest_run.model, directory / "model.safetensors")
    return directory


def test_released_model_training_config_rejected(honest_run: HonestRun,
                                                      tmp_path: Path) -> None:
    # The training config lists no deletion, but the audio encoder is all zero.
    checkpoint = _released_with_training_config(honest_run, tmp_path / "ck")
    outcome = run_cli(["issue", "--checkpoint", checkpoint, "--modality", "vision",
                       "--epsilon", "1", "--steps", "2", "--key", honest_run.private_key,
                       "--out", tmp_path / "out"])
    assert_clean(outcome)
    assert outcome.exit_code == 1, outcome.stderr
    assert "[E_CHAIN_BROKEN]" in outcome.stderr
    assert "audio encoder is all zero" in outcome.stderr
    assert not (tmp_path / "out").exists()


def test_previous_overrides_stale_training_config(honest_run: HonestRun,
                                                   tmp_path: Path) -> None:
    # With --previous the certified config counts, not the training config.json.
    checkpoint = _released_with_training_config(honest_run, tmp_path / "ck")
    out = tmp_path / "out"
    outcome = run_cli(["issue", "--checkpoint", checkpoint, "--modality", "vision",
                       "--epsilon", "1", "--steps", "2", "--key", honest_run.private_key,
                       "--out", out, "--previous", honest_run.cert])
    assert outcome.exit_code == 0, outcome.stderr
    doc = json.loads((out / "cert.json").read_text())
    assert doc["subject_model"]["architecture"]["config"]["deleted_modalities"] == [
        "audio", "vision"]
    outcome = verify(out / "cert.json", out / "model.safetensors", honest_run.public_key)
    assert outcome.exit_code == 0, outcome.stderr


def test_verifier_catches_unlisted_earlier_deletion(honest_run: HonestRun, tmp_path: Path,
                                                    monkeypatch) -> None:
    # An issuer without that check certifies "deletion 1" of a model whose audio
    # encoder an earlier deletion zeroed; the verifier must not accept the reset budget.
    from mbd_cert import _issue_preflight

    monkeypatch.setattr(_issue_preflight, "reject_unlisted_deletion", lambda *args: None)
    checkpoint = _released_with_training_config(honest_run, tmp_path / "ck")
    out = tmp_path / "out"
    outcome = run_cli(["issue", "--checkpoint", checkpoint, "--modality", "vision",
                       "--epsilon", "1", "--steps", "2", "--key", honest_run.private_key,
                       "--out", out])
    assert outcome.exit_code == 0, outcome.stderr
    outcome = verify(out / "cert.json", out / "model.safetensors", honest_run.public_key)
    assert_check_failed(outcome, "deleted-tensors-zero", "E_CHAIN_BROKEN")
    assert "audio encoder of the released model is all zero" in outcome.stderr + json.dumps(
        outcome.report)


def test_inspect_lists_every_lost_modality(declared_then_clip: Path,
                                          honest_run: HonestRun) -> None:
    # The second deletion's certificate names vision; an auditor must also see that
    # the released model lost audio in the first.
    outcome = run_cli(["inspect", declared_then_clip / "cert.json", "--json"])
    assert outcome.exit_code == 0, outcome.stderr
    summary = json.loads(outcome.stdout)
    assert summary["modality"] == "vision"
    assert summary["deleted_modalities"] == ["audio", "vision"]
    text = run_cli(["inspect", declared_then_clip / "cert.json"])
    assert "modalities the model has lost" in text.stdout
    assert "audio, vision" in text.stdout
