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


def _run_blocked(arguments: list[str]) -> subprocess.CompletedProcess[str]:
    code = ("import sys\n"
            f"for name in {BLOCKED!r}:\n"
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
