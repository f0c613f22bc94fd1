"""Property-based fuzzing of ``mbd-cert verify`` with mutated certificates and models.

Every mutation must end with exit code 1 or 2, a message on stderr and no traceback,
and a mutation that changes signed content must never exit 0. The default run keeps
the example counts small; ``-m fuzz`` runs the long version recorded in
docs/fuzzing.md.
"""

from __future__ import annotations

import copy
import json
import struct
import tempfile
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cli_support import HonestRun, Outcome, resign, verify
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mbd_cert import _json

QUICK = settings(max_examples=40, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])
LONG = settings(max_examples=2000, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**60), 2**60),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
    st.sampled_from([0, -1, 1e-300, 1e300, "", "sha256:" + "0" * 64, "1.0", "2.0", "audio"]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Return the path of every member and element below ``value``."""
    found: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(
        value, list) else []
    for key, item in items:
        found.append((*prefix, key))
        found.extend(_paths(item, (*prefix, key)))
    return found


def _mutate(doc: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """Change, delete or add one member, or change one value's type or number."""
    mutated = copy.deepcopy(doc)
    path = data.draw(st.sampled_from(_paths(mutated)), label="path")
    parent = mutated
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    action = data.draw(st.sampled_from(["replace", "delete", "add", "number"]), label="action")
    if action == "delete":
        del parent[last]
    elif action == "add" and isinstance(parent[last], dict):
        parent[last][data.draw(st.text(max_size=12), label="key")] = data.draw(JSON_VALUES)
    elif action == "number" and isinstance(parent[last], (int, float)) and not isinstance(
            parent[last], bool):
        factor = data.draw(st.sampled_from([-1, 0, 0.5, 2, 1e10, 1 + 1e-12]), label="factor")
        parent[last] = parent[last] * factor
    else:
        parent[last] = data.draw(JSON_VALUES, label="value")
    return mutated


def _signed_bytes(doc: Any) -> bytes | None:
    """RFC 8785 bytes of everything, or None when the value cannot be canonicalised."""
    try:
        return rfc8785.dumps(doc)
    except Exception:  # noqa: BLE001 - any value rfc8785 refuses counts as "changed"
        return None


def _check(outcome: Outcome, *, changed: bool) -> None:
    text = outcome.stdout + outcome.stderr
    assert "Traceback" not in text
    assert outcome.exit_code in ((1, 2) if changed else (0, 1, 2)), outcome.stderr
    if outcome.exit_code != 0:
        assert outcome.stderr.strip(), "exit code without a message on stderr"


def _verify_bytes(run: HonestRun, cert_bytes: bytes | None = None,
                  model_bytes: bytes | None = None) -> Outcome:
    with tempfile.TemporaryDirectory() as directory:
        cert, model = run.cert, run.model
        if cert_bytes is not None:
            cert = Path(directory) / "cert.json"
            cert.write_bytes(cert_bytes)
        if model_bytes is not None:
            model = Path(directory) / "model.safetensors"
            model.write_bytes(model_bytes)
        return verify(cert, model, run.public_key)


def _structure_property(run: HonestRun, data: st.DataObject) -> None:
    original = run.load_cert()
    mutated = _mutate(original, data)
    changed = _signed_bytes(mutated) != _signed_bytes(original)
    outcome = _verify_bytes(run, cert_bytes=json.dumps(mutated).encode())
    _check(outcome, changed=changed)


def _bytes_property(run: HonestRun, data: st.DataObject) -> None:
    original = run.cert.read_bytes()
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        index = data.draw(st.integers(0, len(raw) - 1), label="index")
        kind = data.draw(st.sampled_from(["flip", "insert", "delete"]), label="kind")
        if kind == "flip":
            raw[index] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "insert":
            raw[index:index] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            del raw[index]
    try:
        same = _json.load_json_strict(bytes(raw), what="c", max_bytes=1 << 26)
        changed = _signed_bytes(same) != _signed_bytes(json.loads(original))
    except Exception:  # noqa: BLE001 - input the strict parser rejects is a change
        changed = True
    _check(_verify_bytes(run, cert_bytes=bytes(raw)), changed=changed)


HEADER_FIELDS = st.sampled_from(["dtype", "shape", "data_offsets"])
HEADER_VALUES = st.one_of(
    JSON_VALUES, st.lists(st.integers(-5, 2**64), max_size=3),
    st.sampled_from(["F32", "F64", "BOOL", "U8", "F16", "I64", "X"]),
)


def _header_property(run: HonestRun, data: st.DataObject) -> None:
    original = run.model.read_bytes()
    (size,) = struct.unpack("<Q", original[:8])
    header = json.loads(original[8:8 + size])
    names = sorted(name for name in header if name != "__metadata__")
    name = data.draw(st.sampled_from(names), label="tensor")
    action = data.draw(st.sampled_from(["field", "rename", "drop", "length"]), label="action")
    body = original[8 + size:]
    if action == "field":
        header[name][data.draw(HEADER_FIELDS)] = data.draw(HEADER_VALUES, label="value")
    elif action == "rename":
        header[data.draw(st.text(max_size=10), label="new name")] = header.pop(name)
    elif action == "drop":
        del header[name]
    text = json.dumps(header).encode()
    length = len(text)
    if action == "length":
        length = data.draw(st.sampled_from([0, 1, size - 1, size + 1, 2**63, 2**64 - 1]))
    mutated = struct.pack("<Q", length) + text + body
    changed = mutated != original
    _check(_verify_bytes(run, model_bytes=mutated), changed=changed)


def _resigned_property(run: HonestRun, data: st.DataObject) -> None:
    # Signed again with the issuer's key, so the mutation reaches the checks after the
    # signature; a false claim may then exit 1, never 3 or with a traceback.
    mutated = _mutate(run.load_cert(), data)
    try:
        signed = resign(mutated, run.private_key)
    except Exception:  # noqa: BLE001 - the signer refuses what it cannot sign
        return
    outcome = _verify_bytes(run, cert_bytes=json.dumps(signed).encode())
    _check(outcome, changed=False)


@QUICK
@given(data=st.data())
def test_fuzz_certificate_structure(honest_run: HonestRun, data: st.DataObject) -> None:
    _structure_property(honest_run, data)


@QUICK
@given(data=st.data())
def test_fuzz_certificate_bytes(honest_run: HonestRun, data: st.DataObject) -> None:
    _bytes_property(honest_run, data)


@QUICK
@given(data=st.data())
def test_fuzz_model_header(honest_run: HonestRun, data: st.DataObject) -> None:
    _header_property(honest_run, data)


@QUICK
@given(data=st.data())
def test_fuzz_resigned_claims(honest_run: HonestRun, data: st.DataObject) -> None:
    _resigned_property(honest_run, data)


@pytest.mark.fuzz
@LONG
@given(data=st.data())
def test_fuzz_long_certificate_structure(honest_run: HonestRun, data: st.DataObject) -> None:
    _structure_property(honest_run, data)


@pytest.mark.fuzz
@LONG
@given(data=st.data())
def test_fuzz_long_certificate_bytes(honest_run: HonestRun, data: st.DataObject) -> None:
    _bytes_property(honest_run, data)


@pytest.mark.fuzz
@LONG
@given(data=st.data())
def test_fuzz_long_model_header(honest_run: HonestRun, data: st.DataObject) -> None:
    _header_property(honest_run, data)


@pytest.mark.fuzz
@LONG
@given(data=st.data())
def test_fuzz_long_resigned_claims(honest_run: HonestRun, data: st.DataObject) -> None:
    _resigned_property(honest_run, data)


def _strictness_property(tmp_dir: Path, data: st.DataObject) -> None:
    # Whatever the reference reader (the safetensors package) rejects, ours rejects too.
    import safetensors

    from mbd_cert import _safetensors, errors

    count = data.draw(st.integers(0, 3), label="tensors")
    header: dict[str, Any] = {}
    offset = 0
    for index in range(count):
        size = data.draw(st.integers(0, 3), label="elements")
        header[f"t{index}"] = {"dtype": "F32", "shape": [size],
                               "data_offsets": [offset, offset + 4 * size]}
        offset += 4 * size
    if header and data.draw(st.booleans(), label="mutate"):
        name = data.draw(st.sampled_from(sorted(header)), label="tensor")
        header[name][data.draw(HEADER_FIELDS)] = data.draw(HEADER_VALUES, label="value")
    if data.draw(st.booleans(), label="metadata"):
        header["__metadata__"] = data.draw(
            st.dictionaries(st.text(max_size=4), JSON_SCALARS, max_size=2), label="metadata")
    body = bytes(max(0, offset + data.draw(st.sampled_from([0, 0, 4, -4]), label="slack")))
    text = json.dumps(header).encode()
    path = tmp_dir / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)

    try:
        with safetensors.safe_open(str(path), framework="numpy") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                handle.get_tensor(key)
        reference_ok = True
    except Exception:  # noqa: BLE001 - any rejection by the reference reader counts
        reference_ok = False
    try:
        parsed = _safetensors.read_header(path)
        for name in parsed.tensors:
            _safetensors.read_tensor(parsed, name)
        ours_ok = True
    except errors.InputError:
        ours_ok = False
    event(f"reference {'accepts' if reference_ok else 'rejects'}, "
          f"mbd-cert {'accepts' if ours_ok else 'rejects'}")
    assert ours_ok <= reference_ok, "mbd-cert accepted a file the reference reader rejects"


@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=st.data())
def test_reader_at_least_as_strict(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as directory:
        _strictness_property(Path(directory), data)


@pytest.mark.fuzz
@settings(max_examples=5000, deadline=None)
@given(data=st.data())
def test_fuzz_long_reader_at_least_as_strict(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as directory:
        _strictness_property(Path(directory), data)
