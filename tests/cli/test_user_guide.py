"""Every shell block of docs/user-guide.md runs, in order, in an empty directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "user-guide.md"
BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def shell_blocks(text: str) -> list[str]:
    return BLOCK.findall(text)


def test_guide_has_blocks():
    blocks = shell_blocks(GUIDE.read_text())
    assert len(blocks) >= 6
    assert any("verify-repo" in block for block in blocks)
    assert any("attest" in block for block in blocks)


def test_guide_commands_run(tmp_path):
    # The guide's `mbd-cert` must be the one installed with this interpreter.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               COLUMNS="120")
    outputs = []
    for block in shell_blocks(GUIDE.read_text()):
        result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"block failed:\n{block}\n{result.stderr}"
        outputs.append((block, result.stdout))

    def output_of(fragment: str) -> str:
        return next(out for block, out in outputs if fragment in block)

    assert "exit code 1" in output_of("--max-epsilon 0.5")
    assert "exit code 2" in output_of("bad-policy.toml")
    summary = "1 of 1 certificates verified at level 1 (exit 0)"
    assert summary in output_of("verify-repo repo --junit")
    assert (tmp_path / "release" / "statement.json").is_file()
    assert (tmp_path / "claims.json").is_file()
    suites = ElementTree.parse(tmp_path / "junit.xml").getroot()
    assert suites.get("failures") == "0"
