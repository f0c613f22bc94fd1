"""mbd_cert.checkpoint.read_probe_set: the probe set rules every reader applies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mbd_cert import _safetensors
from mbd_cert.checkpoint import MAX_PROBE_SAMPLES, PROBE_FORMAT, read_probe_set
from mbd_cert.errors import MalformedData

MODALITIES = ["text", "audio"]


def _probe_tensors(rows: int) -> dict[str, np.ndarray]:
    """Return a valid probe set of ``rows`` samples, one time step of width 2 per modality."""
    tensors = {f"inputs.{m}": np.zeros((rows, 1, 2), np.float32) for m in MODALITIES}
    tensors["present"] = np.ones((rows, len(MODALITIES)), np.uint8)
    tensors["label"] = np.zeros(rows, np.float32)
    tensors["member"] = (np.arange(rows) % 2).astype(np.uint8)
    return tensors


def _write(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    metadata = {"format": PROBE_FORMAT, "modalities": json.dumps(MODALITIES)}
    _safetensors.write_safetensors(path, tensors, metadata)
    return path


def test_valid_probe_set_read(tmp_path: Path) -> None:
    probe = read_probe_set(_write(tmp_path / "probe.safetensors", _probe_tensors(4)))
    assert probe.modalities == MODALITIES
    assert probe.label.shape == (4,)


def test_probe_set_over_sample_cap(tmp_path: Path) -> None:
    """R-LIM-3, R-PRB-1: a probe set of more than 100,000 samples is rejected."""
    assert MAX_PROBE_SAMPLES == 100_000
    # The cap is checked on the label tensor before any other tensor is read.
    tensors = {"label": np.zeros(100_001, np.float32)}
    with pytest.raises(MalformedData) as caught:
        read_probe_set(_write(tmp_path / "probe.safetensors", tensors))
    assert caught.value.code == "E_DATA_MALFORMED"
    assert caught.value.exit_code == 2
    assert "100001 samples, more than the cap of 100000" in caught.value.message


@pytest.mark.parametrize(
    ("tensor", "value", "message"),
    [("label", np.nan, "tensor 'label' contains NaN or infinite values"),
     ("label", np.inf, "tensor 'label' contains NaN or infinite values"),
     ("inputs.audio", -np.inf, "tensor 'inputs.audio' contains NaN or infinity"),
     ("present", 2, "tensor 'present' must hold only 0 and 1"),
     ("member", 2, "tensor 'member' must hold only 0 and 1")],
    ids=["label-nan", "label-inf", "inputs-inf", "present-2", "member-2"],
)
def test_probe_set_value_rejected(tmp_path: Path, tensor: str, value: float,
                                  message: str) -> None:
    """R-PRB-1: inputs and labels are finite, present and member hold only 0 and 1."""
    tensors = _probe_tensors(4)
    tensors[tensor].flat[-1] = value
    path = _write(tmp_path / "probe.safetensors", tensors)
    with pytest.raises(MalformedData) as caught:
        read_probe_set(path)
    assert caught.value.code == "E_DATA_MALFORMED"
    assert caught.value.exit_code == 2
    assert message in caught.value.message
    assert str(path) in caught.value.message
