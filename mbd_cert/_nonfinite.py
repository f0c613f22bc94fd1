"""Counting NaN and infinite entries of a tensor streamed as raw bytes (SPEC.md, R-DEL-3).

The digest pass reads every byte of the released model in chunks whose boundaries fall
anywhere, including inside an entry. A counter keeps the bytes of a split entry until
the rest arrives, so the count does not depend on the chunk size.

Stability: private module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["NonfiniteCounter", "nonfinite_counter"]

# Dtypes with a numpy floating-point type: np.isfinite tests them directly (C64 tests
# both halves).
_NATIVE = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "C64": "<c8"}
# The others, as (unsigned view, mask, pattern): an entry is NaN or infinite when
# entry & mask == pattern. BF16 and F8_E5M2 have IEEE exponents (all ones means
# infinite or NaN); F8_E4M3 (the "fn" variant) has no infinity and one NaN per sign,
# S.1111.111; F8_E8M0 uses 0xFF as NaN; the FNUZ formats use 0x80, their only NaN.
_BITWISE = {
    "BF16": ("<u2", 0x7F80, 0x7F80),
    "F8_E5M2": ("|u1", 0x7C, 0x7C),
    "F8_E4M3": ("|u1", 0x7F, 0x7F),
    "F8_E8M0": ("|u1", 0xFF, 0xFF),
    "F8_E4M3FNUZ": ("|u1", 0xFF, 0x80),
    "F8_E5M2FNUZ": ("|u1", 0xFF, 0x80),
}


@dataclass
class NonfiniteCounter:
    """Running count of NaN and infinite entries in bytes fed in order.

    Attributes:
        dtype: The safetensors dtype name.
        count: Entries seen so far that are NaN or infinite.
    """

    dtype: str
    count: int = 0
    _view: np.dtype = field(init=False, repr=False)
    _mask: int | None = field(init=False, repr=False)
    _pattern: int = field(init=False, repr=False)
    _carry: bytes = field(init=False, repr=False, default=b"")

    def __post_init__(self) -> None:
        if self.dtype in _NATIVE:
            self._view, self._mask, self._pattern = np.dtype(_NATIVE[self.dtype]), None, 0
        else:
            view, mask, pattern = _BITWISE[self.dtype]
            self._view, self._mask, self._pattern = np.dtype(view), mask, pattern

    def update(self, piece: memoryview | bytes) -> None:
        """Count the complete entries in ``piece`` after any bytes held from before."""
        data = memoryview(piece).cast("B")
        size = self._view.itemsize
        if self._carry:
            need = size - len(self._carry)
            self._carry += bytes(data[:need])
            data = data[need:]
            if len(self._carry) < size:
                return
            self._count(np.frombuffer(self._carry, dtype=self._view))
            self._carry = b""
        whole = len(data) - len(data) % size
        if whole:
            self._count(np.frombuffer(data[:whole], dtype=self._view))
        self._carry = bytes(data[whole:])

    def _count(self, entries: np.ndarray) -> None:
        if self._mask is None:
            self.count += entries.size - int(np.count_nonzero(np.isfinite(entries)))
        else:
            self.count += int(np.count_nonzero((entries & self._mask) == self._pattern))


def nonfinite_counter(dtype: str) -> NonfiniteCounter | None:
    """Return a counter for a floating-point safetensors dtype, None for integer and bool."""
    if dtype in _NATIVE or dtype in _BITWISE:
        return NonfiniteCounter(dtype)
    return None
