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

from mbd_cert import FORMAT_VERSION
from mbd_cert.cli import main
from mbd_cert.mechanism import analytic_gaussian_sigma

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


# Some of these vectors cover one case of a requirement that other vectors cite too,
# such as an empty accounting.chain (R-CHAIN-4) or a sealed bundle without its diff
# (R-SEAL-2). The coverage lists above would not notice them missing, so this table
# checks them by name.
NAMED_VECTORS = {
    "invalid/naive-epsilon-understated": "R-ACC-3",
    "invalid/chain-rdp-epsilon-understated": "R-ACC-3",
    "invalid/architecture-version-other": "R-ARCH-8",
    "invalid/level2-objective-not-recomputed": "R-LVL-1",
    "invalid/level2-update-objective-not-recomputed": "R-LVL-1",
    "invalid/chain-listing-empty": "R-CHAIN-4",
    "invalid/sealed-bundle-diff-missing": "R-SEAL-2",
    "valid/honest-audio-eps0.9-sigma-raised": "R-CHAIN-11",
}


@pytest.mark.parametrize(("name", "requirement"), sorted(NAMED_VECTORS.items()))
def test_named_vector_present(name: str, requirement: str):
    expected = json.loads((VECTORS / name / "expected.json").read_text())
    assert expected["requirement"] == requirement


# Rules on an architecture's code, which files alone cannot break: SPEC.md, section
# 11, must name each one that no vector cites.
ARCHITECTURE_CODE_RULES = ("R-ARCH-7", "R-ARCH-9")


@pytest.mark.parametrize("requirement", ARCHITECTURE_CODE_RULES)
def test_code_rule_vector_or_stated(requirement: str):
    cited = {json.loads((case / "expected.json").read_text())["requirement"]
             for case in CASES}
    if requirement in cited:
        return
    spec = (VECTORS.parents[2] / "SPEC.md").read_text()
    section = spec[spec.index("## 11. Test vectors"):spec.index("## 12.")]
    paragraphs = [text for text in section.split("\n\n") if "have no vector" in text]
    assert len(paragraphs) == 1
    assert requirement in paragraphs[0]


def test_first_deletion_vector_states_its_epsilon():
    # R-CHAIN-11: at this setting the analytic sigma converts back above epsilon, so the
    # issuer raised it, and the stated cumulative epsilon is the requested one.
    doc = json.loads((VECTORS / "valid/honest-audio-eps0.9-sigma-raised/cert.json").read_text())
    privacy = doc["privacy"]
    assert doc["accounting"]["sequence_number"] == 1
    assert privacy["epsilon"] == 0.9
    assert doc["accounting"]["cumulative_epsilon"] == privacy["epsilon"]
    analytic = analytic_gaussian_sigma(privacy["epsilon"], privacy["delta"],
                                       privacy["sensitivity"])
    assert privacy["sigma"] > analytic


def test_valid_vectors_cover_every_minor_version():
    """R-VER-3, R-VER-5: valid vectors of each format 1.x, from 1.0 to this release's, verify.

    test_vector runs them. A 1.0 certificate has none of the members that 1.1 added, so
    its passing shows that the later minor version only added optional members.
    """
    versions = {json.loads((case / "cert.json").read_text())["format_version"]
                for case in CASES if case.parent.name == "valid"}
    major, minor = (int(part) for part in FORMAT_VERSION.split("."))
    assert {f"{major}.{m}" for m in range(minor + 1)} <= versions


@pytest.mark.parametrize("case", CASES, ids=[f"{c.parent.name}/{c.name}" for c in CASES])
def test_vector(case: Path, tmp_path: Path):
    """Run one vector; valid ones are certificates that later releases keep verifying (R-VER-5)."""
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
