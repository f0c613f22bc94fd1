"""`mbd-cert issue` on crafted probe and evaluation sets (SPEC.md, R-PRB-3 to R-PRB-5).

Each test copies the tiny checkpoint, edits one tensor of ``probe.safetensors`` or
``eval.safetensors``, and runs ``issue`` on the copy. Before these rules, each of the
rejected files was certified with exit code 0.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cli_support import TINY_ISSUE_OPTIONS, IssuerKeys, Outcome, assert_clean, run_cli

from mbd_cert import _safetensors
from mbd_cert.cli import main

Edit = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray] | None]


def _edited_checkpoint(source: Path, target: Path, file: str, edit: Edit) -> Path:
    """Copy ``source`` to ``target`` and apply ``edit`` to the tensors of ``file``."""
    checkpoint = Path(shutil.copytree(source, target))
    path = checkpoint / file
    header = _safetensors.read_header(path)
    tensors = {name: np.array(_safetensors.read_tensor(header, name))
               for name in header.tensors}
    tensors = edit(tensors) or tensors
    _safetensors.write_safetensors(path, tensors, dict(header.metadata), overwrite=True)
    return checkpoint


def _issue(checkpoint: Path, keys: IssuerKeys, out: Path) -> Outcome:
    return run_cli(["issue", "--checkpoint", checkpoint, *TINY_ISSUE_OPTIONS,
                    "--proxy-sample", "0", "--key", keys.private, "--out", out])


def _assert_rejected(outcome: Outcome, out: Path, file: Path) -> None:
    assert_clean(outcome)
    assert outcome.exit_code == 2, outcome.stderr
    assert f"error [E_DATA_MALFORMED]: {file}: " in outcome.stderr
    assert not out.exists()


def _rows(keep: Callable[[dict[str, np.ndarray]], np.ndarray]) -> Edit:
    """Return an edit that keeps the rows ``keep(tensors)`` of every tensor."""
    def edit(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = keep(tensors)
        return {name: np.ascontiguousarray(values[rows]) for name, values in tensors.items()}
    return edit


def _with_audio(count: int) -> Edit:
    return _rows(lambda tensors: np.flatnonzero(tensors["present"][:, 1])[:count])


@pytest.mark.parametrize("file", ["probe.safetensors", "eval.safetensors"])
@pytest.mark.parametrize("label", [1e30, -3.5])
def test_label_off_scale_rejected(tiny_checkpoint: Path, issuer_keys: IssuerKeys,
                                     tmp_path: Path, file: str, label: float) -> None:
    def edit(tensors: dict[str, np.ndarray]) -> None:
        tensors["label"][3] = label

    checkpoint = _edited_checkpoint(tiny_checkpoint, tmp_path / "ck", file, edit)
    outcome = _issue(checkpoint, issuer_keys, tmp_path / "out")
    _assert_rejected(outcome, tmp_path / "out", checkpoint / file)
    assert f"tensor 'label' has 1 value(s) outside [-3, 3], the first {label:.6g} in row 3" \
        in outcome.stderr
    assert "hint: labels are sentiment scores on the CMU scale [-3, 3]" in outcome.stderr


def test_labels_at_scale_ends_pass(tiny_checkpoint: Path, issuer_keys: IssuerKeys,
                                       tmp_path: Path) -> None:
    def edit(tensors: dict[str, np.ndarray]) -> None:
        tensors["label"][:2] = [3.0, -3.0]

    checkpoint = _edited_checkpoint(tiny_checkpoint, tmp_path / "ck", "probe.safetensors", edit)
    outcome = _issue(checkpoint, issuer_keys, tmp_path / "out")
    assert outcome.exit_code == 0, outcome.stderr


@pytest.mark.parametrize("size", [1, 2, 19])
def test_small_probe_set_rejected(tiny_checkpoint: Path, issuer_keys: IssuerKeys,
                                 tmp_path: Path, size: int) -> None:
    checkpoint = _edited_checkpoint(tiny_checkpoint, tmp_path / "ck", "probe.safetensors",
                                    _with_audio(size))
    outcome = _issue(checkpoint, issuer_keys, tmp_path / "out")
    _assert_rejected(outcome, tmp_path / "out", checkpoint / "probe.safetensors")
    assert f"the probe set has {size} sample(s)" in outcome.stderr
    assert "issue needs at least 20" in outcome.stderr
    assert "hint: train again with --probe-members and --probe-nonmembers of 10 or more" \
        in outcome.stderr


def test_probe_set_of_twenty_passes(tiny_checkpoint: Path, issuer_keys: IssuerKeys,
                                    tmp_path: Path) -> None:
    checkpoint = _edited_checkpoint(tiny_checkpoint, tmp_path / "ck", "probe.safetensors",
                                    _with_audio(20))
    outcome = _issue(checkpoint, issuer_keys, tmp_path / "out")
    assert outcome.exit_code == 0, outcome.stderr


@pytest.mark.parametrize("members", ["all", "one"])
def test_eval_set_members_rejected(tiny_checkpoint: Path, issuer_keys: IssuerKeys,
                                             tmp_path: Path, members: str) -> None:
    def edit(tensors: dict[str, np.ndarray]) -> None:
        tensors["member"][: None if members == "all" else 1] = 1

    checkpoint = _edited_checkpoint(tiny_checkpoint, tmp_path / "ck", "eval.safetensors", edit)
    outcome = _issue(checkpoint, issuer_keys, tmp_path / "out")
    _assert_rejected(outcome, tmp_path / "out", checkpoint / "eval.safetensors")
    assert "as training members, but the certificate records the metrics" in outcome.stderr
    assert "hint: pass held-out samples (member 0) with --eval-set" in outcome.stderr


def test_probe_set_as_eval_set_rejected(tiny_checkpoint: Path, issuer_keys: IssuerKeys,
                                             tmp_path: Path) -> None:
    # The likeliest way to get members into the evaluation set.
    outcome = run_cli(["issue", "--checkpoint", tiny_checkpoint, *TINY_ISSUE_OPTIONS,
                       "--eval-set", tiny_checkpoint / "probe.safetensors",
                       "--key", issuer_keys.private, "--out", tmp_path / "out"])
    _assert_rejected(outcome, tmp_path / "out", tiny_checkpoint / "probe.safetensors")


def test_eval_set_without_modality_warns(tiny_checkpoint: Path, issuer_keys: IssuerKeys,
                                         tmp_path: Path) -> None:
    # The metrics still describe the released model, so issue certifies with a warning.
    without_audio = _rows(lambda tensors: np.flatnonzero(tensors["present"][:, 1] == 0))
    checkpoint = _edited_checkpoint(tiny_checkpoint, tmp_path / "ck", "eval.safetensors",
                                    without_audio)
    outcome = _issue(checkpoint, issuer_keys, tmp_path / "out")
    assert outcome.exit_code == 0, outcome.stderr
    assert (f"WARNING: no sample of the evaluation set {checkpoint / 'eval.safetensors'} "
            "observes 'audio'") in outcome.stderr


def test_default_checkpoint_passes_without_warning(tiny_checkpoint: Path,
                                                   issuer_keys: IssuerKeys,
                                                   tmp_path: Path) -> None:
    outcome = _issue(tiny_checkpoint, issuer_keys, tmp_path / "out")
    assert outcome.exit_code == 0, outcome.stderr
    assert "evaluation set" not in outcome.stderr


def test_noise_dominated_release_warns(tiny_checkpoint: Path, issuer_keys: IssuerKeys,
                                       tmp_path: Path) -> None:
    """A tiny epsilon gives a valid certificate for a model that lost its utility."""
    outcome = run_cli(["issue", "--checkpoint", tiny_checkpoint, "--modality", "audio",
                       "--epsilon", "1e-5", "--steps", "2", "--proxy-sample", "0",
                       "--key", issuer_keys.private, "--out", tmp_path / "out"])
    assert outcome.exit_code == 0, outcome.stderr
    assert "WARNING: the released model lost much of its utility" in outcome.stderr
    assert "utility on " in outcome.stdout
    # The remedy names options of issue that exist.
    issue_options = {name for parameter in main.commands["issue"].params
                     for name in parameter.opts}
    named = set(re.findall(r"--[a-z][a-z-]*", outcome.stderr.split("lost much of")[1]))
    assert named, outcome.stderr
    assert named <= issue_options


def test_replacing_a_certificate_warns(tiny_checkpoint: Path, issuer_keys: IssuerKeys,
                                       tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _issue(tiny_checkpoint, issuer_keys, out).exit_code == 0
    again = run_cli(["issue", "--checkpoint", tiny_checkpoint, *TINY_ISSUE_OPTIONS,
                     "--proxy-sample", "0", "--key", issuer_keys.private, "--out", out,
                     "--force"])
    assert again.exit_code == 0, again.stderr
    assert f"WARNING: replaced the certificate in {out}" in again.stderr


def test_activation_cap_refused_before_work(tiny_checkpoint: Path, issuer_keys: IssuerKeys,
                                            tmp_path: Path, monkeypatch):
    # R-LIM-7: the issuer writes no certificate that level 2 would refuse to recompute.
    from mbd_cert import _work_limits

    monkeypatch.setattr(_work_limits, "MAX_ACTIVATION_ENTRIES", 1000)
    out = tmp_path / "out"
    outcome = _issue(tiny_checkpoint, issuer_keys, out)
    assert_clean(outcome)
    assert outcome.exit_code == 2, outcome.stderr
    assert "[E_LIMIT_EXCEEDED]" in outcome.stderr
    assert "probe samples" in outcome.stderr
    assert not out.exists()


def test_operation_cap_refused_before_work(tiny_checkpoint: Path, issuer_keys: IssuerKeys,
                                           tmp_path: Path, monkeypatch):
    # R-LIM-8: the issuer writes no certificate whose replay level 2 would refuse.
    from mbd_cert import _work_limits

    monkeypatch.setattr(_work_limits, "MAX_REPLAY_OPERATIONS", 1000)
    out = tmp_path / "out"
    outcome = _issue(tiny_checkpoint, issuer_keys, out)
    assert_clean(outcome)
    assert outcome.exit_code == 2, outcome.stderr
    assert "[E_LIMIT_EXCEEDED]" in outcome.stderr
    assert "operations" in outcome.stderr
    assert not out.exists()


def test_failed_replacement_does_not_warn(tiny_checkpoint: Path, issuer_keys: IssuerKeys,
                                          tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _issue(tiny_checkpoint, issuer_keys, out).exit_code == 0
    off_scale = _edited_checkpoint(tiny_checkpoint, tmp_path / "ck", "probe.safetensors",
                                   lambda tensors: {**tensors, "label": tensors["label"] * 1e3})
    again = run_cli(["issue", "--checkpoint", off_scale, *TINY_ISSUE_OPTIONS,
                     "--proxy-sample", "0", "--key", issuer_keys.private, "--out", out,
                     "--force"])
    assert again.exit_code == 2, again.stderr
    assert "replaced the certificate" not in again.stderr
