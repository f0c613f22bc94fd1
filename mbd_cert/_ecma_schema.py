r"""JSON Schema validation with the end-of-string rules of the JSON Schema standard.

JSON Schema reads ``pattern`` as an ECMA-262 regular expression, in which ``$`` (no
multiline flag) matches only at the very end of the string. jsonschema applies
``pattern`` with Python's ``re.search``, where ``$`` also matches just before a final
line feed, so ``"^sha256:[0-9a-f]{64}$"`` would accept a digest followed by ``"\n"``.
:data:`Validator` is the Draft 2020-12 validator with ``pattern`` applied through
:func:`ecma_pattern`, and :func:`format_checker` rejects a line feed in the formats
mbd-cert checks and accepts only the hex form of a ``uuid``. The schema files
themselves stay plain JSON Schema.

Stability: internal.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker, protocols, validators
from jsonschema.exceptions import ValidationError

__all__ = ["Validator", "ecma_pattern", "format_checker"]

# The RFC 4122 string form of a UUID: 8-4-4-4-12 ASCII hex digits, either case.
_UUID = re.compile("[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")

# Formats whose values never contain a line feed. The date-time checker
# (rfc3339-validator) matches "^...$" with re.match, which accepts a final "\n". The
# uuid check (_is_uuid) rejects a line feed by itself.
NO_LINE_FEED_FORMATS = ("date-time",)


@functools.lru_cache(maxsize=256)
def ecma_pattern(pattern: str) -> re.Pattern[str]:
    r"""Compile a schema ``pattern`` for ``search``, with every ``$`` anchor made ``\Z``.

    ``\Z`` matches only at the end of the string, as ``$`` does in ECMA-262. The ``$``
    is rewritten instead of switching to ``re.fullmatch``, because a schema pattern
    need not be anchored at both ends: ``issued_at`` has ``"Z$"``, and ``fullmatch``
    would also change alternations such as ``"^a|b$"``. A ``$`` that is escaped or
    inside a character class is a literal in both dialects and stays as it is.

    Apart from ``$``, the bundled schemas use only syntax that both dialects read the
    same way (tests/unit/test_ecma_schema.py checks this). ``\d``, ``\w``, ``\s`` and
    ``\b``, which Python reads as Unicode classes, are not part of it.
    """
    out: list[str] = []
    index = 0
    in_class = False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            out.append(pattern[index:index + 2])
            index += 2
            continue
        index += 1
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            # Python reads a "]" right after "[" or "[^" as a member, not as the end.
            for lead in ("^", "]"):
                if pattern.startswith(lead, index):
                    char += lead
                    index += 1
        elif char == "$":
            char = r"\Z"
        out.append(char)
    return re.compile("".join(out))


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    # jsonschema's own "pattern" keyword with ecma_pattern in place of re.search, and
    # the same message.
    if validator.is_type(instance, "string") and not ecma_pattern(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


Validator: type[protocols.Validator] = validators.extend(
    Draft202012Validator, {"pattern": _pattern}
)


def _without_line_feed(check: Callable[[object], bool]) -> Callable[[object], bool]:
    def checked(instance: object) -> bool:
        if isinstance(instance, str) and "\n" in instance:
            return False
        return check(instance)

    return checked


def _is_uuid(instance: object) -> bool:
    # jsonschema's own checker calls uuid.UUID(), which strips braces, drops every
    # hyphen and parses the rest with int(), so it accepts surrounding whitespace,
    # "_" and non-ASCII digits.
    if not isinstance(instance, str):
        return True
    return _UUID.fullmatch(instance) is not None


def format_checker() -> FormatChecker:
    """Return a copy of the Draft 2020-12 format checker, with stricter checks of some formats.

    Values of the :data:`NO_LINE_FEED_FORMATS` that contain a line feed do not conform,
    and a ``uuid`` must be exactly the 8-4-4-4-12 form of ASCII hex digits. Another
    format whose checker is not installed stays missing, so that the probes in
    :mod:`mbd_cert.schema` still report it.
    """
    checker = FormatChecker(formats=())
    checker.checkers = dict(Draft202012Validator.FORMAT_CHECKER.checkers)
    for name in NO_LINE_FEED_FORMATS:
        if name in checker.checkers:
            check, raises = checker.checkers[name]
            checker.checkers[name] = (_without_line_feed(check), raises)
    checker.checkers["uuid"] = (_is_uuid, ())
    return checker
