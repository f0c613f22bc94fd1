"""`mbd-cert issue` with an input file rewritten while it runs (SPEC.md, R-ISS-5).

Each test wraps a function that the issuer calls after it has read its inputs, so the
wrapper rewrites one checkpoint file mid-run, as another process or a git checkout
would. Before R-ISS-5 the issuer then copied the new probe or evaluation set into the
audit bundle, or committed the new model's digests as the pre-deletion model, and
exited 0 with a certificate of data it had not used.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_support import TINY_ISSUE_OPTIONS, HonestRun, IssuerKeys, Outcome, assert_clean, run_cli

from mbd_cert import _issue_steps, _safetensors, certificate, issue
from mbd_cert._commitment import file_commitment

CHANGED = "error [E_SAFETENSORS_CHANGED]: "


def _rewrite(path: Path, method: str) -> None:
    """Rewrite ``path`` as a valid safetensors file with one value changed.

    ``method`` is ``"replace"`` (a new file renamed over it, as git does) or ``"in_place"``
    (the same inode truncated and written again, as an editor may).
    """
    header = _safetensors.read_header(path)
    tensors = {name: np.array(_safetensors.read_tensor(header, name))
               for name in header.tensors}
    name = next(n for n, t in tensors.items() if t.dtype.kind == "f" and t.size)
    tensors[name].reshape(-1)[0] = tensors[name].reshape(-1)[0] / 2 + 0.25
    staged = path.with_name(path.name + ".new")
    _safetensors.write_safetensors(staged, tensors, dict(header.metadata))
    if method == "replace":
        os.replace(staged, path)
    else:
        path.write_bytes(staged.read_bytes())
        staged.unlink()


def _rewrite_before(monkeypatch: pytest.MonkeyPatch, module: Any, function: str,
                    path: Path, method: str) -> list[Path]:
    """Make ``module.function`` rewrite ``path`` once before it runs; return a call log."""
    original: Callable[..., Any] = getattr(module, function)
    calls: list[Path] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not calls:
            _rewrite(path, method)
            calls.append(path)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, function, wrapper)
    return calls


def _issue(checkpoint: Path, keys: IssuerKeys, out: Path, *extra: object) -> Outcome:
    return run_cli(["issue", "--checkpoint", checkpoint, *TINY_ISSUE_OPTIONS,
                    "--proxy-sample", "0", "--key", keys.private, "--out", out, *extra])


def _assert_changed(outcome: Outcome, out: Path, path: Path) -> None:
    assert_clean(outcome)
    assert outcome.exit_code == 2, outcome.stderr
    assert f"{CHANGED}{path}: file changed while issue was running" in outcome.stderr
    assert "run issue again. Nothing was written" in outcome.stderr
    assert not out.exists()
    # The staging directory beside --out, when there was one, is removed too.
    if out.parent.exists():
        assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []


@pytest.mark.parametrize("method", ["replace", "in_place"])
@pytest.mark.parametrize("file", ["probe.safetensors", "eval.safetensors"])
def test_data_rewritten_before_copy_rejected(tiny_checkpoint: Path, issuer_keys: IssuerKeys,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             file: str, method: str) -> None:
    """R-ISS-5: the audit bundle's copy must be the bytes the samples were parsed from."""
    checkpoint = Path(shutil.copytree(tiny_checkpoint, tmp_path / "ck"))
    assert (checkpoint / file).is_file()
    calls = _rewrite_before(monkeypatch, _issue_steps, "create_staging", checkpoint / file, method)
    out = tmp_path / "runs" / "out"
    outcome = _issue(checkpoint, issuer_keys, out)
    assert calls, "the issuer no longer calls create_staging: move the rewrite"
    _assert_changed(outcome, out, checkpoint / file)
    assert "its copy in the output has digest sha256:" in outcome.stderr


@pytest.mark.parametrize("method", ["replace", "in_place"])
def test_model_rewritten_during_run_rejected(tiny_checkpoint: Path, issuer_keys: IssuerKeys,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             method: str) -> None:
    """R-ISS-5: pre_deletion must describe the bytes the deletion started from."""
    checkpoint = Path(shutil.copytree(tiny_checkpoint, tmp_path / "ck"))
    model = checkpoint / "model.safetensors"
    calls = _rewrite_before(monkeypatch, _issue_steps, "create_staging", model, method)
    out = tmp_path / "runs" / "out"
    outcome = _issue(checkpoint, issuer_keys, out)
    assert calls
    _assert_changed(outcome, out, model)
    assert "the file now has digest sha256:" in outcome.stderr


def test_model_rewritten_after_chain_check_rejected(
        honest_run: HonestRun, issuer_keys: IssuerKeys, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A second deletion checks that the model is the one the first released, then reads
    # it. A rewrite between the two would start the deletion from another model.
    checkpoint = Path(shutil.copytree(honest_run.out_dir, tmp_path / "first"))
    model = checkpoint / "model.safetensors"
    calls = _rewrite_before(monkeypatch, issue, "warn_other_issuers", model, "replace")
    out = tmp_path / "runs" / "out"
    outcome = run_cli(["issue", "--checkpoint", checkpoint, "--modality", "text",
                       "--epsilon", "1", "--steps", "2", "--proxy-sample", "0",
                       "--key", issuer_keys.private, "--out", out])
    assert calls
    _assert_changed(outcome, out, model)
    assert "that the previous certificate released" in outcome.stderr


def test_unchanged_inputs_committed_as_read(tiny_checkpoint: Path, issuer_keys: IssuerKeys,
                                            tmp_path: Path) -> None:
    # The commitments taken in the one read equal those of a separate pass over the files.
    out = tmp_path / "out"
    outcome = _issue(tiny_checkpoint, issuer_keys, out)
    assert outcome.exit_code == 0, outcome.stderr
    doc = certificate.load_certificate(out / "cert.json")
    model = tiny_checkpoint / "model.safetensors"
    assert doc["subject_model"]["pre_deletion"] == file_commitment(
        _safetensors.digest_file(model), _safetensors.read_header(model))
    for name in ("probe.safetensors", "eval.safetensors"):
        assert (out / name).read_bytes() == (tiny_checkpoint / name).read_bytes(), name
