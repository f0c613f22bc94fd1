"""``-v`` logs each step of issue and each check of verify as it ends."""

from __future__ import annotations

from pathlib import Path

from cli_support import TINY_ISSUE_OPTIONS, HonestRun, run_cli


def test_verbose_verify_logs_each_check(honest_run: HonestRun) -> None:
    outcome = run_cli(["-v", "verify", honest_run.cert, honest_run.model,
                       "--key", honest_run.public_key, "--level", "2",
                       "--bundle", honest_run.out_dir, "--allow-inconclusive"])
    assert outcome.exit_code == 0, outcome.stderr
    lines = [line for line in outcome.stderr.splitlines() if line.startswith("INFO")]
    logged = [line.split(": ", 1)[1].split(":")[0] for line in lines
              if line.startswith("INFO mbd_cert.report:")]
    assert logged[:3] == ["schema", "signature", "model-digest"]
    assert "model-finite" in logged
    assert "residual-normality" in logged
    # Each check is logged once, as it ends, before the level-2 timing line.
    assert len(logged) == len(set(logged))
    timing = next(i for i, line in enumerate(lines) if "level 2 took" in line)
    normality = next(i for i, line in enumerate(lines)
                     if line.startswith("INFO mbd_cert.report: residual-normality:"))
    assert normality < timing
    assert lines[-1].endswith("checks: verified")


def test_verbose_issue_logs_each_step(honest_run: HonestRun, tmp_path: Path) -> None:
    outcome = run_cli(["-v", "issue", "--checkpoint", honest_run.checkpoint,
                       *TINY_ISSUE_OPTIONS, "--key", honest_run.private_key,
                       "--out", tmp_path / "del"])
    assert outcome.exit_code == 0, outcome.stderr
    info = "\n".join(line for line in outcome.stderr.splitlines() if line.startswith("INFO"))
    assert "structural removal:" in info
    assert "saliency mask:" in info
    assert "masked update: 2 steps" in info
    assert "noise: sigma" in info
    assert "(clip-bound)" in info
    assert "wrote certificate" in info
