"""Tamper tests: one flipped byte in each signed or committed file gives its exact code."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from cli_support import (
    HonestRun,
    assert_check_failed,
    assert_clean,
    assert_input_error,
    flip_signature_s,
    resign,
    run_cli,
    split_safetensors,
    verify,
    write_json,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mbd_cert import _safetensors, signing
from mbd_cert._terminal import terminal_text, xml_text


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _data_start(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_model_data_byte(fresh_run: HonestRun, where: str) -> None:
    start, size = _data_start(fresh_run.model), fresh_run.model.stat().st_size
    offset = {"first": start, "middle": (start + size) // 2, "last": size - 1}[where]
    _flip(fresh_run.model, offset)
    outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key)
    assert_check_failed(outcome, "model-digest", "E_DIGEST_MISMATCH")
    assert "expected sha256:" in outcome.check_detail("model-digest")


def test_model_header_metadata_byte(fresh_run: HonestRun) -> None:
    # Changing a metadata character keeps the header valid JSON of the same length.
    data = fresh_run.model.read_bytes()
    header, _ = split_safetensors(data)
    value = header["__metadata__"]["format"]
    index = data.index(value.encode())
    edited = data[:index] + value[:-1].encode() + b"X" + data[index + len(value):]
    fresh_run.model.write_bytes(edited)
    outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key)
    assert_check_failed(outcome, "model-digest", "E_DIGEST_MISMATCH")


def test_model_header_structure_byte(fresh_run: HonestRun) -> None:
    # Turning the header's opening brace into another byte breaks the header itself.
    _flip(fresh_run.model, 8)
    outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key)
    assert_clean(outcome)
    assert outcome.exit_code == 2
    assert outcome.error_code is not None and outcome.error_code.startswith("E_SAFETENSORS")


@pytest.mark.parametrize(
    ("old", "new"),
    [('"epsilon": 1.0', '"epsilon": 1.5'), ('"modality": "audio"', '"modality": "video"'),
     ('"steps": 2', '"steps": 3'), ('"damping": 0.001', '"damping": 0.002')],
    ids=["epsilon", "modality", "steps", "damping"],
)
def test_certificate_payload_byte(fresh_run: HonestRun, old: str, new: str) -> None:
    text = fresh_run.cert.read_text()
    assert old in text
    fresh_run.cert.write_text(text.replace(old, new, 1))
    outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key)
    assert_check_failed(outcome, "signature", "E_SIGNATURE_INVALID")


def test_certificate_digest_field(fresh_run: HonestRun, tmp_path: Path) -> None:
    doc = fresh_run.load_cert()
    committed = doc["subject_model"]["post_deletion"]
    name = sorted(committed["tensors"])[0]
    old = committed["tensors"][name]["digest"]
    committed["tensors"][name]["digest"] = old[:-1] + ("0" if old[-1] != "0" else "1")
    # Signed again, so that only the recomputed digest can catch the edit.
    cert = write_json(tmp_path / "c.json", resign(doc, fresh_run.private_key))
    outcome = verify(cert, fresh_run.model, fresh_run.public_key)
    assert_check_failed(outcome, "model-digest", "E_DIGEST_MISMATCH")
    detail = outcome.check_detail("model-digest")
    assert name in detail
    assert committed["tensors"][name]["digest"] in detail


@pytest.mark.parametrize("path", [
    ("issued_at",), ("saliency", "objective"), ("subject_model", "post_deletion",
    "manifest_digest"), ("audit_bundle", "diff", "path"),
], ids=["issued_at", "objective", "manifest-digest", "bundle-path"])
def test_field_with_final_line_feed_malformed(honest_run: HonestRun, tmp_path: Path,
                                              path: tuple[str, ...]) -> None:
    # JSON Schema's "$" matches only at the very end, so "^...$" rejects a final "\n".
    # With Python's "$", the first three verified and the digest failed as a mismatch.
    doc = honest_run.load_cert()
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] += "\n"
    cert = write_json(tmp_path / "c.json", resign(doc, honest_run.private_key))
    outcome = verify(cert, honest_run.model, honest_run.public_key)
    assert_input_error(outcome, "E_CERT_MALFORMED")
    assert f"field {'.'.join(path)} is invalid" in outcome.stderr


# Each edit of a valid certificate_id that Python's uuid.UUID() still parses.
NOT_UUIDS = {
    "trailing-cr": lambda cid: cid[:-1] + "\r",
    "trailing-line-separator": lambda cid: cid[:-1] + "\u2028",
    "trailing-paragraph-separator": lambda cid: cid[:-1] + "\u2029",
    "trailing-next-line": lambda cid: cid[:-1] + "\x85",
    "trailing-tab": lambda cid: cid[:-1] + "\t",
    "trailing-line-feed": lambda cid: cid[:-1] + "\n",
    "trailing-brace": lambda cid: cid + "}",
    "braces": lambda cid: "{" + cid + "}",
    "extra-hyphens": lambda cid: cid + "----",
    "underscore": lambda cid: cid[:28] + "_" + cid[29:],
    "no-hyphens": lambda cid: cid.replace("-", ""),
    "arabic-indic-digit": lambda cid: cid[:-1] + "\u0663",
    "fullwidth-digit": lambda cid: cid[:-1] + "\uff13",
}


@pytest.mark.parametrize("edit", list(NOT_UUIDS))
def test_certificate_id_not_uuid_malformed(honest_run: HonestRun, tmp_path: Path,
                                           edit: str) -> None:
    doc = honest_run.load_cert()
    doc["certificate_id"] = NOT_UUIDS[edit](doc["certificate_id"])
    cert = write_json(tmp_path / "c.json", resign(doc, honest_run.private_key))
    outcome = verify(cert, honest_run.model, honest_run.public_key)
    assert_input_error(outcome, "E_CERT_MALFORMED")
    assert "field certificate_id is invalid" in outcome.stderr


def test_certificate_id_upper_case_verifies(honest_run: HonestRun, tmp_path: Path) -> None:
    doc = honest_run.load_cert()
    doc["certificate_id"] = doc["certificate_id"].upper()
    cert = write_json(tmp_path / "c.json", resign(doc, honest_run.private_key))
    outcome = verify(cert, honest_run.model, honest_run.public_key)
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.report is not None
    assert outcome.report["verified"] is True


@pytest.mark.parametrize("byte", [0, 31, 32, 63])
def test_signature_byte(fresh_run: HonestRun, byte: int) -> None:
    doc = fresh_run.load_cert()
    raw = bytearray(base64.b64decode(doc["signature"]["value"]))
    raw[byte] ^= 0x01
    doc["signature"]["value"] = base64.b64encode(bytes(raw)).decode("ascii")
    write_json(fresh_run.cert, doc)
    outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key)
    assert_check_failed(outcome, "signature", "E_SIGNATURE_INVALID")
    # R-SIG-2: the message does not say which bytes differ.
    assert "byte" not in outcome.check_detail("signature")


@pytest.mark.parametrize(
    "value",
    ["", "AAAA", "!" * 88, base64.b64encode(bytes(64)).decode().rstrip("=")],
    ids=["empty", "short", "not-base64", "unpadded"],
)
def test_signature_encoding(fresh_run: HonestRun, value: str) -> None:
    doc = fresh_run.load_cert()
    doc["signature"]["value"] = value
    write_json(fresh_run.cert, doc)
    outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key)
    assert_clean(outcome)
    assert outcome.exit_code in (1, 2)
    if outcome.exit_code == 1:
        assert outcome.failed_codes["signature"] in ("E_SIGNATURE_MALFORMED", "E_SIGNATURE_INVALID")
    else:
        assert outcome.error_code == "E_CERT_MALFORMED"


@pytest.mark.parametrize("role", ["diff", "probe"])
@pytest.mark.parametrize("where", ["header", "data"])
def test_bundle_byte(fresh_run: HonestRun, role: str, where: str) -> None:
    path = fresh_run.diff if role == "diff" else fresh_run.probe
    if where == "data":
        _flip(path, path.stat().st_size - 1)
    else:
        data = path.read_bytes()
        index = data.index(b"mbd-cert-") + len(b"mbd-cert-")
        path.write_bytes(data[:index] + b"X" + data[index + 1:])
    outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key, "--bundle",
                     fresh_run.out_dir)
    assert_check_failed(outcome, "bundle-digest", "E_DIGEST_MISMATCH")
    assert f"audit_bundle.{role}" in outcome.check_detail("bundle-digest")
    assert "pass the audit bundle issued with this certificate" in outcome.stdout


def test_pre_deletion_model_named_as_such(fresh_run: HonestRun) -> None:
    outcome = verify(fresh_run.cert, fresh_run.checkpoint / "model.safetensors",
                     fresh_run.public_key)
    assert_check_failed(outcome, "model-digest", "E_DIGEST_MISMATCH")
    assert "this is the model before the deletion" in outcome.stdout


def test_c15_signature_s_plus_l(fresh_run: HonestRun) -> None:
    doc = fresh_run.load_cert()
    doc["signature"]["value"] = flip_signature_s(doc["signature"]["value"])
    write_json(fresh_run.cert, doc)
    outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key)
    assert_check_failed(outcome, "signature", "E_SIGNATURE_INVALID")


def test_c16_digest_edited_unsigned(fresh_run: HonestRun) -> None:
    doc = fresh_run.load_cert()
    doc["subject_model"]["post_deletion"]["manifest_digest"] = "sha256:" + "0" * 64
    write_json(fresh_run.cert, doc)
    outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key)
    assert_check_failed(outcome, "signature", "E_SIGNATURE_INVALID")
    assert outcome.failed_codes.get("model-digest") == "E_DIGEST_MISMATCH"


def _attacker_key(tmp_path: Path) -> tuple[ed25519.Ed25519PrivateKey, Path]:
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "attacker.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return key, path


@pytest.mark.parametrize("field", [("issuer", "public_key"), ("signature", "public_key")])
def test_c18_embedded_key_not_trusted(fresh_run: HonestRun, tmp_path: Path,
                                      field: tuple[str, str]) -> None:
    attacker, attacker_path = _attacker_key(tmp_path)
    public_pem = attacker.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    doc = fresh_run.load_cert()
    doc["issuer"]["key_id"] = signing.key_id(attacker.public_key())
    doc[field[0]][field[1]] = public_pem
    signed = resign(doc, attacker_path)
    # Re-signing replaces the signature member, so a key placed there is added after.
    signed[field[0]][field[1]] = public_pem
    cert = write_json(tmp_path / "c.json", signed)
    outcome = verify(cert, fresh_run.model, fresh_run.public_key)
    assert_clean(outcome)
    assert outcome.exit_code in (1, 2)
    if outcome.exit_code == 1:
        assert outcome.failed_codes["signature"] == "E_KEY_UNTRUSTED"
    else:
        assert outcome.error_code == "E_CERT_MALFORMED"


def test_c18_attacker_signed_certificate(fresh_run: HonestRun, tmp_path: Path) -> None:
    attacker, attacker_path = _attacker_key(tmp_path)
    doc = fresh_run.load_cert()
    doc["issuer"]["key_id"] = signing.key_id(attacker.public_key())
    cert = write_json(tmp_path / "c.json", resign(doc, attacker_path))
    outcome = verify(cert, fresh_run.model, fresh_run.public_key)
    assert_check_failed(outcome, "signature", "E_KEY_UNTRUSTED")
    report = json.loads(outcome.stdout)
    assert report["verified"] is False


def test_issuer_key_id_differs_from_signature(fresh_run: HonestRun, tmp_path: Path) -> None:
    """R-SIG-3: signature.key_id and issuer.key_id must be equal.

    The trusted key signs a certificate whose issuer.key_id names another key, so the
    signature verifies but the certificate names an issuer that did not sign it.
    """
    from mbd_cert import certificate

    attacker, _ = _attacker_key(tmp_path)
    doc = fresh_run.load_cert()
    doc["issuer"]["key_id"] = signing.key_id(attacker.public_key())
    del doc["signature"]
    trusted = signing.load_private_key(fresh_run.private_key)
    doc["signature"] = {
        "algorithm": "ed25519",
        "key_id": signing.key_id(trusted.public_key()),
        "value": signing.sign(trusted, certificate.signing_payload(doc)),
    }
    cert = write_json(tmp_path / "c.json", doc)
    outcome = verify(cert, fresh_run.model, fresh_run.public_key)
    assert_check_failed(outcome, "signature", "E_SIGNATURE_INVALID")
    assert "signature.key_id differs from issuer.key_id" in outcome.check_detail("signature")


# Hostile names in the files: the human-readable outputs show them escaped (R-SEC-5).

HOSTILE_NAMES = ["[/x]", "[green]ok[/green]", "\x1b[2J\x1b[32mVERIFIED\x1b[0m",
                 "a\rb\u202egnp\x07\x01"]


def _add_model_tensor(run: HonestRun, name: str) -> None:
    header = _safetensors.read_header(run.model)
    tensors = {key: np.array(_safetensors.read_tensor(header, key)) for key in header.tensors}
    tensors[name] = np.zeros(1, np.float32)
    metadata = dict(header.metadata)
    run.model.unlink()
    _safetensors.write_safetensors(run.model, tensors, metadata)


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=["closing-tag", "style", "escape", "mixed"])
def test_hostile_tensor_name_in_table(fresh_run: HonestRun, tmp_path: Path, name: str) -> None:
    _add_model_tensor(fresh_run, name)
    junit = tmp_path / "junit.xml"
    outcome = run_cli(["verify", fresh_run.cert, fresh_run.model, "--key",
                       fresh_run.public_key, "--junit", junit])
    assert_clean(outcome)
    assert outcome.exit_code == 1, outcome.stderr
    assert "E_DIGEST_MISMATCH" in outcome.stdout
    escaped_name = terminal_text(name)
    # The table folds long cells, so the escaped name is looked for without line breaks.
    assert escaped_name in "".join(line.strip(" │") for line in outcome.stdout.splitlines())
    for char in "\x1b\r\x07\x01\u202e":
        assert char not in outcome.stdout + outcome.stderr
    # The JUnit file parses, and its model-digest failure quotes the name escaped.
    cases = {case.get("name"): case for case in ElementTree.parse(junit).getroot()}
    failure = cases["model-digest"].find("failure")
    assert failure is not None and failure.text is not None
    assert xml_text(name) in failure.text


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=["closing-tag", "style", "escape", "mixed"])
def test_hostile_tensor_name_in_json(fresh_run: HonestRun, name: str) -> None:
    # --json stays exact: json.dumps escapes control characters itself.
    _add_model_tensor(fresh_run, name)
    outcome = verify(fresh_run.cert, fresh_run.model, fresh_run.public_key)
    assert_check_failed(outcome, "model-digest", "E_DIGEST_MISMATCH")
    assert name in outcome.check_detail("model-digest")
