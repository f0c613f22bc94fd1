"""verify-repo --auditor-private-key: level 2 from sealed audit bundles in a repository."""

from __future__ import annotations

import shutil
from pathlib import Path

from cli_support import HonestRun, IssuerKeys, publish_sealed, run_cli


def _repo(tmp_path: Path, sealed_out: Path, plain: HonestRun) -> Path:
    """Return a level-2 repository: one sealed certificate, one with its plain bundle."""
    root = tmp_path / "repo"
    (root / "sealed").mkdir(parents=True)
    publish_sealed(sealed_out, root / "sealed")
    (root / "plain").mkdir()
    for name in ("cert.json", "model.safetensors", "diff.safetensors", "probe.safetensors"):
        shutil.copy(plain.out_dir / name, root / "plain" / name)
    # The tiny model has too few masked entries for the normality test.
    (root / "mbd-cert-policy.toml").write_text("required_level = 2\nallow_inconclusive = true\n")
    return root


def _results(outcome) -> dict[str, dict]:
    assert outcome.report is not None
    return {r["certificate"]: r for r in outcome.report["results"]}


def test_sealed_bundle_verifies_at_level_2(sealed_run, honest_run: HonestRun,
                                           issuer_keys: IssuerKeys, tmp_path: Path):
    """R-REPO-2: at level 2 a sealed certificate reads its sealed file, others the plain files."""
    out, auditor_key = sealed_run
    root = _repo(tmp_path, out, honest_run)
    outcome = run_cli(["verify-repo", root, "--key", issuer_keys.public, "--json",
                       "--auditor-private-key", auditor_key])
    assert outcome.exit_code == 0, outcome.stderr
    results = _results(outcome)
    assert results["sealed/cert.json"]["verified"] is True
    assert results["plain/cert.json"]["verified"] is True
    sealed_checks = {c["name"]: c["status"]
                     for c in results["sealed/cert.json"]["report"]["checks"]}
    assert sealed_checks["sealed-bundle"] == "pass"
    assert sealed_checks["saliency-mask"] == "pass"


def test_sealed_bundle_without_key_is_unusable(sealed_run, honest_run: HonestRun,
                                               issuer_keys: IssuerKeys, tmp_path: Path):
    out, _ = sealed_run
    root = _repo(tmp_path, out, honest_run)
    outcome = run_cli(["verify-repo", root, "--key", issuer_keys.public, "--json"])
    assert outcome.exit_code == 2
    results = _results(outcome)
    assert results["sealed/cert.json"]["exit_code"] == 2
    assert results["plain/cert.json"]["exit_code"] == 0


def test_sealed_bundle_with_other_key_exit_2(sealed_run, honest_run: HonestRun,
                                             issuer_keys: IssuerKeys, tmp_path: Path):
    # The wrong auditor key is unusable input, as for verify --auditor-private-key.
    out, _ = sealed_run
    root = _repo(tmp_path, out, honest_run)
    assert run_cli(["keygen", "--kind", "x25519", "--out", tmp_path / "other"]).exit_code == 0
    outcome = run_cli(["verify-repo", root, "--key", issuer_keys.public, "--json",
                       "--auditor-private-key", tmp_path / "other.key"])
    assert outcome.exit_code == 2
    results = _results(outcome)
    assert results["sealed/cert.json"]["exit_code"] == 2
    assert "auditor private key" in results["sealed/cert.json"]["error"]["hint"]
    assert results["plain/cert.json"]["verified"] is True


def test_signing_key_as_auditor_key_exit_2(sealed_run, honest_run: HonestRun,
                                           issuer_keys: IssuerKeys, tmp_path: Path):
    out, _ = sealed_run
    root = _repo(tmp_path, out, honest_run)
    outcome = run_cli(["verify-repo", root, "--key", issuer_keys.public,
                       "--auditor-private-key", issuer_keys.private])
    assert outcome.exit_code == 2
    assert "[E_KEY_INVALID]" in outcome.stderr
    assert "(--auditor-private-key): contains a private key of kind Ed25519" in outcome.stderr


def _detail_column(table: str) -> str:
    """Return the table's detail cells, joined in order (rich wraps them over lines)."""
    cells = [line.split("│")[3].strip() for line in table.splitlines()
             if line.count("│") == 4]
    return " ".join(cell for cell in cells if cell)


def test_table_shows_hints_details_and_level(sealed_run, honest_run: HonestRun,
                                             issuer_keys: IssuerKeys, tmp_path: Path):
    out, auditor_key = sealed_run
    root = _repo(tmp_path, out, honest_run)
    # Forgotten auditor key: the table names the option that fixes it.
    missing = run_cli(["verify-repo", root, "--key", issuer_keys.public])
    assert missing.exit_code == 2
    detail = _detail_column(missing.stdout)
    assert "(hint: this directory holds the sealed bundle" in detail
    assert "--auditor-private-key" in detail
    assert "at level 2 (exit 2)" in missing.stdout
    # The table gives the reason for an inconclusive check, not only --json.
    (root / "mbd-cert-policy.toml").write_text("required_level = 2\n")
    strict = run_cli(["verify-repo", root, "--key", issuer_keys.public,
                      "--auditor-private-key", auditor_key])
    assert strict.exit_code == 1
    assert "too few for the normality test" in _detail_column(strict.stdout)
    # Without a policy file, the summary reports that none was found.
    (root / "mbd-cert-policy.toml").unlink()
    plain = run_cli(["verify-repo", root, "--key", issuer_keys.public])
    assert plain.exit_code == 0, plain.stderr
    assert "at level 1, no policy file found" in " ".join(plain.stdout.split())
