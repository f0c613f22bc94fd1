"""The policy check's failure text, with and without a walked chain."""

from __future__ import annotations

import pytest

from mbd_cert._level1_checks import check_policy
from mbd_cert.errors import PolicyViolation


def _doc(method: str = "declared", epsilon: float = 2.0) -> dict:
    return {"accounting": {"cumulative_epsilon": epsilon, "delta": 1e-5, "sequence_number": 2},
            "privacy": {"sensitivity_method": method}}


def test_unwalked_chain_says_so():
    with pytest.raises(PolicyViolation) as caught:
        check_policy(_doc(), [], max_epsilon=1.0, max_delta=None, required_method=None,
                     accepted_methods=())
    message = caught.value.message
    assert message.startswith("cumulative epsilon 2 exceeds the policy limit 1")
    assert message.endswith("checked on the newest certificate only (the chain could not "
                            "be walked)")


def test_unwalked_chain_lists_every_violation():
    with pytest.raises(PolicyViolation) as caught:
        check_policy(_doc(), [], max_epsilon=1.0, max_delta=None, required_method="clip-bound",
                     accepted_methods=())
    message = caught.value.message
    assert message.startswith("2 policy violations: ")
    assert "sensitivity method is 'declared', the policy requires 'clip-bound'" in message
    assert message.endswith("(the chain could not be walked)")


def test_unwalked_pass_names_scope():
    result = check_policy(_doc("clip-bound", 0.5), [], max_epsilon=1.0, max_delta=None,
                          required_method="clip-bound", accepted_methods=())
    assert result.status == "pass"
    assert "the newest certificate only" in result.detail


def test_violation_hint_not_called_valid():
    # The policy check also runs when the signature or the accounting check failed, and
    # its hint called such a certificate valid.
    with pytest.raises(PolicyViolation) as caught:
        check_policy(_doc(), [], max_epsilon=1.0, max_delta=None, required_method=None,
                     accepted_methods=())
    assert "is valid but" not in caught.value.hint
    assert "the other checks show whether it is valid" in caught.value.hint
