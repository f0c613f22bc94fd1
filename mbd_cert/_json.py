"""Strict JSON loading of untrusted bytes.

Stability: private module. The certificate, schema and key readers use it; its
functions may change between releases without notice.

Python's ``json.loads`` accepts input that a signed certificate must not contain. It
keeps the last of two equal keys, reads ``NaN`` and ``Infinity``, turns ``1e400`` into
``inf``, spends quadratic time on integers with thousands of digits, and recurses once
per nesting level until it raises ``RecursionError``. :func:`load_json_strict` rejects
all of these and names the JSON path of the offending value (for example
``privacy.epsilon``).
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
from collections.abc import Sequence
from typing import Any, NoReturn

import rfc8785

from mbd_cert._read_capped import read_bytes_capped, show_path
from mbd_cert.errors import InputError, LimitExceeded, MalformedCertificate

# Default size cap, 1 MiB, for small JSON documents such as checkpoint configs.
# Callers pass the cap of their format: SPEC.md R-LIM-1 allows certificates of 64 MiB.
DEFAULT_MAX_JSON_BYTES = 1 << 20

# SPEC.md R-FMT-2 caps certificate nesting at 64 levels (v1 certificates use fewer than
# 8). This stays far below CPython's default recursion limit of 1000, and json.loads and
# the value walk below each use one stack frame per level.
MAX_JSON_DEPTH = 64

# A double needs at most 17 significant digits, and RFC 8785 writes integral doubles
# below 1e21 with at most 21 digits. 64 digits admits every number a JSON writer
# produces for a double, while a literal of thousands of digits would cost quadratic
# time in int() (CPython stops at 4300 digits with a ValueError).
MAX_NUMBER_DIGITS = 64

# Largest integer n such that every integer in [-n, n] is exactly a double
# (ECMA-262 Number.MAX_SAFE_INTEGER). RFC 8785 numbers are doubles.
SAFE_INTEGER_MAX = 2**53 - 1

# Upper bounds for the caps a caller may pass. Deeper nesting would approach the
# recursion limit, and int() rejects longer literals
# (sys.int_info.default_max_str_digits is 4300 in CPython 3.11).
_DEPTH_CAP_LIMIT = 500
_NUMBER_DIGITS_CAP_LIMIT = 4300

# A JSON string (terminated, or running to the end of an invalid input) or a bracket.
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)|[\[\]{}]', re.DOTALL)
_INNERMOST_PAIR = re.compile(rb"\[\]|\{\}")
_ALL_BUT_QUOTES_AND_BRACKETS = bytes(byte for byte in range(256) if byte not in b'"[]{}')
# Lone UTF-16 surrogates can only come from \uD800-\uDFFF escapes, because the strict
# UTF-8 decoder rejects encoded surrogates. RFC 8785 cannot serialize them.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_PATH_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$-]*\Z")
_MAX_KEY_SHOWN = 64


def json_path(parts: Sequence[str | int]) -> str:
    """Format a JSON path for messages, such as ``privacy.epsilon`` or ``tensors[2].name``.

    Keys that are not plain identifiers are written as quoted JSON strings in brackets,
    with control characters escaped, so that a hostile key cannot garble a terminal.

    Args:
        parts: Object keys and array indexes from the root down.

    Returns:
        The path, or ``(root)`` for the top-level value.
    """
    if not parts:
        return "(root)"
    pieces: list[str] = []
    for part in parts:
        if isinstance(part, int):
            pieces.append(f"[{part}]")
        elif len(part) <= _MAX_KEY_SHOWN and _PATH_IDENTIFIER.match(part):
            pieces.append(f".{part}" if pieces else part)
        else:
            shortened = part if len(part) <= _MAX_KEY_SHOWN else part[:_MAX_KEY_SHOWN] + "..."
            pieces.append(f"[{json.dumps(shortened)}]")
    return "".join(pieces)


class _Rejected:
    """Placeholder that a parse hook returns for a rejected value.

    The hooks cannot see where a value sits, so the value walk after parsing raises the
    error with the JSON path.
    """

    __slots__ = ("code", "is_limit", "problem")

    def __init__(self, code: str, problem: str, *, is_limit: bool = False) -> None:
        self.code = code
        self.problem = problem
        self.is_limit = is_limit


class _DuplicateKeyObject(dict[str, Any]):
    """Object in which ``duplicate_key`` appeared more than once."""

    duplicate_key = ""


def _too_many_digits(digits: int, max_number_digits: int) -> _Rejected:
    return _Rejected(
        "E_JSON_NUMBER_TOO_LONG",
        f"is a number with {digits} digits; the maximum is {max_number_digits}",
        is_limit=True,
    )


def _overflow(literal: str) -> _Rejected:
    return _Rejected(
        "E_JSON_NONFINITE_NUMBER",
        f"is {literal}, which overflows a 64-bit float; numbers must be finite",
    )


class _ParseHooks:
    """Hooks for ``json.JSONDecoder`` that replace rejected values with placeholders.

    ``rejected`` records whether any placeholder was made, so that well-formed input
    skips the walk that locates it.
    """

    def __init__(self, max_number_digits: int) -> None:
        self.max_number_digits = max_number_digits
        self.rejected = False

    def object_from_pairs(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) == len(pairs):
            return obj
        self.rejected = True
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                duplicate = _DuplicateKeyObject(obj)
                duplicate.duplicate_key = key
                return duplicate
            seen.add(key)
        raise AssertionError("unreachable: fewer keys than pairs implies a duplicate")

    def parse_constant(self, literal: str) -> _Rejected:
        # json calls this for NaN, Infinity and -Infinity only.
        self.rejected = True
        return _Rejected("E_JSON_NONFINITE_NUMBER", f"is {literal}; numbers must be finite")

    def parse_int(self, literal: str) -> int | float | _Rejected:
        digits = len(literal) - (1 if literal.startswith("-") else 0)
        if digits > self.max_number_digits:
            self.rejected = True
            return _too_many_digits(digits, self.max_number_digits)
        value = int(literal)
        if -SAFE_INTEGER_MAX <= value <= SAFE_INTEGER_MAX:
            return value
        result = _large_integer(literal, value)
        self.rejected = self.rejected or isinstance(result, _Rejected)
        return result

    def parse_float(self, literal: str) -> float | _Rejected:
        digits = len(literal) - sum(literal.count(sign) for sign in "-+.eE")
        if digits > self.max_number_digits:
            self.rejected = True
            return _too_many_digits(digits, self.max_number_digits)
        value = float(literal)
        if not math.isfinite(value):
            self.rejected = True
            return _overflow(literal)
        return value


def _large_integer(literal: str, value: int) -> float | _Rejected:
    """Read an integer literal beyond the safe range as a double, or reject it.

    RFC 8785 treats every number as a double, and writes integral doubles below 1e21
    as plain digits, so canonical bytes of 1e20 contain ``100000000000000000000``.
    Such a literal is read as that double when no digit is lost: the double equals the
    integer exactly, or the literal is the double's own RFC 8785 text. Any other
    literal, such as 9007199254740993, would change value when read as a double.
    """
    try:
        as_double = float(value)
    except OverflowError:
        return _overflow(literal)
    if int(as_double) == value or rfc8785.dumps(as_double).decode("ascii") == literal:
        return as_double
    return _Rejected(
        "E_JSON_INTEGER_INEXACT",
        f"is the integer {literal}, which a 64-bit float cannot hold exactly; integers "
        f"must lie within +-{SAFE_INTEGER_MAX}",
    )


def _within_depth(data: bytes, max_depth: int) -> bool:
    """Return whether all brackets outside strings match and nest at most ``max_depth`` deep.

    Runs in C-level bytes operations. UTF-8 never uses ASCII byte values inside a
    multi-byte character, so working on bytes is exact. Up to the first syntax error,
    the string boundaries found here match those of the JSON parser.
    """
    # Counting brackets inside strings too can only overestimate the depth.
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return True

    # Escaped backslashes go first, so that in \\" the quote still ends the string.
    # Escaped quotes then cannot end a string, and what is left between quotes is
    # string content.
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    quotes_and_brackets = unescaped.translate(None, _ALL_BUT_QUOTES_AND_BRACKETS)
    brackets = b"".join(quotes_and_brackets.split(b'"')[0::2])

    # Each round removes all innermost pairs at once, so a matched sequence of depth d
    # is empty after exactly d rounds.
    for _ in range(max_depth):
        reduced = _INNERMOST_PAIR.sub(b"", brackets)
        if not reduced:
            return True
        if len(reduced) == len(brackets):
            return False
        brackets = reduced
    return False


def _first_too_deep_offset(text: str, max_depth: int) -> int | None:
    """Return the offset of the first bracket that opens level ``max_depth + 1``, if any."""
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token == "[" or token == "{":
            depth += 1
            if depth > max_depth:
                return match.start()
        elif token == "]" or token == "}":
            depth -= 1
    return None


def _line_and_column(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    column = offset - text.rfind("\n", 0, offset)
    return line, column


def _check_values(
    value: Any, path: list[str | int], what: str, error_class: type[InputError]
) -> None:
    """Raise for the first rejected value, duplicate key or lone surrogate, in document order."""
    if isinstance(value, _Rejected):
        message = f"{what} value at {json_path(path)} {value.problem}"
        if value.is_limit:
            raise LimitExceeded(message, code=value.code)
        raise error_class(message, code=value.code)

    if isinstance(value, _DuplicateKeyObject):
        location = json_path([*path, value.duplicate_key])
        raise error_class(
            f"{what} has a duplicate key at {location}",
            hint="a JSON object must not repeat a key; remove the extra entry",
            code="E_JSON_DUPLICATE_KEY",
        )

    if isinstance(value, dict):
        for key, item in value.items():
            path.append(key)
            if LONE_SURROGATE.search(key):
                _raise_surrogate(path, what, error_class)
            _check_values(item, path, what, error_class)
            path.pop()
    elif isinstance(value, list):
        for index, item in enumerate(value):
            path.append(index)
            _check_values(item, path, what, error_class)
            path.pop()
    elif isinstance(value, str) and LONE_SURROGATE.search(value):
        _raise_surrogate(path, what, error_class)


def _raise_surrogate(path: list[str | int], what: str, error_class: type[InputError]) -> NoReturn:
    raise error_class(
        f"{what} has an unpaired UTF-16 surrogate escape at {json_path(path)}",
        hint="\\uD800-\\uDFFF escapes must come in valid pairs",
        code="E_JSON_ENCODING",
    )


def _check_cap(name: str, value: int, upper: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= upper:
        raise InputError(
            f"parameter {name} must be an integer in [0, {upper}], got {value!r}",
            code="E_PARAMETER_INVALID",
        )


def load_json_strict(
    data: bytes,
    *,
    what: str,
    max_bytes: int = DEFAULT_MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
    max_number_digits: int = MAX_NUMBER_DIGITS,
    error_class: type[InputError] = MalformedCertificate,
) -> Any:
    """Parse untrusted JSON bytes, rejecting what a signed document must not contain.

    The loader rejects a UTF-8 byte order mark, invalid UTF-8, invalid JSON, a key
    repeated in one object at any depth, and unpaired surrogate escapes. It also
    rejects ``NaN``, ``Infinity``, ``-Infinity``, numbers that overflow a double
    (``1e400``), and integer literals beyond +-(2**53 - 1) that a double cannot hold
    exactly. Integer literals beyond that range that a double represents without
    losing a digit come back as ``float``.

    Args:
        data: The raw bytes, which must be UTF-8.
        what: Name of the document for messages, such as ``"certificate"``.
        max_bytes: Largest accepted input size.
        max_depth: Deepest accepted nesting of arrays and objects. The check runs
            before parsing, so deep input cannot exhaust the stack.
        max_number_digits: Most digits accepted in one number literal.
        error_class: Error raised for malformed input, for example
            :class:`~mbd_cert.errors.MalformedSafetensors` for a safetensors header.

    Returns:
        The parsed value, built from ``dict``, ``list``, ``str``, ``int``, ``float``,
        ``bool`` and ``None``.

    Raises:
        MalformedCertificate: (or ``error_class``) The input is not strict JSON. Codes
            ``E_JSON_ENCODING``, ``E_JSON_SYNTAX``, ``E_JSON_DUPLICATE_KEY``,
            ``E_JSON_NONFINITE_NUMBER`` and ``E_JSON_INTEGER_INEXACT``.
        LimitExceeded: The input breaks a cap. Codes ``E_INPUT_TOO_LARGE``,
            ``E_JSON_TOO_DEEP`` and ``E_JSON_NUMBER_TOO_LONG``.
        InputError: A cap argument is invalid (``E_PARAMETER_INVALID``).
    """
    _check_cap("max_bytes", max_bytes, 1 << 62)
    _check_cap("max_depth", max_depth, _DEPTH_CAP_LIMIT)
    _check_cap("max_number_digits", max_number_digits, _NUMBER_DIGITS_CAP_LIMIT)

    if len(data) > max_bytes:
        raise LimitExceeded(
            f"{what} is {len(data)} bytes; the maximum is {max_bytes}",
            code="E_INPUT_TOO_LARGE",
        )

    if data.startswith(codecs.BOM_UTF8):
        raise error_class(
            f"{what} starts with a UTF-8 byte order mark",
            hint="save the file as UTF-8 without a byte order mark",
            code="E_JSON_ENCODING",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error_class(
            f"{what} is not valid UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}",
            hint="save the file as UTF-8",
            code="E_JSON_ENCODING",
        ) from exc

    # The depth check runs before json.loads, which would otherwise recurse once per
    # level and raise RecursionError on input such as 100,000 opening brackets.
    if not _within_depth(data, max_depth):
        too_deep_at = _first_too_deep_offset(text, max_depth)
        # None means unmatched brackets, which the parser reports as a syntax error.
        if too_deep_at is not None:
            line, column = _line_and_column(text, too_deep_at)
            raise LimitExceeded(
                f"{what} nests deeper than {max_depth} levels at line {line}, column {column}",
                code="E_JSON_TOO_DEEP",
            )

    hooks = _ParseHooks(max_number_digits)
    decoder = json.JSONDecoder(
        object_pairs_hook=hooks.object_from_pairs,
        parse_int=hooks.parse_int,
        parse_float=hooks.parse_float,
        parse_constant=hooks.parse_constant,
        strict=True,
    )
    try:
        value = decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise error_class(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            code="E_JSON_SYNTAX",
        ) from exc

    # Paired surrogate escapes also match the pattern, which only costs a walk.
    if hooks.rejected or _SURROGATE_ESCAPE.search(text):
        _check_values(value, [], what, error_class)
    return value


def read_json_file(
    path: str | os.PathLike[str],
    *,
    what: str,
    max_bytes: int = DEFAULT_MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
    max_number_digits: int = MAX_NUMBER_DIGITS,
    error_class: type[InputError] = MalformedCertificate,
) -> Any:
    """Read a JSON file with :func:`read_bytes_capped` and parse it strictly.

    Args:
        path: File to read.
        what: Name of the document for messages, such as ``"certificate"``.
        max_bytes: Largest accepted file size.
        max_depth: See :func:`load_json_strict`.
        max_number_digits: See :func:`load_json_strict`.
        error_class: See :func:`load_json_strict`.

    Returns:
        The parsed value.

    Raises:
        FileMissing: The file does not exist.
        LimitExceeded: A cap was exceeded.
        MalformedCertificate: (or ``error_class``) The file is not strict JSON.
        InputError: The path is not a readable regular file.
    """
    data = read_bytes_capped(path, what=f"{what} file", max_bytes=max_bytes)
    return load_json_strict(
        data,
        what=f"{what} file {show_path(path)}",
        max_bytes=max_bytes,
        max_depth=max_depth,
        max_number_digits=max_number_digits,
        error_class=error_class,
    )


__all__ = [
    "DEFAULT_MAX_JSON_BYTES",
    "LONE_SURROGATE",
    "MAX_JSON_DEPTH",
    "MAX_NUMBER_DIGITS",
    "SAFE_INTEGER_MAX",
    "json_path",
    "load_json_strict",
    "read_bytes_capped",
    "read_json_file",
]
