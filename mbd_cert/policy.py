"""The verification policy file that a repository keeps beside its certificates.

A downstream model repository states once, in a TOML file, what every certificate in
it must meet: the largest cumulative epsilon, the verification level, the accepted
sensitivity methods and the issuer keys it trusts (SPEC.md, section "Policy file"). An
optional ``models`` table pins what each published model's certificate must have
deleted (:mod:`mbd_cert._policy_models`).
``mbd-cert verify-repo`` reads it. The file is parsed strictly. An unknown key, a
value of the wrong type, NaN, a non-positive epsilon or a level outside 1..3 is
rejected with ``E_POLICY_INVALID`` (exit 2) naming the key. A misspelt limit that was
silently ignored would let through certificates that the repository meant to reject.

TOML is read with :mod:`tomllib` (Python 3.11 and later) and, on Python 3.10, with
the ``tomli`` package, which has the same interface.

Stability: public (:class:`Policy`, :func:`load_policy`, :func:`parse_policy`); the
file's keys are a versioned contract (``policy_version``).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mbd_cert import _json
from mbd_cert.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

CODE_POLICY_INVALID = "E_POLICY_INVALID"
POLICY_VERSION = 1
# File names looked up in the repository root, in this order, when --policy is absent.
DEFAULT_FILE_NAMES = (".mbd-cert.toml", "mbd-cert-policy.toml")
# A policy is a few lines, so a larger file is not a policy.
MAX_POLICY_BYTES = 64 * 1024
SENSITIVITY_METHODS = ("clip-bound", "reference-retrain", "declared")

_KNOWN_KEYS = (
    "policy_version",
    "max_cumulative_epsilon",
    "max_delta",
    "required_level",
    "required_sensitivity_methods",
    "trusted_keys",
    "allow_inconclusive",
    "strict",
    "models",
)


@dataclass(frozen=True)
class ModelPin:
    """Requirements on the certificate of one published model (the policy's ``models`` table).

    A pin keeps a pull request from replacing a model and its certificate with another
    genuine release of the same issuer. That release may be an older one of the chain,
    or one from another branch of deletions whose model still contains an encoder that
    the pinned one lacks.

    Attributes:
        path: The model file, relative to the repository root, with ``/`` separators.
        deleted_modalities: Modalities that the certificate's chain must have deleted;
            it may have deleted more.
        min_sequence_number: Smallest accepted ``accounting.sequence_number``; None sets
            no limit.
    """

    path: str
    deleted_modalities: tuple[str, ...]
    min_sequence_number: int | None = None


@dataclass(frozen=True)
class Policy:
    """Requirements that every certificate of a repository must meet.

    Attributes:
        max_cumulative_epsilon: Largest accepted ``accounting.cumulative_epsilon``;
            None sets no limit.
        max_delta: Largest accepted ``accounting.delta``, the failure probability of
            the cumulative epsilon; None sets no limit.
        required_level: Verification level every certificate is checked at (1 to 3).
        required_sensitivity_methods: Accepted ``privacy.sensitivity_method`` values;
            empty accepts every method.
        trusted_keys: Issuer public key files, relative to the repository root.
        allow_inconclusive: Let inconclusive statistical checks pass.
        strict: Fail verify-repo on every warning and on each ``*.safetensors`` file
            that no certificate pairs with (SPEC.md, R-REPO-10).
        models: Published models and what their certificates must have deleted, in
            the order of the policy file (SPEC.md, R-REPO-11).
        source: The file the policy was read from, for messages; None for defaults.
    """

    max_cumulative_epsilon: float | None = None
    max_delta: float | None = None
    required_level: int = 1
    required_sensitivity_methods: tuple[str, ...] = ()
    trusted_keys: tuple[str, ...] = ()
    allow_inconclusive: bool = False
    strict: bool = False
    models: tuple[ModelPin, ...] = ()
    source: str | None = field(default=None, compare=False)


def _invalid(source: str, key: str, message: str, hint: str = "") -> InputError:
    return InputError(
        f"policy {source}: {key} {message}",
        # Named here, because a CI job that installed mbd-cert has no docs folder.
        hint=hint or "fix the value in the policy file. Its keys: " + ", ".join(_KNOWN_KEYS)
        + " (types and ranges: the 'Policy file' section of the user guide)",
        code=CODE_POLICY_INVALID,
    )


def _type_name(value: object) -> str:
    return type(value).__name__


# Longest quoted value in a message; a longer one is cut.
_MAX_SHOWN_CHARS = 80


def _shown(value: object) -> str:
    """Return ``repr(value)`` for a message, shortened; a huge integer by its size.

    TOML integers have 64 bits, but tomllib reads longer ones: a hex integer as long as
    the 64 KiB policy cap allows has about 260,000 bits. ``str()`` raises for an integer
    of more than 4,300 decimal digits, and a message should not quote so many anyway.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except ValueError:  # a list that contains a huge integer
        return "(too long to show: it contains an integer of over 4,300 digits)"
    return text if len(text) <= _MAX_SHOWN_CHARS else text[:_MAX_SHOWN_CHARS - 3] + "..."


def _as_float(source: str, key: str, value: int | float, expected: str, hint: str) -> float:
    try:
        return float(value)
    except OverflowError as exc:  # an integer beyond the largest double
        raise _invalid(source, key, f"{expected}, got {_shown(value)}", hint=hint) from exc


_EPSILON_TOO_LARGE = ("give the largest cumulative epsilon you accept, such as 2.0, or remove "
                      "the key for no limit")


def _parse_epsilon(source: str, value: object) -> float:
    key = "max_cumulative_epsilon"
    # TOML booleans are Python bools, which are ints, so `true` would pass as 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid(source, key,
                       f"must be a number, got {_type_name(value)} {_shown(value)}")
    number = _as_float(source, key, value, "must be finite and > 0", _EPSILON_TOO_LARGE)
    if math.isnan(number):
        raise _invalid(
            source, key, f"must be finite and > 0, got {value!r}",
            hint="nan (not a number) cannot be a limit: give the largest cumulative "
            "epsilon you accept, such as 2.0, or remove the key for no limit",
        )
    if number == math.inf:
        raise _invalid(
            source, key, f"must be finite and > 0, got {value!r}",
            hint="an infinite limit accepts every certificate: remove the key for no "
            "limit, or give the largest cumulative epsilon you accept, such as 2.0",
        )
    if number <= 0:
        raise _invalid(
            source, key, f"must be finite and > 0, got {_shown(value)}",
            hint="a limit of 0 or less would reject every certificate: give the largest "
            "cumulative epsilon you accept, such as 2.0, or remove the key for no limit",
        )
    return number


def _parse_delta(source: str, value: object) -> float:
    key = "max_delta"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid(source, key,
                       f"must be a number, got {_type_name(value)} {_shown(value)}")
    number = _as_float(source, key, value, "must be in (0, 1)",
                       "delta is a probability, e.g. 1e-5; remove the key for no limit")
    if not math.isfinite(number):
        raise _invalid(source, key, f"must be in (0, 1), got {value!r}",
                       hint=f"{value!r} is not a probability: give the largest delta you "
                       "accept, such as 1e-5, or remove the key for no limit")
    if not 0 < number < 1:
        raise _invalid(source, key, f"must be in (0, 1), got {_shown(value)}",
                       hint="delta is a probability, e.g. 1e-5; remove the key for no limit")
    return number


def _parse_level(source: str, value: object) -> int:
    key = "required_level"
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(source, key,
                       f"must be an integer, got {_type_name(value)} {_shown(value)}")
    if value not in (1, 2, 3):
        raise _invalid(source, key, f"must be 1, 2 or 3, got {_shown(value)}",
                       hint="1 integrity, 2 recompute, 3 leakage")
    return value


def _parse_string_list(source: str, key: str, value: object) -> list[str]:
    if not isinstance(value, list):
        raise _invalid(source, key, f"must be a list of strings, got {_type_name(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise _invalid(source, f"{key}[{index}]",
                           f"must be a non-empty string, got {_shown(item)}")
    duplicates = sorted({item for item in value if value.count(item) > 1})
    if duplicates:
        raise _invalid(source, key, f"lists {duplicates} more than once")
    return list(value)


def _parse_bool(source: str, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _invalid(source, key,
                       f"must be true or false, got {_type_name(value)} {_shown(value)}")
    return value


def _parse_methods(source: str, value: object) -> tuple[str, ...]:
    key = "required_sensitivity_methods"
    methods = _parse_string_list(source, key, value)
    if not methods:
        raise _invalid(source, key, "is empty, which would accept no certificate",
                       hint="remove the key to accept every method")
    unknown = [method for method in methods if method not in SENSITIVITY_METHODS]
    if unknown:
        raise _invalid(source, key, f"has unknown methods {unknown}; expected a subset of "
                       f"{list(SENSITIVITY_METHODS)}")
    return tuple(methods)


def _parse_key_paths(source: str, value: object) -> tuple[str, ...]:
    key = "trusted_keys"
    paths = _parse_string_list(source, key, value)
    for index, text in enumerate(paths):
        path = PurePosixPath(text)
        # Key paths are relative to the repository root, so the policy means the same on
        # every checkout. An absolute path or '..' would reach outside the repository.
        if "\\" in text or path.is_absolute() or ".." in path.parts or text.startswith("~"):
            raise _invalid(
                source, f"{key}[{index}]",
                f"must be a relative path inside the repository, got {text!r}",
                hint="give keys outside the repository with --key on the command line",
            )
    return tuple(paths)


def parse_policy(data: Mapping[str, Any], *, source: str = "<policy>") -> Policy:
    """Check a parsed policy document and return the policy.

    Args:
        data: The TOML document as a mapping.
        source: Name of the file, for messages.

    Returns:
        The policy, with defaults for the keys that are absent.

    Raises:
        InputError: ``E_POLICY_INVALID`` for an unknown key, a value of the wrong type
            or out of range, or an unsupported ``policy_version``; the message names the
            key, the expected value and the actual one.
    """
    unknown = sorted(str(key) for key in data if key not in _KNOWN_KEYS)
    if unknown:
        raise _invalid(
            source, f"key {_shown(unknown[0])}",
            f"is unknown ({len(unknown)} unknown key(s): {_shown(unknown)}); expected keys: "
            f"{list(_KNOWN_KEYS)}",
            hint="check the spelling; an ignored key would silently loosen the policy",
        )

    version = data.get("policy_version", POLICY_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version != POLICY_VERSION:
        raise _invalid(
            source, "policy_version", f"must be {POLICY_VERSION}, got {_shown(version)}",
            hint="this release reads policy version 1; upgrade mbd-cert for later versions",
        )

    epsilon = data.get("max_cumulative_epsilon")
    delta = data.get("max_delta")
    allow_inconclusive = _parse_bool(source, "allow_inconclusive",
                                     data.get("allow_inconclusive", False))
    strict = _parse_bool(source, "strict", data.get("strict", False))
    # Imported here because that module imports this one's helpers.
    from mbd_cert._policy_models import parse_models

    models = parse_models(source, data["models"]) if "models" in data else ()
    return Policy(
        max_cumulative_epsilon=None if epsilon is None else _parse_epsilon(source, epsilon),
        max_delta=None if delta is None else _parse_delta(source, delta),
        required_level=_parse_level(source, data.get("required_level", 1)),
        required_sensitivity_methods=(
            _parse_methods(source, data["required_sensitivity_methods"])
            if "required_sensitivity_methods" in data else ()
        ),
        trusted_keys=_parse_key_paths(source, data.get("trusted_keys", [])),
        allow_inconclusive=allow_inconclusive,
        strict=strict,
        models=models,
        source=source,
    )


def load_policy(path: str | Path) -> Policy:
    """Read and check a policy file.

    Args:
        path: The TOML file.

    Returns:
        The policy.

    Raises:
        FileMissing: The file does not exist.
        LimitExceeded: The file is larger than ``MAX_POLICY_BYTES``.
        InputError: ``E_POLICY_INVALID`` when the file is not UTF-8 TOML or a value is
            invalid (see :func:`parse_policy`); ``E_INPUT`` when no TOML parser is
            installed (Python 3.10 without ``tomli``).
    """
    source = str(path)
    data = _json.read_bytes_capped(path, what="policy file", max_bytes=MAX_POLICY_BYTES)
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise InputError(
            "reading a policy file on Python 3.10 needs the 'tomli' package",
            hint="pip install tomli, or use Python 3.11 or later",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(source, "file", f"is not UTF-8 text (byte {exc.start})") from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _invalid(source, "file", f"is not valid TOML: {exc}") from exc
    except ValueError as exc:
        # tomllib raises a plain ValueError, not TOMLDecodeError, for a decimal integer of
        # more than 4,300 digits (sys.get_int_max_str_digits). No key takes such a value.
        raise _invalid(source, "file", "contains an integer with too many digits to read",
                       hint="a policy's numbers are small: a level of 1 to 3 and limits "
                       "such as 2.0 or 1e-5") from exc
    except RecursionError as exc:
        # tomllib recurses once per nested array or table; the 64 KiB cap still admits
        # thousands of levels. The deepest policy value, models.PATH.deleted_modalities,
        # is three levels down.
        raise _invalid(source, "file", "nests arrays or tables too deeply to parse",
                       hint="a policy holds numbers, booleans, lists of strings and the "
                       "models table of model paths") from exc
    return parse_policy(document, source=source)


def find_policy(root: str | Path) -> Path | None:
    """Return the policy file in the repository root, or None when there is none.

    A default name that exists but is not a readable regular file (a dangling link, a
    directory) is still returned, so that :func:`load_policy` rejects it: skipping it
    would verify the repository with no policy at all.

    Raises:
        InputError: ``E_POLICY_INVALID`` when both default names exist, because it
            would be unclear which one applies.
    """
    found = [Path(root) / name for name in DEFAULT_FILE_NAMES
             if os.path.lexists(Path(root) / name)]
    if len(found) > 1:
        raise InputError(
            f"both {found[0]} and {found[1]} exist; only one policy file may apply",
            hint="delete one of them or pass --policy FILE",
            code=CODE_POLICY_INVALID,
        )
    return found[0] if found else None


__all__ = [
    "CODE_POLICY_INVALID",
    "DEFAULT_FILE_NAMES",
    "POLICY_VERSION",
    "ModelPin",
    "Policy",
    "find_policy",
    "load_policy",
    "parse_policy",
]
