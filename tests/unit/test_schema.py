"""Tests for mbd_cert.schema: schema lookup, version handling and validation errors.

Most tests use a small schema written to a temporary directory, so that they check
the validation machinery independently of the real v1 schema. The last tests run the
real schema when the checkout has it.
"""

from __future__ import annotations

import json
import math
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from mbd_cert import SUPPORTED_FORMAT_MAJOR, schema
from mbd_cert.errors import (
    LimitExceeded,
    MalformedCertificate,
    MbdCertError,
    UnsupportedVersion,
)
from mbd_cert.schema import schema_for_major, validate_certificate

SMALL_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:example:test-certificate:v1",
    "type": "object",
    "additionalProperties": False,
    "required": ["format_version", "issued_at", "privacy"],
    "properties": {
        "format_version": {"type": "string", "pattern": "^1\\.[0-9]+$"},
        "issued_at": {"type": "string", "format": "date-time"},
        "certificate_id": {"type": "string", "format": "uuid"},
        "privacy": {"$ref": "#/$defs/privacy"},
        "tensors": {"type": "array", "items": {"type": "string"}},
        "config": {"type": "object"},
    },
    "$defs": {
        "privacy": {
            "type": "object",
            "required": ["epsilon", "delta"],
            "properties": {
                "epsilon": {"type": "number", "exclusiveMinimum": 0},
                "delta": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            },
        }
    },
}


def valid_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "format_version": "1.0",
        "issued_at": "2024-05-01T12:00:00Z",
        "privacy": {"epsilon": 1.0, "delta": 1e-5},
    }
    doc.update(changes)
    return doc


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    schema._validator_for_major.cache_clear()
    yield
    schema._validator_for_major.cache_clear()


@pytest.fixture
def schema_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the schema lookup at a temporary directory with SMALL_SCHEMA as v1."""
    write_schema(tmp_path, SMALL_SCHEMA)
    monkeypatch.setattr(schema, "_schema_dirs", lambda: [tmp_path / "absent", tmp_path])
    return tmp_path


def write_schema(directory: Path, document: dict[str, Any], major: int = 1) -> None:
    (directory / f"certificate.v{major}.schema.json").write_text(json.dumps(document))


def malformed(doc: Any) -> MalformedCertificate:
    with pytest.raises(MalformedCertificate) as info:
        validate_certificate(doc)
    return info.value


# --- the schema itself ------------------------------------------------------------


def test_valid_document_passes(schema_dir: Path) -> None:
    validate_certificate(
        valid_doc(tensors=["a"], certificate_id="6f1c1f1e-3b5e-4c1a-9a51-0b9c3f6d2e7a")
    )


def test_schema_for_major_returns_copy(schema_dir: Path) -> None:
    first = schema_for_major(1)
    assert first == SMALL_SCHEMA
    first["required"].append("mutated")
    assert schema_for_major(1) == SMALL_SCHEMA


def test_schema_for_unknown_major(schema_dir: Path) -> None:
    with pytest.raises(UnsupportedVersion):
        schema_for_major(SUPPORTED_FORMAT_MAJOR + 1)


def test_bundled_location_searched_first() -> None:
    bundled, checkout = schema._schema_dirs()
    assert str(bundled).endswith("mbd_cert/_schema")
    assert str(checkout).endswith("schema")


def test_missing_schema_is_internal_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schema, "_schema_dirs", lambda: [tmp_path])
    with pytest.raises(MbdCertError) as info:
        validate_certificate(valid_doc())
    assert info.value.code == "E_SCHEMA_INTERNAL"
    assert info.value.exit_code == 3


def test_invalid_schema_is_internal_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_schema(tmp_path, {"type": "no-such-type"})
    monkeypatch.setattr(schema, "_schema_dirs", lambda: [tmp_path])
    with pytest.raises(MbdCertError) as info:
        validate_certificate(valid_doc())
    assert info.value.code == "E_SCHEMA_INTERNAL"


def test_other_dialect_is_internal_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_schema(tmp_path, {**SMALL_SCHEMA, "$schema": "http://json-schema.org/draft-07/schema#"})
    monkeypatch.setattr(schema, "_schema_dirs", lambda: [tmp_path])
    with pytest.raises(MbdCertError) as info:
        validate_certificate(valid_doc())
    assert info.value.code == "E_SCHEMA_INTERNAL"


def test_remote_ref_never_fetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """R-SEC-2: validation opens no connection, even for a $ref to a remote schema."""
    attempts: list[tuple[object, ...]] = []

    def no_network(*args: object, **kwargs: object) -> None:
        # Recorded as well as raised, because the schema library turns an exception in
        # a retrieval into Unresolvable, which would hide the attempt.
        attempts.append(args)
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    remote = {
        **SMALL_SCHEMA,
        "properties": {
            **SMALL_SCHEMA["properties"],
            "privacy": {"$ref": "https://example.invalid/p.json"},
        },
    }
    write_schema(tmp_path, remote)
    monkeypatch.setattr(schema, "_schema_dirs", lambda: [tmp_path])
    with pytest.raises(MbdCertError) as info:
        validate_certificate(valid_doc())
    assert info.value.code == "E_SCHEMA_INTERNAL"
    assert "unresolvable" in str(info.value)
    assert attempts == []


# --- format checking -------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("issued_at", "yesterday"),
        ("issued_at", "2024-13-01T00:00:00Z"),
        ("issued_at", "2024-05-01"),
        ("issued_at", "2024-05-01T12:00:00Z\n"),
        ("certificate_id", "not-a-uuid"),
    ],
)
def test_bad_format_rejected_naming_field(schema_dir: Path, field: str, value: str) -> None:
    error = malformed(valid_doc(**{field: value}))
    assert error.code == "E_CERT_MALFORMED"
    assert f"field {field} is invalid" in str(error)


def test_format_checker_without_formats_fails_closed() -> None:
    with pytest.raises(MbdCertError) as info:
        schema._checked_format_checker(FormatChecker(formats=()))
    assert info.value.code == "E_FORMAT_CHECKER_UNAVAILABLE"
    assert info.value.exit_code == 3
    assert "rfc3339-validator" in info.value.hint


def test_format_checker_missing_uuid_fails_closed() -> None:
    with pytest.raises(MbdCertError) as info:
        schema._checked_format_checker(FormatChecker(formats=("date-time",)))
    assert "'uuid'" in str(info.value)


def _formats(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["format"]} if isinstance(node.get("format"), str) else set()
        return found.union(*(_formats(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_formats(value) for value in node))
    return set()


def test_probes_cover_every_format_of_the_bundled_schemas() -> None:
    # jsonschema passes any value of a format it has no checker for, so a format the
    # schema uses without a probe could go unchecked on an installation without it.
    used = _formats(schema_for_major(1))
    assert used == {"date-time", "uuid"}
    assert used <= {name for name, _, _ in schema._FORMAT_PROBES}


def test_installed_format_checker_passes_probes() -> None:
    checker = Draft202012Validator.FORMAT_CHECKER
    assert schema._checked_format_checker(checker) is checker


# --- schema keywords in certificates -----------------------------------------------


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"$schema": "https://evil.example/schema.json"}, "$schema"),
        ({"config": {"$ref": "https://evil.example/x.json"}}, "config.$ref"),
        ({"config": {"layers": [{"$id": "urn:x"}]}}, "config.layers[0].$id"),
        ({"config": {"$dynamicRef": "#meta"}}, "config.$dynamicRef"),
    ],
)
def test_schema_keywords_rejected(schema_dir: Path, changes: dict[str, Any], path: str) -> None:
    error = malformed(valid_doc(**changes))
    assert error.code == "E_CERT_SCHEMA_KEYWORD"
    assert f"field {path} " in str(error)


def test_schema_keyword_rejected_before_version(schema_dir: Path) -> None:
    error = malformed({"$schema": "https://evil.example/", "format_version": "9.0"})
    assert error.code == "E_CERT_SCHEMA_KEYWORD"


def test_dollar_in_ordinary_key_allowed(schema_dir: Path) -> None:
    validate_certificate(valid_doc(config={"price$": 1, "$note": "x"}))


# --- versions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"format_version": 1},
        {"format_version": 1.0},
        {"format_version": "1"},
        {"format_version": "1.0.0"},
        {"format_version": "01.0"},
        {"format_version": "1.00"},
        {"format_version": "v1.0"},
        {"format_version": "1.0\n"},
        {"format_version": "1" * 5000 + ".0"},
        {"format_version": None},
    ],
)
def test_bad_format_version_rejected(schema_dir: Path, changes: dict[str, Any]) -> None:
    """R-VER-1: format_version must be the string MAJOR.MINOR."""
    assert malformed(valid_doc(**changes)).code == "E_FORMAT_VERSION_INVALID"


def test_missing_format_version_rejected(schema_dir: Path) -> None:
    """R-VER-1: a certificate without format_version is rejected."""
    doc = valid_doc()
    del doc["format_version"]
    error = malformed(doc)
    assert error.code == "E_FORMAT_VERSION_INVALID"
    assert "format_version" in str(error)


def test_unknown_major_rejected_with_upgrade_hint(schema_dir: Path) -> None:
    with pytest.raises(UnsupportedVersion) as info:
        validate_certificate(valid_doc(format_version=f"{SUPPORTED_FORMAT_MAJOR + 1}.0"))
    assert info.value.code == "E_UNSUPPORTED_VERSION"
    assert info.value.exit_code == 2
    assert "upgrade mbd-cert" in info.value.hint


def test_major_zero_unsupported(schema_dir: Path) -> None:
    with pytest.raises(UnsupportedVersion) as info:
        validate_certificate(valid_doc(format_version="0.9"))
    assert "upgrade" not in info.value.hint


def test_newer_minor_uses_major_schema(schema_dir: Path) -> None:
    validate_certificate(valid_doc(format_version="1.7"))


# --- schema violations -----------------------------------------------------------


@pytest.mark.parametrize(
    ("privacy", "path"),
    [
        ({"epsilon": 0, "delta": 1e-5}, "privacy.epsilon"),
        ({"epsilon": -1.0, "delta": 1e-5}, "privacy.epsilon"),
        ({"epsilon": 1.0, "delta": 0}, "privacy.delta"),
        ({"epsilon": 1.0, "delta": 1.0}, "privacy.delta"),
        ({"epsilon": "1.0", "delta": 1e-5}, "privacy.epsilon"),
        ({"epsilon": True, "delta": 1e-5}, "privacy.epsilon"),
    ],
)
def test_privacy_bounds_rejected(schema_dir: Path, privacy: dict[str, Any], path: str) -> None:
    error = malformed(valid_doc(privacy=privacy))
    assert error.code == "E_CERT_MALFORMED"
    assert f"field {path} is invalid" in str(error)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_number_rejected(schema_dir: Path, value: float) -> None:
    """R-FMT-4: a NaN or infinite number in a certificate is rejected."""
    # NaN passes exclusiveMinimum and exclusiveMaximum, so it is rejected before them.
    error = malformed(valid_doc(privacy={"epsilon": value, "delta": 1e-5}))
    assert error.code == "E_JSON_NONFINITE_NUMBER"
    assert "privacy.epsilon" in str(error)


def test_missing_field_named_with_path(schema_dir: Path) -> None:
    error = malformed(valid_doc(privacy={"epsilon": 1.0}))
    assert error.code == "E_CERT_MALFORMED"
    assert "field privacy.delta is missing" in str(error)


def test_unknown_top_level_field_named(schema_dir: Path) -> None:
    error = malformed(valid_doc(zzz=1, extra=2))
    assert "field extra is not allowed" in str(error)


def test_schema_error_hint_says_what_to_do(schema_dir: Path) -> None:
    # A signed certificate cannot be fixed by editing; the hint names the schema file
    # that is actually read, not just its base name.
    error = malformed(valid_doc(extra=2))
    assert "ask the issuer for cert.json as issued" in error.hint
    assert str(schema_dir / "certificate.v1.schema.json") in error.hint
    assert "upgrade" not in error.hint


def test_schema_error_newer_minor_hints_upgrade(schema_dir: Path) -> None:
    error = malformed(valid_doc(format_version="1.999", extra=2))
    assert "states format 1.999" in error.hint
    assert "upgrade mbd-cert" in error.hint


def test_schema_location_names_shipped_file() -> None:
    # An installed mbd-cert ships the schema as package data (mbd_cert/_schema); a
    # checkout has it in schema/.
    location = Path(schema.schema_location(1))
    assert location.is_file()
    assert location.name == "certificate.v1.schema.json"
    assert location.parent.name in ("_schema", "schema")


def test_first_error_in_path_order(schema_dir: Path) -> None:
    doc = valid_doc(tensors=[1, "ok", 2], issued_at="yesterday")
    doc["privacy"] = {"epsilon": 0, "delta": 2}
    assert "field issued_at is invalid" in str(malformed(doc))
    doc["issued_at"] = "2024-05-01T12:00:00Z"
    assert "field privacy.delta is invalid" in str(malformed(doc))
    doc["privacy"] = {"epsilon": 1, "delta": 0.5}
    assert "field tensors[0] is invalid" in str(malformed(doc))


def test_long_value_shortened_in_message(schema_dir: Path) -> None:
    error = malformed(valid_doc(tensors=["x" * 10_000, 5]))
    assert len(str(error)) < 600


@pytest.mark.parametrize("doc", [[], "cert", None, 3])
def test_non_object_rejected(schema_dir: Path, doc: Any) -> None:
    assert malformed(doc).code == "E_CERT_MALFORMED"


def test_deeply_nested_document_rejected(schema_dir: Path) -> None:
    nested: Any = {}
    for _ in range(100):
        nested = {"a": nested}
    with pytest.raises(LimitExceeded) as info:
        validate_certificate(valid_doc(config=nested))
    assert info.value.code == "E_JSON_TOO_DEEP"


# --- the real v1 schema -----------------------------------------------------------

REAL_SCHEMA = Path(__file__).resolve().parents[2] / "schema" / "certificate.v1.schema.json"


@pytest.mark.skipif(not REAL_SCHEMA.is_file(), reason="schema/certificate.v1.schema.json absent")
def test_real_schema_loads_and_is_valid() -> None:
    document = schema_for_major(1)
    Draft202012Validator.check_schema(document)
    assert document == json.loads(REAL_SCHEMA.read_text())


@pytest.mark.skipif(not REAL_SCHEMA.is_file(), reason="schema/certificate.v1.schema.json absent")
def test_real_schema_checks_issued_at_format() -> None:
    validator = schema._validator_for_major(1)
    errors = validator.iter_errors({"format_version": "1.0", "issued_at": "yesterday"})
    at_issued_at = [
        error.validator for error in errors if list(error.absolute_path) == ["issued_at"]
    ]
    assert "format" in at_issued_at


HONEST_VECTOR = REAL_SCHEMA.parent / "vectors" / "v1" / "valid" / "honest-audio-eps1" / "cert.json"


@pytest.mark.skipif(not HONEST_VECTOR.is_file(), reason="schema/vectors absent")
@pytest.mark.parametrize(("section", "field", "value"), [
    ("privacy", "epsilon", 0), ("privacy", "epsilon", -1.0),
    ("privacy", "delta", 0), ("privacy", "delta", 1), ("privacy", "delta", 1.5),
    ("privacy", "sigma", 0), ("privacy", "sigma", -0.5),
    ("privacy", "sensitivity", 0), ("privacy", "sensitivity", -0.002),
    ("accounting", "delta", 0), ("accounting", "delta", 1),
])
def test_real_schema_privacy_numbers_positive(section: str, field: str, value: float) -> None:
    """R-FMT-4: epsilon, delta, sigma and sensitivity are > 0, and delta is < 1."""
    doc = json.loads(HONEST_VECTOR.read_text())
    validate_certificate(doc)
    doc[section][field] = value
    error = malformed(doc)
    assert error.code == "E_CERT_MALFORMED"
    assert f"field {section}.{field} is invalid" in str(error)
