"""Issuer faults a plugin author's trial found, each with an architecture of its own.

The architectures live in ``trial_architectures.py`` and load through a faked entry
point. An integer buffer under ``weight_dtype="F32"`` gave a certificate that failed
its own level 1. A mask chosen among saliency scores of 0, and a checkpoint without an
evaluation set, passed without a warning. A random forget objective made level 2 exit
3 (torch) or fail the mask check (numpy). A random retain objective passed issue, and
an objective that torch.func.vmap cannot run passed issue and made level 2 exit 3.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import trial_architectures
from cli_support import TINY_ISSUE_OPTIONS, assert_input_error, run_cli, verify

from mbd_cert import _safetensors
from mbd_cert._determinism import (
    CODE_OBJECTIVE_NONDETERMINISTIC,
    CODE_OBJECTIVE_VMAP_UNSUPPORTED,
)


def _checkpoint_for(tiny_checkpoint: Path, target: Path, architecture: str) -> Path:
    """Copy the tiny checkpoint and name ``architecture`` in its config."""
    checkpoint = Path(shutil.copytree(tiny_checkpoint, target))
    config_path = checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    config["architecture"] = architecture
    config_path.write_text(json.dumps(config))
    return checkpoint


def _issue(checkpoint: Path, issuer_keys, out: Path, *extra: object):
    return run_cli(["issue", "--checkpoint", checkpoint, *TINY_ISSUE_OPTIONS, "--top-k", "0.5",
                    "--key", issuer_keys.private, "--out", out, *extra])


def _assert_refused(outcome, code: str, out: Path) -> None:
    assert outcome.exit_code == 2, outcome.stderr
    assert f"error [{code}]" in outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert not out.exists()


def test_integer_buffer_rejected(tiny_checkpoint, issuer_keys, tmp_path,
                                                      monkeypatch):
    trial_architectures.register(monkeypatch, "trial-integer-buffer", "INTEGER_BUFFER")
    checkpoint = _checkpoint_for(tiny_checkpoint, tmp_path / "ck", "trial-integer-buffer")
    model_path = checkpoint / "model.safetensors"
    header = _safetensors.read_header(model_path)
    tensors = {name: np.array(_safetensors.read_tensor(header, name))
               for name in header.tensors}
    tensors["steps_seen"] = np.array(7, dtype=np.int64)
    _safetensors.write_safetensors(model_path, tensors, dict(header.metadata), overwrite=True)

    outcome = _issue(checkpoint, issuer_keys, tmp_path / "out")

    _assert_refused(outcome, "E_MODEL_TENSORS_MISMATCH", tmp_path / "out")
    assert "tensor 'steps_seen' has dtype I64" in outcome.stderr
    assert "declares weight_dtype='F32'" in outcome.stderr
    assert "declare weight_dtype=None" in outcome.stderr


def test_zero_score_mask_warns(tiny_checkpoint, issuer_keys, tmp_path, monkeypatch):
    trial_architectures.register(monkeypatch, "trial-zero-scores", "ZERO_SCORES")
    checkpoint = _checkpoint_for(tiny_checkpoint, tmp_path / "ck", "trial-zero-scores")

    outcome = _issue(checkpoint, issuer_keys, tmp_path / "out", "--proxy-sample", "0")

    assert outcome.exit_code == 0, outcome.stderr
    assert "WARNING: the saliency score at the mask's cut is 0" in outcome.stderr
    assert "chosen by flat index among ties" in outcome.stderr
    assert "at most the 0 entries of non-zero score" in outcome.stderr


def test_missing_eval_set_warns(tiny_checkpoint, issuer_keys, tmp_path):
    checkpoint = Path(shutil.copytree(tiny_checkpoint, tmp_path / "ck"))
    (checkpoint / "eval.safetensors").unlink()

    outcome = _issue(checkpoint, issuer_keys, tmp_path / "out")

    assert outcome.exit_code == 0, outcome.stderr
    assert "WARNING: no evaluation set" in outcome.stderr
    assert "Pass --eval-set" in outcome.stderr


def test_trained_checkpoint_no_warnings(tiny_checkpoint, issuer_keys, tmp_path):
    outcome = _issue(tiny_checkpoint, issuer_keys, tmp_path / "out")
    assert outcome.exit_code == 0, outcome.stderr
    assert "no evaluation set" not in outcome.stderr
    assert "score at the mask's cut is 0" not in outcome.stderr


# Architecture attribute, objective it breaks, code, words of the message.
BROKEN_OBJECTIVES = [
    ("TORCH_RANDOM", "forget", CODE_OBJECTIVE_NONDETERMINISTIC, "is not deterministic"),
    ("NUMPY_RANDOM", "forget", CODE_OBJECTIVE_NONDETERMINISTIC, "is not deterministic"),
    ("HIDDEN_RANDOM", "forget", CODE_OBJECTIVE_NONDETERMINISTIC, "calls a random operation"),
    ("TORCH_RANDOM_RETAIN", "retain", CODE_OBJECTIVE_NONDETERMINISTIC,
     "is not deterministic"),
    ("NUMPY_RANDOM_RETAIN", "retain", CODE_OBJECTIVE_NONDETERMINISTIC,
     "is not deterministic"),
    ("HIDDEN_RANDOM_RETAIN", "retain", CODE_OBJECTIVE_NONDETERMINISTIC,
     "calls a random operation"),
    ("BRANCHING_FORGET", "forget", CODE_OBJECTIVE_VMAP_UNSUPPORTED,
     "cannot run under torch.func.vmap"),
    ("BRANCHING_RETAIN", "retain", CODE_OBJECTIVE_VMAP_UNSUPPORTED,
     "cannot run under torch.func.vmap"),
]
BROKEN_IDS = [row[0].lower() for row in BROKEN_OBJECTIVES]


@pytest.mark.parametrize(("attribute", "objective", "code", "detail"), BROKEN_OBJECTIVES,
                         ids=BROKEN_IDS)
def test_broken_objective_rejected_at_issue(tiny_checkpoint, issuer_keys, tmp_path,
                                            monkeypatch, attribute, objective, code, detail):
    trial_architectures.register(monkeypatch, "trial-random", attribute)
    checkpoint = _checkpoint_for(tiny_checkpoint, tmp_path / "ck", "trial-random")

    outcome = _issue(checkpoint, issuer_keys, tmp_path / "out")

    _assert_refused(outcome, code, tmp_path / "out")
    assert "R-ARCH-7" in outcome.stderr
    assert f"the {objective} objective of architecture 'trial-random'" in outcome.stderr
    assert detail in outcome.stderr
    assert "nothing was written" in outcome.stderr


@pytest.fixture
def steady_release(tiny_checkpoint, issuer_keys, tmp_path, monkeypatch) -> Path:
    """Issue a deletion of the steady 'trial-random' architecture; return the output."""
    trial_architectures.register(monkeypatch, "trial-random", "STEADY")
    checkpoint = _checkpoint_for(tiny_checkpoint, tmp_path / "ck", "trial-random")
    out = tmp_path / "out"
    outcome = _issue(checkpoint, issuer_keys, out)
    assert outcome.exit_code == 0, outcome.stderr
    return out


@pytest.mark.parametrize(("attribute", "objective", "code", "detail"), BROKEN_OBJECTIVES,
                         ids=BROKEN_IDS)
def test_broken_objective_rejected_at_level_2(steady_release, issuer_keys, monkeypatch,
                                              attribute, objective, code, detail):
    trial_architectures.register(monkeypatch, "trial-random", attribute)

    outcome = verify(steady_release / "cert.json", steady_release / "model.safetensors",
                     issuer_keys.public, "--level", "2", "--bundle", steady_release)

    assert_input_error(outcome, code)
    assert "R-ARCH-7" in outcome.stderr
    assert f"the {objective} objective of architecture 'trial-random'" in outcome.stderr
    assert detail in outcome.stderr
    assert "fix the package that provides it" in outcome.stderr


# (attribute, function, reason in the message)
FAILING_FUNCTIONS = [
    ("RAISING_BUILD", "build", "raised ValueError: hidden_size must be even"),
    ("RAISING_FORGET", "forget_objective", "raised ValueError: no fusion input for"),
    ("RAISING_RETAIN", "retain_objective", "raised ValueError: no fusion input for"),
    ("TUPLE_PREFIXES", "encoder_prefixes", "returned a tuple, not a list of str"),
]
FAILING_IDS = [row[0].lower() for row in FAILING_FUNCTIONS]


def _assert_plugin_blamed(outcome, function: str, reason: str) -> None:
    assert f"architecture 'trial-random': its function {function} {reason}" in outcome.stderr
    assert "second line" not in outcome.stderr
    assert "fix the package that provides the architecture" in outcome.stderr
    assert "E_INTERNAL" not in outcome.stderr


@pytest.mark.parametrize(("attribute", "function", "reason"), FAILING_FUNCTIONS,
                         ids=FAILING_IDS)
def test_failing_plugin_function_rejected_at_issue(tiny_checkpoint, issuer_keys, tmp_path,
                                                   monkeypatch, attribute, function, reason):
    trial_architectures.register(monkeypatch, "trial-random", attribute)
    checkpoint = _checkpoint_for(tiny_checkpoint, tmp_path / "ck", "trial-random")

    outcome = _issue(checkpoint, issuer_keys, tmp_path / "out")

    _assert_refused(outcome, "E_ARCHITECTURE_LOAD_FAILED", tmp_path / "out")
    _assert_plugin_blamed(outcome, function, reason)


@pytest.mark.parametrize(("attribute", "function", "reason"), FAILING_FUNCTIONS,
                         ids=FAILING_IDS)
def test_failing_plugin_function_rejected_at_level_2(steady_release, issuer_keys,
                                                     monkeypatch, attribute, function, reason):
    trial_architectures.register(monkeypatch, "trial-random", attribute)

    outcome = verify(steady_release / "cert.json", steady_release / "model.safetensors",
                     issuer_keys.public, "--level", "2", "--bundle", steady_release)

    assert_input_error(outcome, "E_ARCHITECTURE_LOAD_FAILED")
    _assert_plugin_blamed(outcome, function, reason)


def test_failing_plugin_traceback_with_verbose(tiny_checkpoint, issuer_keys, tmp_path,
                                               monkeypatch):
    trial_architectures.register(monkeypatch, "trial-random", "RAISING_BUILD")
    checkpoint = _checkpoint_for(tiny_checkpoint, tmp_path / "ck", "trial-random")

    outcome = run_cli(["-v", "issue", "--checkpoint", checkpoint, *TINY_ISSUE_OPTIONS,
                       "--top-k", "0.5", "--key", issuer_keys.private,
                       "--out", tmp_path / "out"])

    assert outcome.exit_code == 2, outcome.stderr
    assert "Traceback" in outcome.stderr
    assert "in _raising_build" in outcome.stderr
    assert "error [E_ARCHITECTURE_LOAD_FAILED]" in outcome.stderr
