"""Parallel computation of all digests of one safetensors file.

Stability: private module. Import :func:`digest_file` from
:mod:`mbd_cert._safetensors`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from mbd_cert._safetensors_digest import (
    FileDigests,
    TensorDigest,
    build_manifest,
    digest_manifest,
    format_digest,
    hash_span,
)
from mbd_cert._safetensors_read import (
    SafetensorsHeader,
    TensorInfo,
    open_checked,
    read_header,
)
from mbd_cert.errors import InputError

__all__ = ["Progress", "digest_file"]

# Small tensors are hashed in batches of about this many bytes per worker task, so
# a file with many tiny tensors does not pay one task per tensor.
_BATCH_BYTES = 16 * 1024 * 1024
# Default worker count: parallel hashing stops scaling once storage is the bottleneck.
_MAX_DEFAULT_WORKERS = 8
# Files up to this size are hashed in the calling thread by default. At about 1 GB/s
# that takes a few milliseconds. For the default model's 0.4 MB file, starting and
# joining a thread pool inside `issue` took longer than the hashing itself.
_SERIAL_BYTES = 8 * 1024 * 1024

Progress = Callable[[int, int], None]


def _batches(header: SafetensorsHeader) -> list[list[TensorInfo]]:
    """Group consecutive tensors into tasks of about _BATCH_BYTES each."""
    batches: list[list[TensorInfo]] = []
    current: list[TensorInfo] = []
    size = 0
    for info in header.tensors.values():
        current.append(info)
        size += info.nbytes
        if size >= _BATCH_BYTES:
            batches.append(current)
            current, size = [], 0
    if current:
        batches.append(current)
    return batches


def _hash_batch(header: SafetensorsHeader, batch: list[TensorInfo],
                nonfinite: dict[str, int] | None) -> dict[str, str]:
    with open_checked(header) as handle:
        start = header.data_start + batch[0].begin
        stop = header.data_start + batch[-1].end
        return hash_span(handle, header, start, stop, batch, None, nonfinite)


def _hash_whole(header: SafetensorsHeader) -> str:
    with open_checked(header) as handle:
        whole = hashlib.sha256()
        hash_span(handle, header, 0, header.file_size, [], whole)
        return format_digest(whole)


def _check_workers(workers: int | None) -> None:
    if workers is not None and (type(workers) is not int or workers < 1):
        raise InputError(f"workers must be an integer >= 1, got {workers!r}",
                         code="E_PARAMETER_INVALID")


def _default_workers(file_size: int) -> int:
    if file_size <= _SERIAL_BYTES:
        return 1
    return max(1, min(_MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


def digest_file(path: str | os.PathLike[str], *, workers: int | None = None,
                progress: Progress | None = None,
                with_file_digest: bool = True,
                count_nonfinite: bool = False) -> FileDigests:
    """Validate a safetensors file and compute all its digests.

    With one worker the file is read once, feeding the file digest and the tensor
    digests together. With more, batches of tensors are hashed in a thread pool and
    the file digest is one more task (a single SHA-256 stream, so it bounds the
    wall time when requested).

    Args:
        path: The safetensors file.
        workers: Threads to use; default 1 for a file of at most 8 MiB, otherwise
            ``min(8, os.cpu_count())``.
        progress: Called in the calling thread as ``progress(done, total)`` in bytes
            after each task finishes. With one worker the whole file is one task.
        with_file_digest: Also compute the whole-file digest.
        count_nonfinite: Also count the NaN and infinite entries of each
            floating-point tensor (``FileDigests.nonfinite``), in the same read.

    Returns:
        The :class:`FileDigests`.

    Raises:
        MalformedSafetensors: The file is not valid (see :func:`read_header`) or
            changed while it was hashed (``E_SAFETENSORS_CHANGED``).
        LimitExceeded: As :func:`read_header`.
        FileMissing: The file does not exist.
        InputError: ``E_FILE_UNREADABLE`` when it cannot be read, and
            ``E_PARAMETER_INVALID`` for a bad ``workers`` value.
    """
    _check_workers(workers)
    header = read_header(path)
    count = workers if workers is not None else _default_workers(header.file_size)
    data_bytes = header.file_size - header.data_start
    total = data_bytes + (header.file_size if with_file_digest else 0)
    whole_digest: str | None = None
    digests: dict[str, str] = {}
    # Workers write disjoint keys; a dict item assignment is atomic under the GIL.
    nonfinite: dict[str, int] | None = {} if count_nonfinite else None

    if count == 1:
        whole = hashlib.sha256() if with_file_digest else None
        with open_checked(header) as handle:
            start = 0 if whole is not None else header.data_start
            digests = hash_span(handle, header, start, header.file_size,
                                 list(header.tensors.values()), whole, nonfinite)
        whole_digest = None if whole is None else format_digest(whole)
        if progress is not None:
            progress(total, total)
    else:
        whole_digest, digests = _digest_parallel(header, count, progress, total,
                                                 with_file_digest, nonfinite)

    # A file replaced during hashing would mix two versions, so check it once more.
    open_checked(header).close()
    tensors = {name: TensorDigest(info.dtype, info.shape, digests[name])
               for name, info in header.tensors.items()}
    return FileDigests(
        file_digest=whole_digest,
        manifest_digest=digest_manifest(build_manifest(header.metadata, tensors)),
        tensors=tensors,
        metadata=dict(header.metadata),
        nonfinite=nonfinite,
    )


def _digest_parallel(header: SafetensorsHeader, workers: int, progress: Progress | None,
                     total: int, with_file_digest: bool,
                     nonfinite: dict[str, int] | None) -> tuple[str | None, dict[str, str]]:
    digests: dict[str, str] = {}
    whole_digest: str | None = None
    done = 0
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mbd-digest")
    try:
        # Submitted first because it is the longest task.
        whole_future: Future[Any] | None = None
        if with_file_digest:
            whole_future = executor.submit(_hash_whole, header)
        sizes: dict[Future[Any], int] = {}
        if whole_future is not None:
            sizes[whole_future] = header.file_size
        for batch in _batches(header):
            submitted = executor.submit(_hash_batch, header, batch, nonfinite)
            sizes[submitted] = batch[-1].end - batch[0].begin
        pending: set[Future[Any]] = set(sizes)
        while pending:
            # FIRST_COMPLETED, so that progress is reported as each task ends. With
            # FIRST_EXCEPTION, wait() returns only when every task has ended unless one
            # fails. A failed task re-raises below, which ends the loop.
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for task in finished:
                result = task.result()  # re-raises a worker's exception
                if task is whole_future:
                    whole_digest = result
                else:
                    digests.update(result)
                done += sizes[task]
                if progress is not None:
                    progress(done, total)
    finally:
        # On an error or KeyboardInterrupt, drop queued tasks instead of finishing them.
        executor.shutdown(wait=True, cancel_futures=True)
    return whole_digest, digests
