"""The public key formats that ``--help`` names are the ones the key loader accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import HonestRun, run_cli, verify
from cryptography.hazmat.primitives import serialization

from mbd_cert import signing

FORMATS = ("PEM", "64 hex digits", "32 raw bytes")


def _raw_key(public_key: Path) -> bytes:
    return signing.load_public_key(public_key).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@pytest.mark.parametrize("command", ["verify", "verify-repo"])
def test_key_help_names_every_format(command: str) -> None:
    outcome = run_cli([command, "--help"])
    assert outcome.exit_code == 0, outcome.stderr
    # click wraps help text, so compare with the line breaks taken out.
    text = " ".join(outcome.stdout.split())
    start = text.index("--key ")
    key_help = text[start:start + 200]
    for name in FORMATS:
        assert name in key_help, name


@pytest.mark.parametrize("encoding", ["hex", "raw"])
def test_verify_accepts_hex_and_raw_keys(encoding: str, honest_run: HonestRun,
                                         tmp_path: Path) -> None:
    raw = _raw_key(honest_run.public_key)
    key = tmp_path / f"issuer.{encoding}"
    key.write_bytes(raw.hex().encode() + b"\n" if encoding == "hex" else raw)
    outcome = verify(honest_run.cert, honest_run.model, key)
    assert outcome.exit_code == 0, outcome.stderr
