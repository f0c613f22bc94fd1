"""Helpers for CLI tests: run ``mbd-cert`` in-process, read its JSON, build hostile files.

Imported by the tests of this folder and by ``conftest.py``.
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from mbd_cert import certificate, signing
from mbd_cert.cli import main

# Small enough that training plus issuing takes seconds on 2 CPU cores.
TINY_TRAIN_OPTIONS = (
    "--corpus", "synthetic", "--seed", "0", "--epochs", "2", "--hidden-dim", "8",
    "--shared-dim", "4", "--private-dim", "4", "--fusion-hidden", "8",
    "--probe-members", "16", "--probe-nonmembers", "16", "--no-progress",
)
TINY_ISSUE_OPTIONS = ("--modality", "audio", "--epsilon", "1", "--steps", "2")


@dataclass(frozen=True)
class IssuerKeys:
    """An Ed25519 key pair written by ``mbd-cert keygen``."""

    private: Path
    public: Path


@dataclass(frozen=True)
class HonestRun:
    """Paths of a trained checkpoint and of one honest certified deletion.

    Attributes:
        checkpoint: Directory written by ``mbd-cert train``.
        out_dir: Directory written by ``mbd-cert issue`` (model, cert, audit bundle).
        cert: ``out_dir/cert.json``.
        model: ``out_dir/model.safetensors``, the released model.
        diff: ``out_dir/diff.safetensors``.
        probe: ``out_dir/probe.safetensors``.
        public_key: The issuer's public key file.
        private_key: The issuer's private key file.
    """

    checkpoint: Path
    out_dir: Path
    cert: Path
    model: Path
    diff: Path
    probe: Path
    public_key: Path
    private_key: Path

    def copy_to(self, directory: Path) -> HonestRun:
        """Copy the issued outputs to ``directory/del``; checkpoint and keys stay shared."""
        target = directory / "del"
        shutil.copytree(self.out_dir, target)
        return HonestRun(
            checkpoint=self.checkpoint, out_dir=target, cert=target / "cert.json",
            model=target / "model.safetensors", diff=target / "diff.safetensors",
            probe=target / "probe.safetensors", public_key=self.public_key,
            private_key=self.private_key,
        )

    def load_cert(self) -> dict[str, Any]:
        """Return the certificate as parsed JSON (no validation)."""
        doc: dict[str, Any] = json.loads(self.cert.read_bytes())
        return doc


def publish_sealed(out: Path, target: Path) -> None:
    """Copy what an issuer publishes with a sealed bundle: no plain bundle files."""
    for name in ("cert.json", "model.safetensors", "audit-bundle.sealed"):
        shutil.copy(out / name, target / name)


def invoke(args: Sequence[str]) -> Result:
    """Run ``mbd-cert ARGS`` in-process, keeping stdout and stderr apart."""
    return CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)


def _checked(result: Result, what: str) -> Result:
    if result.exit_code != 0:
        raise RuntimeError(f"{what} failed with exit {result.exit_code}: {result.output}")
    return result


@dataclass(frozen=True)
class Outcome:
    """What one ``mbd-cert`` run produced.

    Attributes:
        exit_code: The process exit code.
        stdout: Standard output (the result, or the JSON report with ``--json``).
        stderr: Standard error (messages and logs).
        report: ``stdout`` parsed as JSON, or None when it is not one JSON document.
    """

    exit_code: int
    stdout: str
    stderr: str
    report: dict[str, Any] | None

    @property
    def error_code(self) -> str | None:
        """The ``E_...`` code of a run that stopped on an error (``--json`` only)."""
        if self.report is None or not isinstance(self.report.get("error"), dict):
            return None
        code = self.report["error"].get("code")
        return code if isinstance(code, str) else None

    @property
    def failed_codes(self) -> dict[str, str]:
        """Check name -> code of every failed check in the JSON report."""
        if self.report is None:
            return {}
        return {check["name"]: check["code"] for check in self.report.get("checks", [])
                if check["status"] == "fail"}

    def check_detail(self, name: str) -> str:
        """The detail text of check ``name`` in the JSON report."""
        assert self.report is not None, self.stderr
        for check in self.report["checks"]:
            if check["name"] == name:
                return str(check["detail"])
        raise AssertionError(f"no check named {name!r} in the report")


def run_cli(args: Sequence[object]) -> Outcome:
    """Run ``mbd-cert ARGS`` in-process; any exception that escapes click fails the test."""
    result = invoke([str(arg) for arg in args])
    report = None
    try:
        parsed = json.loads(result.stdout)
        report = parsed if isinstance(parsed, dict) else None
    except ValueError:
        pass
    return Outcome(result.exit_code, result.stdout, result.stderr, report)


def verify(cert: Path, model: Path, key: Path | None, *extra: object) -> Outcome:
    """Run ``mbd-cert verify CERT MODEL --key KEY --json EXTRA``."""
    key_args: list[object] = ["--key", key] if key is not None else []
    return run_cli(["verify", cert, model, *key_args, "--json", *extra])


def assert_clean(outcome: Outcome) -> None:
    """Assert that the run printed no traceback and, on failure, a message on stderr."""
    assert "Traceback" not in outcome.stdout
    assert "Traceback" not in outcome.stderr
    assert outcome.exit_code != 3, outcome.stderr
    if outcome.exit_code != 0:
        assert outcome.stderr.strip(), "a failing run must say why on stderr"


def assert_input_error(outcome: Outcome, code: str) -> None:
    """Assert exit code 2, error ``code`` in the JSON report, and no traceback."""
    assert_clean(outcome)
    assert outcome.exit_code == 2, outcome.stderr
    assert outcome.error_code == code, outcome.stderr
    assert f"[{code}]" in outcome.stderr


def assert_check_failed(outcome: Outcome, check: str, code: str) -> None:
    """Assert exit code 1 and that check ``check`` failed with ``code``."""
    assert_clean(outcome)
    assert outcome.exit_code == 1, outcome.stderr
    assert outcome.report is not None and outcome.report["verified"] is False
    assert outcome.failed_codes.get(check) == code, outcome.failed_codes


def resign(doc: dict[str, Any], private_key: Path) -> dict[str, Any]:
    """Return ``doc`` signed again with the key in ``private_key``."""
    key = signing.load_private_key(private_key)
    return certificate.sign_certificate(doc, key)


def write_json(path: Path, doc: Any) -> Path:
    """Write ``doc`` as indented JSON and return ``path``."""
    path.write_text(json.dumps(doc, indent=2))
    return path


def safetensors_bytes(header: str | bytes, data: bytes = b"") -> bytes:
    """Return a safetensors file: 8-byte little-endian header length, header, data."""
    raw = header.encode("utf-8") if isinstance(header, str) else header
    return struct.pack("<Q", len(raw)) + raw + data


def split_safetensors(data: bytes) -> tuple[dict[str, Any], bytes]:
    """Return (parsed header, data section) of a well-formed safetensors file."""
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + size]), data[8 + size:]


def flip_signature_s(value: str) -> str:
    """Return a base64 Ed25519 signature whose S half is replaced by S + L."""
    group_order = 2**252 + 27742317777372353535851937790883648493
    raw = base64.b64decode(value)
    s_plus_l = int.from_bytes(raw[32:], "little") + group_order
    return base64.b64encode(raw[:32] + s_plus_l.to_bytes(32, "little")).decode("ascii")
