"""``key-id`` and ``keygen`` print the key id that certificates record."""

from __future__ import annotations

from pathlib import Path

from cli_support import HonestRun, run_cli


def test_key_id_matches_certificate(honest_run: HonestRun) -> None:
    outcome = run_cli(["key-id", honest_run.public_key])
    assert outcome.exit_code == 0, outcome.stderr
    key_id = honest_run.load_cert()["issuer"]["key_id"]
    assert outcome.stdout == f"{key_id}  {honest_run.public_key}\n"


def test_keygen_prints_the_key_id(tmp_path: Path) -> None:
    outcome = run_cli(["keygen", "--out", tmp_path / "k"])
    assert outcome.exit_code == 0, outcome.stderr
    listed = run_cli(["key-id", tmp_path / "k.pub"]).stdout.split()[0]
    assert outcome.stdout == (f"wrote {tmp_path / 'k.key'} and {tmp_path / 'k.pub'} "
                              f"(key id {listed})\n")


def test_key_id_rejects_a_private_key(tmp_path: Path) -> None:
    assert run_cli(["keygen", "--out", tmp_path / "k"]).exit_code == 0
    outcome = run_cli(["key-id", tmp_path / "k.key"])
    assert outcome.exit_code == 2
    assert "[E_KEY_INVALID]" in outcome.stderr
