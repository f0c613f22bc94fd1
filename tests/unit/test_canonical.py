"""Tests for mbd_cert.canonical: RFC 8785 bytes and what signed content may hold.

The expected bytes below were written by hand from the rules of RFC 8785 (section 3.2)
and ECMA-262 Number::toString, not copied from another implementation's output.
"""

from __future__ import annotations

import enum
import json
import math
from collections import OrderedDict
from typing import Any

import numpy as np
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from mbd_cert._json import MAX_JSON_DEPTH, SAFE_INTEGER_MAX, load_json_strict
from mbd_cert.canonical import canonical_bytes
from mbd_cert.errors import LimitExceeded, MalformedCertificate


def rejection_code(value: Any) -> str:
    with pytest.raises(MalformedCertificate) as info:
        canonical_bytes(value)
    return info.value.code


# --- numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1e-7, b"1e-7"),
        (100.0, b"100"),
        (1e20, b"100000000000000000000"),
    ],
)
def test_numbers_in_signed_fields(value: float, expected: bytes) -> None:
    assert canonical_bytes(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0, b"0"),
        (1.0, b"1"),
        (-3, b"-3"),
        (4.5, b"4.5"),
        (-1.5, b"-1.5"),
        (0.1 + 0.2, b"0.30000000000000004"),
        (0.000001, b"0.000001"),  # 1e-6 is the smallest value written without exponent
        (1.5e-6, b"0.0000015"),
        (9.999999999999997e-7, b"9.999999999999997e-7"),  # the double below 1e-6
        (5e-7, b"5e-7"),
        (-5e-8, b"-5e-8"),
        (1e16, b"10000000000000000"),
        (2.0**53, b"9007199254740992"),
        (1.2345678901234568e20, b"123456789012345680000"),
        (9.999999999999999e20, b"999999999999999900000"),  # the double below 1e21
        (1e21, b"1e+21"),  # 1e21 is the smallest value written with an exponent
        (333333333.3333333, b"333333333.3333333"),
        (5e-324, b"5e-324"),
        (1.7976931348623157e308, b"1.7976931348623157e+308"),
        (SAFE_INTEGER_MAX, b"9007199254740991"),
        (-SAFE_INTEGER_MAX, b"-9007199254740991"),
    ],
)
def test_number_serialization(value: float, expected: bytes) -> None:
    assert canonical_bytes(value) == expected


@pytest.mark.parametrize(
    ("value", "path"),
    [
        (-0.0, "(root)"),
        ({"privacy": {"epsilon": -0.0}}, "privacy.epsilon"),
        ({"a": [1, 2**53 + 1]}, "a[1]"),
        ({"a": -(2**53) - 1}, "a"),
        ({"a": 10**30}, "a"),
        ({"sigma": math.nan}, "sigma"),
        ({"sigma": math.inf}, "sigma"),
        ({"sigma": -math.inf}, "sigma"),
    ],
    ids=[
        "minus-zero",
        "minus-zero-nested",
        "2**53+1",
        "-(2**53)-1",
        "1e30-int",
        "nan",
        "inf",
        "minus-inf",
    ],
)
def test_unsignable_number_rejected_with_path(value: Any, path: str) -> None:
    with pytest.raises(MalformedCertificate) as info:
        canonical_bytes(value)
    assert info.value.code == "E_CANONICAL_NUMBER"
    assert f"at {path} " in str(info.value)


def test_large_integral_float_accepted() -> None:
    # A double beyond 2**53 is a number, not an integer that lost precision.
    assert canonical_bytes(float(2**53 + 2)) == b"9007199254740994"


def test_booleans_are_not_numbers() -> None:
    assert canonical_bytes([True, False, None]) == b"[true,false,null]"


# --- strings and keys -------------------------------------------------------------


def test_key_order_follows_utf16_code_units() -> None:
    # U+1F600 is the surrogate pair D83D DE00 in UTF-16, so it sorts before U+FB33,
    # although its code point is larger. Python's sort_keys orders by code point.
    value = {"\u20ac": 1, "\r": 2, "\ufb33": 3, "1": 4, "\U0001f600": 5}
    expected = '{"\\r":2,"1":4,"\u20ac":1,"\U0001f600":5,"\ufb33":3}'.encode()
    assert canonical_bytes(value) == expected
    assert (
        json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        != expected
    )


def test_non_ascii_written_as_utf8_not_escaped() -> None:
    assert canonical_bytes("\u20ac\U0001f600") == b'"\xe2\x82\xac\xf0\x9f\x98\x80"'


def test_nested_objects_sorted_arrays_kept() -> None:
    value = {"b": [3, 1, {"z": 1, "a": 2}], "a": {"y": None, "x": "s"}}
    assert canonical_bytes(value) == b'{"a":{"x":"s","y":null},"b":[3,1,{"a":2,"z":1}]}'


def test_string_escaping() -> None:
    value = '\u0000\u0007\b\t\n\f\r\u001f"\\/\u007f\u2028\u00e9'
    expected = b'"\\u0000\\u0007\\b\\t\\n\\f\\r\\u001f\\"\\\\/\x7f\xe2\x80\xa8\xc3\xa9"'
    assert canonical_bytes(value) == expected


def test_empty_containers() -> None:
    assert canonical_bytes({"a": {}, "b": []}) == b'{"a":{},"b":[]}'


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ("\ud800", "(root)"),
        ({"name": "x\udfffy"}, "name"),
        ({"\ud83d": 1}, '["\\ud83d"]'),
    ],
)
def test_lone_surrogate_rejected(value: Any, path: str) -> None:
    with pytest.raises(MalformedCertificate) as info:
        canonical_bytes(value)
    assert info.value.code == "E_CANONICAL_STRING"
    assert path in str(info.value)


# --- types ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "path", "type_name"),
    [
        ((1, 2), "(root)", "tuple"),
        ({"shape": (2, 3)}, "shape", "tuple"),
        ({"s": {1, 2}}, "s", "set"),
        ({"b": b"raw"}, "b", "bytes"),
        ({"n": np.int64(3)}, "n", "numpy.int64"),
        ({"f": np.float32(0.5)}, "f", "numpy.float32"),
        ({"o": object()}, "o", "object"),
    ],
)
def test_unsupported_type_rejected(value: Any, path: str, type_name: str) -> None:
    with pytest.raises(MalformedCertificate) as info:
        canonical_bytes(value)
    assert info.value.code == "E_CANONICAL_TYPE"
    assert f"at {path} " in str(info.value)
    assert type_name in str(info.value)


@pytest.mark.parametrize("key", [1, 1.5, None, ("a",)])
def test_non_string_key_rejected(key: Any) -> None:
    assert rejection_code({"outer": {key: 1}}) == "E_CANONICAL_TYPE"


class _Colour(enum.IntEnum):
    RED = 1


def test_builtin_subclasses_serialize_as_base_type() -> None:
    value = OrderedDict([("b", _Colour.RED), ("a", np.float64(0.25))])
    assert canonical_bytes(value) == b'{"a":0.25,"b":1}'


def test_canonical_depth_cap() -> None:
    value: Any = []
    for _ in range(MAX_JSON_DEPTH - 1):
        value = [value]
    assert canonical_bytes(value) == b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    with pytest.raises(LimitExceeded) as info:
        canonical_bytes([value])
    assert info.value.code == "E_JSON_TOO_DEEP"


def test_reference_cycle_rejected() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(LimitExceeded) as info:
        canonical_bytes({"a": cycle})
    assert info.value.code == "E_JSON_TOO_DEEP"


# --- properties -------------------------------------------------------------------

_finite_floats = st.floats(allow_nan=False, allow_infinity=False).filter(
    lambda x: not (x == 0.0 and math.copysign(1.0, x) < 0)
)
_signable = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-SAFE_INTEGER_MAX, max_value=SAFE_INTEGER_MAX)
    | _finite_floats
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(value=_signable)
def test_canonical_bytes_fixed_point(value: Any) -> None:
    data = canonical_bytes(value)
    assert canonical_bytes(load_json_strict(data, what="canonical bytes")) == data


@settings(max_examples=300, deadline=None)
@given(value=_finite_floats)
def test_float_text_round_trips(value: float) -> None:
    assert float(canonical_bytes(value)) == value


@settings(max_examples=200, deadline=None)
@given(value=st.dictionaries(st.text(), st.integers(0, 9), max_size=8))
def test_keys_sorted_by_utf16(value: dict[str, int]) -> None:
    parsed = json.loads(canonical_bytes(value))
    assert list(parsed) == sorted(value, key=lambda key: key.encode("utf-16-be"))


_KEY_CHARS = "aZ_0\x00\x1f\"\\\x7f\u00e9\u2028\ue000\uffff\U0001f600\U00010000"
_TEXT_CHARS = "a\x00\x08\t\n\x0c\r\x1f\"\\/\x7f\u2028\U0001f600"
_keys = st.text(alphabet=st.sampled_from(_KEY_CHARS), max_size=4)
_plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-SAFE_INTEGER_MAX, max_value=SAFE_INTEGER_MAX)
    | st.text(alphabet=st.sampled_from(_TEXT_CHARS), max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=30,
)
_mixed = st.dictionaries(_keys, st.one_of(_plain, _finite_floats))


@settings(max_examples=400, deadline=None)
@given(value=st.one_of(_signable, _plain, _mixed))
def test_same_bytes_as_rfc8785_package(value: Any) -> None:
    # Float-free containers take json.dumps; the package remains the reference.
    assert canonical_bytes(value) == rfc8785.dumps(value)
