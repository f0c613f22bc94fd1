"""Tests of the restricted unpickler that reads the CMU-MOSEI pickles."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from mbd_cert.errors import MalformedData
from trainer.data._unpickle import load_restricted, loads_restricted

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


class CallsSystem:
    """Pickles to ``os.system(command)``: running the command proves the load executed code."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class CallsEval:
    def __init__(self, expression):
        self.expression = expression

    def __reduce__(self):
        return (builtins.eval, (self.expression,))


class CallsPopen:
    def __init__(self, argv):
        self.argv = argv

    def __reduce__(self):
        return (subprocess.Popen, (self.argv,))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_os_system_not_executed(tmp_path, protocol):
    marker = tmp_path / "marker"
    payload = {"language": np.zeros((2, 3), np.float32), "evil": CallsSystem(f"touch {marker}")}
    data = pickle.dumps(payload, protocol=protocol)
    with pytest.raises(MalformedData) as caught:
        loads_restricted(data)
    # os.system pickles under the name of its defining module: posix on Linux and macOS.
    assert f"refusing to load pickle global '{os.system.__module__}.system'" in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_builtins_eval_not_executed(tmp_path, protocol):
    marker = tmp_path / "marker"
    data = pickle.dumps([CallsEval(f"open({str(marker)!r}, 'w').write('x')")], protocol=protocol)
    # Protocols 0-2 name the module __builtin__, as Python 2 did.
    expected = "refusing to load pickle global '(builtins|__builtin__).eval'"
    with pytest.raises(MalformedData, match=expected):
        loads_restricted(data)
    assert not marker.exists()


def test_popen_not_executed(tmp_path):
    marker = tmp_path / "marker"
    data = pickle.dumps(CallsPopen(["touch", str(marker)]))
    with pytest.raises(MalformedData, match="'subprocess.Popen'"):
        loads_restricted(data)
    assert not marker.exists()


def test_malicious_file_names_path(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "val_data.pkl"
    path.write_bytes(pickle.dumps({"labels": CallsSystem(f"touch {marker}")}))
    with pytest.raises(MalformedData) as caught:
        load_restricted(path)
    assert str(path) in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_arrays_round_trip(protocol):
    payload = {
        "language": np.arange(12, dtype=np.float32).reshape(3, 4),
        "acoustic": np.array([[1.0, -np.inf], [np.nan, 2.0]], dtype=np.float32),
        "big_endian": np.arange(6, dtype=">f8").reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "transposed": np.arange(24.0).reshape(2, 3, 4).transpose(2, 0, 1),
        "scalar": np.float32(2.5),
        "integer": np.int64(7),
        "plain": [1, 2.5, "x", b"y", (3, None, True), {"k": "v"}],
    }
    data = pickle.dumps(payload, protocol=protocol)
    loaded, reference = loads_restricted(data), pickle.loads(data)
    assert sorted(loaded) == sorted(reference)
    for key, expected in reference.items():
        actual = loaded[key]
        assert type(actual) is type(expected), key
        if isinstance(expected, np.ndarray):
            assert actual.dtype == expected.dtype, key
            assert actual.shape == expected.shape, key
            assert np.array_equal(actual, expected, equal_nan=True), key
        else:
            assert actual == expected, key


def test_numpy_core_alias_accepted():
    # Pickles written by numpy 1.x name numpy.core; numpy 2 writes numpy._core.
    data = pickle.dumps(np.arange(3, dtype=np.float32), protocol=2)
    assert b"numpy._core.multiarray" in data
    old_style = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert np.array_equal(loads_restricted(old_style), np.arange(3, dtype=np.float32))


def test_object_array_of_strings_accepted():
    # MMSA-style pickles keep ids and raw transcripts as object arrays of strings.
    values = np.array(["video_1$_$0", "video_1$_$1", 3, None], dtype=object)
    loaded = loads_restricted(pickle.dumps({"id": values}))
    assert loaded["id"].dtype == np.dtype(object)
    assert loaded["id"].tolist() == values.tolist()


@pytest.mark.parametrize("entry", [{"a": 1}, [1, 2], np.zeros(2)])
def test_object_array_of_containers_rejected(entry):
    values = np.empty(2, dtype=object)
    values[0], values[1] = "x", entry
    with pytest.raises(MalformedData, match="object dtype"):
        loads_restricted(pickle.dumps(values))


def _object_array_claiming(count: int) -> bytes:
    """Pickle an object array of 7 strings whose shape claims ``count`` elements."""
    values = np.empty(7, dtype=object)
    values[:] = "q"
    data = pickle.dumps(values, protocol=2)
    # The state's shape (1, (7,), ...): BININT1 1, BININT1 7, TUPLE1.
    assert data.count(b"K\x01K\x07\x85") == 1
    return data.replace(b"K\x01K\x07\x85", b"K\x01J" + count.to_bytes(4, "little") + b"\x85")


@pytest.mark.parametrize("count", [6, 8, 1_000_000])
def test_object_array_length_mismatch(count):
    # numpy fills an object array from the list without a length check: a short list
    # crashed the interpreter, so the load runs in a child process.
    script = (
        "import sys\n"
        "from mbd_cert.errors import MalformedData\n"
        "from trainer.data._unpickle import loads_restricted\n"
        "try:\n"
        "    loads_restricted(sys.stdin.buffer.read())\n"
        "except MalformedData as exc:\n"
        "    print(exc.message)\n"
    )
    child = subprocess.run([sys.executable, "-c", script], input=_object_array_claiming(count),
                           capture_output=True, check=False, timeout=120)
    assert child.returncode == 0, child.stderr.decode(errors="replace")
    assert f"has shape [{count}] ({count} elements) but its state holds 7" in child.stdout.decode()


def test_structured_object_dtype_rejected():
    values = np.zeros(2, dtype=[("a", "O"), ("b", "f4")])
    with pytest.raises(MalformedData, match="object dtype"):
        loads_restricted(pickle.dumps(values))


def test_object_array_with_global_rejected():
    import os

    values = np.empty(1, dtype=object)
    values[0] = os.getcwd
    with pytest.raises(MalformedData, match="refusing to load pickle global"):
        loads_restricted(pickle.dumps(values))


def test_other_numpy_global_rejected():
    data = pickle.dumps(np.random.default_rng(0))
    with pytest.raises(MalformedData, match="refusing to load pickle global 'numpy.random"):
        loads_restricted(data)


def test_persistent_id_rejected():
    # Protocol 0 PERSID opcode "P", persistent id "x", then STOP.
    with pytest.raises(MalformedData, match="persistent id"):
        loads_restricted(b"Px\n.")


@pytest.mark.parametrize("data", [b"", b"garbage", pickle.dumps({"a": np.arange(3)})[:-4]])
def test_invalid_pickle(data):
    with pytest.raises(MalformedData, match="not a valid pickle"):
        loads_restricted(data, source="broken.pkl")


def test_non_latin1_codec_rejected():
    # Protocol 2 stores bytes through _codecs.encode(str, "latin1"); another codec is refused.
    data = pickle.dumps(b"\xff", protocol=2).replace(b"latin1", b"rot13_")
    with pytest.raises(MalformedData, match="encoding"):
        loads_restricted(data)


def test_public_reader_is_the_restricted_one(tmp_path):
    # docs/real-data.md points users who convert pickles at trainer.data.load_restricted.
    import os

    from trainer import data

    path = tmp_path / "hostile.pkl"
    path.write_bytes(pickle.dumps(os.getcwd))
    with pytest.raises(MalformedData, match="refusing to load pickle global"):
        data.load_restricted(path)
    path.write_bytes(pickle.dumps({"ids": np.array(["a"], dtype=object)}))
    assert data.load_restricted(path)["ids"].tolist() == ["a"]
