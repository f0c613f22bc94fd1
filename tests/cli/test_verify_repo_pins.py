"""verify-repo: models pinned by the policy's ``models`` table (R-REPO-11, R-POLF-1).

Each swap below replaces the pinned release with a genuine one of the same issuer,
on which every other check passes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from xml.etree import ElementTree

import pytest
from cli_support import HonestRun, IssuerKeys, Outcome, run_cli

PINNED = "models/sentiment/model.safetensors"
PIN = f"""
[models."{PINNED}"]
deleted_modalities = ["audio", "vision"]
min_sequence_number = 2
"""


@pytest.fixture(scope="module")
def releases(honest_run: HonestRun, issuer_keys: IssuerKeys,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Issue outputs of one issuer: the first deletion (audio) and two branches after it.

    ``pinned`` deletes vision after audio. ``branch`` deletes text after audio instead,
    so its model has the same sequence number and still contains the vision encoder.
    """
    base = tmp_path_factory.mktemp("releases")
    outputs = {"first": honest_run.out_dir}
    for name, modality in [("pinned", "vision"), ("branch", "text")]:
        out = base / name
        issued = run_cli(["issue", "--checkpoint", honest_run.out_dir, "--modality", modality,
                          "--epsilon", "1", "--steps", "2", "--key", issuer_keys.private,
                          "--out", out])
        assert issued.exit_code == 0, issued.stderr
        outputs[name] = out
    return outputs


def _publish(release: Path, directory: Path) -> None:
    """Put a release's public files in ``directory``, replacing what was there."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for path in release.iterdir():
        if path.name in ("cert.json", "model.safetensors") or path.name.startswith("chain-"):
            shutil.copy(path, directory / path.name)


def _trusted_policy(base: Path, keys: IssuerKeys, table: str = PIN) -> Path:
    """Write a policy outside the repository, with the issuer key beside it."""
    trusted = base / "trusted"
    trusted.mkdir()
    shutil.copy(keys.public, trusted / "issuer.pub")
    policy = trusted / "policy.toml"
    policy.write_text('trusted_keys = ["issuer.pub"]\n' + table)
    return policy


def _repository(base: Path, releases: dict[str, Path]) -> Path:
    """Return the honest repository, which publishes the pinned release."""
    root = base / "repo"
    _publish(releases["pinned"], root / "models" / "sentiment")
    return root


def _verify_repo(root: Path, policy: Path, *extra: object) -> Outcome:
    return run_cli(["verify-repo", root, "--policy", policy, "--json", *extra])


def _pin_checks(outcome: Outcome, certificate: str) -> list[dict[str, object]]:
    assert outcome.report is not None
    [result] = [r for r in outcome.report["results"] if r["certificate"] == certificate]
    return [c for c in result["report"]["checks"] if c["name"] == "pinned-model"]


def test_honest_repository_passes(releases: dict[str, Path], issuer_keys: IssuerKeys,
                                  tmp_path: Path) -> None:
    root = _repository(tmp_path, releases)
    outcome = _verify_repo(root, _trusted_policy(tmp_path, issuer_keys))
    assert outcome.exit_code == 0, outcome.stderr
    [check] = _pin_checks(outcome, "models/sentiment/cert.json")
    assert check["status"] == "pass"
    assert check["requirement"] == "R-REPO-11"
    assert check["detail"].startswith(f"{PINNED}: its chain deleted ['audio', 'vision']")
    assert outcome.report is not None
    assert outcome.report["checks"] == []


def test_rollback_to_older_release_fails(releases: dict[str, Path], issuer_keys: IssuerKeys,
                                         tmp_path: Path) -> None:
    root = _repository(tmp_path, releases)
    _publish(releases["first"], root / "models" / "sentiment")
    junit = tmp_path / "junit.xml"
    outcome = _verify_repo(root, _trusted_policy(tmp_path, issuer_keys), "--junit", junit)
    assert outcome.exit_code == 1, outcome.stderr
    [check] = _pin_checks(outcome, "models/sentiment/cert.json")
    assert check["status"] == "fail"
    assert check["code"] == "E_POLICY_VIOLATION"
    assert "has not deleted ['vision']" in check["detail"]
    assert ("accounting.sequence_number is 1, below the policy's min_sequence_number 2"
            in check["detail"])
    suites = {suite.get("name"): suite for suite in ElementTree.parse(junit).getroot()}
    failures = suites["models/sentiment/cert.json"].findall("testcase/failure")
    assert [failure.get("type") for failure in failures] == ["E_POLICY_VIOLATION"]
    assert "pinned-model" in outcome.stderr


def test_release_from_other_branch_fails(releases: dict[str, Path], issuer_keys: IssuerKeys,
                                         tmp_path: Path) -> None:
    """Same sequence number, so only the pinned modalities tell the branches apart."""
    root = _repository(tmp_path, releases)
    _publish(releases["branch"], root / "models" / "sentiment")
    outcome = _verify_repo(root, _trusted_policy(tmp_path, issuer_keys))
    assert outcome.exit_code == 1, outcome.stderr
    [check] = _pin_checks(outcome, "models/sentiment/cert.json")
    assert check["status"] == "fail"
    assert check["code"] == "E_POLICY_VIOLATION"
    assert check["detail"].startswith(
        f"{PINNED}: its chain has not deleted ['vision']: it deleted ['audio', 'text']")
    assert "sequence_number" not in check["detail"]


def test_strict_mode_does_not_hide_swap(releases: dict[str, Path], issuer_keys: IssuerKeys,
                                        tmp_path: Path) -> None:
    root = _repository(tmp_path, releases)
    _publish(releases["branch"], root / "models" / "sentiment")
    outcome = _verify_repo(root, _trusted_policy(tmp_path, issuer_keys), "--strict")
    assert outcome.exit_code == 1, outcome.stderr
    [check] = _pin_checks(outcome, "models/sentiment/cert.json")
    assert check["status"] == "fail"


def _run_check(outcome: Outcome) -> dict[str, object]:
    assert outcome.report is not None
    [check] = outcome.report["checks"]
    assert check["name"] == "pinned-model"
    assert check["status"] == "fail"
    assert check["code"] == "E_POLICY_VIOLATION"
    assert check["requirement"] == "R-REPO-11"
    return check


def test_removed_pinned_model_fails(releases: dict[str, Path], issuer_keys: IssuerKeys,
                                    tmp_path: Path) -> None:
    """--allow-empty lets a run without certificates pass, but not without a pinned one."""
    root = _repository(tmp_path, releases)
    shutil.rmtree(root / "models" / "sentiment")
    junit = tmp_path / "junit.xml"
    outcome = _verify_repo(root, _trusted_policy(tmp_path, issuer_keys), "--junit", junit,
                           "--allow-empty")
    assert outcome.exit_code == 1, outcome.stderr
    check = _run_check(outcome)
    assert check["detail"].startswith(
        f"{PINNED}: pinned by the policy, but the model file is missing and no certificate "
        "pairs with it (expected models/sentiment/cert.json or "
        "models/sentiment/model.cert.json)")
    suites = {suite.get("name"): suite for suite in ElementTree.parse(junit).getroot()}
    failures = suites["verify-repo"].findall("testcase/failure")
    assert [failure.get("type") for failure in failures] == ["E_POLICY_VIOLATION"]


def test_pinned_model_without_certificate_fails(releases: dict[str, Path],
                                                issuer_keys: IssuerKeys,
                                                tmp_path: Path) -> None:
    root = _repository(tmp_path, releases)
    (root / "models" / "sentiment" / "cert.json").unlink()
    outcome = _verify_repo(root, _trusted_policy(tmp_path, issuer_keys), "--allow-empty")
    assert outcome.exit_code == 1, outcome.stderr
    check = _run_check(outcome)
    assert check["detail"].startswith(f"{PINNED}: pinned by the policy, but no certificate "
                                      "pairs with it")


def test_pinned_model_file_missing_fails(releases: dict[str, Path], issuer_keys: IssuerKeys,
                                         tmp_path: Path) -> None:
    root = _repository(tmp_path, releases)
    (root / "models" / "sentiment" / "model.safetensors").unlink()
    outcome = _verify_repo(root, _trusted_policy(tmp_path, issuer_keys))
    assert outcome.exit_code == 2, outcome.stderr
    check = _run_check(outcome)
    assert check["detail"].startswith(f"{PINNED}: pinned by the policy, but the model file "
                                      "is missing (")


@pytest.mark.parametrize(("table", "key"), [
    ("models = []\n", "models must be a table"),
    ("[models]\n", "models is empty"),
    ('[models."../model.safetensors"]\ndeleted_modalities = ["audio"]\n',
     'models."../model.safetensors" is absolute or contains \'..\''),
    ('[models."/srv/model.safetensors"]\ndeleted_modalities = ["audio"]\n',
     'models."/srv/model.safetensors" is absolute'),
    ('[models."models\\\\model.safetensors"]\ndeleted_modalities = ["audio"]\n',
     'models."models\\\\model.safetensors" contains a control character or a backslash'),
    ('[models."models/cert.json"]\ndeleted_modalities = ["audio"]\n',
     'models."models/cert.json" does not name a model file'),
    ('[models."models/m.safetensors"]\ndeleted_modalities = []\n',
     'models."models/m.safetensors".deleted_modalities is empty'),
    ('[models."models/m.safetensors"]\ndeleted_modalities = ["audio", "audio"]\n',
     'models."models/m.safetensors".deleted_modalities lists [\'audio\'] more than once'),
    ('[models."models/m.safetensors"]\ndeleted_modalities = "audio"\n',
     'models."models/m.safetensors".deleted_modalities must be a list of strings'),
    ('[models."models/m.safetensors"]\nmin_sequence_number = 2\n',
     'models."models/m.safetensors".deleted_modalities is missing'),
    ('[models."models/m.safetensors"]\ndeleted_modalities = ["audio"]\n'
     'min_sequence_number = "2"\n',
     'models."models/m.safetensors".min_sequence_number must be an integer'),
    ('[models."models/m.safetensors"]\ndeleted_modalities = ["audio"]\n'
     'min_sequence_number = 0\n',
     'models."models/m.safetensors".min_sequence_number must be in 1..1000'),
    ('[models."models/m.safetensors"]\ndeleted_modalities = ["audio"]\nmodality = "x"\n',
     'models."models/m.safetensors".modality is unknown'),
])
def test_malformed_models_table_exits_2(releases: dict[str, Path], issuer_keys: IssuerKeys,
                                        tmp_path: Path, table: str, key: str) -> None:
    root = _repository(tmp_path, releases)
    outcome = _verify_repo(root, _trusted_policy(tmp_path, issuer_keys, table))
    assert outcome.exit_code == 2, outcome.stderr
    assert outcome.error_code == "E_POLICY_INVALID"
    assert outcome.report is not None
    assert f": {key}" in outcome.report["error"]["message"]
