"""Model building shared by issuer and verifier: one tensor per name, eligible tensors."""

from __future__ import annotations

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
