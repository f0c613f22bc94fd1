"""NaN and infinite weights (SPEC.md, R-DEL-3): verify rejects them, issue never writes them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_support import (
    TINY_ISSUE_OPTIONS,
    HonestRun,
    assert_check_failed,
    assert_clean,
    resign,
    run_cli,
    verify,
    write_json,
)

from mbd_cert import _commitment, _safetensors

# A quiet NaN whose low 22 bits carry data, and an infinity.
_PAYLOADS = np.array([0x7FC12345, 0x7F800000], dtype=np.uint32).view(np.float32)


def _release_with(run: HonestRun, tmp_path: Path, row: int) -> tuple[Path, Path]:
    """Put the payloads into ``row`` of the released property embedding and re-sign."""
    header = _safetensors.read_header(run.model)
    tensors = {n: np.array(a) for n, a in _safetensors.iter_tensors(header)}
    tensors["property_embedding.weight"][row, :2] = _PAYLOADS
    model = tmp_path / "model.safetensors"
    digests = _safetensors.write_safetensors(model, tensors, header.metadata)
    doc = run.load_cert()
    doc["subject_model"]["post_deletion"] = _commitment.file_commitment(
        digests, _safetensors.read_header(model))
    return write_json(tmp_path / "cert.json", resign(doc, run.private_key)), model


def test_payload_in_unread_weight_fails_level1(honest_run: HonestRun, tmp_path: Path) -> None:
    # Row 3 of the property embedding is (audio, observed): after the audio deletion
    # the released model never reads it, so no output and no probe can see it.
    cert, model = _release_with(honest_run, tmp_path, row=3)
    outcome = verify(cert, model, honest_run.public_key)
    assert_check_failed(outcome, "model-finite", "E_MODEL_NONFINITE")
    detail = outcome.check_detail("model-finite")
    assert "2 NaN or infinite weights in 1 tensors" in detail
    assert "'property_embedding.weight'" in detail
    statuses = {c["name"]: c["status"] for c in outcome.report["checks"]}
    assert statuses["model-digest"] == "pass"
    assert statuses["model-tensors"] == "pass"


def test_payload_stops_levels_2_and_3(honest_run: HonestRun, tmp_path: Path) -> None:
    # Row 0, (text, observed), is read: level 3 would see NaN outputs, but level 1
    # has already failed, so levels 2 and 3 do not run.
    cert, model = _release_with(honest_run, tmp_path, row=0)
    outcome = verify(cert, model, honest_run.public_key, "--level", "3",
                     "--bundle", honest_run.out_dir)
    assert_check_failed(outcome, "model-finite", "E_MODEL_NONFINITE")
    assert "level 1 failed (model-finite)" in outcome.check_detail("level-2")


def test_honest_release_passes_model_finite(honest_run: HonestRun) -> None:
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key)
    assert outcome.exit_code == 0, outcome.stderr
    detail = outcome.check_detail("model-finite")
    count = len(_safetensors.read_header(honest_run.model).tensors)
    assert detail == f"all entries of {count} floating-point tensors are finite"


def _edited_checkpoint(run: HonestRun, tmp_path: Path, prefix: str,
                       values: np.ndarray) -> tuple[Path, str]:
    """Return a copy of the checkpoint with ``values`` written into a tensor, and its name.

    The tensor is the first one under ``prefix``, and ``values`` go to its first entries.
    """
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(run.checkpoint, checkpoint)
    path = checkpoint / "model.safetensors"
    header = _safetensors.read_header(path)
    tensors = {n: np.array(a) for n, a in _safetensors.iter_tensors(header)}
    name = sorted(n for n in tensors if n.startswith(prefix))[0]
    tensors[name].reshape(-1)[:values.size] = values
    path.unlink()
    _safetensors.write_safetensors(path, tensors, header.metadata)
    return checkpoint, name


def test_issue_refuses_checkpoint_with_nan(honest_run: HonestRun, tmp_path: Path) -> None:
    checkpoint, _ = _edited_checkpoint(honest_run, tmp_path, "head.",
                                       np.array([np.nan], dtype=np.float32))
    out = tmp_path / "del"
    outcome = run_cli(["issue", "--checkpoint", checkpoint, *TINY_ISSUE_OPTIONS,
                       "--key", honest_run.private_key, "--out", out])
    assert_clean(outcome)
    assert outcome.exit_code == 1
    assert "E_MODEL_NONFINITE" in outcome.stderr
    assert "the checkpoint's model: 1 NaN or infinite entries" in outcome.stderr
    assert not out.exists()


@pytest.mark.parametrize("options", [("--clip-norm", "1e39"),
                                     ("--sensitivity-method", "declared",
                                      "--sensitivity", "1e39")])
def test_issue_refuses_noise_that_overflows(honest_run: HonestRun, tmp_path: Path,
                                            options: tuple[str, ...]) -> None:
    # At epsilon 1 sigma is 3.73 x sensitivity: 7.5e39 for the clip bound (2 x clip
    # norm) and 3.7e39 declared, beyond float32's 3.4e38, so masked entries overflow.
    out = tmp_path / "del"
    outcome = run_cli(["issue", "--checkpoint", honest_run.checkpoint, *TINY_ISSUE_OPTIONS,
                       *options, "--key", honest_run.private_key, "--out", out])
    assert_clean(outcome)
    assert outcome.exit_code == 1, outcome.stderr
    assert "E_MODEL_NONFINITE" in outcome.stderr
    assert "the noised model:" in outcome.stderr
    assert "too large for the model's dtype; nothing was written" in outcome.stderr
    assert "RuntimeWarning" not in outcome.stderr
    assert not out.exists()


def test_issue_names_negative_zero_in_deleted_encoder(honest_run: HonestRun,
                                                      tmp_path: Path) -> None:
    # Pruning by w * mask leaves -0.0, which post - diff cannot rebuild. issue must name
    # the fix for the checkpoint instead of asking for a bug report.
    checkpoint, name = _edited_checkpoint(honest_run, tmp_path, "encoders.audio.",
                                          np.full(3, -0.0, dtype=np.float32))
    out = tmp_path / "del"
    outcome = run_cli(["issue", "--checkpoint", checkpoint, *TINY_ISSUE_OPTIONS,
                       "--key", honest_run.private_key, "--out", out])
    assert_clean(outcome)
    assert outcome.exit_code == 1, outcome.stderr
    assert "E_DIFF_NOT_EXACT" in outcome.stderr
    assert f"3 weights the deletion changes are stored as -0.0 (3 in '{name}')" \
        in outcome.stderr
    assert "store them as +0.0" in outcome.stderr
    assert "report it" not in outcome.stderr
    assert not out.exists()
