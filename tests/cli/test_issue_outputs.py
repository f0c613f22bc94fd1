"""File modes of what `mbd-cert issue` writes: public outputs readable, the bundle private."""

from __future__ import annotations

import os
import stat

import pytest
from cli_support import HonestRun

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_audit_bundle_files_are_private(honest_run: HonestRun):
    for name in ("diff.safetensors", "probe.safetensors", "eval.safetensors"):
        path = honest_run.out_dir / name
        if path.exists():
            assert _mode(path) == 0o600, name


def test_released_model_and_certificate_are_readable(honest_run: HonestRun):
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "cert.json"):
        assert _mode(honest_run.out_dir / name) == 0o644 & ~umask, name
    assert _mode(honest_run.out_dir) == 0o755 & ~umask
