"""Counting NaN and infinite weights while hashing (SPEC.md, R-DEL-3).

torch is the oracle: it decodes every floating-point dtype safetensors stores, so its
``isfinite`` decides which bit patterns are NaN or infinite, independently of the masks in
``mbd_cert._nonfinite``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mbd_cert import _safetensors
from mbd_cert._nonfinite import NonfiniteCounter, nonfinite_counter
from mbd_cert._safetensors_header import DTYPES

# safetensors dtype name -> torch dtype that decodes the same bytes.
_TORCH = {
    "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
    "F64": torch.float64, "C64": torch.complex64,
    "F8_E5M2": torch.float8_e5m2, "F8_E4M3": torch.float8_e4m3fn,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz, "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    "F8_E8M0": torch.float8_e8m0fnu,
}


def _oracle(dtype: str, raw: bytes) -> int:
    """Count the entries torch decodes as NaN or infinite."""
    if not raw:
        return 0
    values = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(_TORCH[dtype])
    if values.is_complex():
        return int((~torch.isfinite(values)).sum())
    return int((~torch.isfinite(values.to(torch.float64))).sum())


def _count(dtype: str, pieces: list[bytes]) -> int:
    counter = nonfinite_counter(dtype)
    assert counter is not None
    for piece in pieces:
        counter.update(piece)
    return counter.count


def test_counter_only_for_float_dtypes() -> None:
    floating = {name for name in DTYPES if name.startswith(("F", "BF", "C"))}
    assert floating == set(_TORCH)
    for name in DTYPES:
        assert (nonfinite_counter(name) is None) == (name not in _TORCH), name


@pytest.mark.parametrize("dtype", ["F8_E5M2", "F8_E4M3", "F8_E4M3FNUZ", "F8_E5M2FNUZ",
                                   "F8_E8M0"])
def test_every_one_byte_pattern_matches_torch(dtype: str) -> None:
    raw = bytes(range(256))
    assert _count(dtype, [raw]) == _oracle(dtype, raw)


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_every_two_byte_pattern_matches_torch(dtype: str) -> None:
    raw = np.arange(2**16, dtype="<u2").tobytes()
    assert _count(dtype, [raw]) == _oracle(dtype, raw)
    # An all-ones exponent is NaN or infinity. F16 has a 10-bit fraction and BF16 a
    # 7-bit one, so 2 signs x 2**10 and 2 x 2**7 patterns.
    assert _count(dtype, [raw]) == (2 * 2**10 if dtype == "F16" else 2 * 2**7)


@settings(max_examples=200, deadline=None)
@given(
    dtype=st.sampled_from(sorted(_TORCH)),
    words=st.lists(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x7C, 0x7F80, 0x7FC0, 0x7F800000,
                                    0x7FC12345, 0xFF800000, 0x3F800000,
                                    0x7FF0000000000000, 0x7FF8000000000001,
                                    0x3FF0000000000000]),
                   max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_split_pieces_count_like_one_read(dtype: str, words: list[int], cuts: list[int]) -> None:
    # The digest pass splits a tensor wherever its 4 MiB reads end, also inside an
    # entry, so the count must not depend on where the pieces are cut.
    raw = b"".join(word.to_bytes(8, "little") for word in words)
    raw = raw[:len(raw) - len(raw) % DTYPES[dtype].itemsize]
    bounds = sorted({min(cut, len(raw)) for cut in cuts} | {0, len(raw)})
    pieces = [raw[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    assert _count(dtype, pieces) == _oracle(dtype, raw)


def test_held_bytes_do_not_count_until_complete() -> None:
    counter = NonfiniteCounter("F32")
    nan = np.array([np.nan], dtype="<f4").tobytes()
    counter.update(nan[:3])
    assert counter.count == 0
    counter.update(b"")
    counter.update(nan[3:])
    assert counter.count == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_digest_file_counts_per_tensor(tmp_path: Path, workers: int) -> None:
    weights = np.zeros((64, 64), dtype=np.float32)
    weights[3, :2] = np.array([0x7FC12345, 0x7F800000], dtype=np.uint32).view(np.float32)
    tensors = {
        "a.weight": weights,
        "b.weight": np.ones(1000, dtype=np.float64),
        "c.index": np.full(10, -1, dtype=np.int32),  # all bits set: not a float
        "d.empty": np.zeros((0, 4), dtype=np.float32),
    }
    path = tmp_path / "model.safetensors"
    _safetensors.write_safetensors(path, tensors, {"format": "test"})
    digests = _safetensors.digest_file(path, workers=workers, count_nonfinite=True)
    assert digests.nonfinite == {"a.weight": 2, "b.weight": 0, "d.empty": 0}
    plain = _safetensors.digest_file(path, workers=workers)
    assert plain.nonfinite is None
    assert plain.tensors == digests.tensors
