"""Reading a trained checkpoint and the probe set file (numpy; torch only on demand).

A checkpoint directory, as ``mbd-cert train`` writes it, contains ``model.safetensors``,
``config.json`` (``{"architecture", "architecture_version", "config"}``) and
``probe.safetensors``. It may also contain ``eval.safetensors``: held-out samples in the
probe layout, used for utility metrics.

Stability: internal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbd_cert import _json, _safetensors
from mbd_cert.errors import FileMissing, MalformedData

PROBE_FORMAT = "mbd-cert-probe/1"
MAX_CONFIG_BYTES = 1024 * 1024
# Caps the per-sample gradient loops of issue and level-2 verification (SPEC.md, R-LIM-3).
MAX_PROBE_SAMPLES = 100_000
# Labels are sentiment scores on the CMU scale [-3, 3] (SPEC.md, R-PRB-3). The corpus
# loaders of trainer/ and the metrics of mbd_cert.metrics use the same scale.
LABEL_BOUND = 3.0
# The smallest probe set that issue accepts (SPEC.md, R-PRB-4). Level 3's membership
# probe needs 10 members and 10 non-members (verify_leakage.MIN_GROUP). A unit test
# keeps the two equal, because verify_leakage imports torch.
MIN_ISSUE_PROBE_SAMPLES = 20
# The 'modalities' metadata value is a short JSON list of names, and 64 KiB leaves
# room for hundreds of long names.
MAX_MODALITIES_BYTES = 64 * 1024


@dataclass
class ProbeSet:
    """Samples in the probe layout (SPEC.md, section 4.4).

    Attributes:
        modalities: Modality names, in the column order of ``present``.
        inputs: Modality -> float32 array [n, T, d].
        present: bool [n, M]; True where the modality was observed.
        label: float32 [n].
        member: bool [n]; True for samples of the training split.
        attributes: Optional integer labels per sample, such as ``audio_private``.
    """

    modalities: list[str]
    inputs: dict[str, np.ndarray]
    present: np.ndarray
    label: np.ndarray
    member: np.ndarray
    attributes: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Number of samples."""
        return int(self.label.shape[0])


# The members of a checkpoint's config.json (see the module docstring).
_CONFIG_MEMBERS = frozenset({"architecture", "architecture_version", "config"})


def read_config(path: Path) -> dict[str, Any]:
    """Read a checkpoint's ``config.json`` strictly.

    Raises:
        FileMissing: The file does not exist.
        MalformedData: It is not an object with ``architecture`` and ``config``.
    """
    data = _json.read_json_file(path, what="checkpoint config", max_bytes=MAX_CONFIG_BYTES)
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise MalformedData(
            f"{path}: expected an object with 'architecture' and 'config' members",
            hint="pass a checkpoint directory written by 'mbd-cert train'",
        )
    if not isinstance(data.get("architecture"), str):
        raise MalformedData(f"{path}: 'architecture' must be a string naming the architecture")
    unknown = sorted(set(data) - _CONFIG_MEMBERS)
    if unknown:
        # A key this release does not read could be meant for another one; certifying
        # the model without it would misstate what was certified.
        raise MalformedData(
            f"{path}: unknown member(s) {unknown[:5]}; a checkpoint config has only "
            f"{sorted(_CONFIG_MEMBERS)}",
            hint="pass a checkpoint directory written by 'mbd-cert train', or remove the "
            "members",
        )
    return data


def read_tensors(path: Path, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Read tensors of a safetensors file through the strict reader, as numpy copies."""
    header = _safetensors.read_header(path)
    selected = header.tensors if names is None else names
    return {name: np.array(_safetensors.read_tensor(header, name)) for name in selected}


def read_probe_set(path: Path, *, modalities: Sequence[str] | None = None) -> ProbeSet:
    """Read and validate a probe set file.

    Args:
        path: The ``probe.safetensors`` (or ``eval.safetensors``) file.
        modalities: When given, the modality list the architecture expects.

    Raises:
        FileMissing: The file does not exist.
        MalformedSafetensors: The file is not a valid safetensors file.
        MalformedData: A tensor is missing or has the wrong shape or dtype, the file
            contains no sample, or the 'modalities' metadata is not a JSON list of
            distinct names.
        LimitExceeded: The 'modalities' metadata is too large or nests too deep.
    """
    if not path.exists():
        raise FileMissing(f"probe set not found: {path}")
    header = _safetensors.read_header(path)
    return _probe_set(header, lambda name: np.array(_safetensors.read_tensor(header, name)),
                      modalities)


def load_probe_set(
    path: Path, *, modalities: Sequence[str] | None = None
) -> tuple[ProbeSet, _safetensors.FileDigests]:
    """Read a probe set as :func:`read_probe_set` does, in one pass that hashes the file.

    The issuer uses it: the digests describe exactly the bytes the probe set was parsed
    from, so the copy it writes can be compared with them.

    Returns:
        The probe set and the digests of the bytes read.

    Raises:
        FileMissing, MalformedSafetensors, MalformedData, LimitExceeded: As
            :func:`read_probe_set`. ``E_SAFETENSORS_CHANGED`` when the file's length
            changed while it was read.
    """
    if not path.exists():
        raise FileMissing(f"probe set not found: {path}")
    loaded = _safetensors.load_file(path, keep=_is_probe_tensor)
    return _probe_set(loaded.header, loaded.tensors.__getitem__, modalities), loaded.digests


def _is_probe_tensor(name: str) -> bool:
    """Return whether the probe layout reads the tensor ``name``."""
    return name in ("label", "present", "member") or name.startswith(("inputs.", "attribute."))


def _probe_set(header: _safetensors.SafetensorsHeader, read: Callable[[str], np.ndarray],
               modalities: Sequence[str] | None) -> ProbeSet:
    """Validate the probe layout of ``header``, reading each tensor with ``read``."""
    what = str(header.path)
    declared = _modalities_from_metadata(header.metadata, what)
    if modalities is not None and list(modalities) != declared:
        raise MalformedData(
            f"{what}: modalities {declared} differ from the model's {list(modalities)}",
            hint="use the probe set written with this checkpoint",
        )

    def tensor(name: str) -> np.ndarray:
        if name not in header.tensors:
            raise MalformedData(f"{what}: tensor '{name}' is missing")
        return read(name)

    label = tensor("label")
    n = _check_shape(label, what, "label", ndim=1, dtype=np.float32)
    if n > MAX_PROBE_SAMPLES:
        raise MalformedData(f"{what}: {n} samples, more than the cap of {MAX_PROBE_SAMPLES}")
    # Saliency scores, the update and the leakage probes are means over the samples, so
    # a probe set without samples certifies nothing (SPEC.md, R-PRB-1).
    if n == 0:
        raise MalformedData(
            f"{what}: tensor 'label' has 0 rows; a probe set needs at least 1 sample",
            hint="use the probe set written with this checkpoint by 'mbd-cert train'",
        )
    if not np.all(np.isfinite(label)):
        raise MalformedData(f"{what}: tensor 'label' contains NaN or infinite values")
    present = tensor("present")
    _check_shape(present, what, "present", ndim=2, dtype=np.uint8, rows=n, cols=len(declared))
    member = tensor("member")
    _check_shape(member, what, "member", ndim=1, dtype=np.uint8, rows=n)
    for name, values in (("present", present), ("member", member)):
        if np.any(values > 1):
            raise MalformedData(f"{what}: tensor '{name}' must hold only 0 and 1")
    inputs = {}
    for modality in declared:
        array = tensor(f"inputs.{modality}")
        _check_shape(array, what, f"inputs.{modality}", ndim=3, dtype=np.float32, rows=n)
        if not np.all(np.isfinite(array)):
            raise MalformedData(f"{what}: tensor 'inputs.{modality}' contains NaN or infinity")
        inputs[modality] = array
    attributes = {}
    for name in header.tensors:
        if name.startswith("attribute."):
            values = tensor(name)
            _check_shape(values, what, name, ndim=1, dtype=np.int64, rows=n)
            attributes[name.removeprefix("attribute.")] = values
    return ProbeSet(
        modalities=declared,
        inputs=inputs,
        present=present.astype(bool),
        label=label,
        member=member.astype(bool),
        attributes=attributes,
    )


def _modalities_from_metadata(metadata: Mapping[str, str], what: str) -> list[str]:
    if metadata.get("format") != PROBE_FORMAT:
        raise MalformedData(
            f"{what}: metadata 'format' is {metadata.get('format')!r}, expected {PROBE_FORMAT!r}",
            hint="write the probe set with 'mbd-cert train'",
        )
    text = metadata.get("modalities")
    if text is None:
        raise MalformedData(f"{what}: metadata 'modalities' is missing",
                            hint="write the probe set with 'mbd-cert train'")
    # The strict parser caps nesting before parsing: json.loads would recurse once per
    # '[' of a crafted value and raise RecursionError (SPEC.md, R-PRB-2).
    # A lone surrogate passes through encode() so that the parser rejects it by name.
    declared = _json.load_json_strict(
        text.encode("utf-8", errors="surrogatepass"),
        what=f"{what}: metadata 'modalities'",
        max_bytes=MAX_MODALITIES_BYTES,
        error_class=MalformedData,
    )
    if (
        not isinstance(declared, list)
        or not declared
        or not all(isinstance(m, str) for m in declared)
        or len(set(declared)) != len(declared)
    ):
        raise MalformedData(f"{what}: metadata 'modalities' must be a list of distinct names")
    return declared


def _check_shape(
    array: np.ndarray,
    what: str,
    name: str,
    *,
    ndim: int,
    dtype: type,
    rows: int | None = None,
    cols: int | None = None,
) -> int:
    if array.ndim != ndim or array.dtype != np.dtype(dtype):
        raise MalformedData(
            f"{what}: tensor '{name}' has dtype {array.dtype} and {array.ndim} dimensions, "
            f"expected {np.dtype(dtype)} with {ndim}"
        )
    if rows is not None and array.shape[0] != rows:
        raise MalformedData(f"{what}: tensor '{name}' has {array.shape[0]} rows, expected {rows}")
    if cols is not None and array.shape[1] != cols:
        raise MalformedData(
            f"{what}: tensor '{name}' has {array.shape[1]} columns, expected {cols}"
        )
    return int(array.shape[0])
