"""A restricted unpickler for the MMSA-style CMU-MOSEI pickles.

Unpickling calls whatever callables the file names, so a crafted pickle runs code on
load. :class:`RestrictedUnpickler` resolves only the globals that numpy arrays need. Dicts,
lists, tuples, strings, bytes and numbers are built by pickle opcodes without any
global, so they load too. Every other global is rejected before it is imported.

Stability: private to :mod:`trainer.data`. This module is the only place in mbd-cert
that reads pickles.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mbd_cert.errors import MalformedData

_HINT = "load only pickles of numpy arrays and plain containers; convert other files first"


def _dtype(*args: Any) -> np.dtype[Any]:
    """Build a dtype, rejecting object dtypes, which can carry arbitrary Python objects."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise MalformedData(
            f"refusing to load a numpy array of object dtype {dtype!r} from a pickle",
            hint=_HINT,
        )
    return dtype


def _reconstruct(subtype: type, shape: Any, dtype: Any) -> np.ndarray:
    """Create an empty array the way ``numpy.core.multiarray._reconstruct`` does.

    The array's contents come afterwards from ``ndarray.__setstate__``.
    """
    if subtype is not np.ndarray:
        raise MalformedData(
            f"refusing to rebuild an array of type {subtype!r} from a pickle",
            hint=_HINT,
        )
    return np.ndarray.__new__(np.ndarray, shape, _dtype(dtype))


def _scalar(dtype: np.dtype[Any], data: bytes | None = None) -> np.generic:
    """Rebuild a numpy scalar from its dtype and raw bytes, as numpy's ``scalar`` does."""
    dtype = _dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise MalformedData(
            f"numpy scalar of dtype {dtype} in a pickle has {_size(data)} bytes, "
            f"expected {dtype.itemsize}",
            hint=_HINT,
        )
    scalar: np.generic = np.frombuffer(data, dtype=dtype)[0]
    return scalar


def _frombuffer(
    buffer: Any, dtype: Any, shape: Any, order: str, axis_order: Any = None
) -> np.ndarray:
    """Rebuild an array from an out-of-band buffer, as protocol 5 pickles of numpy do.

    Mirrors ``numpy._core.numeric._frombuffer`` (numpy 2.4) with the dtype checked.
    The array is copied, so it never aliases a caller's buffer.
    """
    array = np.frombuffer(buffer, dtype=_dtype(dtype))
    if order == "K" and axis_order is not None:
        return array.reshape(shape, order="C").transpose(axis_order).copy(order="K")
    return array.reshape(shape, order=order).copy(order="K")


def _latin1_bytes(text: str, encoding: str = "utf-8") -> bytes:
    """Turn a str back into bytes, as ``_codecs.encode`` does for protocol 0-2 pickles.

    Pickle protocols below 3 have no bytes opcode, so they store bytes (the raw data of
    an array, for one) as a latin-1 str plus a call to ``_codecs.encode``. Only that
    codec is accepted, because a codec name can select any registered codec.
    """
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise MalformedData(
            f"refusing _codecs.encode with encoding {encoding!r} in a pickle; only "
            "latin1 is accepted",
            hint=_HINT,
        )
    return text.encode("latin-1")


def _size(data: object) -> str:
    return str(len(data)) if isinstance(data, bytes) else f"no ({type(data).__name__})"


# Globals the pickles may name. numpy 2 renamed numpy.core to numpy._core, and pickles
# written under either name load. ``numpy.ndarray`` serves only as the subtype argument
# of ``_reconstruct``.
_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_bytes,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the numpy globals needed for plain arrays."""

    def find_class(self, module: str, name: str) -> Any:
        """Return the allowed callable for ``module.name``.

        Raises:
            MalformedData: The global is not on the allow list.
        """
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise MalformedData(
                f"refusing to load pickle global '{module}.{name}'",
                hint=_HINT,
            )
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        """Reject persistent ids, which would need an application-defined loader.

        Raises:
            MalformedData: Always.
        """
        raise MalformedData("refusing to load a pickle persistent id", hint=_HINT)


def loads_restricted(data: bytes, *, source: str = "pickle") -> Any:
    """Unpickle bytes with :class:`RestrictedUnpickler`.

    Args:
        data: The pickle bytes.
        source: File name used in error messages.

    Returns:
        The unpickled object.

    Raises:
        MalformedData: The pickle names a global that is not allowed, or is truncated
            or otherwise invalid.
    """
    try:
        loaded = RestrictedUnpickler(io.BytesIO(data)).load()
    except MalformedData as exc:
        raise MalformedData(f"{source}: {exc.message}", hint=exc.hint) from exc
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
        AttributeError,
        MemoryError,
        OverflowError,
    ) as exc:
        # Invalid opcodes, truncated streams and bad __setstate__ arguments surface as
        # any of these, depending on where pickle or numpy notices the problem.
        raise MalformedData(
            f"{source}: not a valid pickle of numpy arrays ({type(exc).__name__}: {exc})",
            hint=_HINT,
        ) from exc
    _reject_object_arrays(loaded, source)
    return loaded


def _reject_object_arrays(value: Any, source: str) -> None:
    """Reject arrays of object dtype, such as ``numpy.ndarray(shape, "O")`` built by REDUCE."""
    pending = [value]
    seen: set[int] = set()
    while pending:
        item = pending.pop()
        # A pickle can build self-referencing containers, so visit each object once.
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, np.ndarray) and item.dtype.hasobject:
            raise MalformedData(
                f"{source}: refusing a numpy array of object dtype in a pickle", hint=_HINT
            )
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            pending.extend(item)


def load_restricted(path: Path) -> Any:
    """Read a pickle file with :class:`RestrictedUnpickler`.

    Args:
        path: The pickle file.

    Returns:
        The unpickled object.

    Raises:
        MalformedData: As for :func:`loads_restricted`, naming ``path``.
    """
    return loads_restricted(Path(path).read_bytes(), source=str(path))
