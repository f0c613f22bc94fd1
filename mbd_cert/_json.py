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
import os
import re
from typing import Any

from mbd_cert._json_values import (
    LONE_SURROGATE,
    SAFE_INTEGER_MAX,
    ParseHooks,
    check_values,
    json_path,
)
from mbd_cert._read_capped import read_bytes_capped, show_path
from mbd_cert.errors import InputError, LimitExceeded, MalformedCertificate

# Default size cap, 1 MiB, for small JSON documents such as checkpoint configs.
# Callers pass the cap of their format: SPEC.md R-LIM-1 allows certificates of 64 MiB.
DEFAULT_MAX_JSON_BYTES = 1 << 20

# SPEC.md R-FMT-2 caps certificate nesting at 64 levels (v1 certificates use fewer than
# 8). This stays far below CPython's default recursion limit of 1000, and json.loads and
# the value walk of check_values each use one stack frame per level.
MAX_JSON_DEPTH = 64

# A double needs at most 17 significant digits, and RFC 8785 writes integral doubles
# below 1e21 with at most 21 digits. 64 digits admits every number a JSON writer
# produces for a double, while a literal of thousands of digits would cost quadratic
# time in int() (CPython stops at 4300 digits with a ValueError).
MAX_NUMBER_DIGITS = 64

# Upper bounds for the caps a caller may pass. Deeper nesting would approach the
# recursion limit, and int() rejects longer literals
# (sys.int_info.default_max_str_digits is 4300 in CPython 3.11).
_DEPTH_CAP_LIMIT = 500
_NUMBER_DIGITS_CAP_LIMIT = 4300

# A JSON string (terminated, or running to the end of an invalid input) or a bracket.
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\Z)|[\[\]{}]', re.DOTALL)
_INNERMOST_PAIR = re.compile(rb"\[\]|\{\}")
_ALL_BUT_QUOTES_AND_BRACKETS = bytes(byte for byte in range(256) if byte not in b'"[]{}')
# A \uD800-\uDFFF escape, the only source of a lone surrogate in the parsed value.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


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

    hooks = ParseHooks(max_number_digits)
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
            f"{what} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            hint=_syntax_error_hint(text, exc),
            code="E_JSON_SYNTAX",
        ) from exc

    # Paired surrogate escapes also match the pattern, which only costs a walk.
    if hooks.rejected or _SURROGATE_ESCAPE.search(text):
        check_values(value, [], what, error_class)
    return value


def _syntax_error_hint(text: str, error: json.JSONDecodeError) -> str:
    """Return the hint for a JSON syntax error: an empty file, a cut copy or an edit."""
    if not text.strip():
        contents = "is empty" if not text else "contains only whitespace"
        return f"the file {contents}: copy it again from its source"
    # A copy cut short fails with an unterminated string or at the end of the text.
    if error.msg.startswith("Unterminated") or error.pos >= len(text.rstrip()):
        return "the file ends early, so it looks truncated: copy it again from its source"
    return "restore the file from its source; a signed file must not be edited by hand"


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
