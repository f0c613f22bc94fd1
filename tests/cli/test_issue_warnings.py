"""Warnings of `mbd-cert issue` about settings that verify poorly or certify little."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_support import TINY_ISSUE_OPTIONS, run_cli

from mbd_cert import _safetensors


@pytest.mark.parametrize(("top_k", "warned"), [("0.02", True), ("0.5", False)])
def test_small_mask_warns_about_level_2(tiny_checkpoint, issuer_keys, tmp_path, top_k, warned):
    outcome = run_cli(["issue", "--checkpoint", tiny_checkpoint, *TINY_ISSUE_OPTIONS,
                       "--top-k", top_k, "--key", issuer_keys.private,
                       "--out", tmp_path / "out"])
    assert outcome.exit_code == 0, outcome.stderr
    assert ("masked entries: level 2 needs at least 20" in outcome.stderr) is warned


@pytest.mark.parametrize(("epsilon", "warned"), [("1e6", True), ("10", False)])
def test_large_epsilon_warns(tiny_checkpoint, issuer_keys, tmp_path, epsilon, warned):
    outcome = run_cli(["issue", "--checkpoint", tiny_checkpoint, "--modality", "audio",
                       "--steps", "2", "--epsilon", epsilon, "--key", issuer_keys.private,
                       "--out", tmp_path / "out"])
    assert outcome.exit_code == 0, outcome.stderr
    assert ("WARNING: epsilon 1e+06 is large" in outcome.stderr) is warned


@pytest.fixture
def text_only_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """Return a copy of the tiny checkpoint whose probe set observes only text.

    It stands for a model trained on a text-only corpus such as mosi-text: audio and
    vision are absent (features zero, ``present`` 0) in every probe sample.
    """
    checkpoint = Path(shutil.copytree(tiny_checkpoint, tmp_path / "text-only"))
    path = checkpoint / "probe.safetensors"
    header = _safetensors.read_header(path)
    tensors = {name: np.array(_safetensors.read_tensor(header, name))
               for name in header.tensors}
    modalities = json.loads(header.metadata["modalities"])
    for column, modality in enumerate(modalities):
        observed = modality == "text"
        tensors["present"][:, column] = observed
        if not observed:
            tensors[f"inputs.{modality}"][:] = 0.0
    _safetensors.write_safetensors(path, tensors, dict(header.metadata), overwrite=True)
    return checkpoint


def test_deleting_only_observed_modality_warns(text_only_checkpoint, issuer_keys, tmp_path):
    outcome = run_cli(["issue", "--checkpoint", text_only_checkpoint, "--modality", "text",
                       "--epsilon", "1", "--steps", "2", "--key", issuer_keys.private,
                       "--out", tmp_path / "out"])
    assert outcome.exit_code == 0, outcome.stderr
    assert "WARNING: no probe sample observes any remaining modality ('audio', 'vision')" \
        in outcome.stderr
    assert "predicts from no input" in outcome.stderr


def test_unobserved_modality_hint_names_observed(text_only_checkpoint, issuer_keys, tmp_path):
    outcome = run_cli(["issue", "--checkpoint", text_only_checkpoint, *TINY_ISSUE_OPTIONS,
                       "--key", issuer_keys.private, "--out", tmp_path / "out"])
    assert outcome.exit_code == 1, outcome.stderr
    assert "error [E_ISSUANCE]: no probe sample has modality 'audio' observed" \
        in outcome.stderr
    assert "hint: the probe set observes only 'text'" in outcome.stderr
    assert not (tmp_path / "out").exists()


def test_default_checkpoint_has_no_coverage_warning(tiny_checkpoint, issuer_keys, tmp_path):
    outcome = run_cli(["issue", "--checkpoint", tiny_checkpoint, *TINY_ISSUE_OPTIONS,
                       "--key", issuer_keys.private, "--out", tmp_path / "out"])
    assert outcome.exit_code == 0, outcome.stderr
    assert "no probe sample" not in outcome.stderr


@pytest.mark.parametrize(("clip_norm", "refused"), [("1e-10", True), ("1e-6", False)])
def test_noise_below_float_resolution_refused(tiny_checkpoint, issuer_keys, tmp_path,
                                              clip_norm, refused):
    # sigma = 7.46 x clip norm here; at 7.5e-10 float32 rounding of weights near 0.1
    # (spacing 7.5e-9) would swamp the noise, and level 2's variance test would fail.
    out = tmp_path / "out"
    outcome = run_cli(["issue", "--checkpoint", tiny_checkpoint, *TINY_ISSUE_OPTIONS,
                       "--clip-norm", clip_norm, "--key", issuer_keys.private, "--out", out])
    assert outcome.exit_code == (1 if refused else 0), outcome.stderr
    assert ("E_NOISE_BELOW_RESOLUTION" in outcome.stderr) is refused
    assert out.exists() is not refused


@pytest.mark.parametrize(("factor", "warned"), [("1", True), ("2", False)])
def test_small_safety_factor_warns(tiny_checkpoint, issuer_keys, tmp_path, factor, warned):
    outcome = run_cli(["issue", "--checkpoint", tiny_checkpoint, *TINY_ISSUE_OPTIONS,
                       "--sensitivity-method", "reference-retrain", "--safety-factor", factor,
                       "--key", issuer_keys.private, "--out", tmp_path / "out"])
    assert outcome.exit_code == 0, outcome.stderr
    # 4 runs: the verifier's 4 neighbours hold the largest of 8 distances half the time.
    assert ("happens in about 50 % of verifications" in outcome.stderr) is warned


def test_zero_steps_reference_retrain_hint_names_steps(tiny_checkpoint, issuer_keys,
                                                       tmp_path):
    outcome = run_cli(["issue", "--checkpoint", tiny_checkpoint, "--modality", "audio",
                       "--epsilon", "1", "--steps", "0", "--sensitivity-method",
                       "reference-retrain", "--key", issuer_keys.private,
                       "--out", tmp_path / "out"])
    assert outcome.exit_code == 1, outcome.stderr
    assert "E_SENSITIVITY_ZERO" in outcome.stderr
    assert "with --steps 0 the update is zero" in outcome.stderr


def test_eligible_deleted_encoder_hint(tiny_checkpoint, issuer_keys, tmp_path):
    outcome = run_cli(["issue", "--checkpoint", tiny_checkpoint, *TINY_ISSUE_OPTIONS,
                       "--eligible", "encoders.audio", "--key", issuer_keys.private,
                       "--out", tmp_path / "out"])
    assert outcome.exit_code == 2, outcome.stderr
    assert "outside the audio encoder, which the deletion removes" in outcome.stderr
    assert "hint: the mask selects from tensors the released model keeps" in outcome.stderr
