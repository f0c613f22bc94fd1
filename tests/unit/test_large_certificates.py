"""Certificates of models with many tensors: the per-tensor maps and the value cap."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbd_cert import _ecma_schema, _tensor_map_schema, certificate, schema
from mbd_cert.errors import LimitExceeded, MalformedCertificate

REPO = Path(__file__).resolve().parents[2]
BUNDLED = json.loads((REPO / "schema" / "certificate.v1.schema.json").read_text())
VECTOR = REPO / "schema" / "vectors" / "v1" / "valid" / "honest-audio-eps1" / "cert.json"
# The validator mbd_cert.schema uses: "pattern" with ECMA-262's "$", which a final "\n"
# does not satisfy.
ENTRY_VALIDATOR = _ecma_schema.Validator(_tensor_map_schema.MAP_SCHEMA["additionalProperties"])
DIGEST = "sha256:" + "ab" * 32


def _doc() -> dict[str, Any]:
    return json.loads(VECTOR.read_text())


def _message(doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch, *, fast: bool) -> str:
    if not fast:
        monkeypatch.setattr(_tensor_map_schema, "fast_paths", lambda _schema: ())
    try:
        with pytest.raises(MalformedCertificate) as info:
            schema.validate_certificate(doc)
    finally:
        monkeypatch.undo()
    return str(info.value)


def test_bundled_schema_uses_fast_path() -> None:
    assert _tensor_map_schema.fast_paths(BUNDLED) == _tensor_map_schema.MAP_PATHS


@pytest.mark.parametrize("edit", [
    lambda s: s["$defs"]["file_commitment"]["properties"]["tensors"].update(minProperties=1),
    lambda s: s["$defs"]["digest"].update(pattern="^sha512:[0-9a-f]{128}$"),
    lambda s: s["properties"]["subject_model"].update(allOf=[{"required": ["pre_deletion"]}]),
    lambda s: s["$defs"]["file_commitment"].update(
        patternProperties={"^t": {"type": "object", "minProperties": 1}}),
    lambda s: s["properties"]["subject_model"]["properties"].update(
        pre_deletion={"$ref": "#/$defs/missing"}),
], ids=["map-keyword", "entry-pattern", "allOf-above", "patternProperties-above", "bad-ref"])
def test_edited_schema_falls_back(edit: Any) -> None:
    edited = copy.deepcopy(BUNDLED)
    edit(edited)
    assert _tensor_map_schema.fast_paths(edited) == ()


ENTRY_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 2**53 + 2), st.floats(allow_nan=False),
    st.sampled_from(["F32", "BF16", "F32\n", "f32", "F", "F32F32F32", DIGEST, DIGEST + "\n",
                     DIGEST.upper(), ""]),
    st.lists(st.one_of(st.integers(-1, 2**53 + 1), st.floats(-1, 4), st.booleans(),
                       st.text(max_size=2)), max_size=18),
)
ENTRIES = st.one_of(
    ENTRY_VALUES,
    st.dictionaries(st.sampled_from(["dtype", "shape", "digest", "extra"]), ENTRY_VALUES),
    st.fixed_dictionaries({
        "dtype": st.sampled_from(["F32", "BF16", "I64", "F8_E4M3", "bf16", "F32 "]),
        "shape": st.lists(st.one_of(st.integers(0, 2**53), st.floats(0, 9), st.booleans()),
                          max_size=17),
        "digest": st.sampled_from([DIGEST, DIGEST + "\n", DIGEST[:-1], DIGEST + "0"]),
    }),
)


@settings(max_examples=600, deadline=None)
@given(ENTRIES)
def test_entry_check_agrees_with_jsonschema(entry: Any) -> None:
    assert _tensor_map_schema.entry_is_valid(entry) == ENTRY_VALIDATOR.is_valid(entry)


def _entry(**changes: Any) -> dict[str, Any]:
    return {"dtype": "F32", "shape": [2, 3], "digest": DIGEST, **changes}


@pytest.mark.parametrize("entry", [
    _entry(), _entry(shape=[1] * 16), _entry(shape=[1] * 17), _entry(shape=[]),
    _entry(shape=[2**53 - 1]), _entry(shape=[2**53]), _entry(shape=[-1]), _entry(shape=[2.0]),
    _entry(shape=[2.5]), _entry(shape=[True]), _entry(shape=(2, 3)), _entry(dtype="F8_E4M3"),
    _entry(dtype="F8_E4M3X"), _entry(dtype="F32\n"), _entry(dtype="F"), _entry(digest=DIGEST[:-1]),
    _entry(digest=DIGEST + "\n"), _entry(extra=[1]), {"dtype": "F32", "shape": [1]}, [],
    _entry(dtype="F32\n\n"), _entry(digest="\n" + DIGEST), _entry(digest=DIGEST + "\r"),
], ids=lambda entry: json.dumps(entry, default=str)[:60])
def test_entry_check_boundaries(entry: Any) -> None:
    assert _tensor_map_schema.entry_is_valid(entry) == ENTRY_VALIDATOR.is_valid(entry)


@pytest.mark.parametrize("entry", [_entry(dtype="F32\n"), _entry(digest=DIGEST + "\n")],
                         ids=["dtype", "digest"])
def test_entry_with_final_line_feed_invalid(entry: Any) -> None:
    assert not _tensor_map_schema.entry_is_valid(entry)
    assert not ENTRY_VALIDATOR.is_valid(entry)


def _tensors(doc: dict[str, Any], side: str) -> dict[str, Any]:
    tensors: dict[str, Any] = doc["subject_model"][side]["tensors"]
    return tensors


@pytest.mark.parametrize("case", ["one-bad-dtype", "two-bad-entries", "entry-not-object",
                                  "missing-digest", "error-elsewhere-first", "map-not-object",
                                  "digest-final-line-feed", "dtype-final-line-feed"])
def test_same_message_as_jsonschema(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = _doc()
    post = _tensors(doc, "post_deletion")
    names = sorted(post)
    if case == "one-bad-dtype":
        post[names[3]]["dtype"] = "f32"
    elif case == "two-bad-entries":
        post[names[5]]["shape"] = [-1]
        post[names[2]]["digest"] = "sha256:0"
    elif case == "entry-not-object":
        post[names[-1]] = [1, 2]
    elif case == "missing-digest":
        del _tensors(doc, "pre_deletion")[names[0]]["digest"]
        post[names[1]]["dtype"] = 7
    elif case == "digest-final-line-feed":
        post[names[4]]["digest"] += "\n"
    elif case == "dtype-final-line-feed":
        _tensors(doc, "pre_deletion")[names[2]]["dtype"] += "\n"
    elif case == "error-elsewhere-first":
        post[names[0]]["dtype"] = "f32"
        doc["deletion"]["modality"] = 5
    else:
        doc["subject_model"]["post_deletion"]["tensors"] = ["a"]
    assert _message(doc, monkeypatch, fast=True) == _message(doc, monkeypatch, fast=False)


def test_valid_vector_passes_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    schema.validate_certificate(_doc())
    monkeypatch.setattr(_tensor_map_schema, "fast_paths", lambda _schema: ())
    schema.validate_certificate(_doc())


def test_too_many_tensors_named() -> None:
    doc = _doc()
    entry = {"dtype": "F32", "shape": [1], "digest": DIGEST}
    _tensors(doc, "pre_deletion").update({f"t{i}": entry for i in range(100_001)})
    with pytest.raises(MalformedCertificate) as info:
        schema.validate_certificate(doc)
    assert "subject_model.pre_deletion.tensors is invalid" in str(info.value)
    assert "it has 100044 members, more than the 100000 allowed" in str(info.value)


def test_maps_not_changed_in_caller_document() -> None:
    doc = _doc()
    before = copy.deepcopy(doc)
    schema.validate_certificate(doc)
    assert doc == before


@pytest.mark.parametrize("spelling", ['"$ref"', '"\\u0024ref"', '"\\u0024schema"'])
def test_keyword_key_found_in_any_spelling(spelling: str) -> None:
    # parse_certificate skips the walk over every value when the text cannot hold a
    # schema keyword; the escaped spelling must still reach the walk.
    text = VECTOR.read_text().replace('"deletion": {', '"deletion": {' + spelling + ': "x", ', 1)
    assert spelling in text
    with pytest.raises(MalformedCertificate) as info:
        certificate.parse_certificate(text.encode())
    assert info.value.code == "E_CERT_SCHEMA_KEYWORD"


def test_too_many_values_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """R-LIM-1: more than 6,000,000 commas, colons and brackets are rejected before parsing."""
    def no_parse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the text was parsed")

    monkeypatch.setattr(certificate._json, "load_json_strict", no_parse)
    text = b'{"metrics": [' + b"{}," * 6_000_000 + b"{}]}"
    with pytest.raises(LimitExceeded) as info:
        certificate.parse_certificate(text)
    assert info.value.code == "E_INPUT_TOO_LARGE"
    assert "6000002 commas, colons and brackets" in str(info.value)


def test_largest_schema_certificate_under_separator_cap() -> None:
    doc = _doc()
    names = [f"model.layers.{i}.experts.weight" for i in range(100_000)]
    entry = {"dtype": "BF16", "shape": [7] * 16, "digest": DIGEST}
    for side in ("pre_deletion", "post_deletion"):
        _tensors(doc, side).update(dict.fromkeys(names, entry))
    doc["deletion"]["removed_tensors"] = names
    text = json.dumps(doc).encode()
    separators = text.count(b",") + text.count(b":") + text.count(b"[")
    assert separators < certificate.MAX_CERTIFICATE_SEPARATORS


@pytest.mark.parametrize("where", ["entry", "commitment"])
def test_extra_member_in_commitment_rejected(where: str) -> None:
    # A signed certificate is published: extra members would be room for hidden data.
    doc = _doc()
    commitment = doc["subject_model"]["post_deletion"]
    target = next(iter(commitment["tensors"].values())) if where == "entry" else commitment
    target["note"] = "QUJD"
    with pytest.raises(MalformedCertificate) as info:
        schema.validate_certificate(doc)
    assert "note is not allowed here" in str(info.value)


def test_issuer_refuses_what_the_verifier_would(monkeypatch: pytest.MonkeyPatch) -> None:
    # dump_certificate applies the reader's caps, so issue never writes a certificate
    # that verify refuses as too large.
    doc = _doc()
    monkeypatch.setattr(certificate, "MAX_CERTIFICATE_SEPARATORS", 100)
    with pytest.raises(LimitExceeded) as info:
        certificate.dump_certificate(doc)
    assert info.value.code == "E_INPUT_TOO_LARGE"
    assert "certificate to write has" in str(info.value)


def test_sign_and_dump_same_bytes() -> None:
    # issue signs and dumps in one call, which checks the signature member alone.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mbd_cert import signing

    key = Ed25519PrivateKey.generate()
    doc = _doc()
    doc["issuer"] = {**doc["issuer"], "key_id": signing.key_id(key.public_key())}
    signed, data = certificate.sign_and_dump(doc, key)
    assert data == certificate.dump_certificate(signed)
    assert certificate.parse_certificate(data) == signed


def test_unsigned_dump_checks_everything() -> None:
    doc = _doc()
    doc["metrics"] = {"value": -0.0}
    with pytest.raises(MalformedCertificate) as info:
        certificate.dump_certificate(doc)
    assert info.value.code == "E_CANONICAL_NUMBER"
