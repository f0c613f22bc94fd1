"""Tests for mbd_cert._confidential_files: the header scan behind verify-repo's warning."""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path

import pytest

from mbd_cert import _confidential_files
from mbd_cert._confidential_files import files_by_format, header_format


def _header_file(path: Path, metadata: dict[str, str], *, data: bytes = b"",
                 tensors: dict[str, object] | None = None) -> Path:
    header = {"__metadata__": metadata, **(tensors or {})}
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_format_read_from_header_only(tmp_path: Path) -> None:
    # The data section is never read, so a truncated copy is still recognised.
    tensors = {"t": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}
    path = _header_file(tmp_path / "copy.bak", {"format": "mbd-cert-diff/1"},
                        data=b"\0" * 10, tensors=tensors)
    assert header_format(path) == "mbd-cert-diff/1"


@pytest.mark.parametrize("content", [
    b"", b"\x10\x00", b"not a safetensors file at all",
    struct.pack("<Q", 2**63) + b"{}", struct.pack("<Q", 50) + b"{}",
    struct.pack("<Q", 2) + b"[]", struct.pack("<Q", 9) + b"{not json",
    struct.pack("<Q", 31) + b'{"__metadata__": {"format": 1}}',
    struct.pack("<Q", 80) + b'{"__metadata__": {"format": "x"}, "__metadata__": '
                            b'{"format": "mbd-cert-diff/1"}}',
], ids=["empty", "short", "text", "huge-length", "truncated", "list", "bad-json",
        "format-not-string", "repeated-metadata"])
def test_other_files_have_no_format(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "f"
    path.write_bytes(content)
    assert header_format(path) is None


def test_header_over_the_cap_is_not_read(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(_confidential_files, "_MAX_SCANNED_HEADER", 64)
    path = _header_file(tmp_path / "big", {"format": "mbd-cert-probe/1", "pad": "x" * 100})
    assert header_format(path) is None


def test_fifo_and_link_are_skipped(tmp_path: Path) -> None:
    diff = _header_file(tmp_path / "diff.safetensors", {"format": "mbd-cert-diff/1"})
    (tmp_path / "link.safetensors").symlink_to(diff)
    os.mkfifo(tmp_path / "pipe.safetensors")
    assert header_format(tmp_path / "link.safetensors") is None
    # Opened without blocking: a writer never comes, and the call still returns.
    done = []
    reader = threading.Thread(target=lambda: done.append(
        header_format(tmp_path / "pipe.safetensors")), daemon=True)
    reader.start()
    reader.join(10)
    assert done == [None]
    assert files_by_format(tmp_path) == [diff]


def test_scan_finds_renamed_and_nested_copies(tmp_path: Path) -> None:
    probe = _header_file(tmp_path / "samples.bin", {"format": "mbd-cert-probe/1"})
    diff = _header_file(tmp_path / "old.safetensors", {"format": "mbd-cert-diff/1"})
    _header_file(tmp_path / "model-v0.safetensors", {"format": "mbd-cert-model/1"})
    (tmp_path / "sub").mkdir()
    nested = _header_file(tmp_path / "sub" / "diff.safetensors", {"format": "mbd-cert-diff/1"})
    # A subdirectory with a certificate of its own is that certificate's to report.
    (tmp_path / "next").mkdir()
    (tmp_path / "next" / "cert.json").write_text("{}")
    _header_file(tmp_path / "next" / "diff.safetensors", {"format": "mbd-cert-diff/1"})
    (tmp_path / "README.md").write_text("notes\n")
    assert files_by_format(tmp_path) == sorted([probe, diff, nested])
