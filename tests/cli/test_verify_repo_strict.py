"""verify-repo: models without a certificate, and strict mode (R-REPO-10)."""

from __future__ import annotations

import shutil
from pathlib import Path
from xml.etree import ElementTree

from cli_support import HonestRun, IssuerKeys, Outcome, publish_sealed, run_cli
from safetensors.numpy import load_file, save_file


def _repo(run: HonestRun, root: Path, names: list[str]) -> Path:
    """Copy the certificate, its model and ``names`` from the issue output into models/."""
    (root / "models").mkdir(parents=True)
    for name in ["cert.json", "model.safetensors", *names]:
        shutil.copy(run.out_dir / name, root / "models" / name)
    return root


def _verify_repo(root: Path, keys: IssuerKeys, *extra: object) -> Outcome:
    return run_cli(["verify-repo", root, "--key", keys.public, "--json", *extra])


def _junit_failures(path: Path) -> dict[str, list[str]]:
    """Suite name -> the failure types of its test cases."""
    suites = ElementTree.parse(path).getroot().findall("testsuite")
    return {suite.get("name", ""): [failure.get("type", "")
                                    for failure in suite.findall("testcase/failure")]
            for suite in suites}


def test_uncertified_model_is_a_run_warning(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                            tmp_path: Path) -> None:
    root = _repo(honest_run, tmp_path / "repo", [])
    shutil.copy(honest_run.model, root / "models" / "other.safetensors")
    outcome = _verify_repo(root, issuer_keys)
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.report is not None
    assert outcome.report["report_version"] == "1.4"
    [warning] = outcome.report["warnings"]
    assert warning.startswith("models/other.safetensors: no certificate pairs with")
    assert outcome.report["checks"] == []
    assert f"warning: {warning}" in outcome.stderr


def test_accounted_files_not_reported(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                      tmp_path: Path) -> None:
    """Models, named bundle files, renamed confidential files and links are skipped."""
    root = _repo(honest_run, tmp_path / "repo", ["diff.safetensors", "probe.safetensors"])
    shutil.copy(honest_run.diff, root / "models" / "diff-old.safetensors")
    (root / "models" / "link.safetensors").symlink_to(honest_run.model)
    outcome = _verify_repo(root, issuer_keys)
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.report is not None
    assert outcome.report["warnings"] == []


def test_linked_to_itself_skipped(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                  tmp_path: Path) -> None:
    """A link loop where a certificate's evaluation set or model would be is no crash."""
    root = _repo(honest_run, tmp_path / "repo", [])
    (root / "models" / "eval.safetensors").symlink_to("eval.safetensors")
    shutil.copy(root / "models" / "cert.json", root / "models" / "loop.cert.json")
    (root / "models" / "loop.safetensors").symlink_to("loop.safetensors")
    outcome = _verify_repo(root, issuer_keys, "--strict")
    assert outcome.exit_code == 2, outcome.stderr
    assert outcome.report is not None
    errors = {result["certificate"]: result["error"] for result in outcome.report["results"]
              if result.get("error")}
    assert list(errors) == ["models/loop.cert.json"]
    assert errors["models/loop.cert.json"]["code"] == "E_UNSAFE_PATH"
    assert outcome.report["checks"] == []


def test_strict_fails_uncertified_model(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                        tmp_path: Path) -> None:
    root = _repo(honest_run, tmp_path / "repo", [])
    shutil.copy(honest_run.model, root / "models" / "other.safetensors")
    junit = tmp_path / "junit.xml"
    outcome = _verify_repo(root, issuer_keys, "--strict", "--junit", junit)
    assert outcome.exit_code == 1, outcome.stderr
    assert outcome.report is not None
    assert outcome.report["exit_code"] == 1
    assert outcome.report["warnings"] == []
    [check] = outcome.report["checks"]
    assert check["name"] == "uncertified-model"
    assert check["status"] == "fail"
    assert check["code"] == "E_POLICY_VIOLATION"
    assert check["requirement"] == "R-REPO-10"
    assert "models/other.safetensors" in check["detail"]
    [result] = outcome.report["results"]
    assert result["verified"] is True
    assert _junit_failures(junit)["verify-repo"] == ["E_POLICY_VIOLATION"]
    assert "verify-repo" in outcome.stderr


def test_strict_fails_model_posing_as_diff(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                          tmp_path: Path) -> None:
    """R-REPO-10: diff metadata outside every certificate's directory accounts for nothing.

    A model saved with the diff's ``format`` metadata in a directory without a
    certificate gets no confidential-file warning, so only this check reports it.
    """
    root = _repo(honest_run, tmp_path / "repo", [])
    (root / "backup").mkdir()
    tensors = load_file(honest_run.model)
    save_file(tensors, root / "backup" / "weights.safetensors",
              metadata={"format": "mbd-cert-diff/1"})
    outcome = _verify_repo(root, issuer_keys, "--strict")
    assert outcome.exit_code == 1, outcome.stderr
    assert outcome.report is not None
    [check] = outcome.report["checks"]
    assert check["name"] == "uncertified-model"
    assert "backup/weights.safetensors" in check["detail"]


def test_strict_policy_fails_warnings(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                      tmp_path: Path) -> None:
    """A confidential-file warning (R-REPO-5) becomes a failed strict-warning check."""
    root = _repo(honest_run, tmp_path / "repo", ["diff.safetensors"])
    (root / "mbd-cert-policy.toml").write_text("strict = true\n")
    junit = tmp_path / "junit.xml"
    outcome = _verify_repo(root, issuer_keys, "--junit", junit)
    assert outcome.exit_code == 1, outcome.stderr
    assert outcome.report is not None
    [result] = outcome.report["results"]
    assert result["verified"] is False
    assert result["warnings"] == []
    failed = [check for check in result["report"]["checks"] if check["status"] == "fail"]
    assert [check["name"] for check in failed] == ["strict-warning"]
    assert failed[0]["code"] == "E_POLICY_VIOLATION"
    assert failed[0]["requirement"] == "R-REPO-10"
    assert "confidential files of the issuer" in failed[0]["detail"]
    assert _junit_failures(junit) == {"models/cert.json": ["E_POLICY_VIOLATION"]}


def test_strict_without_warnings_passes(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                        tmp_path: Path) -> None:
    root = _repo(honest_run, tmp_path / "repo", [])
    outcome = _verify_repo(root, issuer_keys, "--strict")
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.report is not None
    assert outcome.report["checks"] == []


def test_strict_table_names_repository_failure(honest_run: HonestRun,
                                               issuer_keys: IssuerKeys,
                                               tmp_path: Path) -> None:
    """The summary line names the failed repository check beside exit 1 (R-REPO-10)."""
    root = _repo(honest_run, tmp_path / "repo", [])
    shutil.copy(honest_run.model, root / "models" / "other.safetensors")
    outcome = run_cli(["verify-repo", root, "--key", issuer_keys.public, "--strict"])
    assert outcome.exit_code == 1, outcome.stderr
    lines = outcome.stdout.rstrip().splitlines()
    assert lines[-1] == ("1 of 1 certificates verified at level 1, no policy file found "
                         "(.mbd-cert.toml or mbd-cert-policy.toml), repository check "
                         "uncertified-model failed (exit 1)")
    row = next(line for line in lines if "the repository" in line)
    assert "FAILED" in row
    assert "uncertified-model" in outcome.stdout


def _save_uncertified(run: HonestRun, path: Path) -> None:
    """Save the released tensors with other metadata: a model that no certificate pairs with.

    It contains no deleted encoder, so only R-REPO-10 reports it. A re-saved
    pre-deletion model fails R-REPO-12 instead.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(load_file(run.model), path, metadata={"note": "re-saved"})


def test_strict_fails_model_in_hidden_directory(honest_run: HonestRun,
                                                issuer_keys: IssuerKeys,
                                                tmp_path: Path) -> None:
    """R-REPO-10: a model under a hidden directory is published all the same."""
    root = _repo(honest_run, tmp_path / "repo", [])
    _save_uncertified(honest_run, root / ".backup" / "weights.safetensors")
    shutil.copy(honest_run.model, root / "models" / ".hidden.safetensors")
    outcome = _verify_repo(root, issuer_keys, "--strict")
    assert outcome.exit_code == 1, outcome.stderr
    assert outcome.report is not None
    [check] = outcome.report["checks"]
    assert check["name"] == "uncertified-model"
    assert check["value"] == 2
    assert ".backup/weights.safetensors" in check["detail"]
    assert "models/.hidden.safetensors" in check["detail"]


def test_strict_fails_model_under_other_name(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                            tmp_path: Path) -> None:
    """R-REPO-10: a safetensors file is a model whatever its suffix."""
    root = _repo(honest_run, tmp_path / "repo", [])
    names = ["models/weights.bin", "models/weights.SAFETENSORS",
             "models/weights.safetensors\u200b"]
    for name in names:
        _save_uncertified(honest_run, root / name)
    outcome = _verify_repo(root, issuer_keys, "--strict")
    assert outcome.exit_code == 1, outcome.stderr
    assert outcome.report is not None
    [check] = outcome.report["checks"]
    assert check["value"] == len(names)
    for name in names:
        assert name in check["detail"]


def test_strict_passes_published_release(sealed_run: tuple[Path, Path],
                                         issuer_keys: IssuerKeys, tmp_path: Path) -> None:
    """The content test takes no certificate, sealed bundle, key or policy for a model."""
    out, _ = sealed_run
    root = tmp_path / "repo"
    (root / "models").mkdir(parents=True)
    publish_sealed(out, root / "models")
    shutil.copy(issuer_keys.public, root / "issuer.pub")
    (root / ".mbd-cert.toml").write_text('strict = true\ntrusted_keys = ["issuer.pub"]\n')
    outcome = run_cli(["verify-repo", root, "--json"])
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.report is not None
    assert outcome.report["checks"] == []


def test_strict_reports_pre_deletion_model_once(honest_run: HonestRun,
                                                issuer_keys: IssuerKeys,
                                                tmp_path: Path) -> None:
    """R-REPO-10: a file R-REPO-9 fails is not also an uncertified model."""
    root = _repo(honest_run, tmp_path / "repo", [])
    (root / "checkpoints").mkdir()
    shutil.copy(honest_run.checkpoint / "model.safetensors",
                root / "checkpoints" / "model.safetensors")
    outcome = _verify_repo(root, issuer_keys, "--strict")
    assert outcome.exit_code == 1, outcome.stderr
    assert outcome.report is not None
    assert outcome.report["checks"] == []
    [result] = outcome.report["results"]
    failed = [c["name"] for c in result["report"]["checks"] if c["status"] == "fail"]
    assert failed == ["pre-deletion-model"]
