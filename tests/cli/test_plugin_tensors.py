"""Plugin architectures with tied parameters or buffers under an eligible prefix.

Each test architecture wraps the built-in one under another name and is registered
through a stand-in entry point, so the issuer and the verifier find it by the lookup
that installed packages go through. Tied parameters break R-ARCH-9 and must be refused
with exit 2; a buffer under an eligible prefix is not eligible (R-SAL-1).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import shutil
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_support import (
    TINY_ISSUE_OPTIONS,
    IssuerKeys,
    assert_clean,
    assert_input_error,
    run_cli,
    verify,
)

torch = pytest.importorskip("torch")

from mbd_cert import _safetensors, arch  # noqa: E402
from mbd_cert.arch import mbd  # noqa: E402
from mbd_cert.checkpoint import read_tensors  # noqa: E402

MODULE = "mbd_cert_test_plugin_tensors"
CODE = "E_ARCHITECTURE_TENSORS_SHARED"
BUFFER = "fusion.center"


def _shared_encoder(model: Any) -> None:
    # The second encoder layer is one module for audio and vision.
    model.encoders["vision"].shared = model.encoders["audio"].shared


def _shared_generator(model: Any) -> None:
    model.generators["vision"].net[2] = model.generators["audio"].net[2]


def _buffer_view(model: Any) -> None:
    # Another name for the same values, without a second Parameter object.
    model.register_buffer("mirror", model.head.weight.detach().view(-1))


def _flat_generator(model: Any) -> None:
    # Weight and bias as disjoint slices of one flat storage, as a flattened-parameter
    # layout has them: one storage, but each name owns its own bytes.
    layer = model.generators["audio"].net[2]
    count = layer.weight.numel()
    flat = torch.cat([layer.weight.detach().reshape(-1), layer.bias.detach()])
    layer.weight = torch.nn.Parameter(flat[:count].view_as(layer.weight))
    layer.bias = torch.nn.Parameter(flat[count:])


def _fusion_buffer(model: Any) -> None:
    width = model.fusion[0].in_features
    model.fusion.register_buffer("center", torch.linspace(0.1, 1.0, width))


def _variant(name: str, change: Callable[[Any], None] | None) -> arch.Architecture:
    builtin = arch.get_architecture(arch.BUILTIN_NAME)

    def build(config: Mapping[str, Any]) -> Any:
        model = mbd.ARCHITECTURE.build(config)
        if change is not None:
            change(model)
        return model

    def tensor_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        assert builtin.tensor_shapes is not None
        shapes = dict(builtin.tensor_shapes(config))
        if change is _fusion_buffer:
            shapes[BUFFER] = (shapes["fusion.0.weight"][1],)
        if change is _buffer_view:
            shapes["mirror"] = (int(np.prod(shapes["head.weight"])),)
        return shapes

    return dataclasses.replace(builtin, name=name, build=build, tensor_shapes=tensor_shapes)


@pytest.fixture
def register(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Callable[[Any], None] | None],
                                                         None]:
    """Return a function that registers a variant of the built-in architecture."""
    module = types.ModuleType(MODULE)
    monkeypatch.setitem(sys.modules, MODULE, module)
    points: dict[str, importlib.metadata.EntryPoint] = {}
    monkeypatch.setattr(arch, "_entry_points", lambda: list(points.values()))

    def add(name: str, change: Callable[[Any], None] | None) -> None:
        attribute = name.replace("-", "_").upper()
        setattr(module, attribute, _variant(name, change))
        points[name] = importlib.metadata.EntryPoint(
            name=name, value=f"{MODULE}:{attribute}", group=arch.ENTRY_POINT_GROUP)

    return add


def _checkpoint(source: Path, target: Path, name: str,
                extra: Mapping[str, np.ndarray] | None = None) -> Path:
    """Copy a built-in checkpoint, renaming its architecture and adding tensors."""
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config["architecture"] = name
    (target / "config.json").write_text(json.dumps(config, indent=2))
    model = target / "model.safetensors"
    metadata = dict(_safetensors.read_header(model).metadata)
    metadata["architecture"] = name
    tensors = dict(read_tensors(model))
    tensors.update(extra or {})
    model.unlink()
    _safetensors.write_safetensors(model, tensors, metadata)
    return target


def _issue(checkpoint: Path, keys: IssuerKeys, out: Path) -> Any:
    return run_cli(["issue", "--checkpoint", checkpoint, *TINY_ISSUE_OPTIONS,
                    "--key", keys.private, "--out", out])


@pytest.mark.parametrize(
    ("change", "aliases"),
    [(_shared_encoder, ["encoders.audio.shared.weight", "encoders.vision.shared.weight"]),
     (_shared_generator, ["generators.audio.net.2.bias", "generators.vision.net.2.bias"]),
     (_buffer_view, ["head.weight", "mirror"])],
    ids=["shared-encoder", "shared-generator", "buffer-view"])
def test_issue_rejects_tied_tensors(register, tiny_checkpoint: Path, issuer_keys: IssuerKeys,
                                    tmp_path: Path, change, aliases):
    # R-ARCH-9: loading would copy the last alias over the others, so the released
    # model would differ from the certified one.
    register("test-tied", change)
    extra = {}
    if change is _buffer_view:
        head = read_tensors(tiny_checkpoint / "model.safetensors")["head.weight"]
        extra["mirror"] = np.asarray(head).reshape(-1)
    checkpoint = _checkpoint(tiny_checkpoint, tmp_path / "ck", "test-tied", extra)
    outcome = _issue(checkpoint, issuer_keys, tmp_path / "out")
    assert_clean(outcome)
    assert outcome.exit_code == 2, outcome.stderr
    assert f"[{CODE}]" in outcome.stderr
    for alias in aliases:
        assert repr(alias) in outcome.stderr
    assert "one tensor per name" in outcome.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("level", ["2", "3"])
def test_verifier_rejects_tied_tensors(register, tiny_checkpoint: Path,
                                       issuer_keys: IssuerKeys, tmp_path: Path, level: str):
    # A certificate issued with an untied build, verified where the installed build of
    # that architecture ties the encoder layer: levels 2 and 3 build the model and must
    # refuse it before any check.
    register("test-plugin", None)
    checkpoint = _checkpoint(tiny_checkpoint, tmp_path / "ck", "test-plugin")
    out = tmp_path / "out"
    issued = _issue(checkpoint, issuer_keys, out)
    assert issued.exit_code == 0, issued.stderr
    register("test-plugin", _shared_encoder)
    outcome = verify(out / "cert.json", out / "model.safetensors", issuer_keys.public,
                     "--level", level, "--bundle", out)
    assert_input_error(outcome, CODE)
    assert "'encoders.audio.shared.weight'" in outcome.stderr


def test_evaluate_rejects_tied_tensors(register, tiny_checkpoint: Path, tmp_path: Path):
    # evaluate loads checkpoints of any installed architecture that builds an MBD
    # model, so it must apply the same R-ARCH-9 check as issue and levels 2 and 3.
    register("test-tied", _shared_encoder)
    checkpoint = _checkpoint(tiny_checkpoint, tmp_path / "ck", "test-tied")
    outcome = run_cli(["evaluate", "--checkpoint", checkpoint])
    assert_clean(outcome)
    assert outcome.exit_code == 2, outcome.stderr
    assert f"[{CODE}]" in outcome.stderr
    assert "'encoders.audio.shared.weight'" in outcome.stderr


def test_evaluate_loads_untied_plugin(register, tiny_checkpoint: Path, tmp_path: Path):
    register("test-plugin", None)
    checkpoint = _checkpoint(tiny_checkpoint, tmp_path / "ck", "test-plugin")
    outcome = run_cli(["evaluate", "--checkpoint", checkpoint])
    assert outcome.exit_code == 0, outcome.stderr


def test_disjoint_views_issue_and_verify(register, tiny_checkpoint: Path,
                                        issuer_keys: IssuerKeys, tmp_path: Path):
    # R-ARCH-9 compares byte spans: parameters that share a storage without
    # overlapping load their own values, so such a model is certified and verified.
    register("test-flat", _flat_generator)
    checkpoint = _checkpoint(tiny_checkpoint, tmp_path / "ck", "test-flat")
    out = tmp_path / "out"
    issued = _issue(checkpoint, issuer_keys, out)
    assert issued.exit_code == 0, issued.stderr
    masks = read_tensors(out / "diff.safetensors")
    assert "mask.generators.audio.net.2.weight" in masks
    assert "mask.generators.audio.net.2.bias" in masks

    outcome = verify(out / "cert.json", out / "model.safetensors", issuer_keys.public,
                     "--level", "2", "--bundle", out, "--allow-inconclusive")
    assert_clean(outcome)
    assert outcome.exit_code == 0, outcome.stderr
    statuses = {check["name"]: check["status"] for check in outcome.report["checks"]}
    for name in ("pre-rebuild", "saliency-mask", "update-clip"):
        assert statuses[name] == "pass", outcome.stdout


def test_buffer_under_eligible_prefix_is_not_masked(register, tiny_checkpoint: Path,
                                                     issuer_keys: IssuerKeys, tmp_path: Path):
    # R-SAL-1: eligible tensors are parameters. The default groups cover fusion, so the
    # buffer fusion.center lies under one; it used to end issue with E_INTERNAL.
    register("test-buffer", _fusion_buffer)
    width = int(read_tensors(tiny_checkpoint / "model.safetensors")["fusion.0.weight"].shape[1])
    center = np.linspace(0.1, 1.0, width, dtype=np.float32)
    checkpoint = _checkpoint(tiny_checkpoint, tmp_path / "ck", "test-buffer", {BUFFER: center})
    out = tmp_path / "out"
    issued = _issue(checkpoint, issuer_keys, out)
    assert issued.exit_code == 0, issued.stderr

    diff = read_tensors(out / "diff.safetensors")
    assert f"mask.{BUFFER}" not in diff
    assert not np.any(diff.get(f"diff.{BUFFER}", np.zeros(1)))
    np.testing.assert_array_equal(read_tensors(out / "model.safetensors")[BUFFER], center)
    doc = json.loads((out / "cert.json").read_text())
    parameters = read_tensors(tiny_checkpoint / "model.safetensors")
    eligible = [n for n in parameters if n.startswith(("fusion.", "generators.audio."))]
    assert doc["saliency"]["eligible_count"] == sum(parameters[n].size for n in eligible)

    outcome = verify(out / "cert.json", out / "model.safetensors", issuer_keys.public,
                     "--level", "2", "--bundle", out, "--allow-inconclusive")
    assert_clean(outcome)
    assert outcome.report is not None, outcome.stderr
    statuses = {check["name"]: check["status"] for check in outcome.report["checks"]}
    for name in ("pre-rebuild", "mask-commitment", "diff-support", "saliency-mask"):
        assert statuses[name] == "pass", outcome.stdout
