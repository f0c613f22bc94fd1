"""verify-repo accounts jointly for certificates that extend the same model (R-REPO-8)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_support import TINY_ISSUE_OPTIONS, HonestRun, run_cli

from mbd_cert import accounting


@pytest.fixture(scope="module")
def second_run(honest_run: HonestRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second first deletion of the honest checkpoint: audio again, with other noise.

    A deletion of vision would keep the audio encoder that the honest deletion removed,
    and that fails both certificates (R-REPO-12) whatever their joint epsilon.
    """
    out = tmp_path_factory.mktemp("fork") / "second"
    outcome = run_cli(["issue", "--checkpoint", honest_run.checkpoint, *TINY_ISSUE_OPTIONS,
                       "--key", honest_run.private_key, "--out", out])
    assert outcome.exit_code == 0, outcome.stderr
    return out


@pytest.fixture(scope="module")
def resaved_run(honest_run: HonestRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An audio deletion from the honest checkpoint's weights re-saved with other metadata."""
    from mbd_cert import _safetensors
    from mbd_cert._safetensors_write import write_safetensors
    from mbd_cert.checkpoint import read_tensors

    root = tmp_path_factory.mktemp("resaved")
    checkpoint = root / "checkpoint"
    shutil.copytree(honest_run.checkpoint, checkpoint)
    model = checkpoint / "model.safetensors"
    metadata = dict(_safetensors.read_header(model).metadata)
    metadata["note"] = "re-saved copy"
    write_safetensors(model, read_tensors(model), metadata, overwrite=True)
    out = root / "second"
    outcome = run_cli(["issue", "--checkpoint", checkpoint, *TINY_ISSUE_OPTIONS,
                       "--key", honest_run.private_key, "--out", out])
    assert outcome.exit_code == 0, outcome.stderr
    return out


def _repo(tmp_path: Path, run: HonestRun, sources: dict[str, Path], limit: str) -> Path:
    root = tmp_path / "repo"
    for name, source in sources.items():
        shutil.copytree(source, root / name, ignore=shutil.ignore_patterns(
            "diff.safetensors", "probe.safetensors", "eval.safetensors"))
    (root / "keys").mkdir()
    shutil.copy(run.public_key, root / "keys" / "issuer.pub")
    (root / "mbd-cert-policy.toml").write_text(
        f'trusted_keys = ["keys/issuer.pub"]\n{limit}')
    return root


def _joint_epsilon(*outputs: Path) -> float:
    import json

    docs = [json.loads((out / "cert.json").read_text())["privacy"] for out in outputs]
    mu = accounting.gdp_mu([d["sigma"] for d in docs], [d["sensitivity"] for d in docs])
    return accounting.gdp_epsilon(mu, 1e-5)


def test_two_first_deletions_warn(honest_run: HonestRun, second_run: Path,
                                  tmp_path: Path) -> None:
    root = _repo(tmp_path, honest_run, {"first": honest_run.out_dir, "second": second_run},
                 "max_cumulative_epsilon = 2.0\n")
    outcome = run_cli(["verify-repo", root])
    assert outcome.exit_code == 0, outcome.stderr
    joint = _joint_epsilon(honest_run.out_dir, second_run)
    assert 1.0 < joint < 2.0
    warnings = [line for line in outcome.stderr.splitlines() if "forked chain" in line]
    assert len(warnings) == 2
    assert "2 deletions that extend the same model" in warnings[0]
    assert warnings[0].endswith("the certificates: first/cert.json, second/cert.json")
    # Every digit, as the certificates hold their epsilons.
    assert f"joint epsilon {joint!r} at delta 1e-05" in warnings[0]


def test_table_prints_the_fork_warning_once(honest_run: HonestRun, second_run: Path,
                                            tmp_path: Path) -> None:
    root = _repo(tmp_path, honest_run, {"first": honest_run.out_dir, "second": second_run},
                 "max_cumulative_epsilon = 2.0\n")
    outcome = run_cli(["verify-repo", root])
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.count("forked chain: joint epsilon") == 1
    assert "[1] warning: forked chain: joint epsilon" in outcome.stdout
    assert outcome.stdout.count("warning [1] below") == 2
    # The note wraps at the console width; join its lines.
    assert "the certificates: first/cert.json, second/cert.json" in " ".join(
        outcome.stdout.split())


def test_fork_over_policy_limit_fails(honest_run: HonestRun, second_run: Path,
                                      tmp_path: Path) -> None:
    # Each certificate states epsilon 1, within the limit; together they exceed it.
    root = _repo(tmp_path, honest_run, {"first": honest_run.out_dir, "second": second_run},
                 "max_cumulative_epsilon = 1.2\n")
    outcome = run_cli(["verify-repo", root, "--json"])
    assert outcome.exit_code == 1, outcome.stderr
    for record in outcome.report["results"]:
        assert record["exit_code"] == 1
        fork = next(c for c in record["report"]["checks"] if c["name"] == "chain-fork")
        assert fork["status"] == "fail"
        assert fork["code"] == "E_POLICY_VIOLATION"
        assert "above the policy's max_cumulative_epsilon 1.2" in fork["detail"]


def test_table_keeps_why_the_fork_failed(honest_run: HonestRun, second_run: Path,
                                         tmp_path: Path) -> None:
    root = _repo(tmp_path, honest_run, {"first": honest_run.out_dir, "second": second_run},
                 "max_cumulative_epsilon = 1.2\n")
    outcome = run_cli(["verify-repo", root])
    assert outcome.exit_code == 1, outcome.stderr
    # The cell wraps over lines between border characters; join its pieces.
    table = "".join(outcome.stdout.replace("│", " ").split())
    assert "abovethepolicy'smax_cumulative_epsilon1.2" in table
    # The shortened cells point to the full detail under the table.
    assert table.count("infullas[1]below") == 2
    notes = outcome.stdout.split("└")[-1]
    assert "[1] chain-fork [E_POLICY_VIOLATION]: forked chain" in notes
    assert "the certificates: first/cert.json, second/cert.json" in " ".join(notes.split())


def test_one_certificate_twice_is_no_fork(honest_run: HonestRun, tmp_path: Path) -> None:
    root = _repo(tmp_path, honest_run, {"a": honest_run.out_dir, "b": honest_run.out_dir},
                 "max_cumulative_epsilon = 1.2\n")
    outcome = run_cli(["verify-repo", root])
    assert outcome.exit_code == 0, outcome.stderr
    assert "forked chain" not in outcome.stderr


def test_resaved_weights_still_fork(honest_run: HonestRun, resaved_run: Path,
                                    tmp_path: Path) -> None:
    import json

    pre = [json.loads((out / "cert.json").read_text())["subject_model"]["pre_deletion"]
           for out in (honest_run.out_dir, resaved_run)]
    assert pre[0]["manifest_digest"] != pre[1]["manifest_digest"]
    assert pre[0]["tensors"] == pre[1]["tensors"]
    root = _repo(tmp_path, honest_run, {"first": honest_run.out_dir,
                                        "second": resaved_run},
                 "max_cumulative_epsilon = 1.2\n")
    outcome = run_cli(["verify-repo", root, "--json"])
    assert outcome.exit_code == 1, outcome.stderr
    for record in outcome.report["results"]:
        fork = next(c for c in record["report"]["checks"] if c["name"] == "chain-fork")
        assert fork["status"] == "fail"
        assert fork["code"] == "E_POLICY_VIOLATION"
