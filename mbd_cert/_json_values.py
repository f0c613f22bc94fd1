"""Value checks of strict JSON loading: parse hooks, and the walk that reports by JSON path.

:class:`ParseHooks` puts a placeholder in place of each number that is too long,
non-finite or inexact as a double, and marks each object with a repeated key.
:func:`check_values` then raises for the first of these, or a lone surrogate, in
document order, naming its JSON path (for example ``privacy.epsilon``).

Stability: private module; :mod:`mbd_cert._json` re-exports the public names.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any, NoReturn

import rfc8785

from mbd_cert.errors import InputError, LimitExceeded

# Largest integer n such that every integer in [-n, n] is exactly a double
# (ECMA-262 Number.MAX_SAFE_INTEGER). RFC 8785 numbers are doubles.
SAFE_INTEGER_MAX = 2**53 - 1

# Lone UTF-16 surrogates can only come from \uD800-\uDFFF escapes, because the strict
# UTF-8 decoder rejects encoded surrogates. RFC 8785 cannot serialize them.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
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


# mbd-cert writes none of these values, so a file that contains one was edited by hand
# or made by another tool.
_REJECTED_HINTS = {
    "E_JSON_NONFINITE_NUMBER": "JSON has no NaN or Infinity; restore the file from its "
    "source",
    "E_JSON_INTEGER_INEXACT": "restore the file from its source; no field of the format "
    "needs a larger integer",
    "E_JSON_NUMBER_TOO_LONG": "restore the file from its source; no field of the format "
    "needs that many digits",
}


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


class ParseHooks:
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

    def parse_float(self, literal: str) -> int | float | _Rejected:
        digits = len(literal) - sum(literal.count(sign) for sign in "-+.eE")
        if digits > self.max_number_digits:
            self.rejected = True
            return _too_many_digits(digits, self.max_number_digits)
        value = float(literal)
        if not math.isfinite(value):
            self.rejected = True
            return _overflow(literal)
        negative_zero = value == 0 and math.copysign(1.0, value) < 0
        if value.is_integer() and abs(value) <= SAFE_INTEGER_MAX and not negative_zero:
            # 20.0 and 20 are one number with the same canonical bytes (RFC 8785), so
            # they must read alike: a field that needs an integer must accept both,
            # or an edit that keeps the signature valid would change the verdict.
            # -0.0 stays a float, which signed content rejects (SPEC.md section 7).
            return int(value)
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


def check_values(
    value: Any, path: list[str | int], what: str, error_class: type[InputError]
) -> None:
    """Raise for the first rejected value, duplicate key or lone surrogate, in document order."""
    if isinstance(value, _Rejected):
        message = f"{what} value at {json_path(path)} {value.problem}"
        hint = _REJECTED_HINTS.get(value.code, "")
        if value.is_limit:
            raise LimitExceeded(message, hint=hint, code=value.code)
        raise error_class(message, hint=hint, code=value.code)

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
            check_values(item, path, what, error_class)
            path.pop()
    elif isinstance(value, list):
        for index, item in enumerate(value):
            path.append(index)
            check_values(item, path, what, error_class)
            path.pop()
    elif isinstance(value, str) and LONE_SURROGATE.search(value):
        _raise_surrogate(path, what, error_class)


def _raise_surrogate(path: list[str | int], what: str, error_class: type[InputError]) -> NoReturn:
    raise error_class(
        f"{what} has an unpaired UTF-16 surrogate escape at {json_path(path)}",
        hint="\\uD800-\\uDFFF escapes must come in valid pairs",
        code="E_JSON_ENCODING",
    )
