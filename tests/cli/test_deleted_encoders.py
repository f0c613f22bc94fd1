"""R-DEL-1 covers every modality deleted so far, not only the one a certificate removes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_support import HonestRun, assert_check_failed, resign, verify, write_json

from mbd_cert import _commitment, _safetensors


def _claim_second_deletion(run: HonestRun, tmp_path: Path, *, restore_audio: bool) -> Path:
    """Rewrite the honest audio deletion as if vision were deleted after audio."""
    header = _safetensors.read_header(run.model)
    tensors = {name: np.array(array) for name, array in _safetensors.iter_tensors(header)}
    vision = sorted(name for name in tensors if name.startswith("encoders.vision."))
    for name in vision:
        tensors[name] = np.zeros_like(tensors[name])
    if restore_audio:
        audio = sorted(name for name in tensors if name.startswith("encoders.audio."))[0]
        tensors[audio] = tensors[audio].copy()
        tensors[audio].flat[0] = 0.5
    model = tmp_path / "model.safetensors"
    digests = _safetensors.write_safetensors(model, tensors, header.metadata)

    doc = json.loads(run.cert.read_text())
    doc["subject_model"]["architecture"]["config"]["deleted_modalities"] = ["audio", "vision"]
    doc["deletion"]["modality"] = "vision"
    doc["deletion"]["removed_tensors"] = vision
    doc["subject_model"]["post_deletion"] = _commitment.file_commitment(
        digests, _safetensors.read_header(model)
    )
    write_json(tmp_path / "cert.json", resign(doc, run.private_key))
    return model


def test_earlier_encoder_restored_fails(honest_run: HonestRun, tmp_path: Path):
    model = _claim_second_deletion(honest_run, tmp_path, restore_audio=True)
    outcome = verify(tmp_path / "cert.json", model, honest_run.public_key, "--json")
    assert_check_failed(outcome, "deleted-tensors-zero", "E_DELETION_INCOMPLETE")
    assert "deleted audio encoder" in outcome.stdout


def test_all_deleted_encoders_zero_passes(honest_run: HonestRun, tmp_path: Path):
    model = _claim_second_deletion(honest_run, tmp_path, restore_audio=False)
    outcome = verify(tmp_path / "cert.json", model, honest_run.public_key, "--json")
    report = json.loads(outcome.stdout)
    check = next(c for c in report["checks"] if c["name"] == "deleted-tensors-zero")
    assert check["status"] == "pass"
    assert "(audio, vision)" in check["detail"]


def test_later_model_with_earlier_certificate(honest_run: HonestRun, tmp_path: Path):
    # The vision encoder is zero because a later deletion removed it, not because a
    # link is missing: the failures point at the model file, not at the issuer.
    later_model = _claim_second_deletion(honest_run, tmp_path, restore_audio=False)
    outcome = verify(honest_run.cert, later_model, honest_run.public_key, "--json")
    assert_check_failed(outcome, "model-digest", "E_DIGEST_MISMATCH")
    assert_check_failed(outcome, "deleted-tensors-zero", "E_CHAIN_BROKEN")
    check = next(c for c in json.loads(outcome.stdout)["checks"]
                 if c["name"] == "deleted-tensors-zero")
    assert "may come from a later deletion" in check["detail"]
    assert "pass the model released with this certificate" in check["detail"]
    assert "earlier deletion is missing" not in check["detail"]


def test_earlier_model_with_later_certificate(honest_run: HonestRun, tmp_path: Path):
    _claim_second_deletion(honest_run, tmp_path, restore_audio=False)
    outcome = verify(tmp_path / "cert.json", honest_run.model, honest_run.public_key, "--json")
    assert_check_failed(outcome, "model-digest", "E_DIGEST_MISMATCH")
    assert_check_failed(outcome, "deleted-tensors-zero", "E_DELETION_INCOMPLETE")
    check = next(c for c in json.loads(outcome.stdout)["checks"]
                 if c["name"] == "deleted-tensors-zero")
    assert "pass the model released with this certificate" in check["detail"]
    assert "still holds the deleted encoder" not in check["detail"]


def _release(run: HonestRun, tmp_path: Path, tensors: dict[str, np.ndarray],
             metadata: dict[str, str], doc: dict | None = None) -> tuple[Path, Path]:
    """Write ``tensors`` as the released model and re-sign the certificate for it."""
    model = tmp_path / "model.safetensors"
    digests = _safetensors.write_safetensors(model, tensors, metadata)
    doc = doc if doc is not None else json.loads(run.cert.read_text())
    doc["subject_model"]["post_deletion"] = _commitment.file_commitment(
        digests, _safetensors.read_header(model))
    cert = write_json(tmp_path / "cert.json", resign(doc, run.private_key))
    return cert, model


def _honest_tensors(run: HonestRun) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    header = _safetensors.read_header(run.model)
    tensors = {name: np.array(array) for name, array in _safetensors.iter_tensors(header)}
    return tensors, dict(header.metadata)


def test_extra_tensor_with_encoder_copy_fails(honest_run: HonestRun, tmp_path: Path):
    tensors, metadata = _honest_tensors(honest_run)
    pre = _safetensors.read_header(honest_run.checkpoint / "model.safetensors")
    trained = dict(_safetensors.iter_tensors(pre))["encoders.audio.proj.weight"]
    tensors["zz_backup.encoders.audio.proj.weight"] = np.array(trained)
    cert, model = _release(honest_run, tmp_path, tensors, metadata)
    outcome = verify(cert, model, honest_run.public_key, "--json")
    assert outcome.exit_code == 1
    assert_check_failed(outcome, "model-tensors", "E_DELETION_INCOMPLETE")
    assert "zz_backup.encoders.audio.proj.weight" in outcome.stdout


def test_metadata_beyond_release_fails(honest_run: HonestRun, tmp_path: Path):
    tensors, metadata = _honest_tensors(honest_run)
    cert, model = _release(honest_run, tmp_path, tensors, {**metadata, "backup": "AAAA"})
    outcome = verify(cert, model, honest_run.public_key, "--json")
    assert_check_failed(outcome, "model-tensors", "E_DELETION_INCOMPLETE")
    assert "metadata" in outcome.stdout


def test_modality_dropped_from_config_fails(honest_run: HonestRun, tmp_path: Path):
    # A config without vision would start a fresh budget for a model that still has it.
    tensors, metadata = _honest_tensors(honest_run)
    doc = json.loads(honest_run.cert.read_text())
    config = doc["subject_model"]["architecture"]["config"]
    config["modalities"] = [m for m in config["modalities"] if m != "vision"]
    for field in ("input_dims", "seq_len"):
        config[field].pop("vision")
    cert, model = _release(honest_run, tmp_path, tensors, metadata, doc)
    outcome = verify(cert, model, honest_run.public_key, "--json")
    assert_check_failed(outcome, "model-tensors", "E_DELETION_INCOMPLETE")
    assert "encoders.vision" in outcome.stdout


def test_negative_zero_in_deleted_encoder_fails(honest_run: HonestRun, tmp_path: Path):
    # -0.0 == 0.0, but its sign bit can copy the sign of a trained weight.
    tensors, metadata = _honest_tensors(honest_run)
    tensors["encoders.audio.proj.weight"].flat[:5] = -0.0
    cert, model = _release(honest_run, tmp_path, tensors, metadata)
    outcome = verify(cert, model, honest_run.public_key, "--json")
    assert_check_failed(outcome, "deleted-tensors-zero", "E_DELETION_INCOMPLETE")
    assert "5 entries whose bytes are not all zero" in outcome.stdout


def test_honest_release_passes_model_tensors(honest_run: HonestRun):
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key, "--json")
    check = next(c for c in outcome.report["checks"] if c["name"] == "model-tensors")
    assert check["status"] == "pass"


def test_config_field_left_to_its_default(honest_run: HonestRun, tmp_path: Path):
    # Without hidden_dim the certified config means the default width (64), which
    # this tiny model does not have: a failed check, not a crash on the missing key.
    tensors, metadata = _honest_tensors(honest_run)
    doc = json.loads(honest_run.cert.read_text())
    assert doc["subject_model"]["architecture"]["config"].pop("hidden_dim") != 64
    cert, model = _release(honest_run, tmp_path, tensors, metadata, doc)
    outcome = verify(cert, model, honest_run.public_key, "--json")
    assert_check_failed(outcome, "model-tensors", "E_DELETION_INCOMPLETE")
    assert "other shape" in outcome.stdout


def _resign_header(run: HonestRun, tmp_path: Path, model: Path) -> Path:
    """Re-sign the honest certificate for a model file written by hand."""
    doc = json.loads(run.cert.read_text())
    digests = _safetensors.digest_file(model)
    doc["subject_model"]["post_deletion"] = _commitment.file_commitment(
        digests, _safetensors.read_header(model))
    return write_json(tmp_path / "cert.json", resign(doc, run.private_key))


def test_header_whitespace_fails(honest_run: HonestRun, tmp_path: Path):
    # Whitespace between JSON tokens is two bits a character of room for hidden data.
    raw = honest_run.model.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = raw[8:8 + length].rstrip(b" ")
    padded = b"{\t\n" + header[1:]
    padded += b" " * (-len(padded) % 8)
    model = tmp_path / "model.safetensors"
    model.write_bytes(len(padded).to_bytes(8, "little") + padded + raw[8 + length:])
    cert = _resign_header(honest_run, tmp_path, model)
    outcome = verify(cert, model, honest_run.public_key, "--json")
    assert_check_failed(outcome, "model-tensors", "E_DELETION_INCOMPLETE")
    assert "header is not in the form" in outcome.stdout


@pytest.mark.parametrize(("widened", "message"), [
    # A complex tensor's imaginary half can hold other data.
    ("one", "fusion.0.weight C64 (expected F32)"),
    # F64 everywhere leaves 29 spare bits in every weight; the built-in model is F32.
    ("all", "43 tensors of the model have another dtype"),
])
def test_widened_dtype_fails(honest_run: HonestRun, tmp_path: Path, widened: str,
                             message: str):
    tensors, metadata = _honest_tensors(honest_run)
    if widened == "one":
        tensors["fusion.0.weight"] = tensors["fusion.0.weight"].astype(np.complex64)
    else:
        tensors = {name: array.astype(np.float64) for name, array in tensors.items()}
    cert, model = _release(honest_run, tmp_path, tensors, metadata)
    outcome = verify(cert, model, honest_run.public_key, "--json")
    assert_check_failed(outcome, "model-tensors", "E_DELETION_INCOMPLETE")
    assert message in outcome.stdout


def test_modalities_left_to_default_still_checked(honest_run: HonestRun, tmp_path: Path):
    # Without "modalities" the config means the default three, so R-CHAIN-9 must still
    # see the unlisted zero vision encoder.
    tensors, metadata = _honest_tensors(honest_run)
    for name in tensors:
        if name.startswith("encoders.vision."):
            tensors[name] = np.zeros_like(tensors[name])
    doc = json.loads(honest_run.cert.read_text())
    config = doc["subject_model"]["architecture"]["config"]
    assert config.pop("modalities") == ["text", "audio", "vision"]
    cert, model = _release(honest_run, tmp_path, tensors, metadata, doc)
    outcome = verify(cert, model, honest_run.public_key, "--json")
    assert_check_failed(outcome, "deleted-tensors-zero", "E_CHAIN_BROKEN")


def test_negative_zero_encoder_still_counts_as_deleted(honest_run: HonestRun, tmp_path: Path):
    # R-CHAIN-9 looks at values: an encoder of -0.0 is deleted, so leaving it out of the
    # config's deleted modalities must still break the chain.
    tensors, metadata = _honest_tensors(honest_run)
    for name in tensors:
        if name.startswith("encoders.vision."):
            tensors[name] = np.full_like(tensors[name], -0.0)
    cert, model = _release(honest_run, tmp_path, tensors, metadata)
    outcome = verify(cert, model, honest_run.public_key, "--json")
    assert_check_failed(outcome, "deleted-tensors-zero", "E_CHAIN_BROKEN")
