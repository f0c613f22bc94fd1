"""Tests for mbd_cert._numbers: the digits text output gives sigma, epsilon and delta."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mbd_cert._numbers import exact_number


@pytest.mark.parametrize(
    ("value", "text"),
    [(1, "1"), (1.0, "1"), (2.0, "2"), (0.5, "0.5"), (1e-05, "1e-05"), (2e-05, "2e-05"),
     (0.007461263270081258, "0.007461263270081258"), (1.4651699603497639, "1.4651699603497639"),
     (0.1 + 0.2, "0.30000000000000004"), (123456.0, "123456"), (1e16, "1e+16"),
     (5.960464477539063e-08, "5.960464477539063e-08"), (math.inf, "inf")],
)
def test_exact_number_examples(value: float, text: str) -> None:
    assert exact_number(value) == text


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_exact_number_reads_back(value: float) -> None:
    text = exact_number(value)
    assert float(text) == value
    # The number as json writes it in cert.json, less a whole number's ".0".
    assert text == json.dumps(value).removesuffix(".0")
