"""Tests for mbd_cert._json: strict parsing of untrusted JSON and bounded file reads."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from mbd_cert._json import (
    DEFAULT_MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_NUMBER_DIGITS,
    SAFE_INTEGER_MAX,
    json_path,
    load_json_strict,
    read_bytes_capped,
    read_json_file,
)
from mbd_cert.errors import (
    FileMissing,
    InputError,
    LimitExceeded,
    MalformedCertificate,
    MalformedSafetensors,
)


def load(data: bytes, **caps: Any) -> Any:
    return load_json_strict(data, what="certificate", **caps)


def rejection(data: bytes, error: type[Exception] = MalformedCertificate, **caps: Any) -> str:
    """Return the message of the expected error, for checks on its wording."""
    with pytest.raises(error) as info:
        load(data, **caps)
    return str(info.value)


def test_caps_have_documented_values() -> None:
    assert DEFAULT_MAX_JSON_BYTES == 1024 * 1024
    assert MAX_JSON_DEPTH == 64
    assert MAX_NUMBER_DIGITS == 64
    assert SAFE_INTEGER_MAX == 9007199254740991


def test_accepts_plain_document() -> None:
    data = b'{"privacy": {"epsilon": 0.5, "delta": 1e-5}, "tags": ["a", null, true], "n": -3}'
    assert load(data) == {
        "privacy": {"epsilon": 0.5, "delta": 1e-5},
        "tags": ["a", None, True],
        "n": -3,
    }


# --- encoding ---------------------------------------------------------------------


def test_byte_order_mark_rejected() -> None:
    with pytest.raises(MalformedCertificate) as info:
        load(b'\xef\xbb\xbf{"a": 1}')
    assert info.value.code == "E_JSON_ENCODING"
    assert "byte order mark" in str(info.value)
    # Files that are not signed (a checkpoint config) keep the generic advice.
    assert "save the file as UTF-8" in info.value.hint


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": "\xff"}',
        b'{"a": "\xc0\xaf"}',  # overlong encoding of "/"
        b'{"a": "\xed\xa0\x80"}',  # UTF-8 encoded surrogate
        '{"a": 1}'.encode("utf-16"),
    ],
    ids=["invalid-byte", "overlong", "encoded-surrogate", "utf-16"],
)
def test_invalid_utf8_rejected(data: bytes) -> None:
    with pytest.raises(MalformedCertificate) as info:
        load(data)
    assert info.value.code == "E_JSON_ENCODING"
    assert "offset" in str(info.value)


def test_lone_surrogate_escape_rejected_with_path() -> None:
    with pytest.raises(MalformedCertificate) as info:
        load(b'{"issuer": {"name": "x\\ud800y"}}')
    assert info.value.code == "E_JSON_ENCODING"
    assert "issuer.name" in str(info.value)


def test_lone_surrogate_in_key_rejected() -> None:
    with pytest.raises(MalformedCertificate) as info:
        load(b'{"\\udc00": 1}')
    assert info.value.code == "E_JSON_ENCODING"


def test_paired_surrogate_escape_accepted() -> None:
    assert load(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}


# --- syntax -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b'{"a": 1,}', b"[1 2]", b"{'a': 1}", b'{"a": 1} x', b'"a\nb"', b"01"],
    ids=[
        "empty",
        "unclosed",
        "trailing-comma",
        "no-comma",
        "single-quotes",
        "extra-data",
        "raw-newline",
        "leading-zero",
    ],
)
def test_invalid_json_rejected(data: bytes) -> None:
    with pytest.raises(MalformedCertificate) as info:
        load(data)
    assert info.value.code == "E_JSON_SYNTAX"
    assert "line 1" in str(info.value)


def test_non_ascii_digits_rejected() -> None:
    with pytest.raises(MalformedCertificate) as info:
        load("[\u0661]".encode())
    assert info.value.code == "E_JSON_SYNTAX"


# --- duplicate keys ----------------------------------------------------------------


def test_duplicate_key_at_top_level_rejected() -> None:
    with pytest.raises(MalformedCertificate) as info:
        load(b'{"epsilon": 100, "epsilon": 0.5}')
    assert info.value.code == "E_JSON_DUPLICATE_KEY"
    assert "at epsilon" in str(info.value)


def test_duplicate_key_nested_names_path() -> None:
    with pytest.raises(MalformedCertificate) as info:
        load(b'{"privacy": {"x": [1, {"epsilon": 100, "epsilon": 0.5}]}}')
    assert info.value.code == "E_JSON_DUPLICATE_KEY"
    assert "privacy.x[1].epsilon" in str(info.value)


def test_duplicate_key_with_equal_values_rejected() -> None:
    with pytest.raises(MalformedCertificate) as info:
        load(b'{"a": {"b": 1, "b": 1}}')
    assert info.value.code == "E_JSON_DUPLICATE_KEY"


def test_duplicate_key_uses_given_error_class() -> None:
    with pytest.raises(MalformedSafetensors) as info:
        load_json_strict(
            b'{"w": {"dtype": "F32"}, "w": {"dtype": "F16"}}',
            what="safetensors header",
            error_class=MalformedSafetensors,
        )
    assert info.value.code == "E_JSON_DUPLICATE_KEY"
    assert "safetensors header" in str(info.value)


# --- non-finite and oversized numbers ----------------------------------------------


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (b'{"privacy": {"epsilon": NaN}}', "privacy.epsilon"),
        (b'{"privacy": {"delta": Infinity}}', "privacy.delta"),
        (b'{"privacy": {"delta": -Infinity}}', "privacy.delta"),
        (b'{"privacy": {"epsilon": 1e400}}', "privacy.epsilon"),
        (b'{"privacy": {"epsilon": -1.5E+999}}', "privacy.epsilon"),
        (b'{"values": [1, 2, 1' + b"0" * 60 + b"e300]}", "values[2]"),
    ],
    ids=["nan", "infinity", "minus-infinity", "1e400", "minus-overflow", "overflow-in-list"],
)
def test_non_finite_number_rejected_with_path(data: bytes, path: str) -> None:
    message = rejection(data)
    assert path in message
    with pytest.raises(MalformedCertificate) as info:
        load(data)
    assert info.value.code == "E_JSON_NONFINITE_NUMBER"
    assert "restore the file" in info.value.hint


@pytest.mark.parametrize(("literal", "expected"), [
    (b"20.0", 20), (b"2e1", 20), (b"-3.0", -3), (b"0.0", 0),
    (b"9007199254740991.0", 9007199254740991),
])
def test_integral_float_reads_as_int(literal: bytes, expected: int) -> None:
    # An integer field must accept 20.0: it has the canonical bytes of 20.
    value = load(literal)
    assert type(value) is int
    assert value == expected


def test_negative_zero_stays_float() -> None:
    value = load(b"-0.0")
    assert type(value) is float
    assert math.copysign(1.0, value) < 0


def test_underflow_reads_as_zero() -> None:
    assert load(b"[1e-400]") == [0.0]


def test_inexact_large_integer_rejected() -> None:
    with pytest.raises(MalformedCertificate) as info:
        load(b'{"seed": 9007199254740993}')
    assert info.value.code == "E_JSON_INTEGER_INEXACT"
    assert "seed" in str(info.value)


def test_safe_integer_bounds_stay_int() -> None:
    value = load(b"[9007199254740991, -9007199254740991]")
    assert value == [SAFE_INTEGER_MAX, -SAFE_INTEGER_MAX]
    assert all(type(item) is int for item in value)


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        (b"9007199254740992", 2.0**53),
        (b"-9007199254740994", -(2.0**53) - 2),
        (b"100000000000000000000", 1e20),
        (b"123456789012345680000", 1.2345678901234568e20),
        (b"1152921504606846976", 2.0**60),
    ],
)
def test_large_integer_reads_as_double(literal: bytes, expected: float) -> None:
    value = load(b"[" + literal + b"]")
    assert value == [expected]
    assert type(value[0]) is float


@pytest.mark.parametrize("literal", [b"1" + b"0" * 64, b"-" + b"9" * 65, b"0." + b"1" * 64])
def test_number_with_too_many_digits_rejected(literal: bytes) -> None:
    with pytest.raises(LimitExceeded) as info:
        load(b'{"n": ' + literal + b"}")
    assert info.value.code == "E_JSON_NUMBER_TOO_LONG"
    assert "at n" in str(info.value)


def test_huge_integer_literal_rejected() -> None:
    # CPython's int() raises ValueError beyond sys.get_int_max_str_digits() digits.
    digits = sys.get_int_max_str_digits() + 1
    with pytest.raises(LimitExceeded) as info:
        load(b"[" + b"7" * digits + b"]", max_bytes=10 * digits)
    assert info.value.code == "E_JSON_NUMBER_TOO_LONG"


def test_number_at_digit_cap_accepted() -> None:
    assert load(b"[0." + b"5" * 63 + b"]") == [0.5555555555555556]


# --- nesting and size -------------------------------------------------------------


def test_deep_nesting_rejected_before_parsing() -> None:
    with pytest.raises(LimitExceeded) as info:
        load(b"[" * 100_000 + b"]" * 100_000)
    assert info.value.code == "E_JSON_TOO_DEEP"
    assert "line 1, column 65" in str(info.value)


def test_deep_unclosed_nesting_rejected() -> None:
    with pytest.raises(LimitExceeded) as info:
        load(b'{"a":' * 100_000)
    assert info.value.code == "E_JSON_TOO_DEEP"


def test_nesting_at_cap_accepted() -> None:
    depth = MAX_JSON_DEPTH
    value = load(b"[" * depth + b"]" * depth)
    for _ in range(depth - 1):
        assert isinstance(value, list)
        value = value[0]
    assert value == []


def test_nesting_one_past_cap_rejected() -> None:
    depth = MAX_JSON_DEPTH + 1
    with pytest.raises(LimitExceeded) as info:
        load(b'{"a":' * (depth - 1) + b"[]" + b"}" * (depth - 1))
    assert info.value.code == "E_JSON_TOO_DEEP"


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"a": "[" * 1000 + "{" * 1000, "b": ['\\"[[[', "\\\\"]})
    assert load(text.encode())["b"] == ['\\"[[[', "\\\\"]


def test_escaped_quote_does_not_hide_brackets() -> None:
    # The first string ends after an escaped backslash, so the brackets are real.
    data = b'["\\\\", ' + b"[" * 70 + b"]" * 70 + b"]"
    with pytest.raises(LimitExceeded) as info:
        load(data)
    assert info.value.code == "E_JSON_TOO_DEEP"


def test_many_shallow_brackets_accepted() -> None:
    data = json.dumps([[i] for i in range(10_000)]).encode()
    assert len(load(data)) == 10_000


def test_unmatched_brackets_are_a_syntax_error() -> None:
    with pytest.raises(MalformedCertificate) as info:
        load(b"[" * 40 + b"}" * 40)
    assert info.value.code == "E_JSON_SYNTAX"


@pytest.mark.parametrize("data", [b'{"issuer": {"name": "ab', b'{"a": [1, 2', b'{"a": 1,  '],
                         ids=["in-string", "in-list", "after-comma"])
def test_truncated_file_hint(data: bytes) -> None:
    with pytest.raises(MalformedCertificate) as info:
        load(data)
    assert info.value.code == "E_JSON_SYNTAX"
    assert "truncated" in info.value.hint
    assert " at at " not in info.value.message
    assert "(line 1, column" in info.value.message


@pytest.mark.parametrize(("data", "contents"), [(b"", "is empty"),
                                                 (b" \n", "contains only whitespace")],
                         ids=["empty", "whitespace"])
def test_empty_file_hint(data: bytes, contents: str) -> None:
    with pytest.raises(MalformedCertificate) as info:
        load(data)
    assert info.value.code == "E_JSON_SYNTAX"
    assert f"the file {contents}" in info.value.hint
    assert "truncated" not in info.value.hint


def test_syntax_error_inside_file_hint() -> None:
    with pytest.raises(MalformedCertificate) as info:
        load(b'{"a": 1,, "b": 2}')
    assert "truncated" not in info.value.hint
    assert "must not be edited" in info.value.hint


def test_custom_depth_cap() -> None:
    with pytest.raises(LimitExceeded):
        load(b"[[[1]]]", max_depth=2)
    assert load(b"[[1]]", max_depth=2) == [[1]]


def test_input_over_size_cap_rejected() -> None:
    with pytest.raises(LimitExceeded) as info:
        load(b" " * 11 + b"1", max_bytes=11)
    assert info.value.code == "E_INPUT_TOO_LARGE"
    assert "12 bytes; the maximum is 11" in str(info.value)


def test_default_size_cap() -> None:
    with pytest.raises(LimitExceeded):
        load(b" " * DEFAULT_MAX_JSON_BYTES + b"1")


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_depth", -1), ("max_depth", 10_000), ("max_number_digits", 5000), ("max_bytes", -1)],
)
def test_invalid_cap_argument_rejected(name: str, value: int) -> None:
    with pytest.raises(InputError) as info:
        load(b"1", **{name: value})
    assert info.value.code == "E_PARAMETER_INVALID"
    assert name in str(info.value)


# --- JSON paths -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([], "(root)"),
        (["privacy", "epsilon"], "privacy.epsilon"),
        (["tensors", 2, "name"], "tensors[2].name"),
        ([0, "a"], "[0].a"),
        (["$schema"], "$schema"),
        (["a b", "c.d"], '["a b"]["c.d"]'),
        (["x\x1b[31m"], '["x\\u001b[31m"]'),
    ],
)
def test_json_path_format(parts: list[str | int], expected: str) -> None:
    assert json_path(parts) == expected


def test_json_path_shortens_long_key() -> None:
    assert len(json_path(["k" * 10_000])) < 100


# --- files ------------------------------------------------------------------------


def test_read_json_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cert.json"
    path.write_bytes(b'{"a": [1, 2.5]}')
    assert read_json_file(path, what="certificate") == {"a": [1, 2.5]}


def test_read_json_file_missing_names_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(FileMissing) as info:
        read_json_file(path, what="certificate")
    assert info.value.code == "E_FILE_MISSING"
    assert "absent.json" in str(info.value)


def test_read_json_file_directory_rejected(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        read_json_file(tmp_path, what="certificate")
    assert info.value.code == "E_FILE_NOT_REGULAR"
    assert "directory" in str(info.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_read_json_file_fifo_rejected_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "pipe.json"
    os.mkfifo(path)
    with pytest.raises(InputError) as info:
        read_json_file(path, what="certificate")
    assert info.value.code == "E_FILE_NOT_REGULAR"


def test_read_json_file_size_checked_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.json"
    with path.open("wb") as handle:
        handle.truncate(DEFAULT_MAX_JSON_BYTES + 1)  # sparse: costs no disk space
    monkeypatch.setattr(os, "open", _fail_if_called)
    with pytest.raises(LimitExceeded) as info:
        read_json_file(path, what="certificate")
    assert info.value.code == "E_INPUT_TOO_LARGE"
    assert "big.json" in str(info.value)


def _fail_if_called(*args: object, **kwargs: object) -> int:
    raise AssertionError("the file was opened although stat showed it is too large")


def test_read_json_file_malformed_names_file(tmp_path: Path) -> None:
    path = tmp_path / "cert.json"
    path.write_bytes(b'{"a": NaN}')
    with pytest.raises(MalformedCertificate) as info:
        read_json_file(path, what="certificate")
    assert info.value.code == "E_JSON_NONFINITE_NUMBER"
    assert "cert.json" in str(info.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_read_unreadable_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "secret.json"
    path.write_bytes(b"{}")
    path.chmod(0)
    with pytest.raises(InputError) as info:
        read_bytes_capped(path, what="certificate", max_bytes=100)
    assert info.value.code == "E_FILE_UNREADABLE"


def test_read_bytes_capped_follows_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target.json"
    target.write_bytes(b"[]")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert read_bytes_capped(link, what="certificate", max_bytes=10) == b"[]"


# --- properties -------------------------------------------------------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-SAFE_INTEGER_MAX, max_value=SAFE_INTEGER_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same_json(left: object, right: object) -> bool:
    # JSON has one number type: 2.0 may read back as the int 2, but -0.0 keeps its sign.
    if _number(left) and _number(right):
        return left == right and math.copysign(1, left) == math.copysign(1, right)
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_same_json(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(_same_json, left, right))
    return type(left) is type(right) and left == right


@settings(max_examples=200, deadline=None)
@given(value=json_values, ensure_ascii=st.booleans())
def test_accepts_any_json_dumps_output(value: object, ensure_ascii: bool) -> None:
    data = json.dumps(value, ensure_ascii=ensure_ascii).encode()
    assert _same_json(load(data), value)


@settings(max_examples=200, deadline=None)
@given(value=st.integers(min_value=SAFE_INTEGER_MAX + 1, max_value=2**70))
def test_large_integer_read_exactly_or_rejected(value: int) -> None:
    try:
        parsed = load(str(value).encode())
    except MalformedCertificate as error:
        assert error.code == "E_JSON_INTEGER_INEXACT"
        assert int(float(value)) != value
    else:
        # Accepted: the double equals the integer, or the literal is its RFC 8785 text.
        assert isinstance(parsed, float)
        assert int(parsed) == value or rfc8785.dumps(parsed) == str(value).encode()
