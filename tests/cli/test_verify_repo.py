"""verify-repo: discovery, pairing, policy, JUnit output and the worst-result exit code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from xml.etree import ElementTree

import pytest
from click.testing import CliRunner

from mbd_cert import __version__, signing
from mbd_cert.cli import main

FAST = ["--epochs", "1", "--batch-size", "256", "--hidden-dim", "8", "--shared-dim", "4",
        "--private-dim", "2", "--fusion-hidden", "8", "--probe-members", "10",
        "--probe-nonmembers", "10", "--no-progress"]


@pytest.fixture(scope="module")
def issued(tmp_path_factory):
    base = tmp_path_factory.mktemp("repo-src")
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--out", str(base / "ck"), "--seed", "0", *FAST])
    assert result.exit_code == 0, result.output
    private_path, public_path = signing.write_keypair(base / "issuer")
    result = runner.invoke(main, ["issue", "--checkpoint", str(base / "ck"), "--modality",
                                  "audio", "--epsilon", "1", "--key", str(private_path),
                                  "--out", str(base / "deleted")])
    assert result.exit_code == 0, result.output
    return base / "deleted", public_path


@pytest.fixture
def repo(issued, tmp_path):
    """A repository with two certificates, one per naming rule, and the issuer key."""
    deleted, public_path = issued
    root = tmp_path / "repo"
    (root / "models" / "a").mkdir(parents=True)
    (root / "models" / "b").mkdir(parents=True)
    (root / "keys").mkdir()
    shutil.copy(deleted / "cert.json", root / "models" / "a" / "cert.json")
    shutil.copy(deleted / "model.safetensors", root / "models" / "a" / "model.safetensors")
    shutil.copy(deleted / "cert.json", root / "models" / "b" / "v2.cert.json")
    shutil.copy(deleted / "model.safetensors", root / "models" / "b" / "v2.safetensors")
    shutil.copy(public_path, root / "keys" / "issuer.pub")
    return root


def _policy(root, text):
    (root / "mbd-cert-policy.toml").write_text('trusted_keys = ["keys/issuer.pub"]\n' + text)


def _run(*args):
    return CliRunner().invoke(main, ["verify-repo", *map(str, args)])


def test_all_valid_exit_0_with_junit(repo, tmp_path):
    """R-REPO-2, R-REPO-4: each naming rule pairs its model; one testsuite per certificate."""
    _policy(repo, "max_cumulative_epsilon = 2.0\n")
    junit = tmp_path / "junit.xml"
    result = _run(repo, "--junit", junit)
    assert result.exit_code == 0, result.output
    suites = ElementTree.parse(junit).getroot()
    assert suites.tag == "testsuites"
    names = [suite.get("name") for suite in suites.findall("testsuite")]
    assert names == ["models/a/cert.json", "models/b/v2.cert.json"]
    assert suites.get("failures") == "0"
    assert suites.get("errors") == "0"


def test_table_counts_checks_by_status(repo):
    # A verified row gave the total alone, which read as if every check had run.
    _policy(repo, "")
    checks = json.loads(_run(repo, "--json").stdout)["results"][0]["report"]["checks"]
    statuses = [check["status"] for check in checks]
    assert statuses.count("skipped") >= 1
    result = _run(repo)
    assert result.exit_code == 0, result.output
    expected = (f"{len(checks)} checks: {statuses.count('pass')} passed, 0 failed, "
                f"{statuses.count('skipped')} skipped")
    flat = " ".join(result.stdout.replace("│", " ").split())
    assert expected in flat
    # And the certified budget, which a reviewer of the release wants to see first.
    doc = json.loads((repo / "models" / "a" / "cert.json").read_text())
    epsilon = repr(doc["accounting"]["cumulative_epsilon"]).removesuffix(".0")
    assert f"epsilon {epsilon} at delta 1e-05 over 1 deletion(s); {expected}" in flat


def test_table_counts_failed_checks(repo):
    _policy(repo, "max_cumulative_epsilon = 0.5\n")
    result = _run(repo)
    assert result.exit_code == 1
    assert "1 failed" in result.stdout
    assert "policy: E_POLICY_VIOLATION" in result.stdout


def test_junit_passing_cases_carry_detail(repo, tmp_path):
    _policy(repo, "max_cumulative_epsilon = 2.0\n")
    junit = tmp_path / "junit.xml"
    result = _run(repo, "--json", "--junit", junit)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["results"][0]["report"]
    details = {check["name"]: check["detail"] for check in report["checks"]}
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    for name in ("signature", "accounting", "policy"):
        assert cases[name].find("failure") is None
        output = json.loads(cases[name].find("system-out").text)
        assert output["detail"] == details[name]
        assert "value" in output
        assert "threshold" in output


def test_epsilon_over_policy_exit_1(repo, tmp_path):
    """R-POLF-2: max_cumulative_epsilon is compared with accounting.cumulative_epsilon."""
    _policy(repo, "max_cumulative_epsilon = 0.5\n")
    junit = tmp_path / "junit.xml"
    result = _run(repo, "--junit", junit)
    assert result.exit_code == 1
    failures = ElementTree.parse(junit).getroot().findall(".//failure")
    assert [f.get("message").split(":")[0] for f in failures] == ["E_POLICY_VIOLATION"] * 2
    assert all("exceeds the policy limit" in f.get("message") for f in failures)


def test_method_list_policy(repo):
    """R-POLF-2: a sensitivity method outside the policy's list fails the policy check."""
    _policy(repo, 'required_sensitivity_methods = ["declared", "reference-retrain"]\n')
    result = _run(repo, "--json")
    assert result.exit_code == 1
    checks = json.loads(result.stdout)["results"][0]["report"]["checks"]
    failed = [c for c in checks if c["status"] == "fail"]
    assert [c["name"] for c in failed] == ["policy"]
    assert "the policy accepts ['declared', 'reference-retrain']" in failed[0]["detail"]


def test_max_delta_policy(repo):
    """R-POLF-2: max_delta is compared with accounting.delta."""
    # The certificates state delta 1e-5: a limit below it fails, one above passes.
    _policy(repo, "max_delta = 1e-6\n")
    result = _run(repo, "--json")
    assert result.exit_code == 1
    checks = json.loads(result.stdout)["results"][0]["report"]["checks"]
    assert [c["name"] for c in checks if c["status"] == "fail"] == ["policy"]
    _policy(repo, "max_delta = 1e-4\n")
    assert _run(repo, "--json").exit_code == 0


def test_policy_violations_listed_once(repo, tmp_path):
    # Epsilon, delta and the method list all fail: the JSON report and the JUnit file
    # name each violation once, in one policy check per certificate.
    _policy(repo, "max_cumulative_epsilon = 0.5\nmax_delta = 1e-6\n"
                  'required_sensitivity_methods = ["declared"]\n')
    junit = tmp_path / "junit.xml"
    result = _run(repo, "--json", "--junit", junit)
    assert result.exit_code == 1
    parts = ["exceeds the policy limit 0.5", "exceeds the policy limit 1e-06",
             "the policy accepts ['declared']"]
    for entry in json.loads(result.stdout)["results"]:
        failed = [c for c in entry["report"]["checks"] if c["status"] == "fail"]
        assert [c["name"] for c in failed] == ["policy"]
        assert failed[0]["detail"].startswith("3 policy violations: ")
        assert [failed[0]["detail"].count(part) for part in parts] == [1, 1, 1]
    failures = ElementTree.parse(junit).getroot().findall(".//failure")
    assert len(failures) == 2
    assert all([(f.text or "").count(part) for part in parts] == [1, 1, 1] for f in failures)


def test_table_shows_every_violation(repo):
    # The table cut the policy detail at 160 characters, so only the first
    # violation and part of the second were readable.
    _policy(repo, "max_cumulative_epsilon = 0.5\nmax_delta = 1e-6\n"
                  'required_sensitivity_methods = ["declared"]\n')
    result = _run(repo)
    assert result.exit_code == 1

    # As in cert.json, less a whole number's ".0".
    cumulative = repr(json.loads((repo / "models" / "a" / "cert.json").read_text())[
        "accounting"]["cumulative_epsilon"]).removesuffix(".0")
    table, _, below = result.stdout.partition("└")

    # The table keeps its layout: every row of the box is as wide as its top border.
    rows = [line for line in table.splitlines() if line[:1] in "┏┃┡│"]
    assert len({len(line) for line in rows}) == 1
    flat = "".join(table.replace("│", " ").split())
    assert flat.count("policy:E_POLICY_VIOLATION(3policyviolations:(1)cumulativeepsilon") == 2
    assert "infullas[1]below" in flat

    # Both certificates have the same violations, listed once, one line each.
    lines = below.splitlines()[1:]
    assert lines[:4] == [
        "[1] policy [E_POLICY_VIOLATION]: 3 policy violations:",
        f"    (1) cumulative epsilon {cumulative} exceeds the policy limit 0.5",
        "    (2) accounting.delta 1e-05 exceeds the policy limit 1e-06: the cumulative "
        "epsilon holds only with that failure",
        "        probability",
    ]
    assert lines[4] == ("    (3) sensitivity method is 'clip-bound', the policy accepts "
                        "['declared']")

    # The hint comes once, after the last violation, wrapped like the rest.
    assert lines[5].startswith("    hint: the certificate is outside the policy, and the "
                               "other checks show whether it is valid: ")
    assert all(line.startswith("        ") for line in lines[6:-1])
    assert lines[-1] == "0 of 2 certificates verified at level 1 (exit 1)"


def test_worst_result_wins(repo, tmp_path):
    """R-REPO-2, R-REPO-3: a missing model is E_FILE_MISSING; the run exits with the worst code."""
    _policy(repo, "")
    model = repo / "models" / "a" / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x01
    model.write_bytes(bytes(data))
    result = _run(repo, "--json")
    assert result.exit_code == 1
    codes = [r["exit_code"] for r in json.loads(result.stdout)["results"]]
    assert codes == [1, 0]
    # stdout is the document, so each failure's reason is on stderr too.
    assert ("verification failed: models/a/cert.json: model-digest [E_DIGEST_MISMATCH]"
            in result.stderr)
    # The detail tells what to do about a model that is not the certified one.
    detail = next(c["detail"] for c in json.loads(result.stdout)["results"][0]["report"]["checks"]
                  if c["name"] == "model-digest")
    assert "pass the model file released with this certificate, or the certificate " \
        "issued for this model" in detail
    assert "models/b/v2.cert.json" not in result.stderr
    (repo / "models" / "b" / "v2.safetensors").unlink()
    junit = tmp_path / "junit.xml"
    result = _run(repo, "--json", "--junit", junit)
    assert result.exit_code == 2
    second = json.loads(result.stdout)["results"][1]
    assert second["error"]["code"] == "E_FILE_MISSING"
    assert "v2.safetensors" in second["error"]["message"]
    assert ElementTree.parse(junit).getroot().get("errors") == "1"
    assert "error [E_FILE_MISSING]: models/b/v2.cert.json: " in result.stderr
    assert "  hint: put the released model beside the certificate" in result.stderr
    # The table view names each failure on stderr as well, with its full text.
    table = _run(repo)
    assert table.exit_code == 2
    assert ("verification failed: models/a/cert.json: model-digest [E_DIGEST_MISMATCH]"
            in table.stderr)
    assert "error [E_FILE_MISSING]: models/b/v2.cert.json: " in table.stderr


def test_missing_model_names_certificate_once(repo):
    # The record, the table row and the stderr line name the certificate already, so
    # the message names only the model.
    _policy(repo, "")
    (repo / "models" / "b" / "v2.safetensors").unlink()
    result = _run(repo, "--json")
    assert result.exit_code == 2
    second = json.loads(result.stdout)["results"][1]
    assert second["error"]["message"] == "model not found: models/b/v2.safetensors"
    assert ("error [E_FILE_MISSING]: models/b/v2.cert.json: model not found: "
            "models/b/v2.safetensors\n") in result.stderr


def test_git_lfs_pointer_named(repo):
    # A CI checkout without LFS leaves a text pointer where the model should be.
    _policy(repo, "")
    (repo / "models" / "a" / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 9\n")
    result = _run(repo, "--json")
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["results"][0]["error"]
    assert error["code"] == "E_SAFETENSORS_NOT_SAFETENSORS"
    assert "Git LFS pointer" in error["message"]
    assert "git lfs pull" in error["hint"]
    assert "git lfs pull" in result.stderr


def test_hostile_names_escaped(repo, tmp_path):
    # A pull request controls directory names and the model's tensor names: the table
    # shows them escaped and literal, and the JUnit file stays well-formed XML.
    import numpy as np

    from mbd_cert import _safetensors
    from mbd_cert._terminal import terminal_text

    _policy(repo, "")
    hostile = repo / "models" / "\x1b[2J[red]\x07"
    (repo / "models" / "a").rename(hostile)
    model = hostile / "model.safetensors"
    header = _safetensors.read_header(model)
    tensors = {name: np.array(_safetensors.read_tensor(header, name)) for name in header.tensors}
    tensors["[/y]\x1b[31m"] = np.zeros(1, np.float32)
    metadata = dict(header.metadata)
    model.unlink()
    _safetensors.write_safetensors(model, tensors, metadata)
    (repo / "models" / "b" / "v2.cert.json").write_text('{"\x1b[2J": [/z]')
    junit = tmp_path / "junit.xml"
    result = _run(repo, "--junit", junit)
    assert result.exit_code == 2, result.output
    for char in "\x1b\x07":
        assert char not in result.stdout + result.stderr
    assert terminal_text("models/\x1b[2J[red]\x07/cert.json") in result.stdout.replace("\n", "")
    suites = ElementTree.parse(junit).getroot()
    names = [suite.get("name") for suite in suites.findall("testsuite")]
    assert names[0] == "models/\\x1b[2J[red]\\x07/cert.json"


@pytest.mark.skipif(sys.platform == "darwin", reason="APFS refuses names that are not UTF-8")
def test_undecodable_directory_name_escaped(repo, tmp_path):
    # Python decodes a name that is not UTF-8 into lone surrogates, which print as raw
    # bytes. The byte 0x9B is CSI on a terminal that reads 8-bit controls.
    _policy(repo, "")
    raw = os.fsencode(repo / "models") + b"/\x9b2J\xff"
    os.rename(os.fsencode(repo / "models" / "a"), raw)
    junit = tmp_path / "junit.xml"
    result = _run(repo, "--junit", junit)
    assert result.exit_code == 0, result.output
    table = result.stdout.replace("\n", "")
    assert "models/\\x9b2J\\xff/cert.json" in table
    assert "\udc9b" not in result.stdout + result.stderr
    names = [s.get("name") for s in ElementTree.parse(junit).getroot().findall("testsuite")]
    assert "models/\\x9b2J\\xff/cert.json" in names


@pytest.mark.skipif(sys.platform == "darwin", reason="APFS refuses names that are not UTF-8")
def test_undecodable_directory_name_in_json_report(repo):
    # json.dumps would write the surrogate as \udc9b, which strict parsers reject.
    _policy(repo, "")
    os.rename(os.fsencode(repo / "models" / "a"), os.fsencode(repo / "models") + b"/\x9b2J")
    result = _run(repo, "--json")
    assert result.exit_code == 0, result.output
    result.stdout.encode("utf-8")  # strict: raises on a lone surrogate
    assert "\\udc" not in result.stdout
    paths = [r["certificate"] for r in json.loads(result.stdout)["results"]]
    assert any(path.endswith("models/\\x9b2J/cert.json") for path in paths), paths
    assert not any(0xD800 <= ord(c) <= 0xDFFF for path in paths for c in path)


def test_hidden_directories_skipped(repo):
    """R-REPO-1: directories whose names start with '.' are not searched."""
    _policy(repo, "")
    hidden = repo / ".git" / "objects"
    hidden.mkdir(parents=True)
    (hidden / "cert.json").write_text("{}")
    result = _run(repo, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["results"]) == 2


def test_malformed_certificate_exit_2(repo):
    _policy(repo, "")
    (repo / "models" / "a" / "cert.json").write_text("{not json")
    result = _run(repo, "--json")
    assert result.exit_code == 2
    first = json.loads(result.stdout)["results"][0]
    assert first["error"]["code"] == "E_JSON_SYNTAX"


def test_invalid_policy_exit_2(repo):
    _policy(repo, "max_cumulative_epsilon = nan\n")
    result = _run(repo)
    assert result.exit_code == 2
    assert "E_POLICY_INVALID" in result.stderr
    assert "max_cumulative_epsilon" in result.stderr


@pytest.mark.parametrize(("policy", "code"), [("max_cumulative_epsilon = nan\n",
                                               "E_POLICY_INVALID"),
                                              ("", "E_KEY_MISSING")],
                         ids=["invalid-policy", "no-key"])
def test_stopped_run_still_writes_junit(repo, tmp_path, policy, code):
    """R-REPO-4: a run stopped before any certificate writes a 'verify-repo' suite and error."""
    # CI uploads the JUnit file whatever the exit code.
    (repo / "mbd-cert-policy.toml").write_text(policy)
    junit = tmp_path / "junit.xml"
    result = _run(repo, "--junit", junit)
    assert result.exit_code == 2
    root = ElementTree.parse(junit).getroot()
    assert root.get("errors") == "1"
    [suite] = root.findall("./testsuite")
    assert suite.get("name") == "verify-repo"
    [error] = root.findall("./testsuite/testcase/error")
    assert error.get("message").startswith(f"{code}: ")
    assert error.text is not None
    assert "hint:" in error.text


@pytest.mark.parametrize(("policy", "code"), [("max_cumulative_epsilon = nan\n",
                                               "E_POLICY_INVALID"),
                                              ("", "E_KEY_MISSING")],
                         ids=["invalid-policy", "no-key"])
def test_stopped_run_json_has_the_report_shape(repo, policy, code):
    """R-REPO-6, R-POLF-1: a stopped run writes the same document, with no certificate verified."""
    # One shape for CI to parse, whether or not the run got to the certificates.
    (repo / "mbd-cert-policy.toml").write_text(policy)
    stopped = _run(repo, "--json")
    assert stopped.exit_code == 2
    document = json.loads(stopped.stdout)
    _policy(repo, "")
    finished = json.loads(_run(repo, "--json").stdout)
    assert set(document) == set(finished)
    assert document["report_version"] == finished["report_version"] == "1.4"
    assert document["error"]["code"] == code
    assert document["error"]["hint"]
    assert document["exit_code"] == 2
    assert document["results"] == []
    assert document["policy"] == finished["policy"] == str(repo / "mbd-cert-policy.toml")
    assert finished["error"] is None
    assert len(finished["results"]) == 2


def test_no_certificates_json(tmp_path):
    document = json.loads(_run(tmp_path, "--json").stdout)
    assert document["error"]["code"] == "E_NO_CERTIFICATES"
    assert (document["policy"], document["results"], document["exit_code"]) == (None, [], 2)


def test_explicit_policy_path(repo, tmp_path):
    policy = tmp_path / "strict.toml"
    policy.write_text('trusted_keys = ["issuer.pub"]\nmax_cumulative_epsilon = 0.1\n')
    shutil.copy(repo / "keys" / "issuer.pub", tmp_path / "issuer.pub")
    result = _run(repo, "--policy", policy)
    assert result.exit_code == 1


def test_outside_policy_keys_resolve_beside_it(repo, tmp_path):
    # A policy kept outside the pull request takes its keys from its own directory:
    # a pull request that replaces keys/issuer.pub in the tree changes nothing.
    trusted = tmp_path / "trusted"
    (trusted / "keys").mkdir(parents=True)
    shutil.copy(repo / "keys" / "issuer.pub", trusted / "keys" / "issuer.pub")
    policy = trusted / "policy.toml"
    policy.write_text('trusted_keys = ["keys/issuer.pub"]\n')
    _, foreign_public = signing.write_keypair(tmp_path / "foreign")
    shutil.copy(foreign_public, repo / "keys" / "issuer.pub")

    report = json.loads(_run(repo, "--policy", policy, "--json").stdout)

    assert report["exit_code"] == 0
    checks = {check["name"]: check for check in report["results"][0]["report"]["checks"]}
    assert checks["signature"]["status"] == "pass"


def test_outside_policy_ignores_tree_keys(repo, tmp_path):
    # The key the pull request put in the tree is not trusted through that policy.
    _, foreign_public = signing.write_keypair(tmp_path / "foreign")
    shutil.copy(foreign_public, repo / "keys" / "issuer.pub")
    policy = tmp_path / "policy.toml"
    policy.write_text('trusted_keys = ["keys/issuer.pub"]\n')

    result = _run(repo, "--policy", policy)

    assert result.exit_code == 2
    assert "resolved against the policy file's directory" in result.stderr


def test_inside_policy_keys_in_root(repo):
    # A policy file in a folder of the repository keeps root-relative key paths.
    (repo / "ci").mkdir()
    policy = repo / "ci" / "policy.toml"
    policy.write_text('trusted_keys = ["keys/issuer.pub"]\n')

    assert _run(repo, "--policy", policy).exit_code == 0


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_policy_linked_from_outside_root(repo, tmp_path):
    # The policy path passes through a link in ROOT, but the file lies outside ROOT.
    # Its keys therefore come from its own folder, not from the replaced tree key.
    trusted = tmp_path / "trusted"
    (trusted / "keys").mkdir(parents=True)
    shutil.copy(repo / "keys" / "issuer.pub", trusted / "keys" / "issuer.pub")
    (trusted / "policy.toml").write_text('trusted_keys = ["keys/issuer.pub"]\n')
    _, foreign_public = signing.write_keypair(tmp_path / "foreign")
    shutil.copy(foreign_public, repo / "keys" / "issuer.pub")
    os.symlink(trusted, repo / "trusted")

    result = _run(repo, "--policy", repo / "trusted" / "policy.toml")

    assert result.exit_code == 0, result.stdout + result.stderr


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_policy_path_with_dotdot_after_link(repo, tmp_path):
    # ".." after a link in ROOT leaves the link's target, outside ROOT, as open() does.
    trusted = tmp_path / "trusted"
    (trusted / "inner").mkdir(parents=True)
    (trusted / "keys").mkdir()
    shutil.copy(repo / "keys" / "issuer.pub", trusted / "keys" / "issuer.pub")
    (trusted / "policy.toml").write_text('trusted_keys = ["keys/issuer.pub"]\n')
    _, foreign_public = signing.write_keypair(tmp_path / "foreign")
    shutil.copy(foreign_public, repo / "keys" / "issuer.pub")
    (repo / "sub").mkdir()
    os.symlink(trusted / "inner", repo / "sub" / "link")

    result = _run(repo, "--policy", repo / "sub" / "link" / ".." / "policy.toml")

    assert result.exit_code == 0, result.stdout + result.stderr


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_root_given_through_link(repo, tmp_path):
    # The same repository named through a link keeps root-relative key paths.
    (repo / "ci").mkdir()
    policy = repo / "ci" / "policy.toml"
    policy.write_text('trusted_keys = ["keys/issuer.pub"]\n')
    link = tmp_path / "checkout"
    os.symlink(repo, link)

    result = _run(link, "--policy", policy)

    assert result.exit_code == 0, result.stdout + result.stderr


def test_no_trusted_key_exit_2(repo):
    result = _run(repo)
    assert result.exit_code == 2
    assert "E_KEY_MISSING" in result.stderr


def test_key_option_without_policy(repo):
    result = _run(repo, "--key", repo / "keys" / "issuer.pub")
    assert result.exit_code == 0, result.output


def test_no_certificates(tmp_path):
    """R-REPO-3: no certificate found is E_NO_CERTIFICATES (exit 2) unless --allow-empty."""
    result = _run(tmp_path)
    assert result.exit_code == 2
    assert "E_NO_CERTIFICATES" in result.stderr
    result = _run(tmp_path, "--allow-empty", "--key", tmp_path / "absent.pub")
    assert result.exit_code == 2  # the key file is still read
    assert "E_FILE_MISSING" in result.stderr


@pytest.mark.parametrize("blocked", ["torch", "scipy.integrate"])
def test_runs_without_module(repo, blocked):
    # verify-repo needs no torch. The noise calibration and the chain epsilon decide
    # their searches without the integral form of delta, whose import (scipy.integrate)
    # costs every CI run about 0.15 s.
    _policy(repo, "max_cumulative_epsilon = 2.0\n")
    code = (f"import sys; sys.modules[{blocked!r}] = None\n"
            "from mbd_cert.cli import main\n"
            "main(['verify-repo', sys.argv[1], '--json'])\n")
    result = subprocess.run([sys.executable, "-c", code, str(repo)], capture_output=True,
                            text=True, timeout=120, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert all(r["verified"] for r in json.loads(result.stdout)["results"])


def test_example_ci_files_parse():
    from pathlib import Path

    from mbd_cert.policy import load_policy

    yaml = pytest.importorskip("yaml")
    ci = Path(__file__).resolve().parents[2] / "examples" / "ci"
    policy = load_policy(ci / "mbd-cert-policy.toml")
    assert policy.max_cumulative_epsilon == 2.0
    [pin] = policy.models
    assert pin.path == "models/sentiment/model.safetensors"
    assert pin.deleted_modalities == ("audio", "vision")
    workflow = yaml.safe_load((ci / "github-workflow.yml").read_text())
    steps = workflow["jobs"]["verify-certificates"]["steps"]
    commands = " ".join(step.get("run", "") for step in steps)
    assert "mbd-cert verify-repo" in commands
    assert "--junit" in commands
    assert "torch" not in commands
    hooks = yaml.safe_load((ci / "pre-commit-hooks.yaml").read_text())
    assert hooks[0]["entry"] == "mbd-cert verify-repo"
    config = yaml.safe_load((ci / ".pre-commit-config.example.yaml").read_text())
    assert config["repos"][0]["hooks"][0]["id"] == hooks[0]["id"]


def test_symlinked_model_is_refused(repo, tmp_path):
    """R-REPO-2: a model that is a symbolic link is E_UNSAFE_PATH for that certificate."""
    # A link may point outside the repository, which would then not contain the model
    # that CI reports as verified.
    _policy(repo, "")
    outside = tmp_path / "outside.safetensors"
    model = repo / "models" / "a" / "model.safetensors"
    shutil.move(model, outside)
    model.symlink_to(outside)
    result = _run(repo, "--json")
    assert result.exit_code == 2
    results = json.loads(result.stdout)["results"]
    assert [r["exit_code"] for r in results] == [2, 0]
    assert results[0]["error"]["code"] == "E_UNSAFE_PATH"
    assert results[0]["error"]["message"] == ("model is a symbolic link: "
                                              "models/a/model.safetensors")


def test_deep_directory_walk_completes(repo):
    # os.walk recursed once per directory level on Python 3.11, so a deep enough tree
    # ended the run with RecursionError. Lowering the limit makes 300 levels enough
    # (and keeps the tree shallow enough for pytest's own recursive cleanup).
    from mbd_cert._published_models import header_index
    from mbd_cert._repo_search import find_certificates
    from mbd_cert._repo_strict import uncertified_models

    deep = repo / "deep"
    deep.mkdir()
    current = deep
    for _ in range(300):
        current = current / "d"
        current.mkdir()
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    limit = sys.getrecursionlimit()
    # 100 frames above the current depth: far fewer than the 300 levels below.
    sys.setrecursionlimit(depth + 100)
    (current / "deep.safetensors").write_bytes(b"not a model")
    try:
        found = find_certificates(repo)
        # The later scans of the run walk the same tree (R-REPO-9, R-REPO-10).
        indexed = header_index(repo)
        uncertified = uncertified_models(repo, [])
    finally:
        sys.setrecursionlimit(limit)
    assert [p.relative_to(repo).as_posix() for p in found] == [
        "models/a/cert.json", "models/b/v2.cert.json"]
    assert indexed
    assert "deep/" + "d/" * 300 + "deep.safetensors" in uncertified


def test_search_order_and_links(tmp_path):
    """R-REPO-1: certificates come by relative path, and links to files and directories are skipped.

    The search lists a directory's files before it enters its subdirectories, so a
    certificate at the top would come first without the sort.
    """
    from mbd_cert._repo_search import find_certificates

    for relative in ("z.cert.json", "a/cert.json", "a/b/v1.cert.json", "a/notes.json"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("{}")
    (tmp_path / "a" / "linked.cert.json").symlink_to(tmp_path / "z.cert.json")
    (tmp_path / "linked-dir").symlink_to(tmp_path / "a", target_is_directory=True)
    found = [path.relative_to(tmp_path).as_posix() for path in find_certificates(tmp_path)]
    assert found == ["a/b/v1.cert.json", "a/cert.json", "z.cert.json"]


def test_unreadable_default_policy_fails(repo):
    """R-REPO-2: a dangling default policy link fails the run with exit 2."""
    # A dangling policy link used to be skipped, so the repository passed with no policy.
    (repo / "mbd-cert-policy.toml").symlink_to(repo / "missing" / "policy.toml")
    result = _run(repo, "--key", repo / "keys" / "issuer.pub")
    assert result.exit_code == 2


def test_usage_error_json_has_the_report_shape():
    """R-REPO-6: a usage error writes the report shape with root and policy null."""
    result = CliRunner().invoke(main, ["verify-repo", ".", "--json", "--frobnicate"])
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert document["report_version"] == "1.4"
    assert document["error"]["code"] == "E_USAGE"
    assert (document["root"], document["policy"], document["results"]) == (None, None, [])
    assert "mbd-cert verify-repo --help" in document["error"]["hint"]


def test_root_that_is_a_file(tmp_path):
    path = tmp_path / "cert.json"
    path.write_text("{}")
    result = _run(path, "--json")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["code"] == "E_FILE_NOT_REGULAR"


def test_unlistable_directory_stops_the_run(repo, tmp_path, monkeypatch):
    """R-REPO-4: a directory below ROOT that cannot be listed stops the run (E_FILE_UNREADABLE)."""
    # Skipping it would let CI pass without its certificates. Root can list any
    # directory, so the permission error is injected.
    locked = repo / "models" / "b"
    real_scandir = os.scandir

    def scandir(path):
        if os.fspath(path) == os.fspath(locked):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    junit = tmp_path / "junit.xml"
    result = _run(repo, "--key", repo / "keys" / "issuer.pub", "--json", "--junit", junit)
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "E_FILE_UNREADABLE"
    assert "models/b" in error["message"]
    [case_error] = ElementTree.parse(junit).getroot().findall("./testsuite/testcase/error")
    assert case_error.get("message").startswith("E_FILE_UNREADABLE: ")


def test_internal_error_before_verifying_writes_junit(repo, tmp_path, monkeypatch):
    from mbd_cert import _cli_ci

    def broken(root):
        raise RuntimeError("walk failed")

    monkeypatch.setattr(_cli_ci, "find_certificates", broken)
    junit = tmp_path / "junit.xml"
    result = _run(repo, "--json", "--junit", junit)
    assert result.exit_code == 3
    assert json.loads(result.stdout)["error"]["code"] == "E_INTERNAL"
    [case_error] = ElementTree.parse(junit).getroot().findall("./testsuite/testcase/error")
    assert case_error.get("message").startswith("E_INTERNAL: ")


@pytest.mark.parametrize(("where", "code"), [("missing/junit.xml", "E_FILE_MISSING"),
                                             (".", "E_FILE_NOT_REGULAR")],
                         ids=["missing-directory", "directory"])
def test_bad_junit_destination_rejected_first(repo, tmp_path, monkeypatch, where, code):
    """R-REPO-4: a --junit path without its directory, or a directory, is rejected first."""
    from mbd_cert import _cli_ci

    verified = []
    monkeypatch.setattr(_cli_ci, "verify_one", lambda *a, **k: verified.append(a))
    result = _run(repo, "--key", repo / "keys" / "issuer.pub", "--json",
                  "--junit", tmp_path / where)
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["code"] == code
    assert verified == []


def test_junit_write_failure_keeps_the_results(repo, tmp_path, monkeypatch):
    from mbd_cert import _paths, errors

    junit = tmp_path / "junit.xml"
    real_write = _paths.atomic_write_bytes

    def failing(path, *args, **kwargs):
        if os.fspath(path) == os.fspath(junit):
            raise errors.InputError("disk full", code="E_FILE_UNWRITABLE")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(_paths, "atomic_write_bytes", failing)
    result = _run(repo, "--key", repo / "keys" / "issuer.pub", "--json", "--junit", junit)
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert document["error"]["code"] == "E_FILE_UNWRITABLE"
    assert [r["exit_code"] for r in document["results"]] == [0, 0]
    assert "error [E_FILE_UNWRITABLE]: disk full" in result.stderr


def _interrupt_second_certificate(monkeypatch, *, raise_directly: bool) -> None:
    """Make verify-repo see Ctrl-C as it starts the second certificate.

    ``raise_directly`` raises KeyboardInterrupt; otherwise a real SIGINT is sent.
    """
    import signal

    from mbd_cert import _cli_ci

    real = _cli_ci.verify_one
    calls = []

    def second_interrupts(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            if raise_directly:
                raise KeyboardInterrupt
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(_cli_ci, "verify_one", second_interrupts)


def test_interrupted_run_writes_junit(repo, tmp_path, monkeypatch):
    # A cancelled CI job uploads the JUnit file anyway, so the file must record that
    # the run was cut short.
    _policy(repo, "")
    _interrupt_second_certificate(monkeypatch, raise_directly=True)
    junit = tmp_path / "junit.xml"
    result = _run(repo, "--junit", junit)
    assert result.exit_code == 130
    error = ElementTree.parse(junit).getroot().find("testsuite/testcase/error")
    assert error is not None
    assert "E_INTERRUPTED" in error.get("message")
    assert "interrupted after 1 of 2 certificates" in error.text


def test_interrupted_run_writes_json(repo, tmp_path, monkeypatch):
    # --json promises one document whether or not the run finished, Ctrl-C included.
    _policy(repo, "")
    _interrupt_second_certificate(monkeypatch, raise_directly=False)
    junit = tmp_path / "junit.xml"
    result = _run(repo, "--json", "--junit", junit)
    assert result.exit_code == 130
    assert result.stderr.strip() == "interrupted; the command did not finish"
    document = json.loads(result.stdout)
    assert document["report_version"] == "1.4"
    assert document["exit_code"] == 130
    assert document["error"]["code"] == "E_INTERRUPTED"
    assert "interrupted after 1 of 2 certificates" in document["error"]["message"]
    assert document["error"]["hint"]
    assert document["results"] == []
    assert document["root"] == str(repo)
    assert document["policy"] == str(repo / "mbd-cert-policy.toml")
    error = ElementTree.parse(junit).getroot().find("testsuite/testcase/error")
    assert error is not None
    assert error.get("message").startswith("E_INTERRUPTED: interrupted ")
    assert error.text is not None
    assert document["error"]["message"] in error.text


def test_interrupted_setup_writes_junit(repo, tmp_path, monkeypatch):
    # Ctrl-C while the repository is searched, before any certificate.
    from mbd_cert import _cli_ci

    def interrupted(root):
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli_ci, "find_certificates", interrupted)
    junit = tmp_path / "junit.xml"
    result = _run(repo, "--key", repo / "keys" / "issuer.pub", "--json", "--junit", junit)
    assert result.exit_code == 130
    document = json.loads(result.stdout)
    assert document["error"]["code"] == "E_INTERRUPTED"
    assert document["error"]["message"] == "interrupted before any certificate was verified"
    [error] = ElementTree.parse(junit).getroot().findall("./testsuite/testcase/error")
    assert error.get("message").startswith("E_INTERRUPTED: interrupted ")


def test_junit_suites_carry_certificate_id(repo, tmp_path):
    """R-REPO-4, R-REP-5: each suite names its certificate and the verifier's version."""
    _policy(repo, "")
    junit = tmp_path / "junit.xml"
    assert _run(repo, "--junit", junit, "--json").exit_code == 0
    expected = json.loads((repo / "models" / "a" / "cert.json").read_text())["certificate_id"]
    for suite in ElementTree.parse(junit).getroot().findall("testsuite"):
        properties = {p.get("name"): p.get("value")
                      for p in suite.findall("./properties/property")}
        assert properties == {"certificate_id": expected, "mbd_cert_version": __version__}


def _second_links(issued, directory, count, *, signed):
    """Write ``count`` certificates of sequence number 2 into ``directory``.

    Each names its own missing previous certificate, so each needs the directory scan.
    Unsigned ones keep the old signature, which no longer matches their content.
    """
    from cli_support import resign

    deleted, public_path = issued
    directory.mkdir(parents=True)
    doc = json.loads((deleted / "cert.json").read_text())
    doc["accounting"].pop("chain", None)
    doc["accounting"]["sequence_number"] = 2
    for index in range(count):
        doc["accounting"]["previous_certificate"] = f"sha256:{index + 1:064x}"
        written = resign(doc, public_path.with_suffix(".key")) if signed else doc
        (directory / f"c{index}.cert.json").write_text(json.dumps(written))
        shutil.copy(deleted / "model.safetensors", directory / f"c{index}.safetensors")


def _count_certificate_parses(monkeypatch):
    from collections import Counter

    from mbd_cert import certificate

    parses = Counter()
    real = certificate.load_certificate

    def counted(path, *args, **kwargs):
        parses[os.path.basename(path)] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(certificate, "load_certificate", counted)
    return parses


def test_unsigned_certificates_skip_chain_lookup(issued, tmp_path, monkeypatch):
    # R-CHAIN-10: before it, each unsigned certificate parsed every *.json file of its
    # directory, so N of them in one directory cost N * N parses.
    root = tmp_path / "repo"
    _second_links(issued, root / "m", 4, signed=False)
    parses = _count_certificate_parses(monkeypatch)
    result = _run(root, "--key", issued[1], "--json")
    assert result.exit_code == 1, result.output
    for entry in json.loads(result.stdout)["results"]:
        checks = {check["name"]: check for check in entry["report"]["checks"]}
        assert checks["signature"]["status"] == "fail"
        assert checks["accounting"]["status"] == "skipped"
        assert checks["accounting"]["requirement"] == "R-CHAIN-10"
        assert "signature did not pass" in checks["accounting"]["detail"]
    # Once by verify() itself and once by the confidential-file check, none by a scan.
    assert dict(parses) == {f"c{index}.cert.json": 2 for index in range(4)}


def test_signed_certificates_share_one_scan(issued, tmp_path, monkeypatch):
    # R-REPO-7: the directory scan of each certificate reuses the digests that the
    # scans of earlier certificates in the run computed.
    root = tmp_path / "repo"
    _second_links(issued, root / "m", 4, signed=True)
    parses = _count_certificate_parses(monkeypatch)
    result = _run(root, "--key", issued[1], "--json")
    assert result.exit_code == 1, result.output
    for entry in json.loads(result.stdout)["results"]:
        failed = {check["name"]: check["code"] for check in entry["report"]["checks"]
                  if check["status"] == "fail"}
        assert failed == {"accounting": "E_CHAIN_LINK_MISSING"}
    # Once by verify() itself, once by the confidential-file check and once by the
    # first scan that reads the file.
    assert dict(parses) == {f"c{index}.cert.json": 3 for index in range(4)}


def test_junit_over_a_certificate_rejected(repo, tmp_path):
    # R-SEC-1: the JUnit file replaced the certificate it reported on.
    target = repo / "models" / "a" / "cert.json"
    before = target.read_bytes()
    result = _run(repo, "--key", repo / "keys" / "issuer.pub", "--json", "--junit", target)
    assert result.exit_code == 2, result.output
    document = json.loads(result.stdout)
    assert document["error"]["code"] == "E_OUTPUT_IS_INPUT"
    assert str(target) in document["error"]["message"]
    assert document["results"] == []
    assert target.read_bytes() == before


def test_junit_over_a_chain_file_rejected(repo):
    # Any *.json file beside a certificate may be read as a chain link.
    target = repo / "models" / "b" / "chain-00001.json"
    target.write_text("{}")
    result = _run(repo, "--key", repo / "keys" / "issuer.pub", "--junit", target)
    assert result.exit_code == 2, result.output
    assert target.read_text() == "{}"


@pytest.mark.parametrize("name", ["new.pub", "new.json"])
@pytest.mark.parametrize("key_from", ["policy", "option"])
def test_junit_in_the_key_directory_rejected(repo, name, key_from):
    # A new *.pub or *.json file beside the trusted keys may be read as one (R-SEC-1).
    junit = repo / "keys" / name
    if key_from == "policy":
        _policy(repo, "")
        result = _run(repo, "--junit", junit)
    else:
        result = _run(repo, "--key", repo / "keys" / "issuer.pub", "--junit", junit)
    assert result.exit_code == 2, result.output
    assert "E_OUTPUT_IS_INPUT" in result.stderr
    assert not junit.exists()


def test_missing_policy_key_named(repo):
    # The path in the policy is relative to the repository root, not the cwd.
    (repo / "mbd-cert-policy.toml").write_text('trusted_keys = ["keys/absent.pub"]\n')
    result = _run(repo)
    assert result.exit_code == 2, result.output
    assert "E_FILE_MISSING" in result.stderr
    assert "policy trusted_keys[0] = 'keys/absent.pub'" in result.stderr
    assert "relative to the repository root" in result.stderr


def test_junit_policy_named_once(repo):
    _policy(repo, "")
    policy = repo / "mbd-cert-policy.toml"
    result = _run(repo, "--junit", policy)
    assert result.exit_code == 2, result.output
    assert f"--junit names an input file: {policy}\n" in result.stderr


def test_junit_inside_the_root_rewritten(repo):
    # A CI job reruns with the same --junit path below the root.
    junit = repo / "junit.xml"
    for _ in range(2):
        assert _run(repo, "--key", repo / "keys" / "issuer.pub", "--junit", junit).exit_code == 0
    assert ElementTree.parse(junit).getroot().tag == "testsuites"


@pytest.mark.parametrize("name", ["cert.json", "report.cert.json"])
def test_junit_certificate_name_rejected(repo, name):
    # Written by the first run, the file was read as a certificate by the second.
    junit = repo / name
    result = _run(repo, "--key", repo / "keys" / "issuer.pub", "--junit", junit)
    assert result.exit_code == 2, result.output
    assert "E_OUTPUT_IS_INPUT" in result.output
    assert not junit.exists()


@pytest.mark.parametrize("target", ["models/a/cert.json", "models/b/v2.safetensors",
                                    "mbd-cert-policy.toml"])
def test_setup_error_keeps_junit_input(repo, target):
    # A setup error (here a policy key that does not exist) wrote its JUnit file over
    # the input before the input check ran.
    (repo / "mbd-cert-policy.toml").write_text('trusted_keys = ["keys/missing.pub"]\n')
    path = repo / target
    before = path.read_bytes()
    result = _run(repo, "--junit", path)
    assert result.exit_code == 2, result.output
    assert path.read_bytes() == before


def test_setup_error_writes_junit_elsewhere(repo, tmp_path):
    (repo / "mbd-cert-policy.toml").write_text('trusted_keys = ["keys/missing.pub"]\n')
    junit = tmp_path / "junit.xml"
    result = _run(repo, "--junit", junit)
    assert result.exit_code == 2, result.output
    assert ElementTree.parse(junit).getroot().tag == "testsuites"


def test_invalid_policy_keeps_junit_model(repo):
    # The policy is read before the search, so the certificates are not known yet.
    (repo / "mbd-cert-policy.toml").write_text("trusted_keys = [\n")
    path = repo / "models" / "b" / "v2.safetensors"
    before = path.read_bytes()
    result = _run(repo, "--junit", path)
    assert result.exit_code == 2, result.output
    assert "E_POLICY_INVALID" in result.output
    assert path.read_bytes() == before


FAKE_SUMMARY = "3 of 3 certificates verified at level 3 (exit 0)"


@pytest.mark.parametrize("padding", [" " * 118, "\u3042" * 58], ids=["spaces", "wide"])
def test_note_cannot_start_a_line(repo, padding):
    # A certificate's text in a failed check's note, padded to the console width, must
    # not begin a line of its own that reads like the summary line (R-SEC-5). The
    # second padding is 58 wide characters, 116 columns on a terminal.
    _policy(repo, "")
    path = repo / "models" / "a" / "cert.json"
    doc = json.loads(path.read_text())
    doc["deletion"]["removed_tensors"].append(f"zz{padding}{FAKE_SUMMARY}{padding}")
    doc["deletion"]["removed_tensors"].sort()
    path.write_text(json.dumps(doc))
    result = _run(repo)
    assert result.exit_code == 1, result.output
    assert FAKE_SUMMARY in " ".join(result.stdout.split())
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith(FAKE_SUMMARY[:6])] == []
    assert lines[-1].startswith("1 of 2 certificates verified")


def _terminal_rows(line: str, columns: int) -> list[str]:
    """Return the rows a terminal of ``columns`` shows for ``line``, wrapping by cells."""
    from rich.cells import cell_len

    rows, row = [], ""
    for char in line:
        if cell_len(row + char) > columns:
            rows.append(row)
            row = ""
        row += char
    return [*rows, row]


@pytest.mark.parametrize(("lead", "count"), [("zzz", 29), ("zz", 58)],
                         ids=["row-start", "long"])
def test_wide_note_cannot_start_a_terminal_row(repo, lead, count):
    # Wide characters take two columns each, so a note cut at 120 characters can be
    # up to 240 columns long, and a terminal of 120 columns wraps it again without an
    # indent. 'zzz' and 29 of them put the fake summary at column 120 (R-SEC-5).
    from rich.cells import cell_len

    _policy(repo, "")
    path = repo / "models" / "a" / "cert.json"
    doc = json.loads(path.read_text())
    doc["deletion"]["removed_tensors"].append(lead + "\u3042" * count + FAKE_SUMMARY
                                              + "\u3042" * 58)
    doc["deletion"]["removed_tensors"].sort()
    path.write_text(json.dumps(doc))
    result = _run(repo)
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    rows = [row for line in lines for row in _terminal_rows(line, 120)]
    assert [row for row in rows if row.startswith(FAKE_SUMMARY[:6])] == []
    assert max(cell_len(line) for line in lines) <= 120
    assert lines[-1].startswith("1 of 2 certificates verified")
