"""Hostile-input cases through the ``mbd-cert`` command line (and the issuer library).

Each test builds its hostile input from the honest run of ``conftest.py`` and checks
the exit code, the ``E_...`` code of the ``--json`` report and that no traceback
reaches the user. Exit codes: 2 for unusable input, 1 for a false claim.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import socket
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_support import (
    HonestRun,
    assert_check_failed,
    assert_clean,
    assert_input_error,
    resign,
    run_cli,
    safetensors_bytes,
    verify,
    write_json,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519

from mbd_cert import FORMAT_VERSION, _safetensors, canonical, diff, errors, mechanism

F32_ONE = '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'


def _edited_text(run: HonestRun, old: str, new: str) -> str:
    text = run.cert.read_text()
    assert old in text, old
    return text.replace(old, new, 1)


def _write(path: Path, data: bytes | str) -> Path:
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def _as_bundle_file(run: HonestRun, role: str, data: bytes) -> Path:
    """Replace the audit bundle's ``role`` file in a fresh copy with ``data``."""
    target = run.diff if role == "diff" else run.probe
    target.write_bytes(data)
    return run.out_dir


# C01: header length fields that must be rejected before any allocation.

HEADER_LENGTH_CASES = [
    pytest.param((2**63).to_bytes(8, "little") + b"{}", "E_SAFETENSORS_HEADER_TOO_LARGE",
                 id="length-2**63"),
    pytest.param((100_000_001).to_bytes(8, "little") + b"{}", "E_SAFETENSORS_HEADER_TOO_LARGE",
                 id="length-100000001"),
    pytest.param((1000).to_bytes(8, "little") + b"{}", "E_SAFETENSORS_TRUNCATED",
                 id="length-beyond-file"),
    pytest.param(b"\x02\x00\x00", "E_SAFETENSORS_TRUNCATED", id="shorter-than-8"),
    pytest.param(b"", "E_SAFETENSORS_TRUNCATED", id="empty-file"),
]


@pytest.mark.parametrize(("data", "code"), HEADER_LENGTH_CASES)
def test_c01_model_header_length(honest_run: HonestRun, tmp_path: Path, data: bytes,
                                 code: str) -> None:
    """R-LIM-2, R-ST-1: verify rejects a model whose header length is over the cap or the file."""
    model = _write(tmp_path / "model.safetensors", data)
    outcome = verify(honest_run.cert, model, honest_run.public_key)
    assert_input_error(outcome, code)


@pytest.mark.parametrize(("data", "code"), HEADER_LENGTH_CASES)
@pytest.mark.parametrize("role", ["diff", "probe"])
def test_c01_bundle_header_length(fresh_run: HonestRun, data: bytes, code: str,
                                  role: str) -> None:
    bundle = _as_bundle_file(fresh_run, role, data)
    outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key, "--bundle", bundle)
    assert_input_error(outcome, code)


def test_c01_huge_length_allocates_nothing(honest_run: HonestRun, tmp_path: Path) -> None:
    """R-LIM-5: a declared header length makes verify allocate nothing in proportion to it."""
    model = _write(tmp_path / "model.safetensors", (100_000_000).to_bytes(8, "little") + b"{}")
    tracemalloc.start()
    try:
        outcome = verify(honest_run.cert, model, honest_run.public_key)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_input_error(outcome, "E_SAFETENSORS_TRUNCATED")
    # The header would need 100 MB; the whole verification stays far below that.
    assert peak < 20_000_000


# C02: offsets that disagree with shape and dtype.


def test_c02_offsets_smaller_than_shape(honest_run: HonestRun, tmp_path: Path) -> None:
    header = '{"w":{"dtype":"F32","shape":[1000,1000],"data_offsets":[0,16]}}'
    model = _write(tmp_path / "m.safetensors", safetensors_bytes(header, bytes(16)))
    outcome = verify(honest_run.cert, model, honest_run.public_key)
    assert_input_error(outcome, "E_SAFETENSORS_SIZE_MISMATCH")
    assert "'w'" in outcome.stderr
    assert "4000000" in outcome.stderr
    assert "16" in outcome.stderr


@pytest.mark.parametrize(
    ("entry", "size"),
    [
        ('{"dtype":"F64","shape":[3],"data_offsets":[0,16]}', 16),
        ('{"dtype":"BOOL","shape":[2,2],"data_offsets":[0,8]}', 8),
        ('{"dtype":"F32","shape":[0],"data_offsets":[0,4]}', 4),
        ('{"dtype":"I64","shape":[],"data_offsets":[0,4]}', 4),
    ],
    ids=["f64-too-short", "bool-too-long", "zero-size-with-bytes", "scalar-too-short"],
)
@pytest.mark.parametrize("role", ["model", "diff"])
def test_c02_size_mismatch_neighbours(fresh_run: HonestRun, entry: str, size: int,
                                      role: str) -> None:
    data = safetensors_bytes('{"t":' + entry + "}", bytes(size))
    if role == "model":
        outcome = verify(fresh_run.cert, _write(fresh_run.model, data), fresh_run.public_key)
    else:
        bundle = _as_bundle_file(fresh_run, "diff", data)
        outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key, "--bundle",
                         bundle)
    assert_input_error(outcome, "E_SAFETENSORS_SIZE_MISMATCH")
    assert "'t'" in outcome.stderr


# C03 and the rest of the layout rules: names, coverage, entries.

LAYOUT_CASES = [
    pytest.param('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                 '"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', 8,
                 "E_SAFETENSORS_DUPLICATE_KEY", id="duplicate-tensor"),
    pytest.param('{"w":{"dtype":"F32","dtype":"F64","shape":[1],"data_offsets":[0,4]}}', 4,
                 "E_SAFETENSORS_DUPLICATE_KEY", id="duplicate-field"),
    pytest.param('{"__metadata__":{"a":"1","a":"2"},' + F32_ONE[1:], 4,
                 "E_SAFETENSORS_DUPLICATE_KEY", id="duplicate-metadata-key"),
    pytest.param('{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', 8,
                 "E_SAFETENSORS_LAYOUT", id="gap"),
    pytest.param('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                 '"v":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 4,
                 "E_SAFETENSORS_LAYOUT", id="overlap"),
    pytest.param(F32_ONE, 8, "E_SAFETENSORS_LAYOUT", id="trailing-bytes"),
    pytest.param('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', 2,
                 "E_SAFETENSORS_TRUNCATED", id="offsets-past-end"),
    pytest.param('{"w":{"dtype":"X9","shape":[1],"data_offsets":[0,4]}}', 4,
                 "E_SAFETENSORS_MALFORMED", id="unknown-dtype"),
    pytest.param('{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', 4,
                 "E_SAFETENSORS_MALFORMED", id="negative-dim"),
    pytest.param('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}', 4,
                 "E_SAFETENSORS_MALFORMED", id="extra-entry-field"),
    pytest.param('{"w":{"dtype":"F32","shape":[1]}}', 4, "E_SAFETENSORS_MALFORMED",
                 id="missing-offsets"),
    pytest.param('[1,2]', 0, "E_SAFETENSORS_MALFORMED", id="header-not-object"),
    pytest.param('{"w":', 0, "E_SAFETENSORS_MALFORMED", id="header-not-json"),
]


@pytest.mark.parametrize(("header", "size", "code"), LAYOUT_CASES)
def test_c03_layout_rules_model(honest_run: HonestRun, tmp_path: Path, header: str, size: int,
                                code: str) -> None:
    model = _write(tmp_path / "m.safetensors", safetensors_bytes(header, bytes(size)))
    outcome = verify(honest_run.cert, model, honest_run.public_key)
    assert_input_error(outcome, code)


@pytest.mark.parametrize(("header", "size", "code"), LAYOUT_CASES[:6])
def test_c03_layout_rules_probe(fresh_run: HonestRun, header: str, size: int,
                                code: str) -> None:
    bundle = _as_bundle_file(fresh_run, "probe", safetensors_bytes(header, bytes(size)))
    outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key, "--bundle", bundle)
    assert_input_error(outcome, code)


# Probe set contents: the JSON inside its metadata, and the number of samples. The
# certificate is re-signed over the edited probe set, so only the reader can stop it.


def _rewrite_probe(run: HonestRun, edit: Any) -> None:
    """Apply ``edit(tensors, metadata)`` to the probe set and re-sign its commitment."""
    header = _safetensors.read_header(run.probe)
    tensors = {name: np.array(_safetensors.read_tensor(header, name)) for name in header.tensors}
    metadata = dict(header.metadata)
    edit(tensors, metadata)
    run.probe.unlink()
    _safetensors.write_safetensors(run.probe, tensors, metadata)
    doc = run.load_cert()
    digests = _safetensors.digest_file(run.probe)
    doc["audit_bundle"]["probe"]["file_digest"] = digests.file_digest
    doc["audit_bundle"]["probe"]["manifest_digest"] = digests.manifest_digest
    write_json(run.cert, resign(doc, run.private_key))


@pytest.mark.parametrize(
    ("modalities", "code"),
    [("[" * 5000 + "]" * 5000, "E_JSON_TOO_DEEP"),
     ('{"a":' * 5000 + "1" + "}" * 5000, "E_JSON_TOO_DEEP"),
     ("not json", "E_JSON_SYNTAX"),
     ('["text", 1e400]', "E_JSON_NONFINITE_NUMBER"),
     ('{"a": 1, "a": 2}', "E_JSON_DUPLICATE_KEY"),
     ("1" * 5000, "E_JSON_NUMBER_TOO_LONG"),
     ('["text", "audio", "text"]', "E_DATA_MALFORMED"),
     (None, "E_DATA_MALFORMED")],
    ids=["deep-list", "deep-object", "syntax", "overflow", "duplicate-key", "long-number",
         "repeated-name", "missing"],
)
def test_probe_metadata_modalities_strict(fresh_run: HonestRun, modalities: str | None,
                                          code: str) -> None:
    """R-PRB-2: 'modalities' is parsed by the strict JSON rules; errors name file and key."""
    def edit(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
        if modalities is None:
            del metadata["modalities"]
        else:
            metadata["modalities"] = modalities

    _rewrite_probe(fresh_run, edit)
    outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key, "--level", "2",
                     "--bundle", fresh_run.out_dir)
    assert_input_error(outcome, code)
    assert str(fresh_run.probe) in outcome.stderr
    assert "metadata 'modalities'" in outcome.stderr


def test_probe_set_without_samples(fresh_run: HonestRun) -> None:
    """R-PRB-1: a probe set without samples is E_DATA_MALFORMED (exit 2) at levels 2 and 3."""
    def edit(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
        for name, value in tensors.items():
            tensors[name] = value[:0].copy()

    _rewrite_probe(fresh_run, edit)
    for level in ("2", "3"):
        outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key, "--level", level,
                         "--bundle", fresh_run.out_dir)
        assert_input_error(outcome, "E_DATA_MALFORMED")
        assert str(fresh_run.probe) in outcome.stderr
        assert "0 rows" in outcome.stderr
        assert "at least 1 sample" in outcome.stderr


# C04: metadata that is not a string map, and a tensor named __metadata__.


@pytest.mark.parametrize(
    ("metadata", "key"),
    [('{"a":1}', "'a'"), ('{"a":null}', "'a'"), ('{"a":["x"]}', "'a'"),
     ('{"a":{"b":"c"}}', "'a'"), ('{"dtype":"F32","shape":[1],"data_offsets":[0,4]}', "'shape'")],
    ids=["int", "null", "list", "object", "tensor-named-metadata"],
)
def test_c04_reader_rejects_metadata(honest_run: HonestRun, tmp_path: Path, metadata: str,
                                     key: str) -> None:
    header = '{"__metadata__":' + metadata + "," + F32_ONE[1:]
    model = _write(tmp_path / "m.safetensors", safetensors_bytes(header, bytes(4)))
    outcome = verify(honest_run.cert, model, honest_run.public_key)
    assert_input_error(outcome, "E_SAFETENSORS_METADATA")
    assert key in outcome.stderr


def test_c04_metadata_not_an_object(honest_run: HonestRun, tmp_path: Path) -> None:
    header = '{"__metadata__":"x",' + F32_ONE[1:]
    model = _write(tmp_path / "m.safetensors", safetensors_bytes(header, bytes(4)))
    outcome = verify(honest_run.cert, model, honest_run.public_key)
    assert_input_error(outcome, "E_SAFETENSORS_METADATA")


@pytest.mark.parametrize(
    ("tensors", "metadata", "named"),
    [({"w": np.zeros(1, np.float32)}, {"a": 1}, "'a'"),
     ({"w": np.zeros(1, np.float32)}, {1: "a"}, "metadata key"),
     ({"__metadata__": np.zeros(1, np.float32)}, {}, "__metadata__")],
    ids=["int-value", "int-key", "tensor-named-metadata"],
)
def test_c04_writer_refuses(tmp_path: Path, tensors: dict[Any, Any], metadata: dict[Any, Any],
                            named: str) -> None:
    target = tmp_path / "out.safetensors"
    with pytest.raises(errors.InputError) as info:
        _safetensors.write_safetensors(target, tensors, metadata)
    assert info.value.code == "E_PARAMETER_INVALID"
    assert named in info.value.message
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


# C05: zero-size tensors and the empty deletion.


@pytest.mark.parametrize("shape", [(2, 0), (0,), (0, 3, 4)])
def test_c05_zero_size_round_trip(tmp_path: Path, shape: tuple[int, ...]) -> None:
    arrays = {"empty": np.zeros(shape, np.float64), "one": np.ones(1, np.float32)}
    digests = _safetensors.write_safetensors(tmp_path / "z.safetensors", arrays)
    assert digests.tensors["empty"].digest == "sha256:" + hashlib.sha256(b"").hexdigest()
    assert digests.tensors["empty"].shape == shape
    header = _safetensors.read_header(tmp_path / "z.safetensors")
    back = _safetensors.read_tensor(header, "empty")
    assert back.shape == shape
    assert back.dtype == np.float64


def test_c05_empty_deletion_refused(tiny_checkpoint: Path) -> None:
    """R-ISS-3: a deletion that removes no tensor is E_EMPTY_DELETION."""
    pytest.importorskip("torch")
    from mbd_cert import _issue_preflight
    from mbd_cert.arch import get_architecture
    from mbd_cert.checkpoint import read_config, read_tensors

    config_doc = read_config(tiny_checkpoint / "config.json")
    architecture = get_architecture(config_doc["architecture"])
    config = architecture.validate_config(config_doc["config"])
    tensors = read_tensors(tiny_checkpoint / "model.safetensors")
    without_audio = {n: t for n, t in tensors.items() if not n.startswith("encoders.audio.")}
    with pytest.raises(errors.IssuanceError) as info:
        _issue_preflight.removed_tensors(architecture, config, "audio", without_audio)
    assert info.value.code == "E_EMPTY_DELETION"
    assert info.value.exit_code == 1


def test_c05_model_without_encoder_rejected(tiny_checkpoint: Path, tmp_path: Path,
                                            honest_run: HonestRun) -> None:
    import shutil

    checkpoint = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, checkpoint)
    header = _safetensors.read_header(checkpoint / "model.safetensors")
    kept = {n: np.array(_safetensors.read_tensor(header, n)) for n in header.tensors
            if not n.startswith("encoders.audio.")}
    _safetensors.write_safetensors(checkpoint / "model.safetensors", kept, overwrite=True)
    out = tmp_path / "del"
    outcome = run_cli(["issue", "--checkpoint", checkpoint, "--modality", "audio",
                       "--epsilon", "1", "--steps", "1", "--key", honest_run.private_key,
                       "--out", out])
    assert_clean(outcome)
    assert outcome.exit_code == 2
    assert "[E_MODEL_TENSORS_MISMATCH]" in outcome.stderr
    assert not out.exists()


# C06: non-contiguous arrays are written in C order.


@pytest.mark.parametrize(
    "array",
    [np.arange(12, dtype=np.float64).reshape(3, 4).T,
     np.arange(24, dtype=np.float32).reshape(2, 3, 4)[:, ::2, 1:],
     np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
     np.arange(8, dtype=">f4")],
    ids=["transposed", "strided-slice", "fortran-order", "big-endian"],
)
def test_c06_non_contiguous_written_in_order(tmp_path: Path, array: np.ndarray) -> None:
    digests = _safetensors.write_safetensors(tmp_path / "d.safetensors", {"diff.w": array})
    expected = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    assert digests.tensors["diff.w"].digest == (
        "sha256:" + hashlib.sha256(expected.tobytes()).hexdigest())
    back = _safetensors.read_tensor(_safetensors.read_header(tmp_path / "d.safetensors"),
                                    "diff.w")
    np.testing.assert_array_equal(back, array)


# C07: a diff tensor must match its parameter exactly.


@pytest.mark.parametrize(
    ("post", "difference", "code"),
    [(np.zeros((2, 3), np.float32), np.zeros((3, 2)), "E_DIFF_SHAPE"),
     (np.zeros((2, 3), np.float32), np.zeros((1, 3)), "E_DIFF_SHAPE"),
     (np.zeros((2, 3), np.float32), np.zeros(()), "E_DIFF_SHAPE"),
     (np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), "E_DIFF_DTYPE"),
     (np.zeros(4, np.float64), np.zeros(4, np.int64), "E_DIFF_DTYPE")],
    ids=["transposed-shape", "broadcastable-shape", "scalar", "f32-diff", "int-diff"],
)
def test_c07_diff_shape_and_dtype(post: np.ndarray, difference: np.ndarray, code: str) -> None:
    with pytest.raises(errors.MalformedSafetensors) as info:
        diff.rebuild_pre(post, difference, "fusion.0.weight")
    assert info.value.code == code
    assert "fusion.0.weight" in info.value.message


# C08: other file formats are recognised and never unpickled.


class _Marker:
    """Pickle payload that would create a file if anything unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


FOREIGN_FORMATS = [
    pytest.param(b"PK\x03\x04" + bytes(60), id="torch-zip"),
    pytest.param(b"\x93NUMPY\x01\x00" + bytes(60), id="npy"),
    pytest.param(pickle.dumps({"w": [1.0] * 20}, protocol=2), id="pickle-2"),
    pytest.param(pickle.dumps({"w": [1.0] * 20}, protocol=4), id="pickle-4"),
]


@pytest.mark.parametrize("data", FOREIGN_FORMATS)
def test_c08_foreign_model_rejected(honest_run: HonestRun, tmp_path: Path, data: bytes) -> None:
    model = _write(tmp_path / "model.pt", data)
    outcome = verify(honest_run.cert, model, honest_run.public_key)
    assert_input_error(outcome, "E_SAFETENSORS_NOT_SAFETENSORS")
    assert "not a safetensors file" in outcome.stderr


@pytest.mark.parametrize("role", ["diff", "probe"])
def test_c08_pickle_payload_never_runs(fresh_run: HonestRun, tmp_path: Path, role: str) -> None:
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(_Marker(str(marker)), protocol=4)
    bundle = _as_bundle_file(fresh_run, role, payload)
    outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key, "--bundle", bundle)
    assert_input_error(outcome, "E_SAFETENSORS_NOT_SAFETENSORS")
    model_outcome = verify(fresh_run.cert, _write(tmp_path / "m", payload), fresh_run.public_key)
    assert_input_error(model_outcome, "E_SAFETENSORS_NOT_SAFETENSORS")
    assert not marker.exists()


# C09: format checks of the schema.


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [(("issued_at",), "yesterday", "issued_at"),
     (("issued_at",), "2024-13-01T00:00:00Z", "issued_at"),
     (("issued_at",), "2024-05-01 12:00:00", "issued_at"),
     (("certificate_id",), "not-a-uuid", "certificate_id")],
    ids=["yesterday", "month-13", "no-T", "uuid"],
)
def test_c09_format_checks(honest_run: HonestRun, tmp_path: Path, field: tuple[str, ...],
                           value: str, named: str) -> None:
    doc = honest_run.load_cert()
    doc[field[0]] = value
    outcome = verify(write_json(tmp_path / "c.json", doc), honest_run.model,
                     honest_run.public_key)
    assert_input_error(outcome, "E_CERT_MALFORMED")
    assert named in outcome.stderr


def test_c09_missing_format_checker_fails_closed(honest_run: HonestRun,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from jsonschema import Draft202012Validator, FormatChecker

    from mbd_cert import schema

    schema._format_checker.cache_clear()
    schema._validator_for_major.cache_clear()
    monkeypatch.setattr(Draft202012Validator, "FORMAT_CHECKER", FormatChecker(formats=()))
    try:
        outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key)
    finally:
        schema._format_checker.cache_clear()
        schema._validator_for_major.cache_clear()
    assert outcome.exit_code == 3
    assert outcome.error_code == "E_FORMAT_CHECKER_UNAVAILABLE"
    assert "Traceback" not in outcome.stderr


# C10: the certificate never chooses its schema, and nothing touches the network.


@pytest.mark.parametrize(
    "path",
    [("$schema",), ("$ref",), ("$id",), ("privacy", "$ref"), ("metrics", "utility", "$schema"),
     ("subject_model", "architecture", "config", "$dynamicRef")],
    ids=["top-schema", "top-ref", "top-id", "nested-ref", "deep-schema", "config-dynamic-ref"],
)
def test_c10_schema_keywords_rejected(honest_run: HonestRun, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      path: tuple[str, ...]) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("verify tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    doc = honest_run.load_cert()
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = "https://attacker.example/schema.json"
    outcome = verify(write_json(tmp_path / "c.json", resign(doc, honest_run.private_key)),
                     honest_run.model, honest_run.public_key)
    assert_input_error(outcome, "E_CERT_SCHEMA_KEYWORD")
    assert path[-1] in outcome.stderr


@pytest.mark.parametrize("key", ["", "note"])
def test_unsigned_signature_member_rejected(honest_run: HonestRun, tmp_path: Path,
                                            key: str) -> None:
    # The signature member is the one part of the certificate its signature does not
    # cover, so an extra field there would be unsigned content (R-SIG-1).
    doc = honest_run.load_cert()
    doc["signature"][key] = "added after signing"
    outcome = verify(write_json(tmp_path / "c.json", doc), honest_run.model,
                     honest_run.public_key)
    assert_input_error(outcome, "E_CERT_MALFORMED")
    assert "certificate field signature" in outcome.stderr
    assert "is not allowed here" in outcome.stderr


# C11: non-finite and overflowing numbers.


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
@pytest.mark.parametrize(
    ("old", "named"),
    [('"epsilon": 1.0', "privacy.epsilon"), ('"delta": 1e-05', "privacy.delta"),
     ('"steps": 2', "update.steps")],
)
def test_c11_non_finite_numbers(honest_run: HonestRun, tmp_path: Path, literal: str, old: str,
                                named: str) -> None:
    key = old.split(":")[0]
    text = _edited_text(honest_run, old, f"{key}: {literal}")
    outcome = verify(_write(tmp_path / "c.json", text), honest_run.model, honest_run.public_key)
    assert_input_error(outcome, "E_JSON_NONFINITE_NUMBER")
    assert named in outcome.stderr


def test_c11_huge_number_literal(honest_run: HonestRun, tmp_path: Path) -> None:
    text = _edited_text(honest_run, '"epsilon": 1.0', '"epsilon": 1' + "0" * 5000)
    outcome = verify(_write(tmp_path / "c.json", text), honest_run.model, honest_run.public_key)
    assert_input_error(outcome, "E_JSON_NUMBER_TOO_LONG")
    assert outcome.report is not None


# C12: duplicate keys at any depth.


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [('"epsilon": 1.0', '"epsilon": 100, "epsilon": 1.0', "privacy.epsilon"),
     (f'"format_version": "{FORMAT_VERSION}"',
      f'"format_version": "{FORMAT_VERSION}", "format_version": "{FORMAT_VERSION}"',
      "format_version"),
     ('"steps": 2', '"steps": 2, "steps": 2', "update.steps"),
     ('"confidential": true', '"confidential": false, "confidential": true',
      "audit_bundle.confidential")],
    ids=["epsilon", "top-level-same-value", "nested-same-value", "bundle-flag"],
)
def test_c12_duplicate_keys(honest_run: HonestRun, tmp_path: Path, old: str, new: str,
                            named: str) -> None:
    text = _edited_text(honest_run, old, new)
    outcome = verify(_write(tmp_path / "c.json", text), honest_run.model, honest_run.public_key)
    assert_input_error(outcome, "E_JSON_DUPLICATE_KEY")
    assert named in outcome.stderr


# C13: numbers in signed content.


def test_c13_canonical_numbers() -> None:
    assert canonical.canonical_bytes({"a": 1e-7, "b": 100.0, "c": 1e20}) == (
        b'{"a":1e-7,"b":100,"c":100000000000000000000}')


def test_c13_inexact_integer_rejected(honest_run: HonestRun, tmp_path: Path) -> None:
    text = _edited_text(honest_run, '"seed": 0', f'"seed": {2**53 + 1}')
    outcome = verify(_write(tmp_path / "c.json", text), honest_run.model, honest_run.public_key)
    assert_input_error(outcome, "E_JSON_INTEGER_INEXACT")
    assert "saliency.seed" in outcome.stderr


@pytest.mark.parametrize(("old", "new"), [
    ('"steps": 2,', '"steps": 2.0,'),
    ('"hidden_dim": 8,', '"hidden_dim": 8.0,'),
    ('"sequence_number": 1,', '"sequence_number": 1.0,'),
])
def test_c13_integral_float_keeps_verdict(honest_run: HonestRun, tmp_path: Path, old: str,
                                          new: str) -> None:
    # 2.0 has the canonical bytes of 2, so the signature stays valid and the verdict
    # must not change. An integer field read as a float once ended in exit 3.
    cert = _write(honest_run.out_dir.parent / "float-int.cert.json",
                  _edited_text(honest_run, old, new))
    try:
        outcomes = [verify(path, honest_run.model, honest_run.public_key, "--level", "2",
                           "--bundle", honest_run.out_dir) for path in (honest_run.cert, cert)]
    finally:
        cert.unlink()
    assert_clean(outcomes[1])
    assert outcomes[1].exit_code == outcomes[0].exit_code, outcomes[1].stderr
    statuses = [[(c["name"], c["status"]) for c in o.report["checks"]] for o in outcomes]
    assert statuses[1] == statuses[0]


def test_c13_negative_zero_rejected(honest_run: HonestRun, tmp_path: Path) -> None:
    # A field without a lower bound in the schema, so only the signing rule rejects it.
    doc = honest_run.load_cert()
    doc["metrics"]["utility"]["extra_value"] = 0.0
    text = json.dumps(resign(doc, honest_run.private_key)).replace(
        '"extra_value": 0.0', '"extra_value": -0.0')
    outcome = verify(_write(tmp_path / "c.json", text), honest_run.model, honest_run.public_key)
    assert_clean(outcome)
    assert outcome.exit_code == 2
    assert outcome.error_code == "E_CANONICAL_NUMBER"
    assert "metrics.utility.extra_value" in outcome.stderr


def test_c13_negative_zero_in_bounded_field(honest_run: HonestRun, tmp_path: Path) -> None:
    text = _edited_text(honest_run, '"epsilon": 1.0', '"epsilon": -0.0')
    outcome = verify(_write(tmp_path / "c.json", text), honest_run.model, honest_run.public_key)
    assert_input_error(outcome, "E_CERT_MALFORMED")
    assert "privacy.epsilon" in outcome.stderr


# C14: keys of the wrong size or kind.


def _x25519_pem() -> bytes:
    return x25519.X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _ed25519_private_pem() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


@pytest.mark.parametrize(
    "data",
    [bytes(range(1, 32)), bytes(range(1, 34)), b"", b"ab" * 31 + b"a",
     b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n"],
    ids=["raw-31", "raw-33", "empty", "hex-63", "broken-pem"],
)
def test_c14_bad_public_key(honest_run: HonestRun, tmp_path: Path, data: bytes) -> None:
    key = _write(tmp_path / "issuer.pub", data)
    outcome = verify(honest_run.cert, honest_run.model, key)
    assert_input_error(outcome, "E_KEY_INVALID")
    assert str(key) in outcome.stderr


def _rsa_pem() -> bytes:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(
    ).public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)


def _ec_openssh() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


@pytest.mark.parametrize("kind", ["x25519-pem", "private-pem", "issuer-private"])
@pytest.mark.parametrize("via", ["--key", "--trust-dir"])
def test_c14_wrong_kind_of_key(honest_run: HonestRun, tmp_path: Path, kind: str,
                               via: str) -> None:
    # Alone in a trust directory, an X25519 key is skipped, which leaves no issuer key.
    if kind == "issuer-private":
        data = honest_run.private_key.read_bytes()
    else:
        data = _x25519_pem() if kind == "x25519-pem" else _ed25519_private_pem()
    trust = tmp_path / "trust"
    trust.mkdir()
    key = _write(trust / "issuer.pem", data)
    key_args = ["--key", key] if via == "--key" else ["--trust-dir", trust]
    outcome = run_cli(["verify", honest_run.cert, honest_run.model, *key_args, "--json"])
    assert_input_error(outcome, "E_KEY_INVALID")
    assert "issuer.pem" in outcome.stderr


@pytest.mark.parametrize(
    ("name", "make", "kind"),
    [("auditor.pub", _x25519_pem, "X25519"), ("legacy.pem", _rsa_pem, "RSA"),
     ("ssh.pub", _ec_openssh, "EC")],
    ids=["x25519", "rsa-pkcs1", "ec-openssh"],
)
def test_c14_trust_dir_skips_other_algorithms(honest_run: HonestRun, tmp_path: Path,
                                              name: str, make: Any, kind: str) -> None:
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "issuer.pub").write_bytes(honest_run.public_key.read_bytes())
    _write(trust / name, make())
    outcome = run_cli(["verify", honest_run.cert, honest_run.model, "--trust-dir", trust])
    assert_clean(outcome)
    assert outcome.exit_code == 0, outcome.stderr
    assert "WARNING" in outcome.stderr
    assert name in outcome.stderr
    assert f"type {kind}" in outcome.stderr


def test_c14_trust_dir_only_other_algorithms(honest_run: HonestRun, tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    trust.mkdir()
    _write(trust / "auditor.pub", _x25519_pem())
    _write(trust / "legacy.pem", _rsa_pem())
    outcome = run_cli(["verify", honest_run.cert, honest_run.model, "--trust-dir", trust,
                       "--key", honest_run.public_key, "--json"])
    assert_input_error(outcome, "E_KEY_INVALID")
    assert "contains no Ed25519 public key" in outcome.stderr
    assert "'auditor.pub' (X25519)" in outcome.stderr
    assert "'legacy.pem' (RSA)" in outcome.stderr


@pytest.mark.parametrize(
    "data", [b"not a key", b"-----BEGIN PUBLIC KEY-----\nbroken\n-----END PUBLIC KEY-----\n"],
    ids=["garbage", "broken-pem"],
)
def test_c14_trust_dir_bad_file_stops(honest_run: HonestRun, tmp_path: Path,
                                      data: bytes) -> None:
    # Unlike a key of another algorithm, a file that is no key at all is a mistake to fix.
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "issuer.pub").write_bytes(honest_run.public_key.read_bytes())
    _write(trust / "broken.pub", data)
    outcome = run_cli(["verify", honest_run.cert, honest_run.model, "--trust-dir", trust,
                       "--json"])
    assert_input_error(outcome, "E_KEY_INVALID")
    assert "broken.pub" in outcome.stderr


def test_c14_trust_dir_private_key_stops(honest_run: HonestRun, tmp_path: Path) -> None:
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "issuer.pub").write_bytes(honest_run.public_key.read_bytes())
    _write(trust / "auditor.pem", x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    outcome = run_cli(["verify", honest_run.cert, honest_run.model, "--trust-dir", trust,
                       "--json"])
    assert_input_error(outcome, "E_KEY_INVALID")
    assert "auditor.pem" in outcome.stderr
    assert "private key" in outcome.stderr


def test_c14_private_key_for_issue_is_public(honest_run: HonestRun, tmp_path: Path) -> None:
    out = tmp_path / "del"
    outcome = run_cli(["issue", "--checkpoint", honest_run.checkpoint, "--modality", "audio",
                       "--epsilon", "1", "--key", honest_run.public_key, "--out", out])
    assert_clean(outcome)
    assert outcome.exit_code == 2
    assert "[E_KEY_INVALID]" in outcome.stderr
    assert not out.exists()


# C17: artefact paths from the certificate.


@pytest.mark.parametrize(
    "path", ["../secret.txt", "/etc/passwd", "sub/../../x", "", "a\\b", "C:diff"],
    ids=["dotdot", "absolute", "nested-dotdot", "empty", "backslash", "drive"],
)
def test_c17_unsafe_bundle_path(fresh_run: HonestRun, tmp_path: Path, path: str) -> None:
    doc = fresh_run.load_cert()
    doc["audit_bundle"]["diff"]["path"] = path
    cert = write_json(tmp_path / "c.json", resign(doc, fresh_run.private_key))
    outcome = verify(cert, fresh_run.model, fresh_run.public_key, "--bundle", fresh_run.out_dir)
    # The schema's file-name pattern rejects these before they reach the path resolver.
    assert_input_error(outcome, "E_CERT_MALFORMED")
    assert "audit_bundle.diff.path" in outcome.stderr


def test_c17_symlinked_bundle_file(fresh_run: HonestRun, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.safetensors"
    fresh_run.diff.rename(elsewhere)
    fresh_run.diff.symlink_to(elsewhere)
    outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key, "--bundle",
                     fresh_run.out_dir)
    assert_input_error(outcome, "E_UNSAFE_PATH")


def test_c17_swapped_bundle_names(fresh_run: HonestRun, tmp_path: Path) -> None:
    doc = fresh_run.load_cert()
    bundle = doc["audit_bundle"]
    diff_path = bundle["diff"]["path"]
    bundle["diff"]["path"] = bundle["probe"]["path"]
    bundle["probe"]["path"] = diff_path
    cert = write_json(tmp_path / "c.json", resign(doc, fresh_run.private_key))
    outcome = verify(cert, fresh_run.model, fresh_run.public_key, "--bundle", fresh_run.out_dir)
    assert_check_failed(outcome, "bundle-digest", "E_DIGEST_MISMATCH")


def test_c17_swapped_bundle_files(fresh_run: HonestRun) -> None:
    swap = fresh_run.out_dir / "swap"
    fresh_run.diff.rename(swap)
    fresh_run.probe.rename(fresh_run.diff)
    swap.rename(fresh_run.probe)
    outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key, "--bundle",
                     fresh_run.out_dir)
    assert_check_failed(outcome, "bundle-digest", "E_DIGEST_MISMATCH")


def test_c17_empty_removed_tensors(honest_run: HonestRun, tmp_path: Path) -> None:
    doc = honest_run.load_cert()
    doc["deletion"]["removed_tensors"] = []
    cert = write_json(tmp_path / "c.json", resign(doc, honest_run.private_key))
    outcome = verify(cert, honest_run.model, honest_run.public_key)
    assert_input_error(outcome, "E_CERT_MALFORMED")
    assert "deletion.removed_tensors" in outcome.stderr


def test_c17_removed_tensors_list_wrong(honest_run: HonestRun, tmp_path: Path) -> None:
    doc = honest_run.load_cert()
    doc["deletion"]["removed_tensors"] = doc["deletion"]["removed_tensors"][1:]
    cert = write_json(tmp_path / "c.json", resign(doc, honest_run.private_key))
    outcome = verify(cert, honest_run.model, honest_run.public_key)
    assert_check_failed(outcome, "deleted-tensors-zero", "E_DELETION_INCOMPLETE")


# C19 and C20: calibration claims (re-signed with the issuer's key, so that only the
# calibration check can catch them).


def _declared(doc: dict[str, Any], epsilon: float, sigma: float, sensitivity: float = 1.0,
              delta: float = 1e-5) -> dict[str, Any]:
    privacy = doc["privacy"]
    privacy.update(epsilon=epsilon, delta=delta, sigma=sigma, sensitivity=sensitivity,
                   sensitivity_method="declared")
    doc["accounting"].update(delta=delta, cumulative_epsilon=max(epsilon, 1.0) * 100)
    return doc


@pytest.mark.parametrize(
    ("epsilon", "sigma"),
    [(10.0, 0.484481), (1.0, 3.730631), (0.5, 7.031826), (4.0, 1.081161), (1.0, 1.0)],
    ids=["textbook-eps10", "eps1-just-below", "eps0.5-just-below", "eps4-just-below",
         "far-below"],
)
def test_c19_sigma_too_small(honest_run: HonestRun, tmp_path: Path, epsilon: float,
                             sigma: float) -> None:
    doc = _declared(honest_run.load_cert(), epsilon, sigma)
    cert = write_json(tmp_path / "c.json", resign(doc, honest_run.private_key))
    outcome = verify(cert, honest_run.model, honest_run.public_key)
    assert_check_failed(outcome, "calibration", "E_CALIBRATION_INVALID")
    assert "privacy.sigma" in outcome.check_detail("calibration")


def test_c19_textbook_sigma_true_delta(honest_run: HonestRun, tmp_path: Path) -> None:
    doc = _declared(honest_run.load_cert(), 10.0, 0.484481)
    cert = write_json(tmp_path / "c.json", resign(doc, honest_run.private_key))
    outcome = verify(cert, honest_run.model, honest_run.public_key)
    assert "delta 2.265" in outcome.check_detail("calibration")


@pytest.mark.parametrize(
    ("epsilon", "sigma"),
    [(1.0, 3.730633), (0.5, 7.031828), (4.0, 1.081163), (10.0, 0.49989)],
)
def test_c19_exact_sigma_passes(honest_run: HonestRun, tmp_path: Path, epsilon: float,
                                sigma: float) -> None:
    doc = _declared(honest_run.load_cert(), epsilon, sigma)
    cert = write_json(tmp_path / "c.json", resign(doc, honest_run.private_key))
    outcome = verify(cert, honest_run.model, honest_run.public_key)
    assert_clean(outcome)
    assert "calibration" not in outcome.failed_codes


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [("privacy", "epsilon", 0), ("privacy", "epsilon", -1.0), ("privacy", "delta", 0),
     ("privacy", "delta", 1.0), ("privacy", "delta", 1.5), ("privacy", "sigma", 0),
     ("privacy", "sigma", -0.5), ("privacy", "sensitivity", 0), ("accounting", "delta", 0),
     ("update", "clip_norm", 0), ("privacy", "epsilon", "1"), ("privacy", "sigma", None)],
)
def test_c20_non_positive_parameters(honest_run: HonestRun, tmp_path: Path, section: str,
                                     field: str, value: Any) -> None:
    doc = honest_run.load_cert()
    doc[section][field] = value
    cert = write_json(tmp_path / "c.json", resign(doc, honest_run.private_key))
    outcome = verify(cert, honest_run.model, honest_run.public_key)
    assert_input_error(outcome, "E_CERT_MALFORMED")
    assert f"{section}.{field}" in outcome.stderr


@pytest.mark.parametrize(
    "options",
    [("--epsilon", "0"), ("--epsilon", "nan"), ("--epsilon", "inf"), ("--epsilon", "-1"),
     ("--epsilon", "1", "--delta", "1"), ("--epsilon", "1", "--delta", "0"),
     ("--epsilon", "1", "--delta", "nan"), ("--epsilon", "1", "--clip-norm", "0"),
     ("--epsilon", "1", "--sensitivity-method", "declared", "--sensitivity", "0"),
     ("--epsilon", "1", "--sensitivity-method", "declared", "--sensitivity", "-inf"),
     ("--epsilon", "1", "--top-k", "0"), ("--epsilon", "1", "--learning-rate", "0")],
)
def test_c20_issuer_refuses_parameters(honest_run: HonestRun, tmp_path: Path,
                                       options: tuple[str, ...]) -> None:
    out = tmp_path / "del"
    outcome = run_cli(["issue", "--checkpoint", honest_run.checkpoint, "--modality", "audio",
                       *options, "--key", honest_run.private_key, "--out", out])
    assert_clean(outcome)
    assert outcome.exit_code == 2
    assert "[E_PARAMETER_INVALID]" in outcome.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


# C21 and C22: extreme budgets and chains, through the verifier.


def test_c21_extreme_budget_verifies(honest_run: HonestRun, tmp_path: Path) -> None:
    from mbd_cert import accounting

    epsilon, delta = 1000.0, 1e-18
    sigma = mechanism.analytic_gaussian_sigma(epsilon, delta, 1.0)
    account = accounting.account_chain([accounting.ChainEntry(epsilon, delta, sigma, 1.0)],
                                       delta)
    doc = _declared(honest_run.load_cert(), epsilon, sigma, delta=delta)
    doc["accounting"].update(mu=account.mu, cumulative_epsilon=account.epsilon,
                             naive_epsilon=account.naive_epsilon,
                             rdp_epsilon=account.rdp_epsilon)
    cert = write_json(tmp_path / "c.json", resign(doc, honest_run.private_key))
    outcome = verify(cert, honest_run.model, honest_run.public_key)
    assert_clean(outcome)
    assert outcome.exit_code == 0, outcome.failed_codes


def test_c22_cumulative_epsilon_understated(honest_run: HonestRun, tmp_path: Path) -> None:
    doc = honest_run.load_cert()
    doc["accounting"]["cumulative_epsilon"] = doc["privacy"]["epsilon"] * 0.5
    cert = write_json(tmp_path / "c.json", resign(doc, honest_run.private_key))
    outcome = verify(cert, honest_run.model, honest_run.public_key)
    assert_check_failed(outcome, "accounting", "E_CALIBRATION_INVALID")


@pytest.mark.parametrize(
    ("sequence_number", "previous"),
    [(2, "sha256:" + "1" * 64), (2, None), (1, "sha256:" + "2" * 64), (5, "sha256:" + "3" * 64)],
    ids=["second-link", "link-without-parent", "first-with-parent", "gap-in-chain"],
)
def test_c22_chain_links_fail_closed(honest_run: HonestRun, tmp_path: Path,
                                     sequence_number: int, previous: str | None) -> None:
    doc = honest_run.load_cert()
    doc["accounting"].update(sequence_number=sequence_number, previous_certificate=previous)
    cert = write_json(tmp_path / "c.json", resign(doc, honest_run.private_key))
    outcome = verify(cert, honest_run.model, honest_run.public_key)
    assert_clean(outcome)
    assert outcome.exit_code in (1, 2)
    if outcome.exit_code == 1:
        # A missing, broken or unwalkable link: E_CHAIN_LINK_MISSING, E_CHAIN_BROKEN, ...
        assert outcome.failed_codes.get("accounting", "").startswith("E_CHAIN_")
    else:
        assert outcome.error_code == "E_CERT_MALFORMED"


# Files that are not files, certificates that are not objects, usage errors.


@pytest.mark.parametrize("which", ["cert", "model"])
def test_missing_input_file(honest_run: HonestRun, tmp_path: Path, which: str) -> None:
    cert = tmp_path / "absent.json" if which == "cert" else honest_run.cert
    model = tmp_path / "absent.safetensors" if which == "model" else honest_run.model
    outcome = verify(cert, model, honest_run.public_key)
    assert_input_error(outcome, "E_FILE_MISSING")


@pytest.mark.parametrize("which", ["cert", "model"])
@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_input_not_regular_file(honest_run: HonestRun, tmp_path: Path, which: str,
                                kind: str) -> None:
    special = tmp_path / "special"
    if kind == "directory":
        special.mkdir()
    else:
        os.mkfifo(special)
    cert = special if which == "cert" else honest_run.cert
    model = special if which == "model" else honest_run.model
    outcome = verify(cert, model, honest_run.public_key)
    assert_clean(outcome)
    assert outcome.exit_code == 2
    assert outcome.error_code == "E_FILE_NOT_REGULAR"
    assert "regular file" in outcome.stderr or "directory" in outcome.stderr


@pytest.mark.parametrize(
    ("text", "code"),
    [("[1, 2]", "E_CERT_MALFORMED"), ('"cert"', "E_CERT_MALFORMED"), ("null", "E_CERT_MALFORMED"),
     ("42", "E_CERT_MALFORMED"), ("", "E_JSON_SYNTAX"), ("{", "E_JSON_SYNTAX"),
     ("\ufeff{}", "E_JSON_ENCODING"), ("[" * 100_000 + "]" * 100_000, "E_JSON_TOO_DEEP"),
     ("{}", "E_FORMAT_VERSION_INVALID"), ('{"format_version": "2.0"}', "E_UNSUPPORTED_VERSION")],
    ids=["list", "string", "null", "number", "empty", "truncated", "bom", "deep", "empty-object",
         "major-2"],
)
@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_certificate_not_a_certificate(honest_run: HonestRun, tmp_path: Path, text: str,
                                       code: str, command: str) -> None:
    cert = _write(tmp_path / "c.json", text.encode("utf-8"))
    if command == "verify":
        outcome = verify(cert, honest_run.model, honest_run.public_key)
    else:
        outcome = run_cli(["inspect", cert, "--json"])
    assert_input_error(outcome, code)


def test_inspect_shows_hostile_strings_escaped(honest_run: HonestRun, tmp_path: Path) -> None:
    # inspect does not verify, so the certificate's author chooses these strings.
    name = ("\x1b]0;owned\x07\x1b[2J\x1b[32mVERIFIED\x1b[0m [bold green]ALL CHECKS PASSED"
            "[/bold green] [/x] \u202eexe.txt")
    version = "\x1b[8m hidden \x1b[0m\r"
    doc = honest_run.load_cert()
    doc["issuer"]["name"] = name
    doc["subject_model"]["architecture"]["version"] = version
    cert = write_json(tmp_path / "c.json", resign(doc, honest_run.private_key))
    outcome = run_cli(["inspect", cert])
    assert_clean(outcome)
    assert outcome.exit_code == 0, outcome.stderr
    for char in "\x1b\x07\r\u202e":
        assert char not in outcome.stdout
    # The table folds long cells over several lines: compare without spaces and borders.
    flat = "".join(char for char in outcome.stdout if char not in " \n│")
    assert "[boldgreen]ALLCHECKSPASSED[/boldgreen][/x]" in flat
    assert "\\x1b]0;owned\\x07\\x1b[2J" in flat
    assert "\\u202eexe.txt" in flat
    assert "\\x1b[8mhidden\\x1b[0m\\r" in flat
    # --json keeps the exact strings.
    summary = run_cli(["inspect", cert, "--json"]).report
    assert summary is not None
    assert summary["issuer_name"] == name
    assert summary["architecture"]["version"] == version


def test_binary_certificate(honest_run: HonestRun, tmp_path: Path) -> None:
    cert = _write(tmp_path / "c.json", b"\xff\xfe\x00{")
    outcome = verify(cert, honest_run.model, honest_run.public_key)
    assert_input_error(outcome, "E_JSON_ENCODING")


def test_unknown_top_level_field(honest_run: HonestRun, tmp_path: Path) -> None:
    doc = honest_run.load_cert()
    doc["trusted"] = True
    cert = write_json(tmp_path / "c.json", resign(doc, honest_run.private_key))
    outcome = verify(cert, honest_run.model, honest_run.public_key)
    assert_input_error(outcome, "E_CERT_MALFORMED")
    assert "trusted" in outcome.stderr


def test_oversize_certificate(honest_run: HonestRun, tmp_path: Path) -> None:
    """R-LIM-1: a certificate over 64 MiB is rejected before parsing."""
    cert = tmp_path / "c.json"
    with cert.open("wb") as handle:
        handle.truncate(64 * 1024 * 1024 + 1)
    outcome = verify(cert, honest_run.model, honest_run.public_key)
    assert_input_error(outcome, "E_INPUT_TOO_LARGE")


@pytest.mark.parametrize(
    "args",
    [["verify", "--bogus"], ["verify", "only-one-arg", "--json"],
     ["verify", "c", "m", "--level", "7", "--json"], ["issue", "--json"], ["nonsense"],
     ["verify", "c", "m", "--max-epsilon", "abc", "--json"]],
    ids=["unknown-option", "missing-argument", "level-out-of-range", "issue-no-json-flag",
         "unknown-command", "not-a-number"],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    outcome = run_cli(args)
    assert outcome.exit_code == 2
    assert "Traceback" not in outcome.stderr + outcome.stdout
    assert "Usage:" in outcome.stderr or "Error" in outcome.stderr


@pytest.mark.parametrize(
    "args",
    [["verify", "only-one-arg", "--json"], ["verify", "c", "m", "--level", "7", "--json"]],
    ids=["missing-argument", "level-out-of-range"],
)
def test_usage_error_with_json_gives_report(args: list[str]) -> None:
    outcome = run_cli(args)
    assert outcome.exit_code == 2
    assert outcome.error_code == "E_USAGE"
    assert outcome.report is not None and outcome.report["verified"] is False
    assert outcome.report["error"]["hint"] == "run 'mbd-cert verify --help' for its " \
        "arguments and options"


def test_verbose_after_command_hint() -> None:
    outcome = run_cli(["verify", "c", "m", "--json", "-v"])
    assert outcome.error_code == "E_USAGE"
    assert outcome.report["error"]["hint"].startswith("global options go before the command")


def test_verbose_after_command_hint_in_text() -> None:
    outcome = run_cli(["verify", "c", "m", "-v"])
    assert outcome.exit_code == 2
    assert "No such option '-v'" in outcome.stderr
    assert "global options go before the command: mbd-cert -v verify ..." in outcome.stderr


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_policy_limit_must_be_positive(honest_run: HonestRun, value: str) -> None:
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key,
                     "--max-epsilon", value)
    assert_input_error(outcome, "E_PARAMETER_INVALID")


def test_no_trusted_key(honest_run: HonestRun) -> None:
    outcome = verify(honest_run.cert, honest_run.model, None)
    assert_input_error(outcome, "E_KEY_MISSING")


def test_foreign_exception_exits_3(honest_run: HonestRun,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """R-SEC-4: a bug exits 3 without a traceback unless -v was given."""
    from mbd_cert import verify as verify_module

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(verify_module, "check_calibration", broken)
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key)
    assert outcome.exit_code == 3
    assert outcome.error_code == "E_INTERNAL"
    assert "ZeroDivisionError" in outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert outcome.report is not None
    assert outcome.report["verified"] is False


@pytest.mark.parametrize(
    ("field", "value"),
    [("deleted_modalities", None), ("deleted_modalities", "audio"), ("modalities", None),
     ("hidden_dim", -1), ("hidden_dim", 10**12), ("unknown_key", 1)],
)
def test_signed_config_malformed(honest_run: HonestRun, tmp_path: Path, field: str,
                                 value: Any) -> None:
    # Found by the fuzzer: a signed config with deleted_modalities = null crashed level 1.
    doc = honest_run.load_cert()
    doc["subject_model"]["architecture"]["config"][field] = value
    cert = write_json(tmp_path / "c.json", resign(doc, honest_run.private_key))
    outcome = verify(cert, honest_run.model, honest_run.public_key)
    assert_input_error(outcome, "E_CONFIG_INVALID")
    assert field in outcome.stderr


def test_skipped_policy_names_both_sources(honest_run: HonestRun) -> None:
    # verify-repo runs this check too, where limits come from a policy file.
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key)
    check = next(c for c in outcome.report["checks"] if c["name"] == "policy")
    assert check["status"] == "skipped"
    assert "--max-epsilon" in check["detail"]
    assert "max_cumulative_epsilon" in check["detail"]
