"""Atomic outputs: killed ``issue`` and ``train`` runs leave no partial output.

Both commands build their output in a staging directory next to the target, named
``.<target>.<random>.tmp``, and rename it into place when it is complete. A run killed
with SIGKILL can leave that staging directory behind (nothing can clean up after
SIGKILL), but never a partial target; later runs ignore it. ``verify`` never changes
its inputs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cli_support import TINY_ISSUE_OPTIONS, TINY_TRAIN_OPTIONS, HonestRun, run_cli, verify

# Upper bound on one tiny issue or train run on a loaded 2-core machine, in seconds.
RUN_TIMEOUT_S = 300
POLL_INTERVAL_S = 0.002


def _mbd_cert(*args: object) -> list[str]:
    return [sys.executable, "-c", "from mbd_cert.cli import main; main()", *map(str, args)]


def _staging_dirs(parent: Path, name: str) -> list[Path]:
    return sorted(parent.glob(f".{name}.*"))


def _kill_when(process: subprocess.Popen[bytes], parent: Path, name: str,
               wanted: str | None) -> bool:
    """SIGKILL ``process`` once a staging dir (holding ``wanted``, if given) appears.

    Returns:
        True when the process was killed, False when it finished first.
    """
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        for staging in _staging_dirs(parent, name):
            if wanted is None or (staging / wanted).exists():
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True
        time.sleep(POLL_INTERVAL_S)
    process.kill()
    process.wait()
    raise AssertionError(f"no staging directory for {name} appeared in {RUN_TIMEOUT_S} s")


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(directory.iterdir())}


def _issue_args(run: HonestRun, out: Path, *extra: str) -> list[str]:
    return _mbd_cert("issue", "--checkpoint", run.checkpoint, *TINY_ISSUE_OPTIONS,
                     "--key", run.private_key, "--out", out, *extra)


def _check_killed_issue(run: HonestRun, tmp_path: Path, wanted: str | None) -> None:
    out = tmp_path / "del"
    process = subprocess.Popen(_issue_args(run, out), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    killed = _kill_when(process, tmp_path, "del", wanted)
    if killed:
        assert not out.exists(), "a killed issue left a partial output directory"
    else:
        assert verify(out / "cert.json", out / "model.safetensors", run.public_key).exit_code == 0
    # A later run ignores the leftover staging directory and completes.
    shutil.rmtree(out, ignore_errors=True)
    again = run_cli(["issue", "--checkpoint", run.checkpoint, *TINY_ISSUE_OPTIONS,
                     "--key", run.private_key, "--out", out])
    assert again.exit_code == 0, again.stderr
    assert verify(out / "cert.json", out / "model.safetensors", run.public_key).exit_code == 0


# A file that each command writes last or among the last, so that its presence in the
# renamed directory shows the output was complete.
COMPLETE_WITH = {"issue": "cert.json", "report": "index.html", "train": "metrics.json"}


@pytest.mark.parametrize("command", ["issue", "report", "train"])
def test_output_renamed_from_staging(honest_run: HonestRun, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """R-SEC-3: each output directory is built in .<name>.<random>.tmp beside it, then renamed."""
    out = tmp_path / "out"
    renames: list[tuple[Path, bool, list[str]]] = []
    real_rename = os.rename

    def recording_rename(source: Any, target: Any) -> None:
        if Path(target) == out:
            renames.append((Path(source), out.exists(), sorted(os.listdir(source))))
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", recording_rename)
    if command == "issue":
        args = ["issue", "--checkpoint", honest_run.checkpoint, *TINY_ISSUE_OPTIONS,
                "--key", honest_run.private_key, "--out", out]
    elif command == "report":
        args = ["report", "--out", out, honest_run.cert]
    else:
        args = ["train", *TINY_TRAIN_OPTIONS, "--out", out]
    outcome = run_cli(args)
    assert outcome.exit_code == 0, outcome.stderr

    [(staging, out_existed, names)] = renames
    assert staging.parent == tmp_path
    assert re.fullmatch(r"\.out\.[^.]+\.tmp", staging.name), staging.name
    assert not out_existed
    assert COMPLETE_WITH[command] in names
    assert sorted(os.listdir(out)) == names
    assert not staging.exists()


def test_issue_killed_after_staging_created(honest_run: HonestRun, tmp_path: Path) -> None:
    """R-SEC-3: a killed issue leaves no partial output, and a later run ignores the staging."""
    _check_killed_issue(honest_run, tmp_path, None)


@pytest.mark.slow
@pytest.mark.parametrize("wanted", ["model.safetensors", "diff.safetensors", "probe.safetensors"])
def test_issue_killed_mid_write(honest_run: HonestRun, tmp_path: Path, wanted: str) -> None:
    _check_killed_issue(honest_run, tmp_path, wanted)


@pytest.mark.slow
@pytest.mark.parametrize("wanted", [None, "model.safetensors", "diff.safetensors"])
def test_issue_force_killed_keeps_old(honest_run: HonestRun, tmp_path: Path,
                                      wanted: str | None) -> None:
    out = tmp_path / "del"
    shutil.copytree(honest_run.out_dir, out)
    before = _snapshot(out)
    process = subprocess.Popen(_issue_args(honest_run, out, "--force"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if _kill_when(process, tmp_path, "del", wanted):
        # NOTE: a kill between the two renames of the swap leaves no target. The old
        # output then sits under a hidden backup name, so the window is two renames wide.
        assert not out.exists() or _snapshot(out) == before
    else:
        assert verify(out / "cert.json", out / "model.safetensors",
                      honest_run.public_key).exit_code == 0


def test_train_killed_leaves_no_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "ck"
    process = subprocess.Popen(_mbd_cert("train", *TINY_TRAIN_OPTIONS, "--out", out),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = _kill_when(process, tmp_path, "ck", "model.safetensors")
    if killed:
        assert not out.exists(), "a killed train left a partial checkpoint"
    else:
        assert (out / "model.safetensors").is_file()
        assert (out / "config.json").is_file()


def test_issue_refuses_existing_certificate(honest_run: HonestRun, tmp_path: Path) -> None:
    """R-ISS-2: issue does not replace an existing output without --force."""
    out = tmp_path / "del"
    shutil.copytree(honest_run.out_dir, out)
    before = _snapshot(out)
    outcome = run_cli(["issue", "--checkpoint", honest_run.checkpoint, *TINY_ISSUE_OPTIONS,
                       "--key", honest_run.private_key, "--out", out])
    assert outcome.exit_code == 2
    assert "[E_OUTPUT_EXISTS]" in outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["del"]


def test_issue_keeps_output_written_meanwhile(honest_run: HonestRun, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """R-ISS-2: an --out that another process fills during issue is not replaced."""
    from mbd_cert import _issue_outputs, _issue_steps

    out = tmp_path / "del"

    def other_process_writes_then_set_modes(staging: Path) -> None:
        # issue's first check saw no --out, so only the final move can protect it.
        out.mkdir()
        (out / "theirs.txt").write_text("written by another process")
        _issue_outputs.set_modes(staging)

    monkeypatch.setattr(_issue_steps, "set_modes", other_process_writes_then_set_modes)
    outcome = run_cli(["issue", "--checkpoint", honest_run.checkpoint, *TINY_ISSUE_OPTIONS,
                       "--key", honest_run.private_key, "--out", out])
    assert outcome.exit_code == 2, outcome.stderr
    assert "[E_OUTPUT_EXISTS]" in outcome.stderr
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["del"]


def test_train_refuses_existing_checkpoint(honest_run: HonestRun, tmp_path: Path) -> None:
    out = tmp_path / "ck"
    shutil.copytree(honest_run.checkpoint, out)
    before = _snapshot(out)
    outcome = run_cli(["train", *TINY_TRAIN_OPTIONS, "--out", out])
    assert outcome.exit_code in (1, 2)
    assert "--force" in outcome.stderr
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_verify_leaves_inputs_unchanged(fresh_run: HonestRun, tmp_path: Path) -> None:
    # The snapshot catches changes of content or modification time. Read-only modes
    # also make a write attempt fail, except when the tests run as root.
    junit = tmp_path / "report.xml"
    before = _snapshot(fresh_run.out_dir)
    key_before = (fresh_run.public_key.read_bytes(), fresh_run.public_key.stat().st_mtime_ns)
    for path in fresh_run.out_dir.iterdir():
        path.chmod(0o444)
    os.chmod(fresh_run.out_dir, 0o555)
    try:
        outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key, "--bundle",
                         fresh_run.out_dir, "--junit", junit)
        failing = verify(fresh_run.cert, fresh_run.diff, fresh_run.public_key)
    finally:
        os.chmod(fresh_run.out_dir, 0o755)
    assert outcome.exit_code == 0, outcome.stderr
    assert failing.exit_code == 1
    assert _snapshot(fresh_run.out_dir) == before
    assert (fresh_run.public_key.read_bytes(),
            fresh_run.public_key.stat().st_mtime_ns) == key_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["del", "report.xml"]
