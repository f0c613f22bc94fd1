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
import math
import pickle
import pickletools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from mbd_cert.errors import MalformedData

_HINT = "load only pickles of numpy arrays and plain containers; convert other files first"

# Bounds on the structure a pickle may build, checked on its opcodes before loading.
# Hashing a tuple recurses in C without a depth check (CPython 3.11), so a dict key
# nested 200,000 levels deep crashes the interpreter. A tuple that refers to a smaller
# tuple twice, repeated, takes time exponential in the file size to hash. A numpy array
# pickle nests about four levels and contains a few dozen items.
MAX_DEPTH = 64
MAX_ITEMS = 1_000_000


class _NdarrayType:
    """Placeholder for ``numpy.ndarray`` in a pickle, valid only as ``_reconstruct``'s subtype.

    Calling ``numpy.ndarray`` itself would let a pickle pass a buffer with zero strides
    and get an array of any declared size backed by a few bytes.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> _NdarrayType:
        raise MalformedData("refusing to call numpy.ndarray from a pickle", hint=_HINT)


# Python values an object array may contain. MMSA-style pickles store ``id`` and
# ``raw_text`` as object arrays of strings. The values come through the same
# restricted unpickler, so an object array cannot contain anything the file could not
# contain elsewhere. The check after loading allows only these plain scalars.
_PLAIN_SCALARS = (str, bytes, int, float, bool, type(None))


def _dtype(*args: Any) -> np.dtype[Any]:
    """Build a dtype; of the dtypes holding Python objects, only plain ``object`` passes."""
    dtype: np.dtype[Any] = np.dtype(*args)
    if dtype.hasobject and dtype != np.dtype(object):
        raise MalformedData(
            f"refusing to load a numpy array of object dtype {dtype!r} from a pickle",
            hint=_HINT,
        )
    return dtype


def _reconstruct(subtype: type, shape: Any, dtype: Any) -> np.ndarray:
    """Create an empty array the way ``numpy.core.multiarray._reconstruct`` does.

    The array's contents come afterwards from ``ndarray.__setstate__``.
    """
    if subtype is not _NdarrayType:
        raise MalformedData(
            f"refusing to rebuild an array of type {subtype!r} from a pickle",
            hint=_HINT,
        )
    # numpy writes shape (0,): the data and the real shape come from __setstate__, so
    # they are bounded by the file. Any other shape would allocate without data.
    if not isinstance(shape, tuple) or 0 not in shape:
        raise MalformedData(
            f"refusing to rebuild an array of declared shape {_short(shape)} from a pickle; "
            "numpy writes an empty shape here",
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
        rebuilt: np.ndarray = array.reshape(shape, order="C").transpose(axis_order)
    else:
        # numpy itself rejects an order other than C, F and A here (ValueError).
        rebuilt = array.reshape(shape, order=cast(Literal["C", "F", "A"], order))
    return rebuilt.copy(order="K")


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


def _short(value: object) -> str:
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value[:8]):
        return str(list(value[:8]))[:80]
    return type(value).__name__


def _size(data: object) -> str:
    return str(len(data)) if isinstance(data, bytes) else f"no ({type(data).__name__})"


# Globals the pickles may name. numpy 2 renamed numpy.core to numpy._core, and pickles
# written under either name load. ``numpy.ndarray`` serves only as the subtype argument
# of ``_reconstruct``.
_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("numpy", "ndarray"): _NdarrayType,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_bytes,
}


def _check_array_state(state: Any) -> None:
    """Check the state that a pickle passes to ``ndarray.__setstate__``.

    numpy 2.4 fills an object array from the state's list without comparing the list's
    length with the shape, so a list shorter than the shape makes it read past the
    list's end and crash the interpreter. The state's dtype, not the array's, decides,
    so every array's state is checked.

    Raises:
        MalformedData: An object array's list does not hold one entry per element.
    """
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        return  # numpy rejects it itself (TypeError)
    shape, dtype, _, rawdata = state[-4:]
    if not isinstance(dtype, np.dtype) or not dtype.hasobject:
        return  # numpy compares a byte buffer's length with the shape
    if not isinstance(shape, tuple) or not all(isinstance(size, int) for size in shape):
        return  # numpy rejects it itself (TypeError)
    count = math.prod(shape)
    if not isinstance(rawdata, list) or len(rawdata) != count:
        raise MalformedData(
            f"numpy object array in a pickle has shape {_short(shape)} ({count} elements) "
            f"but its state holds {len(rawdata) if isinstance(rawdata, list) else 'no'} "
            "list entries; numpy writes one entry per element",
            hint=_HINT,
        )


# The Python implementation of the unpickler, because the C one offers no hook on the
# BUILD opcode, which calls ndarray.__setstate__ (see _check_array_state). The file is
# walked opcode by opcode in Python by _check_structure anyway. typeshed declares
# neither its stack nor its load_build, hence the ignores.
_BASE_BUILD = pickle._Unpickler.dispatch[pickle.BUILD[0]]


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that resolves only the numpy globals needed for plain arrays."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def load_build(self) -> None:
        """Run the BUILD opcode, checking an array's state first (:func:`_check_array_state`).

        Raises:
            MalformedData: As :func:`_check_array_state`.
        """
        stack: list[Any] = self.stack  # type: ignore[attr-defined]
        if isinstance(stack[-2], np.ndarray):
            _check_array_state(stack[-1])
        _BASE_BUILD(self)  # type: ignore[arg-type]

    dispatch[pickle.BUILD[0]] = load_build  # type: ignore[assignment]

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
        _check_structure(data)
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
        RecursionError,
    ) as exc:
        # Invalid opcodes, truncated streams and bad __setstate__ arguments surface as
        # any of these, depending on where pickle or numpy notices the problem.
        raise MalformedData(
            f"{source}: not a valid pickle of numpy arrays ({type(exc).__name__}: {exc})",
            hint=_HINT,
        ) from exc
    _reject_object_arrays(loaded, source)
    return loaded


def _check_structure(data: bytes) -> None:
    """Bound the nesting depth and the unfolded size of what the pickle builds.

    Simulates the unpickler's stack on the opcodes alone, without building anything.
    Each stack entry carries the depth and the item count of the object it represents,
    counting every reference again as hashing and printing do. Memo entries share the
    entry, so a list that grows after it was memoized is seen at its new size.

    Raises:
        MalformedData: A built object nests deeper than ``MAX_DEPTH`` or unfolds to
            more than ``MAX_ITEMS`` items.
    """
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[Any, list[int]] = {}
    mark = pickletools.markobject
    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name == "MARK":
            marks.append(len(stack))
            continue
        if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if stack:
                memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
            continue
        if name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg, [0, 1]))
            continue
        if name in ("STOP", "FRAME", "PROTO"):
            continue
        if name == "DUP":
            if stack:
                stack.append(stack[-1])
            continue
        popped: list[list[int]] = []
        before = opcode.stack_before
        if mark in before:
            start = marks.pop() if marks else 0
            popped = stack[start:]
            del stack[start:]
            before = before[: before.index(mark)]
        for _ in before:
            if stack:
                popped.append(stack.pop())
        if not opcode.stack_after:
            continue
        if name in _MUTATING and popped:
            # APPEND, SETITEM, BUILD and the like add to the object below their
            # arguments, which is popped last.
            target = popped[-1]
            others = [p for p in popped if p is not target]
            entry = target
        else:
            others, entry = popped, [0, 1]
        if others:
            entry[0] = max(entry[0], 1 + max(p[0] for p in others))
            entry[1] = min(entry[1] + sum(p[1] for p in others), MAX_ITEMS + 1)
        if entry[0] > MAX_DEPTH or entry[1] > MAX_ITEMS:
            raise MalformedData(
                f"refusing a pickle that nests deeper than {MAX_DEPTH} levels or contains more "
                f"than {MAX_ITEMS} items, counting repeated references (at opcode {name})",
                hint=_HINT,
            )
        stack.append(entry)


# Opcodes that change the object below their arguments instead of building a new one.
_MUTATING = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})


def _reject_object_arrays(value: Any, source: str) -> None:
    """Reject object arrays holding anything but plain scalars (:data:`_PLAIN_SCALARS`).

    Also catches such an array built another way, such as ``numpy.ndarray(shape, "O")``
    by REDUCE, whose entries would be None.
    """
    pending = [value]
    seen: set[int] = set()
    while pending:
        item = pending.pop()
        # A pickle can build self-referencing containers, so visit each object once.
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, np.ndarray) and item.dtype.hasobject:
            odd = next((entry for entry in item.flat
                        if not isinstance(entry, _PLAIN_SCALARS)), None)
            if item.dtype != np.dtype(object) or odd is not None:
                raise MalformedData(
                    f"{source}: refusing a numpy array of object dtype in a pickle that "
                    f"holds {type(odd).__name__} values; only strings, bytes and numbers "
                    "may be stored that way", hint=_HINT)
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
