"""Canonical JSON bytes (RFC 8785, JSON Canonicalization Scheme) for signed content.

Stability: public. The bytes this module produces are what issuers sign and verifiers
check, so any change to them is a format change.

Serialization is done by the ``rfc8785`` package. Before it runs, :func:`canonical_bytes`
walks the value and rejects what must not appear in signed content, naming the JSON
path. ``rfc8785`` writes ``-0.0`` as ``0``, which would let two different documents
share one signature, and its own errors name no path.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

import rfc8785

from mbd_cert._json import LONE_SURROGATE, MAX_JSON_DEPTH, SAFE_INTEGER_MAX, json_path
from mbd_cert.errors import LimitExceeded, MalformedCertificate

__all__ = ["canonical_bytes"]

# Scalar types that json.dumps writes exactly as RFC 8785 does (floats are not among them).
_PLAIN_SCALARS = (type(None), bool)


def _describe_type(value: object) -> str:
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _reject(path: list[str | int], problem: str, code: str, hint: str = "") -> NoReturn:
    raise MalformedCertificate(
        f"signed content value at {json_path(path)} {problem}", hint=hint, code=code
    )


def _check_number(value: int | float, path: list[str | int]) -> None:
    if isinstance(value, int):
        if not -SAFE_INTEGER_MAX <= value <= SAFE_INTEGER_MAX:
            _reject(
                path,
                f"is the integer {value}, outside +-{SAFE_INTEGER_MAX}",
                "E_CANONICAL_NUMBER",
                hint="RFC 8785 numbers are 64-bit floats; store larger integers as strings",
            )
        return
    if not math.isfinite(value):
        _reject(path, f"is {value}; numbers must be finite", "E_CANONICAL_NUMBER")
    if value == 0.0 and math.copysign(1.0, value) < 0:
        # RFC 8785 writes -0.0 as "0", so a signature over it would also cover 0.0.
        _reject(path, "is -0.0, which is not allowed", "E_CANONICAL_NUMBER", hint="use 0.0")


def _check_signable(value: Any, path: list[str | int], depth: int, plain: set[int]) -> bool:
    """Raise for the first value in document order that must not be signed.

    Returns whether ``value`` is plain: built only from exact ``dict``, ``list``,
    ``str``, ``int``, ``bool`` and ``None``, with no float and no key outside the Basic
    Multilingual Plane. The ids of plain containers are added to ``plain``.
    """
    # bool is a subclass of int, and JSON true/false need no number checks.
    if value is None or isinstance(value, bool):
        return type(value) in _PLAIN_SCALARS
    if isinstance(value, (int, float)):
        _check_number(value, path)
        return type(value) is int
    if isinstance(value, str):
        if LONE_SURROGATE.search(value):
            _reject(path, "contains an unpaired UTF-16 surrogate", "E_CANONICAL_STRING")
        return type(value) is str
    if isinstance(value, (dict, list)):
        is_plain = _check_container(value, path, depth, plain) and type(value) in (dict, list)
        if is_plain:
            plain.add(id(value))
        return is_plain
    else:
        # Tuples, sets, bytes, numpy scalars and other types have no single JSON form.
        _reject(
            path,
            f"has type {_describe_type(value)}, which has no JSON form",
            "E_CANONICAL_TYPE",
            hint="convert it to dict, list, str, int, float, bool or None",
        )


def _check_container(value: dict[Any, Any] | list[Any], path: list[str | int], depth: int,
                     plain: set[int]) -> bool:
    # depth counts the enclosing containers, so this one opens level depth + 1.
    if depth >= MAX_JSON_DEPTH:
        # Also stops reference cycles, which would otherwise recurse forever.
        raise LimitExceeded(
            f"signed content nests deeper than {MAX_JSON_DEPTH} levels at {json_path(path)}",
            code="E_JSON_TOO_DEEP",
        )
    is_plain = True
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                _reject(
                    path,
                    f"has a key of type {_describe_type(key)}; JSON object keys are strings",
                    "E_CANONICAL_TYPE",
                )
            path.append(key)
            if LONE_SURROGATE.search(key):
                _reject(path, "has a key with an unpaired UTF-16 surrogate", "E_CANONICAL_STRING")
            if type(key) is not str or (key and max(key) > "\uffff"):
                is_plain = False
            is_plain = _check_signable(item, path, depth + 1, plain) and is_plain
            path.pop()
    else:
        for index, item in enumerate(value):
            path.append(index)
            is_plain = _check_signable(item, path, depth + 1, plain) and is_plain
            path.pop()
    return is_plain


def canonical_bytes(obj: Any) -> bytes:
    """Serialize a value to RFC 8785 canonical JSON bytes for signing.

    Object keys are sorted by their UTF-16 code units, strings escape only the quote,
    the backslash and control characters, and numbers use the ECMAScript shortest form, so
    ``1e-7`` gives ``1e-7``, ``100.0`` gives ``100`` and ``1e20`` gives
    ``100000000000000000000``.

    Args:
        obj: A value built from ``dict`` with ``str`` keys, ``list``, ``str``, ``int``,
            ``float``, ``bool`` and ``None``. Subclasses of these are serialized as
            the base type.

    Returns:
        The canonical UTF-8 bytes.

    Raises:
        MalformedCertificate: A value cannot be signed. ``E_CANONICAL_NUMBER``: -0.0,
            NaN, an infinity, or an integer outside +-(2**53 - 1).
            ``E_CANONICAL_TYPE``: a non-string key, or a type other than those above
            (tuple, set, bytes, numpy scalar, ...). ``E_CANONICAL_STRING``: a string
            or key with an unpaired surrogate.
        LimitExceeded: The value nests deeper than ``MAX_JSON_DEPTH`` levels or
            contains a reference cycle (``E_JSON_TOO_DEEP``).
    """
    plain: set[int] = set()
    _check_signable(obj, [], 0, plain)
    try:
        return _serialize(obj, plain).encode("utf-8")
    except rfc8785.CanonicalizationError as exc:
        # The walk above rejects everything rfc8785 0.1.4 rejects, so this is a
        # fallback for later versions of the package that reject more.
        raise MalformedCertificate(
            f"signed content cannot be canonicalized: {exc}", code="E_CANONICAL_TYPE"
        ) from exc


def _serialize(value: Any, plain: set[int]) -> str:
    """Return the RFC 8785 text of a value that :func:`_check_signable` accepted.

    A plain container (see :func:`_check_signable`) goes to ``json.dumps`` in one C
    call, which writes exactly RFC 8785 text for it: sorted keys, no spaces, the same
    string escapes and integers as plain digits. Key order by code point equals order
    by UTF-16 code unit when no key contains a character beyond U+FFFF. Everything else,
    floats above all, is written by ``rfc8785``, and containers around it are
    assembled here. The per-tensor maps of a certificate hold no float, so their
    millions of values skip the package's per-value Python code.
    """
    if id(value) in plain:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    if isinstance(value, dict):
        # RFC 8785 section 3.2.3: members sorted by the UTF-16 code units of their names.
        names = sorted(value, key=lambda name: name.encode("utf-16-be"))
        members = (f"{_string(name)}:{_serialize(value[name], plain)}" for name in names)
        return "{" + ",".join(members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_serialize(item, plain) for item in value) + "]"
    text: str = rfc8785.dumps(value).decode("utf-8")
    return text


def _string(name: str) -> str:
    return json.dumps(name, ensure_ascii=False)
