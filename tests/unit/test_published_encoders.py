"""The search for a deleted encoder's tensors in repository files (R-REPO-12)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save

from mbd_cert import _tensor_spans
from mbd_cert._published_encoders import check_published_encoders, search_file
from mbd_cert._repo_results import RepoResult
from mbd_cert.report import VerificationReport


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _result(removed: dict[str, np.ndarray]) -> RepoResult:
    """Return a verified result whose deletion removed ``removed`` (F32 tensors)."""
    doc: dict[str, Any] = {
        "certificate_id": "00000000-0000-4000-8000-000000000000",
        "deletion": {"modality": "audio", "removed_tensors": sorted(removed)},
        "subject_model": {"pre_deletion": {"tensors": {
            name: {"dtype": "F32", "shape": list(value.shape), "digest": _digest(value.tobytes())}
            for name, value in removed.items()}}},
    }
    return RepoResult("models/cert.json", "models/model.safetensors", exit_code=0,
                      report=VerificationReport(certificate_id=doc["certificate_id"], level=1),
                      certificate_doc=doc)


def _search(root: Path, result: RepoResult) -> tuple[set[str], dict[Path, str]]:
    unsearched: dict[Path, str] = {}
    found = check_published_encoders(root, [result], {}, {}, unsearched)
    return found, unsearched


@pytest.mark.parametrize("value", [0.0, 1.0, -0.5])
def test_filled_tensor_never_matches(tmp_path: Path, value: float):
    """A tensor of one repeated value is in any model of its shape: zeros, LayerNorm ones."""
    filled = np.full((4, 6), value, dtype=np.float32)
    result = _result({"encoders.audio.norm.weight": filled})
    (tmp_path / "other.bin").write_bytes(filled.tobytes())
    (tmp_path / "other.safetensors").write_bytes(save({"x": filled}))

    found, unsearched = _search(tmp_path, result)

    assert found == set()
    assert unsearched == {}
    assert result.exit_code == 0
    assert result.report.checks == []


def test_alternating_values_match(tmp_path: Path):
    # Two values repeat every 8 bytes, but no single F32 element repeats throughout.
    pattern = np.tile(np.array([1.0, 2.0], dtype=np.float32), 12)
    result = _result({"encoders.audio.proj.bias": pattern})
    (tmp_path / "copy.bin").write_bytes(pattern.tobytes())

    found, _ = _search(tmp_path, result)

    assert found == {"copy.bin"}
    [check] = result.report.checks
    assert check.detail.startswith("copy.bin: the whole file contains the bytes of "
                                   "'encoders.audio.proj.bias', of the audio encoder")
    assert check.value == 1


def test_only_searched_lengths_hashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((5, 7)).astype(np.float32)
    tensors = {f"other.{number}": rng.standard_normal(number + 40).astype(np.float32)
               for number in range(50)}
    tensors["renamed"] = weight
    (tmp_path / "model.bin").write_bytes(save(tensors))
    hashed: list[int] = []
    real = _tensor_spans.digest_span

    def counting(stream: Any, length: int) -> Any:
        hashed.append(length)
        return real(stream, length)

    monkeypatch.setattr(_tensor_spans, "digest_span", counting)
    found = search_file(tmp_path / "model.bin", frozenset({weight.nbytes}))

    assert hashed == [weight.nbytes]
    [(member, span)] = found
    assert member == ""
    assert span.location == "tensor 'renamed'"
    assert span.digest == _digest(weight.tobytes())


def test_npz_member_and_npy_file(tmp_path: Path):
    weight = np.arange(1, 25, dtype=np.float32).reshape(4, 6)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, w=weight)
    (tmp_path / "w.npz").write_bytes(buffer.getvalue())
    buffer = io.BytesIO()
    np.save(buffer, weight)
    (tmp_path / "w").write_bytes(buffer.getvalue())
    lengths = frozenset({weight.nbytes})

    [(member, span)] = search_file(tmp_path / "w.npz", lengths)
    assert member == "w.npy"
    assert span.location == "array data"
    assert span.digest == _digest(weight.tobytes())
    [(member, span)] = search_file(tmp_path / "w", lengths)
    assert member == ""
    assert span.location == "array data"
    assert span.digest == _digest(weight.tobytes())


def test_object_npy_not_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import pickle

    def unpickle(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the search unpickled an array")

    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    data = buffer.getvalue()
    (tmp_path / "objects.npy").write_bytes(data)
    monkeypatch.setattr(pickle, "loads", unpickle)
    monkeypatch.setattr(pickle, "load", unpickle)
    monkeypatch.setattr(np, "load", unpickle)
    header_end = data.index(b"\n") + 1

    [(_, span)] = search_file(tmp_path / "objects.npy", frozenset({len(data) - header_end}))

    assert span.digest == _digest(data[header_end:])


def _overlapping_zip(member: bytes, entries: int) -> bytes:
    """Return a zip archive whose ``entries`` directory entries all name one member."""
    import struct
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a", member)
    data = buffer.getvalue()
    end = data.rfind(b"PK\x05\x06")
    fields = struct.unpack("<4s4H2LH", data[end:end + 22])
    directory_size, directory_offset = fields[5], fields[6]
    directory = data[directory_offset:directory_offset + directory_size] * entries
    end_record = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries,
                             len(directory), directory_offset, 0)
    return data[:directory_offset] + directory + end_record


def test_overlapping_zip_members_unsearched(tmp_path: Path):
    # Entries that share one member's data make the search decompress it once per
    # entry, so a small archive could stall the run with work that decompresses to
    # nothing the budget counts. No honest archive has them.
    weight = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    result = _result({"encoders.audio.proj.weight": weight})
    archive = tmp_path / "overlap.zip"
    archive.write_bytes(_overlapping_zip(weight.tobytes() * 1000, 50))
    (tmp_path / "single.zip").write_bytes(_overlapping_zip(weight.tobytes(), 1))

    found, unsearched = _search(tmp_path, result)

    assert set(unsearched) == {archive}
    assert unsearched[archive].startswith("zip members whose compressed sizes add up to ")
    assert found == {"single.zip"}
