"""Model building shared by issuer and verifier: one tensor per name, eligible tensors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mbd_cert import _groups  # noqa: E402
from mbd_cert._issue_steps import default_eligible_groups  # noqa: E402
from mbd_cert._torch_model import check_one_tensor_per_name, eligible_parameters  # noqa: E402
from mbd_cert.arch import mbd  # noqa: E402
from mbd_cert.arch._mbd_config import encoder_prefixes, validate_config  # noqa: E402
from mbd_cert.errors import InputError  # noqa: E402

CONFIG = validate_config({"input_dims": {"text": 6, "audio": 4, "vision": 5},
                          "seq_len": {"text": 3, "audio": 3, "vision": 3}})


def test_builtin_eligible_tensors_unchanged():
    # The built-in model has no buffer under an eligible group, so the parameter rule
    # (R-SAL-1) selects what the name rule selected: its certificates stay the same.
    model = mbd.ARCHITECTURE.build(CONFIG)
    check_one_tensor_per_name(model, "mbd-sentiment")
    names = list(model.state_dict())
    for modality in CONFIG["modalities"]:
        groups = default_eligible_groups(modality)
        removed = _groups.eligible_names(names, encoder_prefixes(CONFIG, modality))
        by_name = [n for n in _groups.eligible_names(names, groups) if n not in removed]
        assert eligible_parameters(model, groups, removed) == by_name


def test_buffer_is_not_eligible():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    model.register_buffer("center", torch.ones(3))
    model[0].register_buffer("scale", torch.ones(2))
    assert eligible_parameters(model, [""], []) == []
    assert eligible_parameters(model, ["0"], ["0.bias"]) == ["0.weight"]


def test_tied_linear_names_both_aliases():
    model = torch.nn.ModuleDict({"a": torch.nn.Linear(2, 2)})
    model["b"] = model["a"]
    with pytest.raises(InputError) as caught:
        check_one_tensor_per_name(model, "tied")
    assert caught.value.code == "E_ARCHITECTURE_TENSORS_SHARED"
    assert "'a.weight', 'b.weight'" in str(caught.value)
    assert "'a.bias', 'b.bias'" in str(caught.value)


def test_empty_tensors_are_not_aliases():
    model = torch.nn.Module()
    model.register_buffer("first", torch.zeros(0))
    model.register_buffer("second", torch.zeros(0, 3))
    model.weight = torch.nn.Parameter(torch.ones(2))
    check_one_tensor_per_name(model, "empty")


def _two_slices(first: slice, second: slice) -> torch.nn.Module:
    """Return a module whose parameters 'a' and 'b' are slices of one flat storage."""
    flat = torch.arange(8, dtype=torch.float32)
    model = torch.nn.Module()
    model.a = torch.nn.Parameter(flat[first])
    model.b = torch.nn.Parameter(flat[second])
    return model


def test_disjoint_views_pass_and_load():
    # Each name owns its own bytes, so loading writes each value where it belongs.
    model = _two_slices(slice(0, 4), slice(4, 8))
    check_one_tensor_per_name(model, "flat")
    model.load_state_dict({"a": torch.full((4,), 1.0), "b": torch.full((4,), 2.0)})
    assert model.a.tolist() == [1.0] * 4
    assert model.b.tolist() == [2.0] * 4


def test_overlapping_views_rejected():
    model = _two_slices(slice(0, 5), slice(4, 8))
    with pytest.raises(InputError) as caught:
        check_one_tensor_per_name(model, "flat")
    assert caught.value.code == "E_ARCHITECTURE_TENSORS_SHARED"
    assert "'a', 'b'" in str(caught.value)


def test_interleaved_views_rejected():
    # Disjoint entries, but overlapping spans: the check compares spans.
    model = _two_slices(slice(0, 8, 2), slice(1, 8, 2))
    with pytest.raises(InputError) as caught:
        check_one_tensor_per_name(model, "flat")
    assert "'a', 'b'" in str(caught.value)


def test_overlapping_storages_rejected():
    # Two storages over overlapping memory, as torch.from_numpy makes from two views
    # of one array: the storage addresses differ, the bytes do not.
    array = np.arange(8, dtype=np.float32)
    model = torch.nn.Module()
    model.a = torch.nn.Parameter(torch.from_numpy(array[0:5]))
    model.b = torch.nn.Parameter(torch.from_numpy(array[3:8]))
    assert model.a.untyped_storage().data_ptr() != model.b.untyped_storage().data_ptr()
    with pytest.raises(InputError) as caught:
        check_one_tensor_per_name(model, "numpy")
    assert "'a', 'b'" in str(caught.value)


@pytest.mark.parametrize("count", [1, 2])
def test_meta_tensors_rejected(count: int):
    # Loading into a meta tensor does nothing, so the model would keep no weights.
    model = torch.nn.Module()
    model.a = torch.nn.Parameter(torch.ones(3))
    for index in range(count):
        model.register_buffer(f"m{index}", torch.empty(2, device="meta"))
    with pytest.raises(InputError) as caught:
        check_one_tensor_per_name(model, "meta")
    assert caught.value.code == "E_ARCHITECTURE_TENSORS_SHARED"
    assert "tensors on the meta device" in str(caught.value)
    assert "'m0'" in str(caught.value)
    assert "several names" not in str(caught.value)


@pytest.mark.parametrize("tensor", [
    torch.zeros(1).expand(4),
    torch.zeros(3).as_strided((2, 2), (1, 1)),
], ids=["expanded", "as-strided"])
def test_self_overlapping_tensor_rejected(tensor):
    # load_state_dict cannot copy 4 values into fewer memory slots.
    model = torch.nn.Module()
    model.register_buffer("repeated", tensor)
    with pytest.raises(InputError) as caught:
        check_one_tensor_per_name(model, "expand")
    assert caught.value.code == "E_ARCHITECTURE_TENSORS_SHARED"
    assert "entries share memory ('repeated')" in str(caught.value)


def test_transposed_and_sliced_tensors_pass():
    model = torch.nn.Module()
    model.register_buffer("transposed", torch.zeros(3, 4).t())
    model.register_buffer("every_other", torch.zeros(8)[::2])
    model.register_buffer("column", torch.zeros(4, 3)[:, 1:2])
    check_one_tensor_per_name(model, "views")


def test_build_model_float64_eval_mode():
    """R-ARCH-6: the loaded model computes in float64, in eval mode, with the file's values."""
    from mbd_cert._torch_model import build_model

    source = mbd.ARCHITECTURE.build(CONFIG)
    tensors = {name: value.detach().numpy().copy() for name, value in source.state_dict().items()}
    model = build_model(mbd.ARCHITECTURE, CONFIG, tensors)
    assert not any(module.training for module in model.modules())
    for name, value in model.state_dict().items():
        assert value.dtype == torch.float64, name
        assert torch.equal(value, source.state_dict()[name].to(torch.float64)), name


def _arrays(model) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {name: rng.standard_normal(tuple(t.shape)).astype(np.float32)
            for name, t in model.state_dict().items()}


def test_plain_load_matches_torch_load():
    # The built-in model loads by setting each parameter, and torch's own path must agree.
    from mbd_cert._torch_model import build_model

    tensors = _arrays(mbd.ARCHITECTURE.build(CONFIG))
    fast = build_model(mbd.ARCHITECTURE, CONFIG, tensors)
    reference = mbd.ARCHITECTURE.build(CONFIG)
    reference.load_state_dict({n: torch.from_numpy(a) for n, a in tensors.items()})
    reference = reference.to(torch.float64)
    for (name, value), (_, expected) in zip(fast.named_parameters(),
                                             reference.named_parameters(), strict=True):
        assert value.dtype == torch.float64
        assert torch.equal(value, expected), name
        assert value.requires_grad


class _Scaled(torch.nn.Module):
    """A layer with a buffer, and a load hook that doubles the loaded weight."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)
        self.register_buffer("scale", torch.ones(2))
        self._register_load_state_dict_pre_hook(self._double)

    @staticmethod
    def _double(state, prefix, *args) -> None:
        state[prefix + "layer.weight"] = state[prefix + "layer.weight"] * 2.0


def test_buffers_and_hooks_take_torch_load():
    from mbd_cert.arch import load_state_dict_strict

    model = _Scaled()
    tensors = _arrays(model)
    load_state_dict_strict(model, tensors, dtype=torch.float64)
    assert model.scale.dtype == torch.float64
    assert torch.equal(model.scale, torch.from_numpy(tensors["scale"]).double())
    doubled = torch.from_numpy(tensors["layer.weight"]).double() * 2.0
    assert torch.equal(model.layer.weight, doubled)


class _Tied(torch.nn.Module):
    """Two layers that share one weight, so the state dict names it twice."""

    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(3, 3, bias=False)
        self.second = torch.nn.Linear(3, 3, bias=False)
        self.second.weight = self.first.weight


def test_tied_weights_take_torch_load():
    # named_parameters lists a tied weight once. torch's load copies every state name
    # into it in turn, so the last name's values win.
    from mbd_cert.arch import load_state_dict_strict

    tensors = _arrays(_Tied())
    model = _Tied()
    load_state_dict_strict(model, tensors)
    reference = _Tied()
    reference.load_state_dict({n: torch.from_numpy(a) for n, a in tensors.items()})
    assert torch.equal(model.first.weight, reference.first.weight)
    assert model.second.weight is model.first.weight
