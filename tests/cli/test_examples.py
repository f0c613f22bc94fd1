"""The documented end-to-end scripts in examples/ run as a user runs them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("MBD_CERT_DATA", REPO.parent / "shared" / "data"))


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        ["bash", str(REPO / "examples" / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_quickstart_trains_issues_and_verifies(tmp_path):
    if shutil.which("mbd-cert", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("the mbd-cert console script is not installed (pip install -e .)")
    result = _run("quickstart.sh", str(tmp_path / "run"), cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "VERIFIED" in result.stdout
    assert "Traceback" not in result.stderr
    for name in ("cert.json", "model.safetensors", "diff.safetensors", "probe.safetensors"):
        assert (tmp_path / "run" / "deleted" / name).is_file()
    _assert_clip_binds(tmp_path / "run" / "deleted" / "cert.json")


def _assert_clip_binds(certificate: Path) -> None:
    """At the default settings the clip scales the update down (see ``issue --steps``).

    The default of few update steps rests on this: once the clip binds, more steps
    only lengthen a displacement that the clip then shortens again.
    """
    update = json.loads(certificate.read_text())["update"]
    assert update["norm_before_clip"] > update["clip_norm"], update


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("corpus", ["mosei-subset", "ict-mmmo"])
def test_real_data_example(corpus, tmp_path):
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA} (set MBD_CERT_DATA)")
    result = _run("real_data.sh", corpus, str(DATA), str(tmp_path / corpus), cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "VERIFIED" in result.stdout
    assert "| after, deleted_audio |" in result.stdout
    _assert_clip_binds(tmp_path / corpus / "deleted" / "cert.json")


def test_no_recipe_installs_mbd_cert_by_name() -> None:
    # mbd-cert is not on the Python Package Index: a recipe or hint that installs it
    # by name would fetch whatever package someone registers under that name.
    by_name = re.compile(
        r"""pip install[^\n"']*["']?mbd-cert(\[[a-z,]+\])?(?!\s*@)(?=[=<>~"'\s]|$)""",
        re.MULTILINE)
    texts = {path: path.read_text(encoding="utf-8")
             for path in [*sorted((REPO / "examples" / "ci").iterdir()),
                          *sorted((REPO / "mbd_cert").glob("*.py")),
                          *sorted((REPO / "trainer").rglob("*.py")), REPO / "README.md"]
             if path.is_file()}
    offenders = [str(path.relative_to(REPO)) for path, text in texts.items()
                 if by_name.search(text)]
    assert offenders == []
    workflow = texts[REPO / "examples" / "ci" / "github-workflow.yml"]
    assert 'mbd-cert @ git+${MBD_CERT_GIT}@${MBD_CERT_COMMIT}' in workflow
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load(texts[REPO / "examples" / "ci" / ".pre-commit-config.example.yaml"])
    for repo in config["repos"]:
        for hook in repo["hooks"]:
            for requirement in hook.get("additional_dependencies", []):
                assert re.fullmatch(r"mbd-cert @ git\+\S+@[0-9a-f]{40}", requirement) or \
                    not requirement.startswith("mbd-cert"), requirement
