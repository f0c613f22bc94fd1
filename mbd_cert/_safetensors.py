"""Strict safetensors reading, digests and writing (one import point).

The implementation is split by concern into six modules:

* :mod:`mbd_cert._safetensors_header` parses and validates the JSON header.
* :mod:`mbd_cert._safetensors_read` reads files and tensors.
* :mod:`mbd_cert._safetensors_digest` defines the digests that certificates commit to.
* :mod:`mbd_cert._safetensors_scan` computes all digests of a file in parallel.
* :mod:`mbd_cert._safetensors_load` reads a whole file once for the issuer, hashing
  the bytes it parses.
* :mod:`mbd_cert._safetensors_write` writes files for the issuer.
Other mbd-cert modules import from here only.

No function here imports torch or unpickles anything. Every reader error is an
:class:`~mbd_cert.errors.InputError` subclass (exit code 2): mostly
:class:`~mbd_cert.errors.MalformedSafetensors`, and
:class:`~mbd_cert.errors.LimitExceeded` for mbd-cert's own caps.

Stability: private module; the names in ``__all__`` are used across mbd-cert and
change only together with their callers.
"""

from __future__ import annotations

from mbd_cert._safetensors_digest import (
    CHUNK_BYTES,
    DIGEST_PREFIX,
    FileDigests,
    TensorDigest,
    build_manifest,
    digest_manifest,
    file_digest,
    manifest,
    manifest_digest,
    tensor_digest,
)
from mbd_cert._safetensors_header import (
    DTYPES,
    MAX_DIM,
    MAX_HEADER_BYTES,
    MAX_RANK,
    MAX_TENSOR_NAME_BYTES,
    MAX_TENSORS,
    DtypeInfo,
    TensorInfo,
)
from mbd_cert._safetensors_load import LoadedFile, check_unchanged, load_file
from mbd_cert._safetensors_read import (
    SafetensorsHeader,
    count_nonzero_entries,
    iter_tensors,
    read_header,
    read_header_bytes,
    read_tensor,
)
from mbd_cert._safetensors_scan import Progress, digest_file
from mbd_cert._safetensors_write import canonical_header_bytes, write_safetensors

__all__ = [
    "CHUNK_BYTES",
    "DIGEST_PREFIX",
    "DTYPES",
    "MAX_DIM",
    "MAX_HEADER_BYTES",
    "MAX_RANK",
    "MAX_TENSORS",
    "MAX_TENSOR_NAME_BYTES",
    "DtypeInfo",
    "FileDigests",
    "LoadedFile",
    "Progress",
    "SafetensorsHeader",
    "count_nonzero_entries",
    "TensorDigest",
    "TensorInfo",
    "build_manifest",
    "check_unchanged",
    "digest_file",
    "digest_manifest",
    "file_digest",
    "iter_tensors",
    "load_file",
    "manifest",
    "manifest_digest",
    "read_header",
    "read_header_bytes",
    "read_tensor",
    "tensor_digest",
    "canonical_header_bytes",
    "write_safetensors",
]
