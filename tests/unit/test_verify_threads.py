"""Torch threads during verification: set for levels 2 and 3, restored afterwards."""

from __future__ import annotations

import pytest
import torch

from mbd_cert import verify_leakage, verify_recompute
from mbd_cert.errors import InputError
from mbd_cert.verify import VerifyOptions, verify
from tests.unit.level_factories import honest_bundle


@pytest.mark.parametrize("threads", [1, 2])
def test_levels_run_with_requested_threads(monkeypatch, threads):
    _, out, key = honest_bundle()
    seen = []
    real_level2, real_level3 = verify_recompute.run_level2, verify_leakage.run_level3

    def level2(*args, **kwargs):
        seen.append(("level 2", torch.get_num_threads()))
        return real_level2(*args, **kwargs)

    def level3(*args, **kwargs):
        seen.append(("level 3", torch.get_num_threads()))
        return real_level3(*args, **kwargs)

    monkeypatch.setattr(verify_recompute, "run_level2", level2)
    monkeypatch.setattr(verify_leakage, "run_level3", level3)
    before = torch.get_num_threads()
    other = 3 if before != 3 else 4
    torch.set_num_threads(other)  # the caller's own setting, to be restored
    try:
        report = verify(out / "cert.json", out / "model.safetensors",
                        VerifyOptions(trusted_keys=[key.public_key()], level=3,
                                      bundle_dir=out, threads=threads))
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(before)
    assert report.verified
    assert seen == [("level 2", threads), ("level 3", threads)]


@pytest.mark.parametrize("threads", [0, 1025, 1.5, True])
def test_invalid_thread_counts_rejected(threads):
    _, out, key = honest_bundle()
    with pytest.raises(InputError) as caught:
        verify(out / "cert.json", out / "model.safetensors",
               VerifyOptions(trusted_keys=[key.public_key()], threads=threads))
    assert caught.value.code == "E_PARAMETER_INVALID"
    assert "--threads" in caught.value.message
