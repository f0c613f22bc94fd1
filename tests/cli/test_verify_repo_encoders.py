"""verify-repo finds the deleted encoder's tensors in any repository file (R-REPO-12).

Each evasion of the whole-file match of R-REPO-9 is built from the honest
checkpoint's model, the deletion's pre-deletion model, which still contains the
audio encoder.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pytest
from cli_support import HonestRun, IssuerKeys, Outcome, run_cli
from safetensors.numpy import load_file, save_file

AUDIO = "encoders.audio."
CHECK = "deleted-encoder"
CODE = "E_DELETED_ENCODER_PUBLISHED"


def _repo(run: HonestRun, root: Path, names: tuple[str, ...] = ("cert.json",
                                                                 "model.safetensors")) -> Path:
    (root / "models").mkdir(parents=True)
    for name in names:
        shutil.copy(run.out_dir / name, root / "models" / name)
    return root


def _pre_deletion(run: HonestRun) -> dict[str, np.ndarray]:
    return load_file(run.checkpoint / "model.safetensors")


def _audio(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: value for name, value in tensors.items() if name.startswith(AUDIO)}


def _verify(root: Path, keys: IssuerKeys, *extra: object) -> Outcome:
    outcome = run_cli(["verify-repo", root, "--key", keys.public, "--json", *extra])
    assert "Traceback" not in outcome.stderr
    assert outcome.report is not None, outcome.stderr
    return outcome


def _unsearched_detail(outcome: Outcome, reason: str) -> str:
    """Check that the run failed only as unsearched for ``reason``; return the detail."""
    assert outcome.exit_code == 1, outcome.stderr
    assert outcome.failed_codes == {"unsearched-file": "E_SCAN_INCOMPLETE"}
    detail = outcome.check_detail("unsearched-file")
    assert detail.startswith(f"cannot search file backup.safetensors ({reason}) ")
    assert "hostile archive" not in detail
    return detail


def _checks(outcome: Outcome) -> dict[str, dict[str, Any]]:
    """Return the checks of the run's only certificate, by name."""
    assert outcome.report is not None
    [result] = outcome.report["results"]
    return {check["name"]: check for check in result["report"]["checks"]}


def _encoder_check(root: Path, keys: IssuerKeys) -> dict[str, Any]:
    """Run verify-repo on ``root``, expect exit 1 from R-REPO-12 alone, return its check."""
    outcome = _verify(root, keys)
    assert outcome.exit_code == 1, outcome.stderr
    checks = _checks(outcome)
    failed = {name for name, check in checks.items() if check["status"] == "fail"}
    assert failed == {CHECK}
    assert checks[CHECK]["code"] == CODE
    assert checks[CHECK]["requirement"] == "R-REPO-12"
    return checks[CHECK]


def test_honest_repository_with_bundle_passes(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                              tmp_path: Path):
    # The diff contains minus each removed tensor, but in float64, so other bytes. The
    # probe and evaluation sets contain inputs, not weights.
    root = _repo(honest_run, tmp_path / "repo", ("cert.json", "model.safetensors",
                                                 "diff.safetensors", "probe.safetensors",
                                                 "eval.safetensors"))
    outcome = _verify(root, issuer_keys)
    assert outcome.exit_code == 0, outcome.stderr
    assert CHECK not in _checks(outcome)
    assert outcome.report is not None
    assert outcome.report["checks"] == []


def _resaved(run: HonestRun, path: Path) -> None:
    save_file(_pre_deletion(run), str(path), metadata={"note": "re-saved"})


def _one_weight_changed(run: HonestRun, path: Path) -> None:
    tensors = _pre_deletion(run)
    tensors["fusion.0.bias"] = tensors["fusion.0.bias"] + np.float32(1)
    save_file(tensors, str(path))


def _renamed(run: HonestRun, path: Path) -> None:
    save_file({f"backbone.{name}": value for name, value in _pre_deletion(run).items()},
              str(path))


def _npz(run: HonestRun, path: Path) -> None:
    with path.open("wb") as handle:
        np.savez(handle, *_audio(_pre_deletion(run)).values())


def _npz_compressed(run: HonestRun, path: Path) -> None:
    with path.open("wb") as handle:
        np.savez_compressed(handle, **{name.replace(".", "_"): value for name, value
                                       in _pre_deletion(run).items()})


def _npy(run: HonestRun, path: Path) -> None:
    with path.open("wb") as handle:
        np.save(handle, _pre_deletion(run)[AUDIO + "proj.weight"])


def _raw(run: HonestRun, path: Path) -> None:
    path.write_bytes(_pre_deletion(run)[AUDIO + "proj.weight"].tobytes())


def _torch_save(run: HonestRun, path: Path) -> None:
    import torch

    torch.save({name: torch.from_numpy(value) for name, value in _pre_deletion(run).items()},
               path)


def _encoder_only(run: HonestRun, path: Path) -> None:
    save_file(_audio(_pre_deletion(run)), str(path))


EVASIONS: dict[str, tuple[Callable[[HonestRun, Path], None], str, str]] = {
    # name: (writer, file, where the first copy lies)
    "resaved": (_resaved, "backup/model.safetensors", "tensor 'encoders.audio."),
    "one-weight-changed": (_one_weight_changed, "model-v0.safetensors",
                           "tensor 'encoders.audio."),
    "renamed": (_renamed, "weights.safetensors", "tensor 'backbone.encoders.audio."),
    "npz": (_npz, "encoder.npz", "member 'arr_0.npy' (array data) contains"),
    "npz-compressed": (_npz_compressed, "weights.npz", "member 'encoders_audio_"),
    "npy-odd-name": (_npy, "notes.txt", "notes.txt: array data contains"),
    "raw-bytes": (_raw, "blob", "blob: the whole file contains"),
    "torch-save": (_torch_save, "checkpoint.pt", "member 'checkpoint/data/"),
    "encoder-only-hidden": (_encoder_only, ".cache/x/enc.bin", "tensor 'encoders.audio."),
}


@pytest.mark.parametrize("evasion", list(EVASIONS))
def test_encoder_copy_found(honest_run: HonestRun, issuer_keys: IssuerKeys, tmp_path: Path,
                            evasion: str):
    """R-REPO-12: each way past R-REPO-9's whole-file match still fails the certificate."""
    write, name, where = EVASIONS[evasion]
    root = _repo(honest_run, tmp_path / "repo")
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    write(honest_run, root / name)

    check = _encoder_check(root, issuer_keys)

    detail = check["detail"]
    assert detail.startswith(f"{name}: ")
    assert where in detail
    assert f"contains the bytes of '{AUDIO}" in detail
    assert "of the audio encoder that this deletion removed" in detail
    assert "Delete the file or move it out of the repository" in detail
    assert check["value"] >= 1


def test_pre_deletion_model_reported_once(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                          tmp_path: Path):
    # R-REPO-9 reports the unchanged model, with the same advice.
    root = _repo(honest_run, tmp_path / "repo")
    shutil.copy(honest_run.checkpoint / "model.safetensors", root / "original.safetensors")
    outcome = _verify(root, issuer_keys)
    assert outcome.exit_code == 1, outcome.stderr
    checks = _checks(outcome)
    assert checks["pre-deletion-model"]["status"] == "fail"
    assert CHECK not in checks


def test_strict_mode_reports_encoder_copy_once(honest_run: HonestRun,
                                               issuer_keys: IssuerKeys, tmp_path: Path):
    # A model file without a certificate, but R-REPO-12's advice is the one that applies.
    root = _repo(honest_run, tmp_path / "repo")
    _resaved(honest_run, root / "copy.safetensors")
    outcome = _verify(root, issuer_keys, "--strict")
    assert outcome.exit_code == 1, outcome.stderr
    assert _checks(outcome)[CHECK]["status"] == "fail"
    assert outcome.failed_codes == {}


def test_json_and_junit_carry_the_check(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                        tmp_path: Path):
    root = _repo(honest_run, tmp_path / "repo")
    _encoder_only(honest_run, root / "enc.safetensors")
    junit = tmp_path / "junit.xml"
    outcome = _verify(root, issuer_keys, "--junit", junit)
    assert outcome.exit_code == 1, outcome.stderr
    assert outcome.report is not None
    [result] = outcome.report["results"]
    assert result["exit_code"] == 1
    assert f"verification failed: models/cert.json: {CHECK} [{CODE}]" in outcome.stderr
    [suite] = ElementTree.parse(junit).getroot().findall("testsuite")
    failures = [case.find("failure") for case in suite.findall("testcase")
                if case.get("name") == CHECK]
    assert len(failures) == 1
    assert failures[0] is not None
    assert failures[0].get("type") == CODE


def test_encoder_of_earlier_deletion_found(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                           tmp_path: Path):
    """R-REPO-12: the audio encoder that deletion 1 removed fails deletion 2's certificate."""
    second = tmp_path / "second"
    issued = run_cli(["issue", "--checkpoint", honest_run.out_dir, "--modality", "vision",
                      "--epsilon", "1", "--steps", "2", "--key", issuer_keys.private,
                      "--out", second])
    assert issued.exit_code == 0, issued.stderr
    root = tmp_path / "repo"
    (root / "models").mkdir(parents=True)
    for name in ["cert.json", "model.safetensors", "chain-00001.json"]:
        shutil.copy(second / name, root / "models" / name)
    assert _verify(root, issuer_keys).exit_code == 0
    _npz(honest_run, root / "old.npz")

    check = _encoder_check(root, issuer_keys)

    first_id = honest_run.load_cert()["certificate_id"]
    assert (f"of the audio encoder that deletion 1 of this chain (certificate {first_id}) "
            "removed") in check["detail"]


def test_certificate_not_verified_gets_warning(honest_run: HonestRun,
                                               issuer_keys: IssuerKeys, tmp_path: Path):
    # The model is missing, so verification stops (exit 2) and the copy is a warning.
    root = _repo(honest_run, tmp_path / "repo", ("cert.json",))
    _encoder_only(honest_run, root / "enc.safetensors")
    outcome = _verify(root, issuer_keys)
    assert outcome.exit_code == 2, outcome.stderr
    assert outcome.report is not None
    [result] = outcome.report["results"]
    [warning] = result["warnings"]
    assert warning.startswith("enc.safetensors: tensor ")


def _audio_lengths(run: HonestRun) -> list[int]:
    return sorted({value.nbytes for value in _audio(_pre_deletion(run)).values()})


def test_zip_bomb_fails_as_unsearched(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from mbd_cert import _zip_spans

    # A smaller allowance keeps the test fast, and the expansion limit is the same.
    monkeypatch.setattr(_zip_spans, "DECOMPRESSED_ALLOWANCE", 1024 * 1024)
    root = _repo(honest_run, tmp_path / "repo")
    # One safetensors member whose only searched tensor lies after 4 MiB of zeros: the
    # search decompresses them to get there, from an archive of a few kilobytes.
    length = _audio_lengths(honest_run)[-1]
    skipped = 4 * 1024 * 1024
    header = json.dumps({"t": {"dtype": "U8", "shape": [length],
                               "data_offsets": [skipped, skipped + length]}}).encode()
    member = struct.pack("<Q", len(header)) + header + bytes(skipped + length)
    with zipfile.ZipFile(root / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.safetensors", member)
    assert (root / "bomb.zip").stat().st_size < 16 * 1024
    junit = tmp_path / "junit.xml"

    started = time.monotonic()
    outcome = _verify(root, issuer_keys, "--junit", junit)

    assert time.monotonic() - started < 60
    assert outcome.exit_code == 1, outcome.stderr
    assert outcome.failed_codes == {"unsearched-file": "E_SCAN_INCOMPLETE"}
    detail = outcome.check_detail("unsearched-file")
    assert detail.startswith("cannot search file bomb.zip (zip members that decompress to "
                             "more than ")
    assert detail.endswith("Move it out of the repository")
    suites = {suite.get("name"): suite for suite in ElementTree.parse(junit).getroot()}
    [failure] = suites["verify-repo"].findall("testcase/failure")
    assert failure.get("type") == "E_SCAN_INCOMPLETE"


def _end_record(members: int, directory_size: int, directory_offset: int) -> bytes:
    return struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, members, members, directory_size,
                       directory_offset, 0)


def test_central_directory_over_limit(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                      tmp_path: Path):
    from mbd_cert._zip_spans import MAX_CENTRAL_DIRECTORY

    root = _repo(honest_run, tmp_path / "repo")
    size = MAX_CENTRAL_DIRECTORY + 1
    # Only the end record is read before the limit applies, so zipfile never parses the
    # directory of zeros.
    (root / "large.zip").write_bytes(bytes(size) + _end_record(10, size, 0))
    zip64 = _end_record(0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 10**6, 10**6,
                         size, 0)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, 0, 1)
    (root / "zip64.bin").write_bytes(bytes(size) + record + locator + zip64)
    # A directory larger than its file is malformed, not over a limit.
    (root / "corrupt.zip").write_bytes(b"PK\x03\x04" + bytes(26) + _end_record(10, 2**31, 0))

    outcome = _verify(root, issuer_keys)

    assert outcome.exit_code == 1, outcome.stderr
    assert outcome.failed_codes == {"unsearched-file": "E_SCAN_INCOMPLETE"}
    detail = outcome.check_detail("unsearched-file")
    reason = f"(a zip central directory of {size} bytes, over the search's limit of " \
        f"{MAX_CENTRAL_DIRECTORY})"
    assert detail.startswith(f"cannot search files large.zip {reason}, zip64.bin {reason} ")
    assert "corrupt.zip" not in detail


def _member_sized(length: int, declared: int) -> bytes:
    """Return a zip archive of one stored member whose central directory claims ``declared``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data/0", bytes(range(256)) * (length // 256) + bytes(length % 256))
    data = bytearray(buffer.getvalue())
    directory = data.rfind(b"PK\x01\x02")
    struct.pack_into("<L", data, directory + 24, declared)
    return bytes(data)


def test_malformed_files_are_no_match(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                      tmp_path: Path):
    root = _repo(honest_run, tmp_path / "repo")
    whole = io.BytesIO()
    _torch_like(honest_run, whole)
    archive = whole.getvalue()
    length = _audio_lengths(honest_run)[-1]
    files = {
        # A torch archive cut in the middle: no end record, so no archive.
        "truncated.pt": archive[: len(archive) // 2],
        # A member whose declared size is huge, or the searched length but the data short.
        "huge-member.zip": _member_sized(100, 2**32 - 2),
        "short-member.zip": _member_sized(100, length),
        "bad-header.npy": b"\x93NUMPY\x01\x00\xff\xff{'descr': '<f4'" + bytes(length),
        "bad-version.npy": b"\x93NUMPY\x09\x00\x10\x00" + bytes(length + 16),
        "bad-header.safetensors": struct.pack("<Q", 12) + b"{not json!!}" + bytes(length),
        "deep.safetensors": _nested_header(100_000, length),
        "offsets.safetensors": _offsets_header(length),
        "empty": b"",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)

    started = time.monotonic()
    outcome = _verify(root, issuer_keys)

    assert time.monotonic() - started < 60
    assert outcome.exit_code == 0, outcome.stderr
    assert CHECK not in _checks(outcome)
    # The files are there to be searched, so the search found and skipped them.
    assert outcome.report is not None
    assert outcome.report["checks"] == []


def _torch_like(run: HonestRun, handle: io.BytesIO) -> None:
    with zipfile.ZipFile(handle, "w") as archive:
        for number, value in enumerate(_audio(_pre_deletion(run)).values()):
            archive.writestr(f"archive/data/{number}", value.tobytes())


def _nested_header(depth: int, length: int) -> bytes:
    header = b"{" + b'"a":' + b"[" * depth + b"]" * depth + b"}"
    return struct.pack("<Q", len(header)) + header + bytes(length)


def _offsets_header(length: int) -> bytes:
    # Entries of the searched length that point past the data, backwards or overlap.
    entries = {f"t{number}": {"dtype": "U8", "shape": [length], "data_offsets": offsets}
               for number, offsets in enumerate([[0, length], [1, length + 1],
                                                 [length * 9, length * 10],
                                                 [-length, 0], [True, length + 1]])}
    header = json.dumps(entries).encode()
    return struct.pack("<Q", len(header)) + header + bytes(length + 1)


def test_forked_release_keeps_other_encoder(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                            tmp_path: Path):
    """R-REPO-12: two first deletions of one model each publish what the other deleted.

    The audio deletion's model keeps the vision encoder as it was, and the vision
    deletion's model keeps the audio encoder, so each release undoes the other.
    """
    vision = tmp_path / "vision-release"
    issued = run_cli(["issue", "--checkpoint", honest_run.checkpoint, "--modality", "vision",
                      "--epsilon", "1", "--steps", "2", "--key", issuer_keys.private,
                      "--out", vision])
    assert issued.exit_code == 0, issued.stderr
    root = tmp_path / "repo"
    for directory, source in (("audio", honest_run.out_dir), ("vision", vision)):
        (root / directory).mkdir(parents=True)
        for name in ("cert.json", "model.safetensors"):
            shutil.copy(source / name, root / directory / name)

    outcome = _verify(root, issuer_keys)

    assert outcome.exit_code == 1, outcome.stderr
    assert outcome.report is not None
    details = {}
    for result in outcome.report["results"]:
        [check] = [c for c in result["report"]["checks"] if c["status"] == "fail"]
        assert check["name"] == CHECK
        details[result["certificate"]] = check["detail"]
    assert details["audio/cert.json"].startswith("vision/model.safetensors: tensor "
                                                 "'encoders.audio.")
    assert details["vision/cert.json"].startswith("audio/model.safetensors: tensor "
                                                  "'encoders.vision.")


def test_unopenable_file_fails_as_unsearched(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """R-REPO-12: a file the run cannot open could contain the encoder, so the run fails.

    The permission error is injected, because root opens any file.
    """
    import os

    root = _repo(honest_run, tmp_path / "repo")
    copy = root / "backup.safetensors"
    save_file(_audio(_pre_deletion(honest_run)), copy)
    real_open = os.open

    def denying_open(path: Any, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path) == os.fspath(copy):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", denying_open)
    outcome = _verify(root, issuer_keys)

    detail = _unsearched_detail(outcome, "cannot be opened: Permission denied")
    assert detail.endswith("Make it readable to the user who runs verify-repo, or move it "
                           "out of the repository")


def test_file_whose_read_fails_fails_as_unsearched(honest_run: HonestRun,
                                                    issuer_keys: IssuerKeys, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch):
    """R-REPO-12: a file whose read fails partway was not searched, so the run fails.

    The storage fault is injected: every read of the copy after its first one raises.
    """
    import io
    import os

    root = _repo(honest_run, tmp_path / "repo")
    copy = root / "backup.safetensors"
    save_file(_audio(_pre_deletion(honest_run)), copy)
    real_fdopen = os.fdopen

    class FailingReader(io.BufferedReader):
        reads = 0

        def read(self, size: int | None = -1, /) -> bytes:
            self.reads += 1
            if self.reads > 1:
                raise OSError(5, "Input/output error")
            return super().read(size)

    def failing_fdopen(descriptor: int, *args: Any, **kwargs: Any) -> Any:
        if os.fstat(descriptor).st_ino == copy.stat().st_ino:
            return FailingReader(io.FileIO(descriptor, "rb"))
        return real_fdopen(descriptor, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", failing_fdopen)
    outcome = _verify(root, issuer_keys)

    detail = _unsearched_detail(outcome, "read failed: Input/output error")
    assert detail.endswith("Fix the storage fault that stopped the read, or move it out of "
                           "the repository")


def test_first_read_fault_fails_as_unsearched(honest_run: HonestRun, issuer_keys: IssuerKeys,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """R-REPO-12: a fault in the first reads, which tell the layout, fails the run too."""
    import os

    root = _repo(honest_run, tmp_path / "repo")
    copy = root / "backup.safetensors"
    save_file(_audio(_pre_deletion(honest_run)), copy)
    real_pread = os.pread

    def failing_pread(descriptor: int, *args: Any) -> bytes:
        if os.fstat(descriptor).st_ino == copy.stat().st_ino:
            raise OSError(5, "Input/output error")
        return real_pread(descriptor, *args)

    monkeypatch.setattr(os, "pread", failing_pread)
    outcome = _verify(root, issuer_keys)

    _unsearched_detail(outcome, "read failed: Input/output error")
