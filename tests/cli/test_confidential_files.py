"""Confidential issue outputs: issue names them, verify-repo warns about them in a repository."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from cli_support import HonestRun, IssuerKeys, run_cli, split_safetensors

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def sealed_second_deletion(honest_run: HonestRun, tmp_path_factory: pytest.TempPathFactory):
    """Delete vision after audio with an auditor key: every kind of issue output."""
    base = tmp_path_factory.mktemp("sealed")
    assert run_cli(["keygen", "--kind", "x25519", "--out", base / "auditor"]).exit_code == 0
    out = base / "del2"
    outcome = run_cli(["issue", "--checkpoint", honest_run.out_dir, "--modality", "vision",
                       "--epsilon", "1", "--steps", "2", "--key", honest_run.private_key,
                       "--auditor-key", base / "auditor.pub", "--out", out])
    assert outcome.exit_code == 0, outcome.stderr
    return out, outcome


def test_issue_names_confidential_files(sealed_second_deletion):
    out, outcome = sealed_second_deletion
    lines = outcome.stdout.splitlines()
    assert "publish: cert.json, model.safetensors, chain-00001.json, audit-bundle.sealed" in lines
    confidential = [line for line in lines if line.startswith("confidential, for auditors only: ")]
    assert len(confidential) == 1
    assert "diff.safetensors, probe.safetensors, eval.safetensors" in confidential[0]
    listed = set(re.findall(r"[\w.-]+\.(?:json|safetensors|sealed)", "\n".join(lines[2:])))
    assert listed == {path.name for path in out.iterdir()}


def test_readme_lists_every_issue_output(sealed_second_deletion):
    out, _ = sealed_second_deletion
    row = next(line for line in README.read_text().splitlines()
               if line.startswith("| `mbd-cert issue "))
    for path in out.iterdir():
        name = re.sub(r"\d{5}", "NNNNN", path.name)
        assert f"`{name}`" in row, name
    assert "confidential" in row


def _repo_with(run: HonestRun, root: Path, names: list[str]) -> Path:
    (root / "models").mkdir(parents=True)
    for name in names:
        shutil.copy(run.out_dir / name, root / "models" / name)
    return root


def test_verify_repo_warns_on_plain_bundle(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                           tmp_path: Path):
    """R-REPO-5: bundle files beside a confidential certificate give a warning in every output."""
    root = _repo_with(honest_run, tmp_path / "repo",
                      ["cert.json", "model.safetensors", "diff.safetensors",
                       "probe.safetensors"])
    outcome = run_cli(["verify-repo", root, "--key", issuer_keys.public, "--json"])
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.report is not None
    [result] = outcome.report["results"]
    assert result["verified"] is True
    [warning] = result["warnings"]
    assert "models/diff.safetensors, models/probe.safetensors" in warning
    assert "confidential files of the issuer" in warning
    # Deleting the files does not unpublish them from a repository's history.
    assert "stay in the version history" in warning
    assert f"warning: models/cert.json: {warning}" in outcome.stderr

    junit = root.parent / "junit.xml"
    assert run_cli(["verify-repo", root, "--key", issuer_keys.public, "--junit",
                    junit]).exit_code == 0
    [system_err] = ElementTree.parse(junit).getroot().findall("./testsuite/system-err")
    assert system_err.text == f"warning: {warning}"

    table = run_cli(["verify-repo", root, "--key", issuer_keys.public])
    assert table.exit_code == 0, table.stderr
    assert "verified (warning)" in table.stdout
    assert "confidential files of the issuer" in table.stderr


def test_verify_repo_warns_on_evaluation_set(honest_run: HonestRun,
                                            issuer_keys: IssuerKeys, tmp_path: Path):
    # The certificate does not name eval.safetensors, but issue writes it beside it.
    root = _repo_with(honest_run, tmp_path / "repo",
                      ["cert.json", "model.safetensors", "eval.safetensors"])
    outcome = run_cli(["verify-repo", root, "--key", issuer_keys.public, "--json"])
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.report is not None
    [warning] = outcome.report["results"][0]["warnings"]
    assert warning.startswith("models/eval.safetensors:")


def test_verify_repo_quiet_without_bundle(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                          tmp_path: Path):
    root = _repo_with(honest_run, tmp_path / "repo", ["cert.json", "model.safetensors"])
    outcome = run_cli(["verify-repo", root, "--key", issuer_keys.public, "--json"])
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.report is not None
    assert outcome.report["results"][0]["warnings"] == []
    assert "warning" not in outcome.stderr


def test_verify_repo_warning_keeps_failure_code(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                                tmp_path: Path):
    """R-REPO-5: the confidential-file warning does not change the exit code."""
    root = _repo_with(honest_run, tmp_path / "repo",
                      ["cert.json", "model.safetensors", "diff.safetensors"])
    doc = json.loads((root / "models" / "cert.json").read_text())
    (root / "mbd-cert-policy.toml").write_text(
        f"max_cumulative_epsilon = {doc['privacy']['epsilon'] / 2}\n")
    outcome = run_cli(["verify-repo", root, "--key", issuer_keys.public, "--json"])
    assert outcome.exit_code == 1, outcome.stderr
    assert outcome.report is not None
    [warning] = outcome.report["results"][0]["warnings"]
    assert "models/diff.safetensors:" in warning


def test_verify_repo_warns_on_renamed_bundle_files(honest_run: HonestRun,
                                                   issuer_keys: IssuerKeys, tmp_path: Path):
    # Found by their safetensors format, not their names; other files stay quiet.
    root = _repo_with(honest_run, tmp_path / "repo", ["cert.json", "model.safetensors"])
    models = root / "models"
    shutil.copy(honest_run.out_dir / "diff.safetensors", models / "diff-v1.bak")
    shutil.copy(honest_run.out_dir / "probe.safetensors", models / "samples.safetensors")
    shutil.copy(honest_run.out_dir / "model.safetensors", models / "previous.safetensors")
    (models / "README.md").write_text("release notes\n")
    (models / "truncated.safetensors").write_bytes(b"\x10\x00\x00")
    outcome = run_cli(["verify-repo", root, "--key", issuer_keys.public, "--json"])
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.report is not None
    [warning] = outcome.report["results"][0]["warnings"]
    listed = warning.split(": confidential files")[0]
    assert listed == "models/diff-v1.bak, models/samples.safetensors"


def test_verify_repo_warns_on_bundle_in_subdirectory(honest_run: HonestRun,
                                                     issuer_keys: IssuerKeys, tmp_path: Path):
    # A bundle/ folder beside the certificate is published too; a subdirectory with its
    # own certificate is left to that certificate's scan.
    root = _repo_with(honest_run, tmp_path / "repo", ["cert.json", "model.safetensors"])
    bundle = root / "models" / "bundle"
    bundle.mkdir()
    for name in ("diff.safetensors", "probe.safetensors", "eval.safetensors"):
        shutil.copy(honest_run.out_dir / name, bundle / name)
    hidden = root / "models" / ".cache"
    hidden.mkdir()
    shutil.copy(honest_run.out_dir / "diff.safetensors", hidden / "diff.safetensors")
    nested = root / "models" / "next"
    nested.mkdir()
    for name in ("cert.json", "model.safetensors", "diff.safetensors"):
        shutil.copy(honest_run.out_dir / name, nested / name)
    outcome = run_cli(["verify-repo", root, "--key", issuer_keys.public, "--json"])
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.report is not None
    first, second = (r["warnings"] for r in outcome.report["results"])
    assert [w.split(": confidential files")[0] for w in first] == [
        "models/bundle/diff.safetensors, models/bundle/eval.safetensors, "
        "models/bundle/probe.safetensors"]
    assert [w.split(": confidential files")[0] for w in second] == [
        "models/next/diff.safetensors"]


def test_renamed_file_warning_is_escaped_and_scanned_once(honest_run: HonestRun,
                                                          issuer_keys: IssuerKeys,
                                                          tmp_path: Path, monkeypatch):
    # Two certificates share a directory, and a copy's name carries a line break that
    # would otherwise start a forged line in the JUnit system-err.
    from mbd_cert import _confidential_files

    root = _repo_with(honest_run, tmp_path / "repo", ["cert.json", "model.safetensors"])
    models = root / "models"
    shutil.copy(models / "cert.json", models / "v2.cert.json")
    shutil.copy(models / "model.safetensors", models / "v2.safetensors")
    shutil.copy(honest_run.out_dir / "diff.safetensors", models / "x\nwarning: all good")
    scans = []
    real_scan = _confidential_files.files_by_format

    def counting(directory):
        scans.append(directory)
        return real_scan(directory)

    monkeypatch.setattr(_confidential_files, "files_by_format", counting)
    junit = tmp_path / "junit.xml"
    outcome = run_cli(["verify-repo", root, "--key", issuer_keys.public, "--json",
                       "--junit", junit])
    assert outcome.exit_code == 0, outcome.stderr
    assert scans == [models]
    assert outcome.report is not None
    for result in outcome.report["results"]:
        [warning] = result["warnings"]
        assert warning.startswith("models/x\\nwarning: all good: confidential files")
    for system_err in ElementTree.parse(junit).getroot().findall("./testsuite/system-err"):
        assert system_err.text is not None
        assert "\n" not in system_err.text


def test_verify_repo_fails_on_published_pre_deletion_model(honest_run: HonestRun,
                                                           issuer_keys: IssuerKeys,
                                                           tmp_path: Path):
    """R-REPO-9: the model before the deletion, under any name and folder, fails the run."""
    root = _repo_with(honest_run, tmp_path / "repo", ["cert.json", "model.safetensors"])
    assert run_cli(["verify-repo", root, "--key", issuer_keys.public]).exit_code == 0
    (root / "backup").mkdir()
    shutil.copy(honest_run.checkpoint / "model.safetensors", root / "backup" / "original.bin")
    outcome = run_cli(["verify-repo", root, "--key", issuer_keys.public, "--json"])
    assert outcome.exit_code == 1, outcome.stderr
    assert outcome.report is not None
    [result] = outcome.report["results"]
    [check] = [c for c in result["report"]["checks"] if c["name"] == "pre-deletion-model"]
    assert check["status"] == "fail"
    assert check["code"] == "E_PRE_DELETION_PUBLISHED"
    assert check["detail"].startswith("backup/original.bin: the model before this deletion")


def _pre_deletion_check(root: Path, keys: IssuerKeys) -> dict[str, Any]:
    """Run verify-repo on ``root``, expect exit 1, and return its pre-deletion-model check."""
    outcome = run_cli(["verify-repo", root, "--key", keys.public, "--json"])
    assert outcome.exit_code == 1, outcome.stderr
    assert outcome.report is not None
    [result] = outcome.report["results"]
    [check] = [c for c in result["report"]["checks"] if c["name"] == "pre-deletion-model"]
    assert check["code"] == "E_PRE_DELETION_PUBLISHED"
    return check


def _delete_vision(run: HonestRun, keys: IssuerKeys, out: Path) -> Path:
    """Issue the chain's second deletion (vision) from ``run``'s output into ``out``."""
    issued = run_cli(["issue", "--checkpoint", run.out_dir, "--modality", "vision",
                      "--epsilon", "1", "--steps", "2", "--key", keys.private, "--out", out])
    assert issued.exit_code == 0, issued.stderr
    return out


@pytest.mark.parametrize("hidden", [".backup/model.safetensors", "models/.old/m.bin",
                                    ".keep.safetensors"])
def test_pre_deletion_model_hidden_place(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                         tmp_path: Path, hidden: str):
    """R-REPO-9: a hidden file or folder publishes the model as much as any other."""
    root = _repo_with(honest_run, tmp_path / "repo", ["cert.json", "model.safetensors"])
    (root / hidden).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(honest_run.checkpoint / "model.safetensors", root / hidden)

    check = _pre_deletion_check(root, issuer_keys)

    assert check["detail"].startswith(f"{hidden}: the model before this deletion")


def _assert_unreadable_directory_fails(root: Path, keys: IssuerKeys, junit: Path,
                                       reason: str) -> None:
    """Run verify-repo on ``root`` with .backup unlistable and expect the run-level failure."""
    outcome = run_cli(["verify-repo", root, "--key", keys.public, "--json", "--junit", junit])
    assert outcome.exit_code == 1, outcome.stderr
    assert outcome.report is not None
    assert outcome.report["exit_code"] == 1
    [result] = outcome.report["results"]
    assert result["exit_code"] == 0
    assert outcome.failed_codes == {"unreadable-directory": "E_SCAN_INCOMPLETE"}
    detail = outcome.check_detail("unreadable-directory")
    assert detail.startswith(f"cannot list directory .backup ({reason}): ")
    assert "run verify-repo as a user who can read it, or move it out" in detail
    assert "verification failed: verify-repo: unreadable-directory [E_SCAN_INCOMPLETE]" \
        in outcome.stderr
    suites = {suite.get("name"): suite for suite in ElementTree.parse(junit).getroot()}
    [failure] = suites["verify-repo"].findall("testcase/failure")
    assert failure.get("type") == "E_SCAN_INCOMPLETE"

    table = run_cli(["verify-repo", root, "--key", keys.public])
    assert table.exit_code == 1, table.stderr
    assert "repository check unreadable-directory failed" in table.stdout


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any directory")
def test_unreadable_hidden_directory_fails(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                           tmp_path: Path):
    """R-REPO-9: a hidden directory the scan cannot list, here containing the old model, fails."""
    root = _repo_with(honest_run, tmp_path / "repo", ["cert.json", "model.safetensors"])
    (root / ".backup").mkdir()
    shutil.copy(honest_run.checkpoint / "model.safetensors", root / ".backup" / "old.bin")
    (root / ".backup").chmod(0)
    try:
        _assert_unreadable_directory_fails(root, issuer_keys, tmp_path / "junit.xml",
                                           "Permission denied")
    finally:
        (root / ".backup").chmod(0o755)


def test_unlistable_hidden_directory_fails(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """R-REPO-9: as above with the permission error injected, because root lists anything."""
    root = _repo_with(honest_run, tmp_path / "repo", ["cert.json", "model.safetensors"])
    (root / ".backup").mkdir()
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        if os.fspath(path) == os.fspath(root / ".backup"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    _assert_unreadable_directory_fails(root, issuer_keys, tmp_path / "junit.xml",
                                       "Permission denied")


def test_model_before_earlier_deletion(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                       tmp_path: Path):
    """R-REPO-9: the trained model before the chain's first deletion fails the second."""
    second = _delete_vision(honest_run, issuer_keys, tmp_path / "second")
    root = tmp_path / "repo"
    (root / "models").mkdir(parents=True)
    for name in ["cert.json", "model.safetensors", "chain-00001.json"]:
        shutil.copy(second / name, root / "models" / name)
    assert run_cli(["verify-repo", root, "--key", issuer_keys.public]).exit_code == 0
    shutil.copy(honest_run.checkpoint / "model.safetensors", root / "original.safetensors")

    check = _pre_deletion_check(root, issuer_keys)

    first_id = honest_run.load_cert()["certificate_id"]
    assert check["detail"].startswith(
        f"original.safetensors: the model before deletion 1 of this chain (certificate "
        f"{first_id})")
    assert "deleted audio encoder" in check["detail"]


def test_pre_deletion_scan_hashes_once(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """R-REPO-9: a file that several certificates' chains point at is hashed in full once.

    Each certificate of a chain checks the pre-deletion models of all its links. Without
    a cache, a model of one architecture would be read again for every certificate
    whose chain contains that link: gigabytes per certificate.
    """
    from mbd_cert import _published_models

    second = _delete_vision(honest_run, issuer_keys, tmp_path / "second")
    root = tmp_path / "repo"
    for version, source, names in [
            ("v1", honest_run.out_dir, ["cert.json", "model.safetensors"]),
            ("v2", second, ["cert.json", "model.safetensors", "chain-00001.json"])]:
        (root / version).mkdir(parents=True)
        for name in names:
            shutil.copy(source / name, root / version / name)
    shutil.copy(honest_run.checkpoint / "model.safetensors", root / "original.safetensors")
    hashed: list[Path] = []
    file_digest = _published_models._file_digest

    def counting(path: Path) -> str | None:
        hashed.append(path)
        return file_digest(path)

    monkeypatch.setattr(_published_models, "_file_digest", counting)
    outcome = run_cli(["verify-repo", root, "--key", issuer_keys.public])

    assert outcome.exit_code == 1, outcome.stderr
    assert root / "original.safetensors" in hashed
    assert len(hashed) == len(set(hashed))


def test_lfs_pointer_to_pre_deletion_model(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                           tmp_path: Path):
    """R-REPO-9: a checkout without LFS contains a pointer to the committed model."""
    import hashlib

    root = _repo_with(honest_run, tmp_path / "repo", ["cert.json", "model.safetensors"])
    data = (honest_run.checkpoint / "model.safetensors").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    pointer = ("version https://git-lfs.github.com/spec/v1\n"
               f"oid sha256:{digest}\nsize {len(data)}\n")
    (root / "weights.bin").write_text(pointer)

    check = _pre_deletion_check(root, issuer_keys)

    assert check["detail"].startswith("weights.bin: the model before this deletion")
    (root / "weights.bin").write_text(pointer.replace(digest, "0" * 64))
    assert run_cli(["verify-repo", root, "--key", issuer_keys.public]).exit_code == 0


def test_git_store_not_scanned(honest_run: HonestRun, issuer_keys: IssuerKeys,
                               tmp_path: Path):
    # git's own store (an LFS object, say) is history, not a published file.
    root = _repo_with(honest_run, tmp_path / "repo", ["cert.json", "model.safetensors"])
    store = root / ".git" / "lfs" / "objects" / "ab"
    store.mkdir(parents=True)
    shutil.copy(honest_run.checkpoint / "model.safetensors", store / "abcdef")
    assert run_cli(["verify-repo", root, "--key", issuer_keys.public]).exit_code == 0


def test_verify_repo_ignores_same_header_other_weights(honest_run: HonestRun,
                                                       issuer_keys: IssuerKeys,
                                                       tmp_path: Path):
    # Another model of the same layout has the same header but other bytes, in the
    # audio encoder too: R-REPO-12 would find that encoder's tensors unchanged.
    root = _repo_with(honest_run, tmp_path / "repo", ["cert.json", "model.safetensors"])
    data = bytearray((honest_run.checkpoint / "model.safetensors").read_bytes())
    header, section = split_safetensors(bytes(data))
    start = len(data) - len(section)
    for name, entry in header.items():
        if name.startswith("encoders.audio.") or name == "fusion.0.bias":
            data[start + entry["data_offsets"][0]] ^= 0x01
    (root / "other.safetensors").write_bytes(bytes(data))
    assert run_cli(["verify-repo", root, "--key", issuer_keys.public]).exit_code == 0
