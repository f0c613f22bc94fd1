"""Parsing and validation of the JSON header of a safetensors file.

Stability: private module. The caps below are part of mbd-cert's documented input
limits; raising one is a compatible change, lowering one is not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mbd_cert.errors import LimitExceeded, MalformedSafetensors

__all__ = [
    "DTYPES",
    "MAX_DIM",
    "MAX_HEADER_BRACKETS",
    "MAX_HEADER_QUOTES",
    "MAX_HEADER_BYTES",
    "MAX_RANK",
    "MAX_TENSORS",
    "MAX_TENSOR_NAME_BYTES",
    "DtypeInfo",
    "TensorInfo",
    "parse_header",
]

# The reference reader (safetensors crate, MAX_HEADER_SIZE) rejects longer headers.
MAX_HEADER_BYTES = 100_000_000
# mbd-cert's own caps. The models it certifies have a few thousand tensors with short
# names; the caps keep a hostile header from making the parser allocate gigabytes.
MAX_TENSORS = 100_000
MAX_TENSOR_NAME_BYTES = 1024
# numpy 1.x arrays have at most 32 dimensions (NPY_MAXDIMS).
MAX_RANK = 32
# Largest integer that RFC 8785 canonical JSON (I-JSON) represents exactly, so every
# shape can go into a manifest.
MAX_DIM = 2**53 - 1
# numpy refuses to create any array, an empty one included, whose nonzero dimensions
# times the item size exceed its index type (2**63 - 1 bytes on 64-bit platforms).
MAX_SHAPE_BYTES = 2**63 - 1
# Integers a valid header can hold: the shape and the two offsets of each tensor.
_MAX_INTEGERS = MAX_TENSORS * (MAX_RANK + 2)
# Python's json module builds every list and string before any structural check, so
# 100 MB of "[]," would take gigabytes. A valid header needs two lists and five
# strings per tensor. Bytes inside strings are counted too, which is why the caps
# leave a large allowance for metadata text.
MAX_HEADER_BRACKETS = 2 * MAX_TENSORS + 1_000_000
MAX_HEADER_QUOTES = 10 * MAX_TENSORS + 2_000_000
# Decimal digits of 2**64 - 1, the largest offset the format's u64 fields hold.
_MAX_INTEGER_DIGITS = 20

_ENTRY_FIELDS = ("dtype", "shape", "data_offsets")


@dataclass(frozen=True)
class DtypeInfo:
    """Size and numpy view of one safetensors dtype."""

    itemsize: int
    numpy_dtype: str  # little-endian numpy dtype string used by read_tensor
    rank: int  # position in the reference crate's Dtype enum; its writer sorts on it


# Order of the Dtype enum in the safetensors crate 0.8 without the sub-byte types F4,
# F6_E2M3 and F6_E3M2, which mbd-cert does not support.
_DTYPE_ROWS = [
    ("BOOL", 1, "|b1"), ("U8", 1, "|u1"), ("I8", 1, "|i1"), ("F8_E5M2", 1, "|u1"),
    ("F8_E4M3", 1, "|u1"), ("F8_E8M0", 1, "|u1"), ("F8_E4M3FNUZ", 1, "|u1"),
    ("F8_E5M2FNUZ", 1, "|u1"), ("I16", 2, "<i2"), ("U16", 2, "<u2"), ("F16", 2, "<f2"),
    ("BF16", 2, "<u2"), ("I32", 4, "<i4"), ("U32", 4, "<u4"), ("F32", 4, "<f4"),
    ("C64", 8, "<c8"), ("F64", 8, "<f8"), ("I64", 8, "<i8"), ("U64", 8, "<u8"),
]
DTYPES: dict[str, DtypeInfo] = {
    name: DtypeInfo(itemsize, numpy_dtype, rank)
    for rank, (name, itemsize, numpy_dtype) in enumerate(_DTYPE_ROWS)
}
_SUB_BYTE_DTYPES = frozenset({"F4", "F6_E2M3", "F6_E3M2"})


@dataclass(frozen=True)
class TensorInfo:
    """One tensor entry of a validated header.

    Attributes:
        name: Tensor name.
        dtype: safetensors dtype name, a key of :data:`DTYPES`.
        shape: Dimensions, row-major.
        begin: Start offset in the data section.
        end: End offset (exclusive) in the data section.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return self.end - self.begin


class _JsonObject(list[tuple[str, object]]):
    """A JSON object kept as its list of (key, value) pairs, duplicates included."""


class _HeaderRejected(ValueError):
    """Raised inside the JSON hooks; converted to an mbd-cert error by the caller."""

    def __init__(self, message: str, *, limit: bool = False) -> None:
        super().__init__(message)
        self.limit = limit


def _decode_json(text: str) -> tuple[object, int]:
    """Parse one JSON value at the start of ``text``, keeping duplicate keys."""
    counts = {"objects": 0, "integers": 0}

    def on_object(pairs: list[tuple[str, object]]) -> _JsonObject:
        counts["objects"] += 1
        # A valid header has one object per tensor plus the top level and metadata.
        if counts["objects"] > MAX_TENSORS + 2:
            raise _HeaderRejected(
                f"header has more than {MAX_TENSORS + 2} JSON objects", limit=True
            )
        return _JsonObject(pairs)

    def on_integer(literal: str) -> int:
        counts["integers"] += 1
        if counts["integers"] > _MAX_INTEGERS:
            raise _HeaderRejected(
                f"header has more than {_MAX_INTEGERS} integers", limit=True
            )
        if len(literal.lstrip("-")) > _MAX_INTEGER_DIGITS:
            raise _HeaderRejected(f"integer {literal[:24]}... does not fit in 64 bits")
        return int(literal)

    def on_float(literal: str) -> float:
        raise _HeaderRejected(f"non-integer number {literal[:24]}; expected an integer")

    def on_constant(literal: str) -> float:
        raise _HeaderRejected(f"{literal} is not valid JSON")

    decoder = json.JSONDecoder(
        object_pairs_hook=on_object,
        parse_int=on_integer,
        parse_float=on_float,
        parse_constant=on_constant,
        strict=True,
    )
    return decoder.raw_decode(text)


def _malformed(path: Path, message: str, code: str = "E_SAFETENSORS_MALFORMED",
               hint: str = "the file is corrupt or was not written by a safetensors "
               "writer") -> MalformedSafetensors:
    return MalformedSafetensors(f"{path}: {message}", code=code, hint=hint)


def _check_utf8(path: Path, description: str, text: str) -> None:
    # JSON escapes can encode lone surrogates, which are not Unicode scalar values:
    # they cannot be written as UTF-8, so they cannot go into a manifest either.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _malformed(path, f"{description} {text!r} is not valid Unicode "
                         "(lone surrogate escape)") from exc


def _check_value_counts(raw: bytes, path: Path) -> None:
    for byte, cap in ((b"[", MAX_HEADER_BRACKETS), (b'"', MAX_HEADER_QUOTES)):
        count = raw.count(byte)
        if count > cap:
            raise LimitExceeded(f"{path}: header contains {count} {byte.decode()!r} bytes, "
                                f"more than the maximum of {cap}",
                                hint="the header is too large to certify")


def _load_json(raw: bytes, path: Path) -> _JsonObject:
    _check_value_counts(raw, path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed(path, f"header is not valid UTF-8 (byte {exc.start})") from exc
    if not text.startswith("{"):
        raise _malformed(path, f"header is not a JSON object: it starts with {text[:1]!r}, "
                         "expected '{'")
    try:
        value, end = _decode_json(text)
    except _HeaderRejected as exc:
        if exc.limit:
            raise LimitExceeded(f"{path}: {exc}", hint="the header is too large to "
                                "certify") from exc
        raise _malformed(path, f"invalid header JSON: {exc}") from exc
    except RecursionError as exc:
        # A safetensors header nests three levels at most. Python's own message does
        # not name the file.
        raise _malformed(path, "invalid header JSON: nested too deeply to parse (a "
                         "safetensors header nests at most three levels)") from exc
    except ValueError as exc:
        # Includes json.JSONDecodeError.
        raise _malformed(path, f"invalid header JSON: {exc}") from exc
    # str.count runs at memory speed, where rstrip takes a second on 100 MB of padding.
    if text.count(" ", end) != len(text) - end:
        raise _malformed(path, f"header has non-space bytes after the JSON object "
                         f"(offset {end} of {len(text)}); only spaces may pad it")
    if not isinstance(value, _JsonObject):
        raise _malformed(path, f"header JSON has type {type(value).__name__}; expected an object")
    return value


def _parse_metadata(path: Path, value: object) -> dict[str, str]:
    hint = "metadata must map strings to strings, and no tensor may be named '__metadata__'"
    if not isinstance(value, _JsonObject):
        raise _malformed(path, f"'__metadata__' is {_json_type(value)}; expected an object "
                         "of strings", "E_SAFETENSORS_METADATA", hint)
    metadata: dict[str, str] = {}
    for key, item in value:
        _check_utf8(path, "metadata key", key)
        if key in metadata:
            raise _malformed(path, f"duplicate metadata key {key!r}",
                             "E_SAFETENSORS_DUPLICATE_KEY", hint)
        if not isinstance(item, str):
            raise _malformed(path, f"metadata value for key {key!r} is {_json_type(item)}; "
                             "expected a string", "E_SAFETENSORS_METADATA", hint)
        _check_utf8(path, f"metadata value for key {key!r}", item)
        metadata[key] = item
    return metadata


def _json_type(value: object) -> str:
    if isinstance(value, _JsonObject):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return f"the integer {value}"
    return "null"


def _is_int(value: object) -> bool:
    # bool is a subclass of int, but true/false are not valid dimensions or offsets.
    return type(value) is int


def _parse_entry(path: Path, name: str, value: object) -> TensorInfo:
    tensor = f"tensor {name!r}"
    if not isinstance(value, _JsonObject):
        raise _malformed(path, f"{tensor} is {_json_type(value)}; expected an object "
                         "with dtype, shape and data_offsets")
    fields: dict[str, object] = {}
    for key, item in value:
        if key in fields:
            raise _malformed(path, f"{tensor} has field {key!r} twice",
                             "E_SAFETENSORS_DUPLICATE_KEY")
        if key not in _ENTRY_FIELDS:
            raise _malformed(path, f"{tensor} has unknown field {key!r}; expected only "
                             "dtype, shape and data_offsets")
        fields[key] = item
    for key in _ENTRY_FIELDS:
        if key not in fields:
            raise _malformed(path, f"{tensor} lacks field {key!r}")

    dtype = fields["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        dtype_text = dtype if isinstance(dtype, str) else _json_type(dtype)
        if isinstance(dtype, str) and dtype in _SUB_BYTE_DTYPES:
            reason = "sub-byte dtypes are not supported"
        else:
            reason = "expected one of " + ", ".join(DTYPES)
        raise _malformed(path, f"{tensor} has dtype {dtype_text!r}; {reason}")

    shape = fields["shape"]
    if not isinstance(shape, list) or isinstance(shape, _JsonObject):
        raise _malformed(path, f"{tensor}: the shape is {_json_type(shape)}, not a list "
                          "of dimensions")
    if len(shape) > MAX_RANK:
        raise LimitExceeded(f"{path}: {tensor} has {len(shape)} dimensions, more than "
                            f"the maximum of {MAX_RANK}")
    for dim in shape:
        if not _is_int(dim) or dim < 0:
            raise _malformed(path, f"{tensor} has shape {_shape_text(shape)}; dimensions "
                             "must be non-negative integers")
        if dim > MAX_DIM:
            raise LimitExceeded(f"{path}: {tensor} has dimension {dim}, more than the "
                                f"maximum of {MAX_DIM}")

    offsets = fields["data_offsets"]
    if (not isinstance(offsets, list) or isinstance(offsets, _JsonObject)
            or len(offsets) != 2 or not all(_is_int(x) for x in offsets)):
        raise _malformed(path, f"{tensor} has data_offsets {_shape_text(offsets)}; "
                         "expected [begin, end] with two integers")
    begin, end = offsets
    assert isinstance(begin, int) and isinstance(end, int)
    if not 0 <= begin <= end:
        raise _malformed(path, f"{tensor} has data_offsets [{begin}, {end}]; expected "
                         "0 <= begin <= end", "E_SAFETENSORS_LAYOUT")

    itemsize = DTYPES[dtype].itemsize
    count = 1
    for dim in shape:
        count *= dim
    expected = count * itemsize
    if expected != end - begin:
        raise _malformed(
            path,
            f"{tensor} ({dtype}, shape {_shape_text(shape)}) needs {expected} bytes "
            f"({count} elements of {itemsize} bytes), but its data_offsets "
            f"[{begin}, {end}] declare {end - begin} bytes",
            "E_SAFETENSORS_SIZE_MISMATCH",
        )
    # This matters for empty tensors: a non-empty one of such a shape needs more bytes
    # than any file holds, so the size check above or the layout check rejects it.
    spanned = itemsize
    for dim in shape:
        spanned *= max(dim, 1)
    if spanned > MAX_SHAPE_BYTES:
        raise LimitExceeded(f"{path}: {tensor} has shape {_shape_text(shape)}, whose "
                            f"nonzero dimensions span more than {MAX_SHAPE_BYTES} bytes, "
                            "more than an array can address even when it is empty")
    return TensorInfo(name, dtype, tuple(shape), begin, end)


def _shape_text(value: object) -> str:
    if isinstance(value, list) and not isinstance(value, _JsonObject) and len(value) <= 8:
        return json.dumps(value) if all(_is_int(x) for x in value) else repr(value)
    return _json_type(value)


def _check_layout(path: Path, entries: list[TensorInfo], data_size: int) -> None:
    """Check that the tensors tile the data section exactly, in offset order."""
    cursor = 0
    previous: TensorInfo | None = None
    for info in entries:
        if info.begin < cursor:
            assert previous is not None
            raise _malformed(path, f"tensor {info.name!r} data_offsets [{info.begin}, "
                             f"{info.end}] overlap tensor {previous.name!r} "
                             f"[{previous.begin}, {previous.end}]", "E_SAFETENSORS_LAYOUT")
        if info.begin > cursor:
            raise _malformed(path, f"data section has a gap of {info.begin - cursor} bytes "
                             f"at [{cursor}, {info.begin}] before tensor {info.name!r}",
                             "E_SAFETENSORS_LAYOUT")
        cursor = info.end
        previous = info
    if cursor > data_size:
        assert previous is not None
        raise _malformed(path, f"tensor {previous.name!r} ends at data offset {cursor}, but "
                         f"the data section has {data_size} bytes",
                         "E_SAFETENSORS_TRUNCATED", "the file is truncated")
    if cursor < data_size:
        raise _malformed(path, f"data section has {data_size - cursor} bytes after the last "
                         f"tensor (tensors cover {cursor} of {data_size} bytes)",
                         "E_SAFETENSORS_LAYOUT")


def parse_header(raw: bytes, path: Path, data_size: int
                 ) -> tuple[dict[str, str], dict[str, TensorInfo]]:
    """Validate the JSON header bytes of a safetensors file.

    Rules beyond JSON syntax:

    * The header starts with ``{`` and only spaces may follow the object.
    * No key appears twice at any level.
    * ``__metadata__`` is an object of strings.
    * Every other entry has exactly ``dtype``, ``shape`` and ``data_offsets``, a
      known dtype, non-negative integer dimensions and ``0 <= begin <= end``.
    * ``end - begin`` equals the element count times the dtype size.
    * The tensors, sorted by offset, cover the ``data_size`` bytes of the data
      section without gaps, overlaps or trailing bytes.

    Args:
        raw: The N header bytes, padding included.
        path: The file, for messages.
        data_size: Bytes in the data section (file size minus 8 minus N).

    Returns:
        The metadata (``{}`` when absent) and the tensors in data-section order.
        Zero-size tensors at the same offset keep their header order.

    Raises:
        MalformedSafetensors: A rule is broken; the message names the tensor or key.
        LimitExceeded: A cap on tensor count, name length, rank or dimension is exceeded.
    """
    pairs = _load_json(raw, path)
    metadata: dict[str, str] | None = None
    entries: list[TensorInfo] = []
    seen: set[str] = set()
    for name, value in pairs:
        if name in seen:
            raise _malformed(path, f"duplicate tensor name {name!r} in header",
                             "E_SAFETENSORS_DUPLICATE_KEY",
                             "each tensor name may appear once; a JSON parser that "
                             "keeps the last entry would hide the first")
        seen.add(name)
        if name == "__metadata__":
            metadata = _parse_metadata(path, value)
            continue
        _check_utf8(path, "tensor name", name)
        if len(name.encode("utf-8")) > MAX_TENSOR_NAME_BYTES:
            raise LimitExceeded(f"{path}: tensor name {name[:40]!r}... has "
                                f"{len(name.encode('utf-8'))} bytes, more than the maximum "
                                f"of {MAX_TENSOR_NAME_BYTES}")
        if len(entries) >= MAX_TENSORS:
            raise LimitExceeded(f"{path}: header has more than {MAX_TENSORS} tensors")
        entries.append(_parse_entry(path, name, value))
    entries.sort(key=lambda info: (info.begin, info.end))
    _check_layout(path, entries, data_size)
    return metadata or {}, {info.name: info for info in entries}
