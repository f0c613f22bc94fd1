"""`issue`, `train` and `report` reject an --out that is an input or contains one.

Each command replaces --out as a whole, so with --force such a run deleted the
checkpoint, the data, a key or a certificate it had just read. The check runs before
any work, whether or not --force is given, and compares paths after resolving
symbolic links.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_support import TINY_ISSUE_OPTIONS, TINY_TRAIN_OPTIONS, HonestRun, assert_clean, run_cli

CODE = "[E_OUTPUT_IS_INPUT]"


def _tree(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def _assert_rejected(outcome, *options: str) -> None:
    assert_clean(outcome)
    assert outcome.exit_code == 2, outcome.stderr
    assert CODE in outcome.stderr
    for option in ("--out", *options):
        assert option in outcome.stderr
    assert "choose another --out" in outcome.stderr


@pytest.fixture
def checkpoint_copy(honest_run: HonestRun, tmp_path: Path) -> Path:
    return Path(shutil.copytree(honest_run.checkpoint, tmp_path / "ck2"))


def _issue(checkpoint: Path, key: Path, out: Path, *extra: object):
    return run_cli(["issue", "--checkpoint", checkpoint, *TINY_ISSUE_OPTIONS, "--key", key,
                    "--out", out, *extra])


@pytest.mark.parametrize("force", [True, False], ids=["force", "no-force"])
def test_issue_out_is_checkpoint(checkpoint_copy: Path, honest_run: HonestRun, force: bool):
    """R-ISS-4: --out may not be the checkpoint, with or without --force."""
    before = _tree(checkpoint_copy)
    outcome = _issue(checkpoint_copy, honest_run.private_key, checkpoint_copy,
                     *(["--force"] if force else []))
    _assert_rejected(outcome, "--checkpoint")
    assert _tree(checkpoint_copy) == before


def test_issue_out_contains_checkpoint(checkpoint_copy: Path, honest_run: HonestRun,
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """R-ISS-4: relative paths are resolved before the comparison."""
    # Relative paths: '.' is the folder that contains the checkpoint.
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    outcome = _issue(Path("ck2"), honest_run.private_key, Path("."), "--force")
    _assert_rejected(outcome, "--checkpoint")
    assert _tree(tmp_path) == before


def test_issue_out_is_symlink_to_checkpoint(checkpoint_copy: Path, honest_run: HonestRun,
                                            tmp_path: Path):
    """R-ISS-4: symbolic links are resolved before the comparison."""
    link = tmp_path / "release"
    link.symlink_to(checkpoint_copy, target_is_directory=True)
    before = _tree(checkpoint_copy)
    outcome = _issue(checkpoint_copy, honest_run.private_key, link, "--force")
    _assert_rejected(outcome, "--checkpoint")
    assert _tree(checkpoint_copy) == before
    assert link.is_symlink()


def test_issue_out_contains_key(honest_run: HonestRun, tmp_path: Path):
    """R-ISS-4: an --out that contains the --key is rejected."""
    keys = tmp_path / "keys"
    keys.mkdir()
    key = Path(shutil.copy(honest_run.private_key, keys / "issuer.key"))
    outcome = _issue(honest_run.checkpoint, key, keys, "--force")
    _assert_rejected(outcome, "--key")
    assert key.read_bytes() == honest_run.private_key.read_bytes()


def test_issue_out_contains_previous(fresh_run: HonestRun, tmp_path: Path):
    """R-ISS-4: an --out that contains the --previous certificate is rejected."""
    # The chain continues from a copy of the released model, with the certificate
    # named by --previous; --out is the directory of that certificate.
    checkpoint = Path(shutil.copytree(fresh_run.out_dir, tmp_path / "continued"))
    (checkpoint / "cert.json").unlink()
    before = _tree(fresh_run.out_dir)
    outcome = run_cli(["issue", "--checkpoint", checkpoint, "--modality", "vision",
                       "--epsilon", "1", "--steps", "2", "--key", fresh_run.private_key,
                       "--previous", fresh_run.cert, "--out", fresh_run.out_dir, "--force"])
    _assert_rejected(outcome, "--previous")
    assert _tree(fresh_run.out_dir) == before


def test_issue_out_contains_auditor_key(honest_run: HonestRun, tmp_path: Path):
    """R-ISS-4: an --out that contains the --auditor-key is rejected, even with --force."""
    keys = tmp_path / "keys"
    keys.mkdir()
    assert run_cli(["keygen", "--kind", "x25519", "--out", keys / "auditor"]).exit_code == 0
    before = _tree(keys)
    outcome = _issue(honest_run.checkpoint, honest_run.private_key, keys,
                     "--auditor-key", keys / "auditor.pub", "--force")
    _assert_rejected(outcome, "--auditor-key")
    assert _tree(keys) == before


def test_issue_out_contains_eval_set(honest_run: HonestRun, tmp_path: Path):
    """R-ISS-4: an --out that contains the --eval-set is rejected, even with --force."""
    held_out = tmp_path / "held-out"
    held_out.mkdir()
    eval_set = Path(shutil.copy(honest_run.checkpoint / "eval.safetensors", held_out))
    before = _tree(held_out)
    outcome = _issue(honest_run.checkpoint, honest_run.private_key, held_out,
                     "--eval-set", eval_set, "--force")
    _assert_rejected(outcome, "--eval-set")
    assert _tree(held_out) == before


def test_issue_out_inside_checkpoint_accepted(checkpoint_copy: Path, honest_run: HonestRun):
    """R-ISS-4: an --out inside the checkpoint directory is allowed."""
    before = _tree(checkpoint_copy)
    out = checkpoint_copy / "release"
    outcome = _issue(checkpoint_copy, honest_run.private_key, out, "--force")
    assert outcome.exit_code == 0, outcome.stderr
    assert (out / "cert.json").is_file()
    after = {name: data for name, data in _tree(checkpoint_copy).items()
             if not name.startswith("release/")}
    assert after == before


def test_library_issue_rejects_checkpoint_as_out(checkpoint_copy: Path,
                                                 honest_run: HonestRun):
    """R-ISS-4: the library's issue() applies the rule too."""
    from mbd_cert import signing
    from mbd_cert.errors import InputError
    from mbd_cert.issue import IssueOptions, issue

    options = IssueOptions(modality="audio", epsilon=1.0, delta=1e-5, steps=2, force=True)
    key = signing.load_private_key(honest_run.private_key)
    before = _tree(checkpoint_copy)
    with pytest.raises(InputError) as caught:
        issue(checkpoint_copy, checkpoint_copy, options, key)
    assert caught.value.code == "E_OUTPUT_IS_INPUT"
    assert _tree(checkpoint_copy) == before


def test_train_out_is_data_root(tmp_path: Path):
    """R-ISS-4: train rejects an --out that is its data root."""
    data = tmp_path / "ck2"
    data.mkdir()
    (data / "keep.txt").write_text("corpus files")
    outcome = run_cli(["train", *TINY_TRAIN_OPTIONS, "--out", data, "--force",
                       "--data-root", data])
    _assert_rejected(outcome, "--data-root")
    assert (data / "keep.txt").read_text() == "corpus files"


def test_train_out_contains_default_data_root(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch):
    data = tmp_path / "shared" / "data"
    data.mkdir(parents=True)
    monkeypatch.setenv("MBD_CERT_DATA", str(data))
    outcome = run_cli(["train", *TINY_TRAIN_OPTIONS, "--corpus", "mosei-subset",
                       "--out", tmp_path / "shared", "--force"])
    _assert_rejected(outcome, "data root")
    assert data.is_dir()


def test_report_out_contains_certificate(fresh_run: HonestRun):
    """R-ISS-4: report rejects an --out that contains a certificate it reads."""
    before = _tree(fresh_run.out_dir)
    outcome = run_cli(["report", "--out", fresh_run.out_dir, "--force", fresh_run.cert])
    _assert_rejected(outcome, "CERT")
    assert _tree(fresh_run.out_dir) == before


def test_report_out_is_chain_directory(fresh_run: HonestRun, tmp_path: Path):
    cert = Path(shutil.copy(fresh_run.cert, tmp_path / "cert.json"))
    outcome = run_cli(["report", "--out", fresh_run.out_dir, "--force", cert,
                       "--chain", fresh_run.out_dir])
    _assert_rejected(outcome, "--chain")
    assert (fresh_run.out_dir / "cert.json").is_file()
