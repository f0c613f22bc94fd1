"""Wrapped plugin callables (R-ARCH-10): foreign errors and wrong results become input errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from mbd_cert._determinism import VmapFailure, run_vmapped  # noqa: E402
from mbd_cert.arch._plugin_calls import checked_callables, guarded  # noqa: E402
from mbd_cert.errors import InputError, MalformedData  # noqa: E402

CODE = "E_ARCHITECTURE_LOAD_FAILED"


def _raise(exc: BaseException):
    def function(*args):
        raise exc
    return function


def test_foreign_error_wrapped():
    cause = KeyError("fusion")
    call = guarded("late-fusion", "build", _raise(cause))

    with pytest.raises(InputError) as caught:
        call({})

    assert caught.value.code == CODE
    assert "architecture 'late-fusion': its function build raised KeyError" in str(caught.value)
    assert caught.value.__cause__ is cause


@pytest.mark.parametrize("error", [MalformedData("bad"), MemoryError(), KeyboardInterrupt()])
def test_own_and_resource_errors_pass(error):
    call = guarded("late-fusion", "build", _raise(error))

    with pytest.raises(type(error)):
        call({})


def test_vmap_rejection_reaches_run_vmapped():
    def branching(x):
        return x if bool(x.sum() > 0) else -x

    call = guarded("late-fusion", "forget_objective", branching, objective=True)

    with pytest.raises(VmapFailure):
        run_vmapped(torch.func.vmap(call), torch.ones(3, 2))


def test_objective_traces_under_vmap_grad():
    call = guarded("late-fusion", "forget_objective", lambda x: (x ** 2).sum(),
                   objective=True)

    gradients = torch.func.vmap(torch.func.grad(call))(torch.ones(3, 2))

    assert torch.equal(gradients, torch.full((3, 2), 2.0))


def test_other_runtime_error_wrapped_for_objective():
    call = guarded("late-fusion", "retain_objective", _raise(RuntimeError("shape [2] bad")),
                   objective=True)

    with pytest.raises(InputError, match="raised RuntimeError: shape"):
        call()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("activation_entries", -1, "-1 of type int, not a non-negative int"),
    ("forward_operations", True, "True of type bool, not a non-negative int"),
    ("encoder_prefixes", ["a", 1], "a list, not a list of str"),
    ("tensor_shapes", {"w": (2, -1)}, "the shape (2, -1) for tensor 'w'"),
    ("build", object(), "a object, not a torch.nn.Module"),
    ("forget_objective", [0.0], "a list, not a torch.Tensor"),
])
def test_wrong_result_rejected(field, value, message):
    fields = ["build", "encoder_prefixes", "generator_prefixes", "forget_objective",
              "retain_objective", "tensor_shapes", "activation_entries",
              "forward_operations", "zeroed_forget"]
    record = SimpleNamespace(name="late-fusion", **dict.fromkeys(fields, lambda *a: value))
    call = checked_callables(record)[field]

    with pytest.raises(InputError, match="returned") as caught:
        call({})

    assert message in str(caught.value)
    assert caught.value.code == CODE
