"""Tests of artefact path resolution and atomic writes."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from mbd_cert._paths import (
    atomic_output,
    atomic_write_bytes,
    reject_output_over_inputs,
    resolve_artefact,
)
from mbd_cert.errors import FileMissing, InputError, UnsafePath


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    root = tmp_path / "bundle"
    (root / "shards").mkdir(parents=True)
    (root / "diff.safetensors").write_bytes(b"diff")
    (root / "shards" / "diff-1.safetensors").write_bytes(b"one")
    (tmp_path / "secret.txt").write_text("secret")
    return root


# --- resolve_artefact: syntax (C17) -----------------------------------------------------


def test_resolves_plain_names(bundle: Path) -> None:
    assert resolve_artefact(bundle, "diff.safetensors") == bundle / "diff.safetensors"
    assert (resolve_artefact(bundle, "shards/diff-1.safetensors")
            == bundle / "shards" / "diff-1.safetensors")


def test_missing_file_still_resolves(bundle: Path) -> None:
    assert resolve_artefact(bundle, "new/probe.safetensors") == bundle / "new" / "probe.safetensors"


@pytest.mark.parametrize(
    ("relpath", "phrase"),
    [
        ("../secret.txt", "'..' component"),
        ("shards/../../secret.txt", "'..' component"),
        ("shards/..", "'..' component"),
        ("/etc/passwd", "is absolute"),
        ("//server/share", "is absolute"),
        ("", "is empty"),
        ("shards//diff-1.safetensors", "empty component"),
        ("shards/", "empty component"),
        ("./diff.safetensors", "'.' component"),
        ("shards\\diff-1.safetensors", "backslash"),
        ("..\\secret.txt", "backslash"),
        ("diff\x00.safetensors", "control character"),
        ("diff\n.safetensors", "control character"),
        ("C:secret.txt", "drive letter"),
    ],
)
def test_rejects_unsafe_syntax(bundle: Path, relpath: str, phrase: str) -> None:
    with pytest.raises(UnsafePath) as info:
        resolve_artefact(bundle, relpath, field="bundle.diff.path")
    assert type(info.value) is UnsafePath
    assert info.value.code == "E_UNSAFE_PATH"
    assert phrase in str(info.value)
    assert "bundle.diff.path" in str(info.value)
    assert repr(relpath) in str(info.value)


@pytest.mark.parametrize("relpath", [None, 3, b"diff.safetensors", ["diff"]])
def test_rejects_non_string(bundle: Path, relpath: Any) -> None:
    with pytest.raises(UnsafePath, match="expected a string") as info:
        resolve_artefact(bundle, relpath)
    assert info.value.code == "E_UNSAFE_PATH"


def test_rejects_overlong_path(bundle: Path) -> None:
    with pytest.raises(UnsafePath, match="4097 characters") as info:
        resolve_artefact(bundle, "a" * 4097)
    assert info.value.code == "E_UNSAFE_PATH"


def test_file_below_a_file_resolves(bundle: Path) -> None:
    resolved = resolve_artefact(bundle, "diff.safetensors/inner")
    assert resolved == bundle / "diff.safetensors" / "inner"


def test_missing_bundle_directory(tmp_path: Path) -> None:
    with pytest.raises(FileMissing, match="bundle directory not found") as info:
        resolve_artefact(tmp_path / "nope", "diff.safetensors")
    assert info.value.code == "E_FILE_MISSING"


def test_bundle_path_that_is_a_file(bundle: Path) -> None:
    with pytest.raises(InputError, match="bundle path is a file, not a directory") as info:
        resolve_artefact(bundle / "diff.safetensors", "probe.safetensors")
    assert info.value.code == "E_FILE_NOT_REGULAR"
    assert "directory that holds the audit bundle" in info.value.hint


# --- resolve_artefact: symbolic links (C17) ---------------------------------------------


def test_rejects_symlinked_file(bundle: Path) -> None:
    (bundle / "link.safetensors").symlink_to(bundle / "diff.safetensors")
    with pytest.raises(UnsafePath, match="symbolic link") as info:
        resolve_artefact(bundle, "link.safetensors")
    assert info.value.code == "E_UNSAFE_PATH"
    assert "link.safetensors" in str(info.value)


def test_rejects_symlinked_directory(bundle: Path) -> None:
    (bundle / "alias").symlink_to(bundle / "shards", target_is_directory=True)
    with pytest.raises(UnsafePath, match="symbolic link") as info:
        resolve_artefact(bundle, "alias/diff-1.safetensors")
    assert info.value.code == "E_UNSAFE_PATH"


def test_rejects_dangling_symlink(bundle: Path) -> None:
    (bundle / "dangling").symlink_to(bundle / "missing")
    with pytest.raises(UnsafePath, match="symbolic link"):
        resolve_artefact(bundle, "dangling")


def test_rejects_symlink_to_outside(bundle: Path) -> None:
    (bundle / "escape").symlink_to(bundle.parent / "secret.txt")
    with pytest.raises(UnsafePath, match="symbolic link"):
        resolve_artefact(bundle, "escape")
    with pytest.raises(UnsafePath, match="outside the bundle directory") as info:
        resolve_artefact(bundle, "escape", allow_symlinks=True)
    assert info.value.code == "E_UNSAFE_PATH"


def test_allowed_symlink_inside_bundle(bundle: Path) -> None:
    (bundle / "alias").symlink_to(bundle / "shards", target_is_directory=True)
    resolved = resolve_artefact(bundle, "alias/diff-1.safetensors", allow_symlinks=True)
    assert resolved == bundle / "alias" / "diff-1.safetensors"
    assert resolved.read_bytes() == b"one"


def test_allow_symlinks_still_checks_syntax(bundle: Path) -> None:
    with pytest.raises(UnsafePath, match="'..' component"):
        resolve_artefact(bundle, "../secret.txt", allow_symlinks=True)


def test_symlinked_base_directory_accepted(bundle: Path, tmp_path: Path) -> None:
    # The user chooses the base directory, so a link there is not the certificate's doing.
    alias = tmp_path / "bundle-alias"
    alias.symlink_to(bundle, target_is_directory=True)
    assert resolve_artefact(alias, "diff.safetensors").read_bytes() == b"diff"


# --- atomic writes ----------------------------------------------------------------------


def test_atomic_write_creates_file(tmp_path: Path) -> None:
    target = tmp_path / "cert.json"
    atomic_write_bytes(target, b"{}")
    assert target.read_bytes() == b"{}"
    assert os.listdir(tmp_path) == ["cert.json"]


def test_atomic_write_refuses_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "cert.json"
    target.write_bytes(b"old")
    with pytest.raises(InputError, match="already exists") as info:
        atomic_write_bytes(target, b"new")
    assert type(info.value) is InputError
    assert info.value.code == "E_FILE_EXISTS"
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["cert.json"]


def test_atomic_write_refuses_to_replace_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"old")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(InputError, match="already exists"):
        atomic_write_bytes(tmp_path / "link", b"new")
    assert (tmp_path / "real").read_bytes() == b"old"


def test_atomic_write_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "cert.json"
    target.write_bytes(b"old")
    atomic_write_bytes(target, b"new", overwrite=True)
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["cert.json"]


def test_atomic_write_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileMissing, match="directory not found") as info:
        atomic_write_bytes(tmp_path / "nope" / "cert.json", b"{}")
    assert info.value.code == "E_FILE_MISSING"


def test_atomic_write_interrupt_cleans_up(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "cert.json"
    target.write_bytes(b"old")

    def interrupted_fsync(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new", overwrite=True)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["cert.json"]


def test_atomic_output_error_in_body_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output(target) as output:
            output.file.write(b"partial")
            assert output.temp_path.parent == tmp_path
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []


def test_atomic_output_os_error_is_input_error(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(InputError, match="No space left") as info:
        atomic_write_bytes(tmp_path / "out.bin", b"data")
    assert info.value.code == "E_FILE_UNWRITABLE"
    assert os.listdir(tmp_path) == []


def test_target_created_during_write_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(InputError, match="already exists") as info:
        with atomic_output(target) as output:
            output.file.write(b"ours")
            target.write_bytes(b"theirs")
    assert info.value.code == "E_FILE_EXISTS"
    assert target.read_bytes() == b"theirs"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_filesystem_without_hard_links(tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(source: Any, destination: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"data")
    assert target.read_bytes() == b"data"
    with pytest.raises(InputError, match="already exists"):
        atomic_write_bytes(target, b"other")
    assert target.read_bytes() == b"data"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_atomic_write_shared_mode_follows_umask(tmp_path: Path) -> None:
    import os
    import stat

    previous = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "private.bin", b"x")
        atomic_write_bytes(tmp_path / "report.html", b"x", shared=True)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "private.bin").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644


def _overlap_error(out: Path, inputs: list[tuple[str, Path | None]]) -> InputError:
    with pytest.raises(InputError) as caught:
        reject_output_over_inputs(out, inputs)
    assert caught.value.code == "E_OUTPUT_IS_INPUT"
    return caught.value


def test_output_same_as_input_rejected(tmp_path: Path) -> None:
    error = _overlap_error(tmp_path / "ck", [("--checkpoint", tmp_path / "ck")])
    assert "is the input --checkpoint" in error.message
    assert "choose another --out" in error.hint


def test_output_containing_input_file_rejected(tmp_path: Path) -> None:
    error = _overlap_error(tmp_path, [("--key", tmp_path / "keys" / "issuer.key")])
    assert "contains the input --key" in error.message


def test_output_relative_path_resolved(tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ck").mkdir()
    monkeypatch.chdir(tmp_path / "ck")
    _overlap_error(Path(".."), [("--checkpoint", tmp_path / "ck")])
    _overlap_error(Path("."), [("--checkpoint", Path("../ck"))])


def test_output_symlink_to_input_rejected(tmp_path: Path) -> None:
    (tmp_path / "ck").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "ck", target_is_directory=True)
    _overlap_error(tmp_path / "out", [("--checkpoint", tmp_path / "ck")])


def test_input_through_symlink_into_output_rejected(tmp_path: Path) -> None:
    (tmp_path / "out" / "data").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "out" / "data", target_is_directory=True)
    _overlap_error(tmp_path / "out", [("--data-root", tmp_path / "link")])


def test_output_inside_input_accepted(tmp_path: Path) -> None:
    reject_output_over_inputs(tmp_path / "ck" / "release", [("--checkpoint", tmp_path / "ck")])


def test_output_sharing_name_prefix_accepted(tmp_path: Path) -> None:
    # 'ck' is a string prefix of 'ck2', but neither directory contains the other.
    reject_output_over_inputs(tmp_path / "ck", [("--checkpoint", tmp_path / "ck2"),
                                                ("--previous", None)])
