"""The pre-commit hook's ``files`` pattern matches every file that verify-repo reads.

pre-commit runs the hook only when a staged path matches ``files`` (a Python regular
expression searched in the path relative to the repository root). A file that can change
the verify-repo verdict but is not matched lets a commit break the repository's
certificates unnoticed.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from cli_support import HonestRun, IssuerKeys, publish_sealed, run_cli

from mbd_cert._paths import INPUT_SUFFIXES

CI_DIR = Path(__file__).resolve().parents[2] / "examples" / "ci"

MATCHED = [
    "cert.json",
    "models/a/cert.json",
    "models/b/v2.cert.json",
    "models/a/chain-00001.json",
    "models/a/chain-00012.json",
    "models/a/model.safetensors",
    "models/b/v2.safetensors",
    "models/a/diff.safetensors",
    "models/a/probe.safetensors",
    "models/a/audit-bundle.sealed",
    "keys/issuer.pub",
    "keys/issuer.pem",
    "trust/release-2024.pem",
    ".mbd-cert.toml",
    "mbd-cert-policy.toml",
]

NOT_MATCHED = [
    "README.md",
    "src/train.py",
    "keys/issuer.key",
    "models/a/notes.txt",
    "models/a/cert.json.orig",
    "models/a/model.safetensors.bak",
    "pyproject.toml",
    "other-policy.toml.example",
    "docs/keys.pub.md",
]


def _patterns() -> dict[str, str]:
    yaml = pytest.importorskip("yaml")
    hooks = yaml.safe_load((CI_DIR / "pre-commit-hooks.yaml").read_text())
    config = yaml.safe_load((CI_DIR / ".pre-commit-config.example.yaml").read_text())
    return {"pre-commit-hooks.yaml": hooks[0]["files"],
            ".pre-commit-config.example.yaml": config["repos"][0]["hooks"][0]["files"]}


@pytest.mark.parametrize("source", ["pre-commit-hooks.yaml", ".pre-commit-config.example.yaml"])
@pytest.mark.parametrize("path", MATCHED)
def test_hook_matches_input(source: str, path: str) -> None:
    assert re.search(_patterns()[source], path), path


@pytest.mark.parametrize("source", ["pre-commit-hooks.yaml", ".pre-commit-config.example.yaml"])
@pytest.mark.parametrize("path", NOT_MATCHED)
def test_hook_skips_unrelated_file(source: str, path: str) -> None:
    assert not re.search(_patterns()[source], path), path


@pytest.mark.parametrize("source", ["pre-commit-hooks.yaml", ".pre-commit-config.example.yaml"])
def test_hook_runs_on_every_commit(source: str) -> None:
    """A commit that only deletes a chain link or a certificate must still run the hook.

    pre-commit hands ``files`` the added, copied, modified and renamed paths only
    (``git diff --diff-filter=ACMRTUXB``), so no pattern matches a deletion.
    """
    yaml = pytest.importorskip("yaml")
    text = (CI_DIR / source).read_text()
    document = yaml.safe_load(text)
    hook = document[0] if source == "pre-commit-hooks.yaml" else \
        document["repos"][0]["hooks"][0]
    assert hook.get("always_run") is True


def test_hook_patterns_agree() -> None:
    patterns = _patterns()
    assert patterns["pre-commit-hooks.yaml"] == patterns[".pre-commit-config.example.yaml"]


@pytest.mark.parametrize("suffix", sorted(INPUT_SUFFIXES))
def test_hook_matches_every_input_suffix(suffix: str) -> None:
    # The suffixes of the files a verifier reads from the directories it is given.
    assert re.search(_patterns()["pre-commit-hooks.yaml"], f"models/a/file{suffix}")


def _inside(frame: FrameType | None, function: str) -> bool:
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def test_hook_matches_files_verify_repo_opens(sealed_run: tuple[Path, Path],
                                              honest_run: HonestRun,
                                              issuer_keys: IssuerKeys,
                                              tmp_path: Path) -> None:
    # A level-2 repository with a chain, a sealed bundle, a plain bundle, a .pem key
    # listed in the policy and unrelated files: every file the run opens must match.
    sealed_out, auditor_key = sealed_run
    second = tmp_path / "second"
    issued = run_cli(["issue", "--checkpoint", sealed_out, "--modality", "vision",
                      "--epsilon", "1", "--steps", "2", "--proxy-sample", "8",
                      "--key", honest_run.private_key, "--out", second,
                      "--auditor-key", auditor_key.with_suffix(".pub")])
    assert issued.exit_code == 0, issued.stderr
    root = tmp_path / "repo"
    (root / "sealed").mkdir(parents=True)
    publish_sealed(second, root / "sealed")
    shutil.copy(second / "chain-00001.json", root / "sealed" / "chain-00001.json")
    (root / "plain").mkdir()
    for name in ("cert.json", "model.safetensors", "diff.safetensors", "probe.safetensors"):
        shutil.copy(honest_run.out_dir / name, root / "plain" / name)
    (root / "keys").mkdir()
    shutil.copy(issuer_keys.public, root / "keys" / "issuer.pem")
    (root / "mbd-cert-policy.toml").write_text(
        'required_level = 2\nallow_inconclusive = true\ntrusted_keys = ["keys/issuer.pem"]\n')
    (root / "README.md").write_text("models\n")
    (root / "sealed" / "notes.txt").write_text("release notes\n")

    opened: set[Path] = set()
    active = True

    def record(event: str, args: tuple[Any, ...]) -> None:
        # The confidential-file scan reads the header of every file beside a
        # certificate, for a warning that never changes the exit code. The
        # pre-deletion index (R-REPO-9) and the search for deleted encoders (R-REPO-12)
        # read every file under any name, so no file pattern can cover them. A CI run
        # over the whole repository does.
        if not active or event != "open" or not isinstance(args[0], (str, Path)):
            return
        if _inside(sys._getframe(1), "header_format") or \
                _inside(sys._getframe(1), "open_regular"):
            return
        path = Path(args[0]).resolve()
        if path.is_relative_to(root):
            opened.add(path)

    sys.addaudithook(record)
    try:
        outcome = run_cli(["verify-repo", root, "--json", "--auditor-private-key", auditor_key])
    finally:
        active = False
    # plain/ is a first deletion of audio from the model that sealed/'s chain started
    # from, so its model still contains the vision encoder that sealed/'s second
    # deletion removed (R-REPO-12). Every other check passes.
    assert outcome.exit_code == 1, outcome.stdout
    assert outcome.report is not None
    failed = {(result["certificate"], check["name"])
              for result in outcome.report["results"]
              for check in result["report"]["checks"] if check["status"] == "fail"}
    assert failed == {("sealed/cert.json", "deleted-encoder")}
    relative = sorted(path.relative_to(root).as_posix() for path in opened)
    # The audit hook saw the reads this test is about.
    for expected in ("sealed/chain-00001.json", "sealed/audit-bundle.sealed",
                     "keys/issuer.pem", "plain/diff.safetensors", "mbd-cert-policy.toml"):
        assert expected in relative, relative
    pattern = _patterns()["pre-commit-hooks.yaml"]
    unmatched = [path for path in relative if not re.search(pattern, path)]
    assert unmatched == []
