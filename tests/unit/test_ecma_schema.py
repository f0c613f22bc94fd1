"""Schema patterns and formats with JSON Schema's end-of-string rule: no final line feed."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import FormatChecker

from mbd_cert import _ecma_schema, _tensor_map_schema, schema
from mbd_cert._json_values import json_path
from mbd_cert.errors import MalformedCertificate, MbdCertError

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILES = sorted((REPO / "schema").glob("certificate.v*.schema.json"))
VECTOR = REPO / "schema" / "vectors" / "v1" / "valid" / "honest-audio-eps1" / "cert.json"
DIGEST = "sha256:" + "ab" * 32


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _bundled_patterns() -> list[str]:
    found = set()
    for path in SCHEMA_FILES:
        for key, value in _walk(json.loads(path.read_text())):
            if key == "pattern" and isinstance(value, str):
                found.add(value)
    return sorted(found)


PATTERNS = _bundled_patterns()


def test_bundled_schemas_have_patterns() -> None:
    assert SCHEMA_FILES
    assert "^sha256:[0-9a-f]{64}$" in PATTERNS
    assert "Z$" in PATTERNS


# Literals, escaped punctuation, ASCII classes and ranges, groups, alternation,
# quantifiers and the two anchors: syntax that ECMA-262 and Python read alike, except
# for "$", which ecma_pattern rewrites.
_PORTABLE = re.compile(
    r"(?:[A-Za-z0-9_:\-]|\\[.\-$^\\/]|\[\^?(?:[A-Za-z0-9_:]|\\[.\-\\]|[.\-])+\]"
    r"|[()|^$.*+?]|\{[0-9]+(?:,[0-9]*)?\})*"
)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_bundled_pattern_uses_portable_syntax(pattern: str) -> None:
    assert _PORTABLE.fullmatch(pattern), f"{pattern!r}: check that ecma_pattern reads it right"


def test_bundled_schemas_have_no_pattern_properties() -> None:
    # Only "pattern" is replaced, so patternProperties (and additionalProperties next to
    # it) would still use re.search. A schema that needs them must replace those too.
    for path in SCHEMA_FILES:
        keys = {key for key, _ in _walk(json.loads(path.read_text()))}
        assert "patternProperties" not in keys, path.name


@pytest.mark.parametrize(("pattern", "compiled"), [
    ("^a$", r"^a\Z"),
    ("Z$", r"Z\Z"),
    ("^a|b$", r"^a|b\Z"),
    (r"^a\$$", r"^a\$\Z"),
    (r"^a\\$", r"^a\\\Z"),
    ("^[$]$", r"^[$]\Z"),
    ("^[^$]$", r"^[^$]\Z"),
    ("^[]$]$", r"^[]$]\Z"),
    ("^[^]$]$", r"^[^]$]\Z"),
    (r"^[\]$]$", r"^[\]$]\Z"),
    ("^(a$|b)$", r"^(a\Z|b)\Z"),
    ("a", "a"),
])
def test_dollar_anchor_rewritten(pattern: str, compiled: str) -> None:
    assert _ecma_schema.ecma_pattern(pattern).pattern == compiled


@pytest.mark.parametrize("pattern", PATTERNS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_bundled_pattern_rejects_only_the_final_line_feed(pattern: str, data: Any) -> None:
    compiled = _ecma_schema.ecma_pattern(pattern)
    value = data.draw(st.from_regex(pattern, fullmatch=True))
    assert compiled.search(value)
    assert re.search(pattern, value + "\n"), "Python's own '$' lets the line feed through"
    assert not compiled.search(value + "\n")
    # Strings without a line feed are judged exactly as before.
    other = data.draw(st.text(st.characters(blacklist_characters="\n"), max_size=80))
    assert bool(compiled.search(other)) == bool(re.search(pattern, other))


def test_pattern_error_message_unchanged() -> None:
    error = next(_ecma_schema.Validator({"pattern": "^a$"}).iter_errors("a\n"))
    assert error.validator == "pattern"
    assert error.message == "'a\\n' does not match '^a$'"


# --- formats ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), [
    ("date-time", "2024-05-01T12:00:00Z"),
    ("uuid", "6f1c1f1e-3b5e-4c1a-9a51-0b9c3f6d2e7a"),
])
def test_format_rejects_line_feed(name: str, value: str) -> None:
    checker = _ecma_schema.format_checker()
    assert checker.conforms(value, name)
    assert not checker.conforms(value + "\n", name)
    assert not checker.conforms(value[:4] + "\n" + value[4:], name)


@pytest.mark.parametrize("value", [
    "6f1c1f1e-3b5e-4c1a-9a51-0b9c3f6d2e7a",
    "6F1C1F1E-3B5E-4C1A-9A51-0B9C3F6D2E7A",
    "00000000-0000-0000-0000-000000000000",
])
def test_uuid_format_accepts_hex_form(value: str) -> None:
    assert _ecma_schema.format_checker().conforms(value, "uuid")


@pytest.mark.parametrize("value", [
    "6f1c1f1e-3b5e-4c1a-9a51-0b9c3f6d2e7\r",
    "6f1c1f1e-3b5e-4c1a-9a51-0b9c3f6d2e7\u2028",
    "6f1c1f1e-3b5e-4c1a-9a51-0b9c3f6d2e7\t",
    " 6f1c1f1e-3b5e-4c1a-9a51-0b9c3f6d2e7a",
    "{6f1c1f1e-3b5e-4c1a-9a51-0b9c3f6d2e7a}",
    "6f1c1f1e-3b5e-4c1a-9a51-0b9c3f6d2e7a----",
    "6f1c1f1e3b5e4c1a9a510b9c3f6d2e7a",
    "6f1c1f1e-3b5e-4c1a-9a51_0b9c3f6d2e7a",
    "urn:uuid:6f1c1f1e-3b5e-4c1a-9a51-0b9c3f6d2e7a",
    "6f1c1f1e-3b5e-4c1a-9a51-0b9c3f6d2e7\u0663",
    "6f1c1f1e-3b5e-4c1a-9a51-0b9c3f6d2e7\uff13",
    "6f1c1f1e-3b5e-4c1a-9a51-0b9c3f6d2e7g",
    "",
])
def test_uuid_format_rejects_other_forms(value: str) -> None:
    assert not _ecma_schema.format_checker().conforms(value, "uuid")


def test_format_checker_is_a_copy() -> None:
    before = dict(schema.Draft202012Validator.FORMAT_CHECKER.checkers)
    _ecma_schema.format_checker()
    assert schema.Draft202012Validator.FORMAT_CHECKER.checkers == before


def test_missing_format_checker_still_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    class WithoutDateTime:
        FORMAT_CHECKER = FormatChecker(formats=("uuid",))

    monkeypatch.setattr(_ecma_schema, "Draft202012Validator", WithoutDateTime)
    with pytest.raises(MbdCertError) as info:
        schema._checked_format_checker(_ecma_schema.format_checker())
    assert info.value.code == "E_FORMAT_CHECKER_UNAVAILABLE"


# --- the certificate ----------------------------------------------------------------


Edit = Callable[[dict[str, Any]], str]


def _set(path: tuple[str | Edit, ...]) -> Edit:
    def edit(doc: dict[str, Any]) -> str:
        node = doc
        names = []
        for part in path[:-1]:
            key = part(node) if callable(part) else part
            names.append(key)
            node = node[key]
        last = path[-1]
        assert isinstance(last, str)
        value = node[last] if node[last] is not None else DIGEST
        node[last] = value + "\n"
        return json_path([*names, last])

    return edit


def _first_tensor(tensors: dict[str, Any]) -> str:
    return sorted(tensors)[0]


FIELDS = {
    "issued_at": ("issued_at",),
    "objective": ("saliency", "objective"),
    "modality": ("deletion", "modality"),
    "manifest-digest": ("subject_model", "post_deletion", "manifest_digest"),
    "previous-certificate": ("accounting", "previous_certificate"),
    "bundle-path": ("audit_bundle", "diff", "path"),
    "key-id": ("issuer", "key_id"),
    "tensor-digest": ("subject_model", "post_deletion", "tensors", _first_tensor, "digest"),
    "tensor-dtype": ("subject_model", "pre_deletion", "tensors", _first_tensor, "dtype"),
}


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "jsonschema-only"])
@pytest.mark.parametrize("field", list(FIELDS))
def test_trailing_line_feed_malformed(field: str, fast: bool,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if not fast:
        monkeypatch.setattr(_tensor_map_schema, "fast_paths", lambda _schema: ())
    doc = json.loads(VECTOR.read_text())
    schema.validate_certificate(doc)
    where = _set(FIELDS[field])(doc)
    with pytest.raises(MalformedCertificate) as info:
        schema.validate_certificate(doc)
    assert info.value.code == "E_CERT_MALFORMED"
    assert f"field {where} is invalid" in str(info.value)
