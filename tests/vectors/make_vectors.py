"""Regenerate the test vectors in schema/vectors/v1 (run on demand, not by pytest).

    python tests/vectors/make_vectors.py [--out schema/vectors/v1]

Every vector is a directory with ``cert.json``, ``model.safetensors``, the trusted
``issuer.pub``, optional audit-bundle files and ``expected.json``: the verify
arguments, the expected exit code and error code, the SPEC requirement, and how the
vector was made. Forged vectors are re-signed with the vector key, because the threat
they model is an issuer who has its own key and lies. The vector private key is
committed on purpose and signs nothing else.

Vectors are kept forever once released; regenerate only to add new ones.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# Run as a script, so this directory is on sys.path.
from make_chain_vectors import add_chain_and_sealed_vectors

from mbd_cert import _safetensors, certificate, mechanism, signing
from mbd_cert._commitment import file_commitment
from mbd_cert.issue import IssueOptions, issue

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = [
    "--hidden-dim",
    "8",
    "--shared-dim",
    "4",
    "--private-dim",
    "4",
    "--fusion-hidden",
    "8",
    "--epochs",
    "3",
    "--probe-members",
    "16",
    "--probe-nonmembers",
    "16",
    "--no-progress",
]
# Group order L of edwards25519 (RFC 8032, section 5.1).
ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493


_ONLY: set[str] | None = None


def _write(
    directory: Path,
    doc: dict[str, Any],
    model: Path,
    expected: dict[str, Any],
    key_dir: Path,
    bundle: Path | None = None,
    raw_cert: bytes | None = None,
    extras: dict[str, Path] | None = None,
) -> None:
    if _ONLY is not None:
        if f"{directory.parent.name}/{directory.name}" not in _ONLY:
            return
        shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    data = raw_cert if raw_cert is not None else certificate.dump_certificate(doc)
    (directory / "cert.json").write_bytes(data)
    shutil.copyfile(model, directory / "model.safetensors")
    shutil.copyfile(key_dir / "issuer.pub", directory / "issuer.pub")
    if bundle is not None:
        for name in ("diff.safetensors", "probe.safetensors"):
            shutil.copyfile(bundle / name, directory / name)
    # Further files the vector needs, such as chain links or a sealed bundle: name -> source.
    for name, source in (extras or {}).items():
        shutil.copyfile(source, directory / name)
    expected.setdefault("args", [])
    (directory / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")


def _resign(doc: dict[str, Any], key: Any) -> dict[str, Any]:
    return certificate.sign_certificate(doc, key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "schema" / "vectors" / "v1")
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="write only these vectors (kind/name) and keep every other one as it is",
    )
    args = parser.parse_args()
    only = set(args.only) if args.only else None
    global _ONLY
    _ONLY = only
    out: Path = args.out
    key_dir = out / "keys"
    key_dir.mkdir(parents=True, exist_ok=True)
    if not (key_dir / "issuer.key").exists():
        signing.write_keypair(key_dir / "issuer")
    key = signing.load_private_key(key_dir / "issuer.key")
    if only is None:
        for kind in ("valid", "invalid"):
            shutil.rmtree(out / kind, ignore_errors=True)

    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "mbd_cert.cli",
                "train",
                "--corpus",
                "synthetic",
                "--seed",
                "0",
                "--out",
                str(scratch / "checkpoint"),
                *TINY_MODEL,
            ],
            check=True,
        )
        run = scratch / "deleted"
        honest = issue(
            scratch / "checkpoint",
            run,
            IssueOptions(
                modality="audio",
                epsilon=1.0,
                delta=1e-5,
                noise_seed=20261204,
                issuer_name="mbd-cert test vectors",
            ),
            key,
        )
        model = run / "model.safetensors"
        valid, invalid = out / "valid", out / "invalid"
        made = "mbd-cert issue --modality audio --epsilon 1 --delta 1e-5 on a tiny synthetic model"

        _write(
            valid / "honest-audio-eps1",
            honest,
            model,
            {"exit_code": 0, "error_code": None, "requirement": "R-FMT-1", "how_made": made},
            key_dir,
        )
        _write(
            valid / "honest-with-bundle",
            honest,
            model,
            {
                "exit_code": 0,
                "error_code": None,
                "requirement": "R-BUN-2",
                "how_made": made,
                "args": ["--bundle", "."],
            },
            key_dir,
            bundle=run,
        )

        # The same certificate with integers spelled as floats: the canonical bytes, and
        # so the signature and the verdict, stay the same (R-SIG-4).
        spelled = certificate.dump_certificate(honest).decode()
        for field in ('"steps": ', '"hidden_dim": ', '"sequence_number": '):
            value = spelled.split(field, 1)[1].split(",", 1)[0]
            spelled = spelled.replace(f"{field}{value},", f"{field}{value}.0,", 1)
        _write(
            valid / "integral-number-spelling",
            honest,
            model,
            {
                "exit_code": 0,
                "error_code": None,
                "requirement": "R-SIG-4",
                "how_made": made + "; steps, hidden_dim and sequence_number then "
                "rewritten as N.0 without re-signing",
                "args": ["--level", "2", "--bundle", ".", "--allow-inconclusive"],
            },
            key_dir,
            bundle=run,
            raw_cert=spelled.encode(),
        )

        def bad(
            name: str,
            doc: dict[str, Any],
            code: str,
            exit_code: int,
            requirement: str,
            how: str,
            **kwargs: Any,
        ) -> None:
            _write(
                invalid / name,
                doc,
                kwargs.pop("model", model),
                {
                    "exit_code": exit_code,
                    "error_code": code,
                    "requirement": requirement,
                    "how_made": how,
                    **kwargs.pop("expected", {}),
                },
                key_dir,
                **kwargs,
            )

        # Schema and strict JSON (R-FMT-*, R-VER-2).
        doc = copy.deepcopy(honest)
        del doc["privacy"]["sigma"]
        bad(
            "schema-missing-sigma",
            _resign(doc, key),
            "E_CERT_MALFORMED",
            2,
            "R-FMT-1",
            "privacy.sigma removed, re-signed",
        )
        doc = copy.deepcopy(honest)
        doc["comment"] = "unknown top-level member"
        bad(
            "schema-unknown-top-level",
            _resign(doc, key),
            "E_CERT_MALFORMED",
            2,
            "R-VER-4",
            "an unknown top-level member added, re-signed",
        )
        doc = copy.deepcopy(honest)
        doc["issued_at"] = "yesterday"
        bad(
            "schema-date-time",
            _resign(doc, key),
            "E_CERT_MALFORMED",
            2,
            "R-FMT-3",
            "issued_at set to 'yesterday', re-signed",
        )
        # JSON Schema's "$" matches only at the very end of the string (ECMA-262), so
        # "^...$" rejects a value followed by a line feed, which Python's re.search accepts.
        doc = copy.deepcopy(honest)
        doc["saliency"]["objective"] += "\n"
        bad(
            "schema-pattern-final-line-feed",
            _resign(doc, key),
            "E_CERT_MALFORMED",
            2,
            "R-FMT-1",
            "a line feed appended to saliency.objective (pattern ^...$), re-signed",
        )
        doc = copy.deepcopy(honest)
        doc["issued_at"] += "\n"
        bad(
            "schema-date-time-final-line-feed",
            _resign(doc, key),
            "E_CERT_MALFORMED",
            2,
            "R-FMT-3",
            "a line feed appended to issued_at (format date-time, pattern Z$), re-signed",
        )
        doc = copy.deepcopy(honest)
        doc["format_version"] = "2.0"
        bad(
            "version-unsupported-major",
            doc,
            "E_UNSUPPORTED_VERSION",
            2,
            "R-VER-2",
            "format_version set to 2.0",
        )
        text = certificate.dump_certificate(honest).decode()
        bad(
            "json-nan-epsilon",
            honest,
            "E_JSON_NONFINITE_NUMBER",
            2,
            "R-FMT-2",
            "privacy.epsilon replaced by NaN in the JSON text",
            raw_cert=text.replace('"epsilon": 1.0', '"epsilon": NaN', 1).encode(),
        )
        bad(
            "json-duplicate-key",
            honest,
            "E_JSON_DUPLICATE_KEY",
            2,
            "R-FMT-2",
            "a second privacy.epsilon member (100) added before the first",
            raw_cert=text.replace('"epsilon": 1.0', '"epsilon": 100, "epsilon": 1.0', 1).encode(),
        )
        doc = copy.deepcopy(honest)
        doc["subject_model"]["architecture"]["config"]["$ref"] = "https://example.invalid/x"
        bad(
            "schema-ref-keyword",
            _resign(doc, key),
            "E_CERT_SCHEMA_KEYWORD",
            2,
            "R-FMT-1",
            "a $ref member added inside the architecture config, re-signed",
        )

        # Signature (R-SIG-*).
        doc = copy.deepcopy(honest)
        raw = bytearray(base64.b64decode(doc["signature"]["value"]))
        raw[10] ^= 0x01
        doc["signature"]["value"] = base64.b64encode(bytes(raw)).decode()
        bad(
            "signature-bit-flip",
            doc,
            "E_SIGNATURE_INVALID",
            1,
            "R-SIG-1",
            "one bit of the signature's R half flipped",
        )
        doc = copy.deepcopy(honest)
        raw = bytearray(base64.b64decode(doc["signature"]["value"]))
        s_value = int.from_bytes(raw[32:], "little") + ED25519_ORDER
        doc["signature"]["value"] = base64.b64encode(
            bytes(raw[:32]) + s_value.to_bytes(32, "little")
        ).decode()
        bad(
            "signature-s-plus-l",
            doc,
            "E_SIGNATURE_INVALID",
            1,
            "R-SIG-2",
            "S replaced by S + L (malleated signature)",
        )
        doc = copy.deepcopy(honest)
        doc["signature"]["note"] = "added after signing"
        bad(
            "signature-extra-member",
            doc,
            "E_CERT_MALFORMED",
            2,
            "R-SIG-1",
            "a member added to the signature object, which the signature does not cover",
        )
        doc = copy.deepcopy(honest)
        doc["privacy"]["epsilon"] = 0.5
        bad(
            "payload-edited-not-resigned",
            doc,
            "E_SIGNATURE_INVALID",
            1,
            "R-SIG-1",
            "privacy.epsilon changed to 0.5 after signing",
        )
        other = tempfile.mkdtemp(dir=scratch)
        signing.write_keypair(Path(other) / "other")
        other_key = signing.load_private_key(Path(other) / "other.key")
        doc = copy.deepcopy(honest)
        doc["issuer"]["key_id"] = signing.key_id(other_key.public_key())
        bad(
            "signature-untrusted-key",
            _resign(doc, other_key),
            "E_KEY_UNTRUSTED",
            1,
            "R-SIG-2",
            "signed by a key the verifier was not given",
        )

        # Digests (R-DIG-3).
        flipped = scratch / "flipped.safetensors"
        data = bytearray(model.read_bytes())
        data[-3] ^= 0x01
        flipped.write_bytes(bytes(data))
        bad(
            "model-data-byte-flipped",
            honest,
            "E_DIGEST_MISMATCH",
            1,
            "R-DIG-3",
            "one bit of the last tensor's data flipped in model.safetensors",
            model=flipped,
        )
        _write(
            valid / "honest-format-1.1",
            honest,
            model,
            {
                "exit_code": 0,
                "error_code": None,
                "requirement": "R-DIG-4",
                "how_made": made + f" (format {honest['format_version']}, with header_digest)",
            },
            key_dir,
        )
        header_model = scratch / "header-edited.safetensors"
        data = bytearray(model.read_bytes())
        header_end = 8 + int.from_bytes(data[:8], "little")
        # One character of the header's metadata changes; the header digest and the
        # manifest both bind it.
        text = data[8:header_end].decode()
        edited = text.replace('"mbd-cert-model/1"', '"mbd-cert-model/2"', 1)
        assert len(edited) == len(text)
        data[8:header_end] = edited.encode()
        header_model.write_bytes(bytes(data))
        bad(
            "header-metadata-edited",
            honest,
            "E_DIGEST_MISMATCH",
            1,
            "R-DIG-4",
            "one character of the model's header metadata changed (format model/1 to model/2)",
            model=header_model,
        )
        doc = copy.deepcopy(honest)
        doc["subject_model"]["post_deletion"]["manifest_digest"] = "sha256:" + "0" * 64
        bad(
            "manifest-digest-edited",
            _resign(doc, key),
            "E_DIGEST_MISMATCH",
            1,
            "R-DIG-3",
            "post_deletion.manifest_digest replaced by zeros, re-signed",
        )

        # Deleted encoder (R-DEL-1).
        tensors = {
            n: np.array(a) for n, a in _safetensors.iter_tensors(_safetensors.read_header(model))
        }
        name = honest["deletion"]["removed_tensors"][0]
        tensors[name] = tensors[name].copy()
        tensors[name].flat[0] = 0.25
        nonzero = scratch / "nonzero.safetensors"
        digests = _safetensors.write_safetensors(
            nonzero, tensors, _safetensors.read_header(model).metadata
        )
        doc = copy.deepcopy(honest)
        doc["subject_model"]["post_deletion"] = {
            "file_digest": digests.file_digest,
            "manifest_digest": digests.manifest_digest,
            "tensors": {
                n: {"dtype": t.dtype, "shape": list(t.shape), "digest": t.digest}
                for n, t in sorted(digests.tensors.items())
            },
        }
        bad(
            "encoder-left-nonzero",
            _resign(doc, key),
            "E_DELETION_INCOMPLETE",
            1,
            "R-DEL-1",
            f"one entry of {name} set to 0.25, digests recomputed, re-signed",
            model=nonzero,
        )

        def released(path: Path) -> dict[str, Any]:
            """Return ``honest`` re-signed for the model file at ``path``."""
            changed = copy.deepcopy(honest)
            changed["subject_model"]["post_deletion"] = file_commitment(
                _safetensors.digest_file(path), _safetensors.read_header(path))
            return _resign(changed, key)

        # An entry stored as -0.0 keeps the sign bit of the trained weight (R-DEL-1).
        tensors[name] = np.array(
            dict(_safetensors.iter_tensors(_safetensors.read_header(model)))[name])
        tensors[name].flat[0] = -0.0
        signed_zero = scratch / "negative-zero.safetensors"
        _safetensors.write_safetensors(signed_zero, tensors,
                                       _safetensors.read_header(model).metadata)
        bad(
            "encoder-negative-zero",
            released(signed_zero),
            "E_DELETION_INCOMPLETE",
            1,
            "R-DEL-1",
            f"one entry of {name} stored as -0.0, digests recomputed, re-signed",
            model=signed_zero,
        )

        # The released model's layout (R-DEL-2): a tensor outside the architecture, and
        # whitespace inside the header.
        tensors[name] = np.zeros_like(tensors[name])
        tensors["backup." + name] = np.ones_like(tensors[name])
        extra = scratch / "extra-tensor.safetensors"
        _safetensors.write_safetensors(extra, tensors, _safetensors.read_header(model).metadata)
        bad(
            "model-extra-tensor",
            released(extra),
            "E_DELETION_INCOMPLETE",
            1,
            "R-DEL-2",
            f"a tensor backup.{name} added to the released model, re-signed",
            model=extra,
        )
        data = model.read_bytes()
        header_end = 8 + int.from_bytes(data[:8], "little")
        spaced = b"{\n" + data[9:header_end].rstrip(b" ")
        spaced += b" " * (-len(spaced) % 8)
        whitespace = scratch / "header-whitespace.safetensors"
        whitespace.write_bytes(len(spaced).to_bytes(8, "little") + spaced + data[header_end:])
        bad(
            "model-header-whitespace",
            released(whitespace),
            "E_DELETION_INCOMPLETE",
            1,
            "R-DEL-2",
            "a line feed after the header's opening brace, digests recomputed, re-signed",
            model=whitespace,
        )

        # NaN payload bits can carry data (R-DEL-3). Row 3 of the property embedding,
        # (audio, observed), is one the released model never reads after the deletion.
        tensors.pop("backup." + name)
        embedding = np.array(tensors["property_embedding.weight"])
        embedding[3, :4] = np.array([0x7FC12345, 0x7FC0FFEE, 0xFF800000, 0x7F800000],
                                    dtype=np.uint32).view(np.float32)
        tensors["property_embedding.weight"] = embedding
        payload = scratch / "nan-payload.safetensors"
        _safetensors.write_safetensors(payload, tensors, _safetensors.read_header(model).metadata)
        bad(
            "model-nan-payload",
            released(payload),
            "E_MODEL_NONFINITE",
            1,
            "R-DEL-3",
            "two NaNs with payloads and two infinities in a property-embedding row the "
            "released model never reads, digests recomputed, re-signed",
            model=payload,
        )

        # A member outside the schema in a per-tensor commitment (R-FMT-1).
        doc = copy.deepcopy(honest)
        entry = next(iter(doc["subject_model"]["post_deletion"]["tensors"].values()))
        entry["note"] = "QUJD"
        bad(
            "tensor-entry-extra-member",
            _resign(doc, key),
            "E_CERT_MALFORMED",
            2,
            "R-FMT-1",
            "a member 'note' added to one post_deletion.tensors entry, re-signed",
        )

        doc = copy.deepcopy(honest)
        doc["deletion"]["removed_tensors"] = doc["deletion"]["removed_tensors"][1:]
        bad(
            "removed-list-short",
            _resign(doc, key),
            "E_DELETION_INCOMPLETE",
            1,
            "R-DEL-1",
            "first entry of deletion.removed_tensors dropped, re-signed",
        )

        # Calibration and accounting (R-PRIV-*, R-ACC-*).
        doc = copy.deepcopy(honest)
        doc["privacy"]["sigma"] = honest["privacy"]["sigma"] * 0.8
        bad(
            "sigma-understated",
            _resign(doc, key),
            "E_CALIBRATION_INVALID",
            1,
            "R-PRIV-3",
            "privacy.sigma multiplied by 0.8, re-signed",
        )
        doc = copy.deepcopy(honest)
        sensitivity = doc["privacy"]["sensitivity"]
        doc["privacy"]["epsilon"] = 10.0
        doc["privacy"]["sigma"] = mechanism.classic_gaussian_sigma(
            10.0, 1e-5, sensitivity, allow_invalid=True
        )
        doc["accounting"]["cumulative_epsilon"] = 10.0
        bad(
            "sigma-classic-bound-eps10",
            _resign(doc, key),
            "E_CALIBRATION_INVALID",
            1,
            "R-PRIV-3",
            "epsilon 10 with the classic bound sqrt(2 ln(1.25/delta)) * Delta / epsilon, re-signed",
        )
        doc = copy.deepcopy(honest)
        doc["privacy"]["sensitivity"] = doc["update"]["clip_norm"]
        doc["privacy"]["sigma"] = mechanism.analytic_gaussian_sigma(
            1.0, 1e-5, doc["update"]["clip_norm"]
        )
        bad(
            "sensitivity-below-clip-bound",
            _resign(doc, key),
            "E_CALIBRATION_INVALID",
            1,
            "R-PRIV-2",
            "sensitivity set to clip_norm (not 2 x clip_norm), sigma recalibrated, re-signed",
        )
        doc = copy.deepcopy(honest)
        doc["privacy"]["noise_dimension"] = doc["saliency"]["mask_size"] - 1
        bad(
            "noise-dimension-short",
            _resign(doc, key),
            "E_CALIBRATION_INVALID",
            1,
            "R-PRIV-4",
            "privacy.noise_dimension one less than saliency.mask_size, re-signed",
        )
        doc = copy.deepcopy(honest)
        doc["accounting"]["cumulative_epsilon"] = 0.5
        bad(
            "cumulative-epsilon-understated",
            _resign(doc, key),
            "E_CALIBRATION_INVALID",
            1,
            "R-ACC-2",
            "accounting.cumulative_epsilon set to 0.5, re-signed",
        )

        # R-ACC-3: the naive bound of one deletion is its epsilon, rounded up.
        doc = copy.deepcopy(honest)
        doc["accounting"]["naive_epsilon"] = honest["accounting"]["naive_epsilon"] / 2
        bad(
            "naive-epsilon-understated",
            _resign(doc, key),
            "E_CALIBRATION_INVALID",
            1,
            "R-ACC-3",
            "accounting.naive_epsilon halved (1.0 to 0.5, below the sum of the per-deletion "
            "epsilons), re-signed",
        )

        # Policy (R-POL-1).
        bad(
            "policy-max-epsilon",
            honest,
            "E_POLICY_VIOLATION",
            1,
            "R-POL-1",
            "honest certificate checked with --max-epsilon 0.5",
            expected={"args": ["--max-epsilon", "0.5"]},
        )

        bad(
            "policy-max-delta",
            honest,
            "E_POLICY_VIOLATION",
            1,
            "R-POL-1",
            "honest certificate (delta 1e-5) checked with --max-delta 1e-6",
            expected={"args": ["--max-delta", "1e-6"]},
        )

        # R-ARCH-8: the installed architecture has another version.
        doc = copy.deepcopy(honest)
        doc["subject_model"]["architecture"]["version"] = "2"
        bad(
            "architecture-version-other",
            _resign(doc, key),
            "E_ARCHITECTURE_UNKNOWN",
            2,
            "R-ARCH-8",
            "subject_model.architecture.version changed from "
            f"{honest['subject_model']['architecture']['version']!r} to '2', re-signed",
        )

        # R-LVL-1: level 2 recomputes only the objectives forget-prediction-gap and
        # retain-task-l1-deleted, so it is not implemented for another one.
        doc = copy.deepcopy(honest)
        doc["saliency"]["objective"] = "forget-everything"
        bad(
            "level2-objective-not-recomputed",
            _resign(doc, key),
            "E_LEVEL_UNAVAILABLE",
            2,
            "R-LVL-1",
            "saliency.objective set to 'forget-everything', re-signed; verified at level 2 "
            "with --allow-inconclusive (the mask is too small for the normality test), "
            "at which a verifier that ignores the objective names verifies it; level 1 "
            "passes",
            bundle=run,
            expected={"args": ["--level", "2", "--bundle", ".", "--allow-inconclusive"]},
        )
        doc = copy.deepcopy(honest)
        doc["update"]["objective"] = "retain-everything"
        bad(
            "level2-update-objective-not-recomputed",
            _resign(doc, key),
            "E_LEVEL_UNAVAILABLE",
            2,
            "R-LVL-1",
            "update.objective set to 'retain-everything', re-signed; verified at level 2 "
            "with --allow-inconclusive, as the saliency objective's vector; level 1 passes",
            bundle=run,
            expected={"args": ["--level", "2", "--bundle", ".", "--allow-inconclusive"]},
        )

        # Audit bundle (R-BUN-*).
        tampered = scratch / "tampered-bundle"
        shutil.copytree(run, tampered)
        diff = bytearray((tampered / "diff.safetensors").read_bytes())
        diff[-1] ^= 0x01
        (tampered / "diff.safetensors").write_bytes(bytes(diff))
        bad(
            "bundle-diff-byte-flipped",
            honest,
            "E_DIGEST_MISMATCH",
            1,
            "R-BUN-2",
            "one bit of the last byte of diff.safetensors flipped",
            bundle=tampered,
            expected={"args": ["--bundle", "."]},
        )
        doc = copy.deepcopy(honest)
        doc["audit_bundle"]["diff"]["path"] = ".."
        bad(
            "bundle-path-escape",
            _resign(doc, key),
            "E_CERT_MALFORMED",
            2,
            "R-BUN-1",
            "audit_bundle.diff.path set to '..', re-signed",
            bundle=run,
            expected={"args": ["--bundle", "."]},
        )

        # R-CHAIN-11: at epsilon 0.9 and the default clip bound (sensitivity 0.002) the
        # analytic sigma converts back a few units in the last place above epsilon, so
        # the issuer raises sigma and states 0.9 itself, which --max-epsilon 0.9 admits.
        raised_run = scratch / "deleted-eps0.9"
        raised = issue(
            scratch / "checkpoint",
            raised_run,
            IssueOptions(
                modality="audio",
                epsilon=0.9,
                delta=1e-5,
                noise_seed=20261207,
                issuer_name="mbd-cert test vectors",
            ),
            key,
        )
        raised_privacy = raised["privacy"]
        analytic = mechanism.analytic_gaussian_sigma(
            0.9, 1e-5, raised_privacy["sensitivity"]
        )
        assert raised_privacy["sensitivity"] == 0.002
        assert raised_privacy["sigma"] > analytic
        assert raised["accounting"]["cumulative_epsilon"] == 0.9
        _write(
            valid / "honest-audio-eps0.9-sigma-raised",
            raised,
            raised_run / "model.safetensors",
            {
                "exit_code": 0,
                "error_code": None,
                "requirement": "R-CHAIN-11",
                "how_made": "mbd-cert issue --modality audio --epsilon 0.9 --delta 1e-5 on a "
                "tiny synthetic model (sensitivity 0.002, the default clip bound): sigma "
                f"{raised_privacy['sigma']!r} is above the analytic {analytic!r}, and "
                "cumulative_epsilon is 0.9; checked with --max-epsilon 0.9",
                "args": ["--max-epsilon", "0.9"],
            },
            key_dir,
        )

        # Chains (R-CHAIN-*) and sealed audit bundles (R-SEAL-*).
        add_chain_and_sealed_vectors(out, scratch, scratch / "checkpoint", key, key_dir, _write)
    print(f"wrote vectors to {out}")


if __name__ == "__main__":
    main()
