"""Run every vector in schema/vectors/v1 through `mbd-cert verify` (SPEC.md, section 11).

Each vector's expected.json gives the exit code, the error code and the SPEC
requirement; the error code must appear either as the run's error (exit 2) or as the
code of a failed check (exit 1).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mbd_cert.cli import main

VECTORS = Path(__file__).resolve().parents[2] / "schema" / "vectors" / "v1"
CASES = sorted(p for kind in ("valid", "invalid") for p in (VECTORS / kind).iterdir() if p.is_dir())


def _codes(report: dict) -> list[str]:
    if "error" in report:
        return [report["error"]["code"]]
    return [check["code"] for check in report["checks"] if check["status"] == "fail"]


def _vector_path(arg: str, work: Path) -> str:
    """Resolve ``.`` (the vector directory) and ``./NAME`` (a file in it) in verify arguments."""
    if arg == ".":
        return str(work)
    if arg.startswith("./"):
        return str(work / arg[2:])
    return arg


def test_vector_set_covers_every_level1_check():
    requirements = {
        json.loads((case / "expected.json").read_text())["requirement"] for case in CASES
    }
    for needed in (
        "R-FMT-1",
        "R-FMT-2",
        "R-VER-2",
        "R-SIG-1",
        "R-SIG-2",
        "R-DIG-3",
        "R-DEL-1",
        "R-PRIV-2",
        "R-PRIV-3",
        "R-PRIV-4",
        "R-ACC-2",
        "R-POL-1",
        "R-BUN-1",
        "R-BUN-2",
    ):
        assert needed in requirements


def test_vector_set_covers_chain_and_sealing():
    requirements = {
        json.loads((case / "expected.json").read_text())["requirement"] for case in CASES
    }
    for needed in (
        "R-CHAIN-1",
        "R-CHAIN-2",
        "R-CHAIN-3",
        "R-CHAIN-4",
        "R-CHAIN-6",
        "R-ACC-1",
        "R-LIM-4",
        "R-SEAL-1",
        "R-SEAL-2",
        "R-SEAL-3",
    ):
        assert needed in requirements


@pytest.mark.parametrize("case", CASES, ids=[f"{c.parent.name}/{c.name}" for c in CASES])
def test_vector(case: Path, tmp_path: Path):
    # Work on a copy so that verify cannot change the committed files.
    work = tmp_path / case.name
    shutil.copytree(case, work)
    expected = json.loads((work / "expected.json").read_text())
    args = [_vector_path(arg, work) for arg in expected["args"]]
    result = CliRunner().invoke(
        main,
        [
            "verify",
            str(work / "cert.json"),
            str(work / "model.safetensors"),
            "--key",
            str(work / "issuer.pub"),
            "--json",
            *args,
        ],
    )
    assert "Traceback" not in result.output
    assert result.exit_code == expected["exit_code"], result.output
    report = json.loads(result.stdout)
    if expected["error_code"] is None:
        assert report["verified"] is True
    else:
        assert expected["error_code"] in _codes(report)
    for name in ("cert.json", "model.safetensors"):
        assert (work / name).read_bytes() == (case / name).read_bytes()
    # verify writes nothing beside the certificate: an opened sealed bundle goes to a
    # private temporary directory (SPEC.md, R-SEAL-2).
    assert sorted(p.name for p in work.iterdir()) == sorted(p.name for p in case.iterdir())
