"""Warnings of `mbd-cert issue` about settings that verify poorly."""

from __future__ import annotations

import pytest
from cli_support import TINY_ISSUE_OPTIONS, run_cli


@pytest.mark.parametrize(("top_k", "warned"), [("0.02", True), ("0.5", False)])
def test_small_mask_warns_about_level_2(tiny_checkpoint, issuer_keys, tmp_path, top_k, warned):
    outcome = run_cli(["issue", "--checkpoint", tiny_checkpoint, *TINY_ISSUE_OPTIONS,
                       "--top-k", top_k, "--key", issuer_keys.private,
                       "--out", tmp_path / "out"])
    assert outcome.exit_code == 0, outcome.stderr
    assert ("masked entries: level 2 needs at least 20" in outcome.stderr) is warned
