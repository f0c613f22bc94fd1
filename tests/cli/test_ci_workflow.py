"""The example GitHub workflow checks a pull request against its base branch's policy.

The workflow's step scripts run here with bash, without GitHub. ``origin`` is a local
bare repository, and the checkout contains only the pull request's commit, as
actions/checkout leaves it. The environment carries what GitHub sets on a
pull_request event (``GITHUB_BASE_REF``, ``RUNNER_TEMP``) and the job's ``env``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_support import HonestRun, resign

from mbd_cert import signing

WORKFLOW = Path(__file__).resolve().parents[2] / "examples" / "ci" / "github-workflow.yml"
COPY_STEP = "Copy the trusted policy from the base branch"
VERIFY_STEP = "Verify certificates"
BASE_POLICY = 'trusted_keys = ["keys/issuer.pub"]\nmax_cumulative_epsilon = 2.0\n'
# The hostile pull request's policy lists the key file that it replaced and drops the
# epsilon limit.
PR_POLICY = 'trusted_keys = ["keys/issuer.pub"]\n'
# A base branch policy that names the directory holding the key instead of the key.
FOLDER_KEY_POLICY = 'trusted_keys = ["keys"]\nmax_cumulative_epsilon = 2.0\n'
# No user or system git configuration, so the results do not depend on this machine.
GIT_ENV = {
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
}

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _job() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    job: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())["jobs"]["verify-certificates"]
    return job


def _step_script(name: str) -> str:
    [step] = [step for step in _job()["steps"] if step.get("name") == name]
    script: str = step["run"]
    return script


def _git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _commit(work: Path, files: dict[str, bytes | str], message: str) -> None:
    for relative, content in files.items():
        path = work / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
    _git(work, "add", "--all")
    _git(work, "commit", "--quiet", "-m", message)


def _rogue_certificate(honest_run: HonestRun, directory: Path) -> tuple[bytes, bytes]:
    """Return (certificate, public key) of the same deletion signed with another key."""
    private_path, public_path = signing.write_keypair(directory / "rogue")
    doc = honest_run.load_cert()
    doc["issuer"]["key_id"] = signing.key_id(signing.load_public_key(public_path))
    signed = resign(doc, private_path)
    return json.dumps(signed, indent=2).encode(), public_path.read_bytes()


@pytest.fixture
def origin(honest_run: HonestRun, tmp_path: Path) -> Path:
    """Return a bare repository whose base branch ``main`` has the trusted policy and key.

    Pull request ``honest`` adds a README. ``hostile`` re-signs the certificate with its
    own key, puts that key in place of the trusted one and loosens the policy.
    ``first-policy`` starts from ``bare-main``, which has no policy, and adds one.
    ``keyless-main`` has a policy but not the key that it lists. ``folder-key-main``
    has the key, but its policy lists the key's directory.
    """
    work = tmp_path / "maintainer"
    work.mkdir()
    _git(work, "init", "--quiet", "--initial-branch=bare-main")
    model = {"models/a/cert.json": honest_run.cert.read_bytes(),
             "models/a/model.safetensors": honest_run.model.read_bytes()}
    _commit(work, model, "add the model")
    trust = {"keys/issuer.pub": honest_run.public_key.read_bytes(),
             "mbd-cert-policy.toml": BASE_POLICY}
    _git(work, "checkout", "--quiet", "-b", "keyless-main")
    _commit(work, {"mbd-cert-policy.toml": BASE_POLICY}, "add the policy alone")
    _git(work, "checkout", "--quiet", "-b", "first-policy", "bare-main")
    _commit(work, trust, "add the policy")
    _git(work, "checkout", "--quiet", "-b", "main")

    _git(work, "checkout", "--quiet", "-b", "folder-key-main", "main")
    _commit(work, {"mbd-cert-policy.toml": FOLDER_KEY_POLICY}, "list the key directory")
    _git(work, "checkout", "--quiet", "-b", "honest", "main")
    _commit(work, {"README.md": "models\n"}, "add a README")

    _git(work, "checkout", "--quiet", "-b", "hostile", "main")
    certificate, rogue_key = _rogue_certificate(honest_run, tmp_path)
    _commit(work, {"models/a/cert.json": certificate, "keys/issuer.pub": rogue_key,
                   "mbd-cert-policy.toml": PR_POLICY}, "replace the issuer key")

    bare = tmp_path / "origin.git"
    _git(tmp_path, "clone", "--quiet", "--bare", str(work), str(bare))
    return bare


def _checkout(origin: Path, branch: str, directory: Path) -> Path:
    """Fetch one commit of ``branch`` the way actions/checkout does, with no other ref."""
    directory.mkdir()
    _git(directory, "init", "--quiet")
    _git(directory, "remote", "add", "origin", origin.as_uri())
    _git(directory, "fetch", "--quiet", "--no-tags", "--depth=1", "origin",
         f"refs/heads/{branch}")
    _git(directory, "checkout", "--quiet", "--detach", "FETCH_HEAD")
    return directory


def _run_step(name: str, checkout: Path, runner_temp: Path,
              base_ref: str) -> subprocess.CompletedProcess[str]:
    """Run a step's script as GitHub's default shell does (``bash -e {0}``)."""
    script = runner_temp / f"{name.replace(' ', '-')}.sh"
    script.write_text(_step_script(name))
    scripts_dir = Path(sys.executable).parent
    env = {**os.environ, **GIT_ENV, **_job()["env"], "GITHUB_BASE_REF": base_ref,
           "RUNNER_TEMP": str(runner_temp),
           "PATH": f"{scripts_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["bash", "-e", str(script)], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def runner_temp(tmp_path: Path) -> Path:
    if shutil.which("mbd-cert", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("the mbd-cert console script is not installed (pip install -e .)")
    directory = tmp_path / "runner-temp"
    directory.mkdir()
    return directory


def test_no_expression_in_scripts() -> None:
    # GitHub pastes an expression such as github.base_ref into the script text before
    # bash runs it, so the scripts read environment variables instead.
    for step in _job()["steps"]:
        assert "${{" not in step.get("run", ""), step["name"]


def test_hostile_pull_request_rejected(origin, tmp_path, runner_temp, honest_run):
    checkout = _checkout(origin, "hostile", tmp_path / "checkout")

    copied = _run_step(COPY_STEP, checkout, runner_temp, base_ref="main")
    assert copied.returncode == 0, copied.stdout + copied.stderr
    trusted = runner_temp / "mbd-cert-trusted"
    assert (trusted / "policy.toml").read_text() == BASE_POLICY
    assert (trusted / "keys" / "issuer.pub").read_bytes() == honest_run.public_key.read_bytes()

    verified = _run_step(VERIFY_STEP, checkout, runner_temp, base_ref="main")
    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert "E_KEY_UNTRUSTED" in (checkout / "mbd-cert-junit.xml").read_text()


def test_hostile_pull_request_passes_own_policy(origin, tmp_path, runner_temp):
    # The attack that the copy step stops: with the pull request's own policy and key,
    # the re-signed certificate verifies. A push run reads the checkout's policy.
    checkout = _checkout(origin, "hostile", tmp_path / "checkout")
    verified = _run_step(VERIFY_STEP, checkout, runner_temp, base_ref="")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_honest_pull_request_accepted(origin, tmp_path, runner_temp):
    checkout = _checkout(origin, "honest", tmp_path / "checkout")
    copied = _run_step(COPY_STEP, checkout, runner_temp, base_ref="main")
    assert copied.returncode == 0, copied.stdout + copied.stderr
    verified = _run_step(VERIFY_STEP, checkout, runner_temp, base_ref="main")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_push_skips_copy(origin, tmp_path, runner_temp):
    checkout = _checkout(origin, "main", tmp_path / "checkout")
    copied = _run_step(COPY_STEP, checkout, runner_temp, base_ref="")
    assert copied.returncode == 0, copied.stdout + copied.stderr
    assert not (runner_temp / "mbd-cert-trusted").exists()


def test_first_policy_pull_request_fails(origin, tmp_path, runner_temp):
    # The base branch has no policy yet, and the pull request's own copy is untrusted.
    checkout = _checkout(origin, "first-policy", tmp_path / "checkout")
    copied = _run_step(COPY_STEP, checkout, runner_temp, base_ref="bare-main")
    assert copied.returncode == 1, copied.stdout + copied.stderr
    assert "no mbd-cert-policy.toml on the base branch 'bare-main'" in copied.stdout
    assert not (runner_temp / "mbd-cert-trusted" / "policy.toml").exists()

    verified = _run_step(VERIFY_STEP, checkout, runner_temp, base_ref="bare-main")
    assert verified.returncode == 2, verified.stdout + verified.stderr


def test_key_missing_on_base_fails(origin, tmp_path, runner_temp):
    checkout = _checkout(origin, "honest", tmp_path / "checkout")
    copied = _run_step(COPY_STEP, checkout, runner_temp, base_ref="keyless-main")
    assert copied.returncode == 1, copied.stdout + copied.stderr
    assert "trusted_keys lists 'keys/issuer.pub', which is not a file on the base branch" \
        in copied.stdout
    assert not (runner_temp / "mbd-cert-trusted" / "keys").exists()


def test_key_directory_on_base_fails(origin, tmp_path, runner_temp):
    # git cat-file -e accepts a tree, so the step checks that the key is a file.
    checkout = _checkout(origin, "honest", tmp_path / "checkout")
    copied = _run_step(COPY_STEP, checkout, runner_temp, base_ref="folder-key-main")
    assert copied.returncode == 1, copied.stdout + copied.stderr
    assert ("::error::trusted_keys lists 'keys', which is not a file on the base branch "
            "'folder-key-main'. Add the key file there or correct trusted_keys in "
            "mbd-cert-policy.toml.") in copied.stdout
    assert not (runner_temp / "mbd-cert-trusted" / "keys").exists()
