"""Validation of certificates against the bundled JSON Schema of their format version.

Stability: public.

The schema is chosen by the major part of the certificate's ``format_version``, never
by the certificate itself. Certificates that carry JSON Schema reference keywords
(``$schema``, ``$ref``, ``$id``, ...) anywhere are rejected, and the validator uses a
``referencing`` registry that cannot retrieve anything, so validation never touches
the network.

Schema files are looked up first inside the installed package (``mbd_cert/_schema``,
copied from the repository's ``schema/`` folder when the wheel is built), then in
``schema/`` of a source checkout.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import math
import re
from collections.abc import Mapping
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, NoReturn

import jsonschema.exceptions
import jsonschema.protocols
import referencing.exceptions
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry

from mbd_cert import (
    FORMAT_VERSION,
    SUPPORTED_FORMAT_MAJOR,
    __version__,
    _ecma_schema,
    _tensor_map_schema,
)
from mbd_cert._json import MAX_JSON_DEPTH, json_path, load_json_strict
from mbd_cert.errors import (
    InputError,
    LimitExceeded,
    MalformedCertificate,
    MbdCertError,
    UnsupportedVersion,
)

__all__ = ["schema_for_major", "validate_certificate"]

SCHEMA_FILE_TEMPLATE = "certificate.v{major}.schema.json"
MAX_SCHEMA_BYTES = 1 << 20
DRAFT_2020_12_URI = "https://json-schema.org/draft/2020-12/schema"

# MAJOR.MINOR without leading zeros. Six digits per part keeps int() cheap.
_FORMAT_VERSION = re.compile(r"(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})\Z")

# Keywords through which a JSON document can name or reference a schema. None of them
# is a certificate field.
_SCHEMA_KEYWORDS = frozenset(
    {
        "$schema",
        "$id",
        "$ref",
        "$anchor",
        "$dynamicRef",
        "$dynamicAnchor",
        "$recursiveRef",
        "$recursiveAnchor",
        "$vocabulary",
    }
)

# Validator messages quote the offending value, which an attacker controls.
_MAX_MESSAGE_CHARS = 300

# (format, instance, whether it conforms). jsonschema passes every value of a format
# whose checker is not installed, so these probes detect a missing checker. They cover
# every format the bundled schemas use (a unit test keeps the two lists in step).
_FORMAT_PROBES = (
    ("date-time", "yesterday", False),
    ("date-time", "2024-05-01T12:00:00Z", True),
    ("uuid", "yesterday", False),
    ("uuid", "6f1c1f1e-3b5e-4c1a-9a51-0b9c3f6d2e7a", True),
)


def _internal_error(message: str, code: str = "E_SCHEMA_INTERNAL", hint: str = "") -> NoReturn:
    # The base class exits 3: a broken installation is a bug, not bad user input.
    raise MbdCertError(message, hint=hint or "reinstall mbd-cert", code=code)


def _checked_format_checker(checker: FormatChecker) -> FormatChecker:
    """Return ``checker`` after making sure that it checks ``date-time`` and ``uuid``.

    Raises:
        MbdCertError: A probe value was not judged as expected
            (``E_FORMAT_CHECKER_UNAVAILABLE``, exit code 3).
    """
    for format_name, instance, conforms in _FORMAT_PROBES:
        if checker.conforms(instance, format_name) != conforms:
            _internal_error(
                f"the JSON Schema format checker does not check '{format_name}' "
                f"(it judged {instance!r} wrongly), so certificates cannot be validated",
                code="E_FORMAT_CHECKER_UNAVAILABLE",
                hint="install the date-time checker that jsonschema uses: "
                "pip install rfc3339-validator",
            )
    return checker


@functools.lru_cache(maxsize=1)
def _format_checker() -> FormatChecker:
    return _checked_format_checker(_ecma_schema.format_checker())


def _schema_dirs() -> list[Traversable]:
    return [
        importlib.resources.files("mbd_cert") / "_schema",
        Path(__file__).resolve().parents[1] / "schema",
    ]


def schema_location(major: int) -> str:
    """Return where the schema of format major version ``major`` is read from.

    An installed mbd-cert reads ``mbd_cert/_schema/certificate.vN.schema.json`` inside
    the package; a source checkout reads ``schema/certificate.vN.schema.json``. Without
    either, the file name alone is returned.
    """
    name = SCHEMA_FILE_TEMPLATE.format(major=major)
    for directory in _schema_dirs():
        candidate = directory / name
        if candidate.is_file():
            return str(candidate)
    return name


def _read_schema(major: int) -> dict[str, Any]:
    name = SCHEMA_FILE_TEMPLATE.format(major=major)
    for directory in _schema_dirs():
        candidate = directory / name
        if not candidate.is_file():
            continue
        try:
            schema = load_json_strict(
                candidate.read_bytes(), what=f"schema {name}", max_bytes=MAX_SCHEMA_BYTES
            )
        except (InputError, OSError) as exc:
            _internal_error(f"bundled schema {name} cannot be read: {exc}")
        if not isinstance(schema, dict):
            _internal_error(f"bundled schema {name} is not a JSON object")
        return schema
    _internal_error(f"bundled schema {name} is missing from the installation")


@functools.cache
def _validator_for_major(major: int) -> jsonschema.protocols.Validator:
    schema = _read_schema(major)
    dialect = schema.get("$schema", DRAFT_2020_12_URI)
    if dialect != DRAFT_2020_12_URI:
        _internal_error(f"bundled schema for major version {major} declares dialect {dialect!r}")
    try:
        Draft202012Validator.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        _internal_error(f"bundled schema for major version {major} is invalid: {exc.message}")
    # An empty Registry has no retrieve function, so a $ref outside the schema raises
    # Unresolvable. Without a registry, jsonschema 4.18+ would fetch remote references
    # over the network. _ecma_schema.Validator applies "pattern" with ECMA-262's "$".
    return _ecma_schema.Validator(schema, registry=Registry(), format_checker=_format_checker())


def _check_supported_major(major: int, version_text: str) -> None:
    if 1 <= major <= SUPPORTED_FORMAT_MAJOR:
        return
    if major > SUPPORTED_FORMAT_MAJOR:
        hint = f"upgrade mbd-cert (this is version {__version__})"
    else:
        hint = "format versions start at 1.0"
    raise UnsupportedVersion(
        f"certificate format_version {version_text} has major version {major}; this "
        f"release reads major versions 1 to {SUPPORTED_FORMAT_MAJOR}",
        hint=hint,
    )


def schema_for_major(major: int) -> dict[str, Any]:
    """Return a copy of the bundled JSON Schema for a format major version.

    Args:
        major: The major part of ``format_version``.

    Returns:
        The schema document.

    Raises:
        UnsupportedVersion: This release does not read that major version.
        MbdCertError: The bundled schema is missing or broken (``E_SCHEMA_INTERNAL``),
            or the format checker lacks its dependencies
            (``E_FORMAT_CHECKER_UNAVAILABLE``). Both exit 3.
    """
    _check_supported_major(major, str(major))
    schema: dict[str, Any] = copy.deepcopy(_validator_for_major(major).schema)
    return schema


def _check_instance(value: Any, path: list[str | int], depth: int) -> None:
    """Reject schema keywords as keys and non-finite numbers, in document order."""
    if isinstance(value, float) and not math.isfinite(value):
        # NaN passes every numeric bound in a JSON Schema, so it is caught here.
        raise MalformedCertificate(
            f"certificate field {json_path(path)} is {value}; numbers must be finite",
            code="E_JSON_NONFINITE_NUMBER",
        )
    if not isinstance(value, (dict, list)):
        return

    if depth >= MAX_JSON_DEPTH:
        raise LimitExceeded(
            f"certificate nests deeper than {MAX_JSON_DEPTH} levels at {json_path(path)}",
            code="E_JSON_TOO_DEEP",
        )
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        path.append(key)
        if key in _SCHEMA_KEYWORDS:
            raise MalformedCertificate(
                f"certificate field {json_path(path)} is a JSON Schema keyword; a "
                f"certificate must not choose or reference a schema",
                hint="remove the field; the verifier picks the schema from format_version",
                code="E_CERT_SCHEMA_KEYWORD",
            )
        _check_instance(item, path, depth + 1)
        path.pop()


def _format_major(doc: Mapping[str, Any]) -> int:
    example = f'expected a string "MAJOR.MINOR" such as "{FORMAT_VERSION}"'
    if "format_version" not in doc:
        raise MalformedCertificate(
            "certificate has no format_version field", hint=example, code="E_FORMAT_VERSION_INVALID"
        )
    version = doc["format_version"]
    match = _FORMAT_VERSION.match(version) if isinstance(version, str) else None
    if match is None:
        raise MalformedCertificate(
            f"certificate field format_version is {repr(version)[:40]}",
            hint=example,
            code="E_FORMAT_VERSION_INVALID",
        )
    major = int(match.group(1))
    _check_supported_major(major, version)
    return major


def _error_sort_key(error: jsonschema.exceptions.ValidationError) -> tuple[Any, ...]:
    # Paths mix str keys and int indexes, which do not compare with each other.
    path = tuple(
        (0, part, "") if isinstance(part, int) else (1, 0, part) for part in error.absolute_path
    )
    schema_path = tuple(str(part) for part in error.relative_schema_path)
    return (path, schema_path, error.message)


def _unexpected_properties(error: jsonschema.exceptions.ValidationError) -> list[str]:
    schema = error.schema if isinstance(error.schema, dict) else {}
    known = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return sorted(
        key
        for key in error.instance
        if key not in known and not any(re.search(pattern, key) for pattern in patterns)
    )


def _schema_error_hint(major: int, version: str) -> str:
    """Return what a user can do about a certificate that violates its schema."""
    stated = _FORMAT_VERSION.match(version)
    known = _FORMAT_VERSION.match(FORMAT_VERSION)
    if stated and known and int(stated.group(1)) == int(known.group(1)) and \
            int(stated.group(2)) > int(known.group(2)):
        action = (f"the certificate states format {version}, later than the {FORMAT_VERSION} "
                  f"that mbd-cert {__version__} knows: upgrade mbd-cert")
    else:
        action = ("editing cannot repair a signed certificate, because any change breaks "
                  "its signature: ask the issuer for cert.json as issued")
    return f"{action}. The schema it must match is {schema_location(major)}"


def _raise_schema_error(error: jsonschema.exceptions.ValidationError, major: int,
                        version: str) -> NoReturn:
    path: list[str | int] = list(error.absolute_path)
    problem = ""
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        if missing:
            path.append(missing[0])
            problem = "is missing"
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        unexpected = _unexpected_properties(error)
        if unexpected:
            path.append(unexpected[0])
            problem = "is not allowed here"
    elif error.validator in ("maxProperties", "maxItems") and isinstance(
            error.instance, (dict, list)):
        # jsonschema's own message starts with the whole value, cut off before its point.
        kind = "members" if isinstance(error.instance, dict) else "items"
        problem = (f"is invalid: it has {len(error.instance)} {kind}, more than the "
                   f"{error.validator_value} allowed")
    if not problem:
        message = error.message
        if len(message) > _MAX_MESSAGE_CHARS:
            message = message[:_MAX_MESSAGE_CHARS] + "..."
        problem = f"is invalid: {message}"
    raise MalformedCertificate(
        f"certificate field {json_path(path)} {problem}",
        hint=_schema_error_hint(major, version),
    )


def validate_certificate(doc: Mapping[str, Any], *, scan_values: bool = True) -> None:
    r"""Validate a parsed certificate against the schema of its format major version.

    A newer minor version of a known major is validated with that major's schema.

    Args:
        doc: The certificate, normally from :func:`mbd_cert._json.load_json_strict`.
        scan_values: Walk every value for schema keywords used as keys, non-finite
            numbers and excessive depth. A caller may pass False only for a document
            that the strict JSON loader read from text containing neither ``"$`` nor
            ``\u0024``: such a document has none of the three.

    Raises:
        MalformedCertificate: ``doc`` is not an object (``E_CERT_MALFORMED``), has a
            JSON Schema keyword as a key (``E_CERT_SCHEMA_KEYWORD``), contains a NaN or
            infinite number (``E_JSON_NONFINITE_NUMBER``), lacks a well-formed
            ``format_version`` (``E_FORMAT_VERSION_INVALID``), or violates the schema
            (``E_CERT_MALFORMED``, naming the first failing field in path order).
        UnsupportedVersion: The major version is unknown to this release.
        LimitExceeded: ``doc`` nests deeper than ``MAX_JSON_DEPTH`` (``E_JSON_TOO_DEEP``).
        MbdCertError: The bundled schema or the format checker is unusable (exit 3).
    """
    # Step 1: the certificate is a JSON object.
    if not isinstance(doc, Mapping):
        raise MalformedCertificate(
            f"certificate must be a JSON object, got {type(doc).__name__}",
            hint="the file must contain one object {...}",
        )
    instance = dict(doc)

    # Step 2: no schema keywords and no non-finite numbers, before anything else reads it.
    if scan_values:
        _check_instance(instance, [], 0)

    # Step 3: the schema follows from format_version alone.
    major = _format_major(instance)
    validator = _validator_for_major(major)

    # Step 4: schema validation; the first error in path order is reported. The
    # per-tensor maps are checked apart, at the cost of a plain loop.
    fast_paths = _tensor_map_schema.fast_paths(validator.schema)
    reduced, maps = _tensor_map_schema.split_maps(instance, fast_paths)
    try:
        found = list(validator.iter_errors(reduced))
        for path, tensors in maps:
            found.extend(_tensor_map_schema.map_errors(path, tensors, _format_checker()))
        errors = sorted(found, key=_error_sort_key)
    except referencing.exceptions.Unresolvable as exc:
        _internal_error(f"bundled schema for major version {major} has an unresolvable $ref: {exc}")
    if errors:
        _raise_schema_error(errors[0], major, str(instance["format_version"]))
