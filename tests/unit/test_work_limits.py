"""mbd_cert._work_limits: the replay caps of level 2, at the values SPEC.md section 10 states."""

from __future__ import annotations

import pytest

from mbd_cert._work_limits import check_evidence_work, check_update_work
from mbd_cert.errors import LimitExceeded


def test_update_steps_capped_at_1000() -> None:
    """R-LIM-6: level 2 replays at most 1,000 update steps."""
    check_update_work(1_000, 1, source="certificate")
    with pytest.raises(LimitExceeded) as caught:
        check_update_work(1_001, 1, source="certificate")
    assert caught.value.code == "E_LIMIT_EXCEEDED"
    assert caught.value.exit_code == 2


def test_sample_steps_capped_at_2_million() -> None:
    """R-LIM-6: level 2 replays at most 2,000,000 update steps times probe samples."""
    check_update_work(20, 100_000, source="certificate")
    with pytest.raises(LimitExceeded) as caught:
        check_update_work(20, 100_001, source="certificate")
    assert caught.value.code == "E_LIMIT_EXCEEDED"
    assert "2000020 sample-steps" in caught.value.message


def test_evidence_reruns_capped_at_16_million() -> None:
    """R-LIM-6: reference-retrain reruns: at most 16,000,000 (runs + 4) x steps x samples."""
    # 4 stated runs and level 2's 4 spot checks make 8 reruns.
    check_evidence_work(4, 20, 100_000, source="certificate")
    with pytest.raises(LimitExceeded) as caught:
        check_evidence_work(4, 20, 100_001, source="certificate")
    assert caught.value.code == "E_LIMIT_EXCEEDED"
    assert "16000160 sample-steps" in caught.value.message


def test_replay_operations_capped_at_2e12() -> None:
    """R-LIM-8: (steps + 10) x probe samples x operations per sample is at most 2e12."""
    from mbd_cert._work_limits import check_operation_work

    # 200 passes over 10 samples of 10**9 operations each.
    check_operation_work(10**9, 190, 10, source="certificate")
    with pytest.raises(LimitExceeded) as caught:
        check_operation_work(10**9, 190, 11, source="certificate")
    assert caught.value.code == "E_LIMIT_EXCEEDED"
    assert "2200000000000 operations" in caught.value.message


def test_evidence_operations_capped_at_1_6e13() -> None:
    """R-LIM-8: reference-retrain reruns: (runs + 4) x (steps + 1) x samples x operations."""
    from mbd_cert._work_limits import check_operation_work

    # 60 stated runs and 4 spot checks of 25 passes each, over 100 samples.
    check_operation_work(10**8, 24, 100, runs=60, source="certificate")
    with pytest.raises(LimitExceeded) as caught:
        check_operation_work(10**8, 24, 101, runs=60, source="certificate")
    assert caught.value.code == "E_LIMIT_EXCEEDED"
    assert "16160000000000 operations" in caught.value.message
    assert "--reference-runs" in caught.value.hint


def test_operations_uncapped_without_estimate() -> None:
    """An architecture without forward_operations gets no operation cap."""
    from mbd_cert._work_limits import check_operation_work

    check_operation_work(None, 1_000, 100_000, runs=64, source="certificate")
