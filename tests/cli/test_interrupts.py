"""Ctrl-C: every command exits 130 with one message, and issue never misreports its output.

The interrupts are sent with ``signal.raise_signal`` from monkeypatched steps of the
issuer, so each lands at a known point instead of after a guessed delay. Python runs the
handler before ``raise_signal`` returns, in the main thread, where the tests run.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_support import TINY_ISSUE_OPTIONS, HonestRun, run_cli, verify

from mbd_cert import _interrupts, _issue_outputs, _issue_steps, cli

INTERRUPTED = "interrupted; "


def _issue_force(run: HonestRun):
    return run_cli(["issue", "--checkpoint", run.checkpoint, *TINY_ISSUE_OPTIONS,
                    "--key", run.private_key, "--out", run.out_dir, "--force"])


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def _leftovers(run: HonestRun) -> list[str]:
    return sorted(path.name for path in run.out_dir.parent.glob(f".{run.out_dir.name}.*"))


def test_ctrl_c_after_swap_reports_success(fresh_run: HonestRun, monkeypatch):
    old_id = fresh_run.load_cert()["certificate_id"]

    def swap_then_interrupt(*args, **kwargs):
        _issue_outputs.swap_in(*args, **kwargs)
        signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(_issue_steps, "swap_in", swap_then_interrupt)
    handler_before = signal.getsignal(signal.SIGINT)
    outcome = _issue_force(fresh_run)
    assert outcome.exit_code == 0, outcome.stderr
    assert INTERRUPTED not in outcome.stderr
    assert "Ctrl-C or SIGTERM arrived after the new output was moved into" in outcome.stderr
    assert outcome.stdout.startswith("deleted audio: certificate ")
    assert signal.getsignal(signal.SIGINT) is handler_before
    new_id = fresh_run.load_cert()["certificate_id"]
    assert new_id != old_id
    assert new_id in outcome.stdout
    assert verify(fresh_run.cert, fresh_run.model, fresh_run.public_key).exit_code == 0
    assert _leftovers(fresh_run) == []


def test_ctrl_c_between_renames_completes_swap(fresh_run: HonestRun, monkeypatch):
    # Between moving the old directory aside and moving the new one in, --out does not
    # exist; an interrupt there must not leave it that way.
    real_rename = Path.rename
    out_dir = fresh_run.out_dir

    def rename_then_interrupt(self: Path, target):
        moved = real_rename(self, target)
        if self == out_dir:
            signal.raise_signal(signal.SIGINT)
        return moved

    monkeypatch.setattr(Path, "rename", rename_then_interrupt)
    outcome = _issue_force(fresh_run)
    assert outcome.exit_code == 0, outcome.stderr
    assert (out_dir / "cert.json").is_file()
    assert verify(fresh_run.cert, fresh_run.model, fresh_run.public_key).exit_code == 0
    assert _leftovers(fresh_run) == []


def test_ctrl_c_before_swap_keeps_old_output(fresh_run: HonestRun, monkeypatch):
    """R-ISS-2: outputs are staged, so the old --out stays intact until the final move."""
    before = _snapshot(fresh_run.out_dir)

    def interrupt_then_swap(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        _issue_outputs.swap_in(*args, **kwargs)

    monkeypatch.setattr(_issue_steps, "swap_in", interrupt_then_swap)
    outcome = _issue_force(fresh_run)
    assert outcome.exit_code == 130, outcome.stderr
    # The tiny model also draws the issuer's small-mask warning.
    messages = [line for line in outcome.stderr.splitlines()
                if not line.startswith("WARNING")]
    assert messages == [f"interrupted; the output directory {fresh_run.out_dir} was left as it was"]
    assert outcome.stdout == ""
    assert _snapshot(fresh_run.out_dir) == before
    assert _leftovers(fresh_run) == []


def test_publishing_without_window_raises_after_block():
    completed = []
    with pytest.raises(KeyboardInterrupt):
        with _interrupts.publishing():
            signal.raise_signal(signal.SIGINT)
            completed.append(True)
    assert completed == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_command_window_holds_until_closed():
    with _interrupts.command_window() as window:
        with _interrupts.publishing():
            pass
        signal.raise_signal(signal.SIGINT)
        assert window.interrupted
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_ctrl_c_loading_trainer_exits_130(command: str, tmp_path: Path, monkeypatch):
    # The trainer's commands are loaded on first use, outside any command's guard.
    def interrupted_import(group):
        raise KeyboardInterrupt

    monkeypatch.delitem(cli.main.commands, command, raising=False)
    monkeypatch.setattr(cli, "_register_trainer", interrupted_import)
    outcome = run_cli([command, "--help"])
    assert outcome.exit_code == 130, outcome.stderr
    assert outcome.stderr.strip() == (f"interrupted; the {command} command stopped while "
                                      "loading and wrote nothing")
    assert "Aborted" not in outcome.stderr + outcome.stdout


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize(("module", "name", "arguments"), [
    ("trainer.data", "load_corpus", ["train", "--out", "{tmp}/ck"]),
    ("trainer.evaluate", "load_checkpoint", ["evaluate", "--checkpoint", "{checkpoint}"]),
    ("mbd_cert.verify", "verify", ["verify", "{cert}", "{model}", "--key", "{key}"]),
    ("mbd_cert._cli_ci", "verify_one", ["verify-repo", "{out}", "--key", "{key}"]),
    ("mbd_cert.certificate", "load_certificate", ["inspect", "{cert}"]),
    ("mbd_cert.issue", "issue", ["issue", "--checkpoint", "{checkpoint}", *TINY_ISSUE_OPTIONS,
                                 "--key", "{private}", "--out", "{tmp}/del"]),
])
def test_ctrl_c_in_command_exits_130(module: str, name: str, arguments: list[str],
                                     honest_run: HonestRun, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(f"{module}.{name}", _interrupt)
    values = {"tmp": tmp_path, "checkpoint": honest_run.checkpoint, "cert": honest_run.cert,
              "model": honest_run.model, "key": honest_run.public_key,
              "private": honest_run.private_key, "out": honest_run.out_dir}
    outcome = run_cli([argument.format(**values) for argument in arguments])
    assert outcome.exit_code == 130, outcome.stderr
    assert outcome.stderr.strip().startswith(INTERRUPTED)
    assert len(outcome.stderr.strip().splitlines()) == 1
    assert "Aborted" not in outcome.stderr



@pytest.mark.parametrize(("target", "arguments"), [
    ("trainer.data.load_corpus", ["train", "--out", "{out}"]),
    ("mbd_cert.issue.issue", ["issue", "--checkpoint", "{checkpoint}", *TINY_ISSUE_OPTIONS,
                              "--key", "{private}", "--out", "{out}"]),
    ("mbd_cert._cli_report.check_output_dir", ["report", "{cert}", "--out", "{out}"]),
])
def test_ctrl_c_names_output_directory(target: str, arguments: list[str],
                                       honest_run: HonestRun, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(target, _interrupt)
    monkeypatch.delenv("RANK", raising=False)
    out = tmp_path / "out\nwarning: done"
    values = {"out": out, "checkpoint": honest_run.checkpoint, "cert": honest_run.cert,
              "private": honest_run.private_key}
    outcome = run_cli([argument.format(**values) for argument in arguments])
    assert outcome.exit_code == 130, outcome.stderr
    # The name is escaped, so a crafted --out cannot forge a second stderr line.
    assert outcome.stderr == (f"interrupted; the output directory {tmp_path}/out\\nwarning: "
                              "done was not created\n")
    assert not out.exists()


def test_ctrl_c_in_inspect_json_writes_document(honest_run: HonestRun, monkeypatch):
    # Every --json command writes one document, so a Ctrl-C gets the error report.
    monkeypatch.setattr("mbd_cert.certificate.load_certificate", _interrupt)
    outcome = run_cli(["inspect", honest_run.cert, "--json"])
    assert outcome.exit_code == 130, outcome.stderr
    assert outcome.error_code == "E_INTERRUPTED"
    assert outcome.stderr.strip() == "interrupted; the command did not finish"

def _run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=300, check=False)


def test_numpy_imported_before_torch():
    # torch imports numpy in C++ code that clears any exception, KeyboardInterrupt
    # included, so a Ctrl-C there left a broken numpy behind (exit 3 later).
    code = (
        "import sys\n"
        "class Spy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            print('numpy first:', 'numpy' in sys.modules)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Spy())\n"
        "from mbd_cert import cli\n"
        "cli._register_trainer(cli.main)\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "numpy first: True"


def test_ctrl_c_at_shutdown_is_ignored():
    # After the command has printed its result, a Ctrl-C during interpreter shutdown
    # must not end the process with status 130.
    code = (
        "import atexit, os, signal\n"
        "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))\n"
        "from mbd_cert.cli import main\n"
        "main()\n"
    )
    result = _run_python(code, "--version")
    assert result.returncode == 0, result.stderr
    assert "KeyboardInterrupt" not in result.stderr
    assert result.stdout.startswith("mbd-cert, version ")


def test_ctrl_c_while_loading_the_cli_exits_130():
    # A Ctrl-C that arrives while the console script is still importing the CLI.
    code = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'mbd_cert.cli':\n"
        "            raise KeyboardInterrupt\n"
        "        return None\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from mbd_cert._entry import main\n"
        "main()\n"
    )
    result = _run_python(code, "--version")
    assert result.returncode == 130
    assert result.stderr == "interrupted; the command did not start\n"


def test_console_script_entry_runs_the_cli():
    result = _run_python("from mbd_cert._entry import main\nmain()\n", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("mbd-cert, version ")


def _issue_sending_sigterm(tmp_path: Path, issuer_keys, before: str,
                           after: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI's issue with the library call replaced by one that sends SIGTERM.

    ``before`` runs first in the child (signal dispositions a parent could set) and
    ``after`` follows the signal inside the replaced call.
    """
    checkpoint = tmp_path / "ck"
    checkpoint.mkdir()
    code = (
        "import os, signal, time\n"
        f"{before}"
        "import mbd_cert.issue\n"
        "from mbd_cert.errors import InputError\n"
        "def stopped(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        f"{after}"
        "mbd_cert.issue.issue = stopped\n"
        "from mbd_cert.cli import main\n"
        "main()\n"
    )
    return _run_python(code, "issue", "--checkpoint", str(checkpoint), "--modality",
                       "audio", "--epsilon", "1", "--key", str(issuer_keys.private),
                       "--out", str(tmp_path / "out"))


def test_sigterm_in_issue_acts_as_ctrl_c(tmp_path: Path, issuer_keys):
    # CI cancellation and `timeout` send SIGTERM: the same cleanup, message and exit
    # code as Ctrl-C, not the default of dying at once with status 143.
    result = _issue_sending_sigterm(tmp_path, issuer_keys, "", "    time.sleep(60)\n")
    assert result.returncode == 130, result.stderr
    assert result.stderr == (f"interrupted; the output directory {tmp_path / 'out'} was not "
                             "created\n")
    assert not (tmp_path / "out").exists()


def test_sigterm_stops_a_background_job(tmp_path: Path, issuer_keys):
    # A shell without job control starts `mbd-cert ... &` with SIGINT ignored. SIGTERM,
    # the usual way to stop such a job, must still end the command as Ctrl-C would.
    result = _issue_sending_sigterm(
        tmp_path, issuer_keys, "signal.signal(signal.SIGINT, signal.SIG_IGN)\n",
        "    time.sleep(20)\n    os._exit(99)\n")
    assert result.returncode == 130, result.stderr
    assert result.stderr == (f"interrupted; the output directory {tmp_path / 'out'} was not "
                             "created\n")
    assert not (tmp_path / "out").exists()


def _hang_at_shutdown(signal_name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with an exit handler that sends ``signal_name`` to itself, then hangs."""
    code = (
        "import atexit, os, signal, time\n"
        "def stuck():\n"
        f"    os.kill(os.getpid(), signal.{signal_name})\n"
        "    time.sleep(60)\n"
        "atexit.register(stuck)\n"
        "from mbd_cert.cli import main\n"
        "main()\n"
    )
    return _run_python(code, *args)


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_signal_at_shutdown_keeps_exit_status(signal_name: str):
    # After the command has printed its result, a signal ends a hung shutdown at once
    # with the command's own status, not 130 or 143, and not after the hang.
    started = time.monotonic()
    result = _hang_at_shutdown(signal_name, "--version")
    assert time.monotonic() - started < 30
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("mbd-cert, version ")
    failed = _hang_at_shutdown(signal_name, "inspect", "missing-cert.json")
    assert failed.returncode == 2, failed.stderr
    assert "missing-cert.json" in failed.stderr


def test_inherited_ignored_sigterm_stays_ignored(tmp_path: Path, issuer_keys):
    # A parent that starts mbd-cert with SIGTERM ignored keeps it ignored.
    result = _issue_sending_sigterm(
        tmp_path, issuer_keys, "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n",
        "    raise InputError('still running after SIGTERM')\n")
    assert result.returncode == 2, result.stderr
    assert "still running after SIGTERM" in result.stderr
