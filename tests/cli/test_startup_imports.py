"""Modules a command does not import, because loading them would slow its start-up.

Each blocked module raises ImportError if the command imports it, so a new import
fails the test instead of slowing every run by the module's load time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cli_support import TINY_ISSUE_OPTIONS, IssuerKeys

# jsonschema with its format checkers takes about 75 ms to import, scipy.integrate
# with scipy.optimize about 150 ms (python -X importtime).
BLOCKED = ("jsonschema", "scipy.integrate")
# The first torch.func.grad or vmap call imports torch._dynamo: about 1 s on 2 cores,
# half of a command-line issue on the bundled checkpoint. Only plugins whose
# gradients take the vmap path may pay it.
BLOCKED_FOR_TORCH = ("torch._dynamo",)


def _run_blocked(arguments: list[str],
                 blocked: tuple[str, ...] = BLOCKED) -> subprocess.CompletedProcess[str]:
    code = ("import sys\n"
            f"for name in {blocked!r}:\n"
            "    sys.modules[name] = None\n"
            "from mbd_cert.cli import main\n"
            "main(sys.argv[1:])\n")
    return subprocess.run([sys.executable, "-c", code, *map(str, arguments)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))


def test_first_deletion_imports_neither(tiny_checkpoint: Path, issuer_keys: IssuerKeys,
                                        tmp_path: Path):
    out = tmp_path / "out"
    result = _run_blocked(["issue", "--checkpoint", tiny_checkpoint, *TINY_ISSUE_OPTIONS,
                           "--key", issuer_keys.private, "--out", out])
    assert result.returncode == 0, result.stderr
    assert (out / "cert.json").is_file()


def test_issue_and_level_2_skip_torch_dynamo(tiny_checkpoint: Path, issuer_keys: IssuerKeys,
                                              tmp_path: Path):
    # The tiny checkpoint masks too few entries for the normality test: inconclusive.
    out = tmp_path / "out"
    result = _run_blocked(["issue", "--checkpoint", tiny_checkpoint, *TINY_ISSUE_OPTIONS,
                           "--key", issuer_keys.private, "--out", out], BLOCKED_FOR_TORCH)
    assert result.returncode == 0, result.stderr
    result = _run_blocked(["verify", out / "cert.json", out / "model.safetensors", "--key",
                           issuer_keys.public, "--level", "2", "--bundle", out,
                           "--allow-inconclusive"],
                          BLOCKED_FOR_TORCH)
    assert result.returncode == 0, result.stdout + result.stderr
