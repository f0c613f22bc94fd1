"""Certificates of an architecture from another package issue and verify via its plugin.

The example package in examples/plugin_arch registers "late-fusion-linear" in the
entry-point group mbd_cert.architectures. CI installs it next to mbd-cert; where it is
not installed, the session fixture installs it editable into the running environment,
and where pip cannot do that offline, it registers the entry point through a
dist-info directory on sys.path, which importlib.metadata reads the same way.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mbd_cert import signing
from mbd_cert.arch import available_architectures, get_architecture
from mbd_cert.cli import main

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = ROOT / "examples" / "plugin_arch"
NAME = "late-fusion-linear"


def _registered() -> bool:
    return any(ep.name == NAME
               for ep in importlib.metadata.entry_points(group="mbd_cert.architectures"))


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory) -> str:
    """Make the example architecture importable and registered; return a PYTHONPATH."""
    extra = [str(PLUGIN_DIR)]
    if not _registered():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps",
             "--no-build-isolation", "-e", str(PLUGIN_DIR)],
            check=False, capture_output=True, timeout=300,
        )
        importlib.invalidate_caches()
    if not _registered():
        # pip could not build the package here (no setuptools in the environment, no
        # network): register the entry point with a minimal dist-info directory.
        site = tmp_path_factory.mktemp("plugin-site")
        info = site / "mbd_cert_example_arch-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: mbd-cert-example-arch\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text(
            f"[mbd_cert.architectures]\n{NAME} = mbd_cert_example_arch:ARCHITECTURE\n")
        sys.path.append(str(site))
        extra.append(str(site))
        importlib.invalidate_caches()
    # An editable install's .pth file is read only when the interpreter starts.
    if str(PLUGIN_DIR) not in sys.path:
        sys.path.append(str(PLUGIN_DIR))
    assert _registered()
    return os.pathsep.join(extra)


@pytest.fixture(scope="module")
def issued(plugin_path, tmp_path_factory):
    from mbd_cert_example_arch.make_checkpoint import train

    base = tmp_path_factory.mktemp("plugin")
    checkpoint = train(base / "ck", seed=0)
    private_path, public_path = signing.write_keypair(base / "issuer")
    result = CliRunner().invoke(main, [
        "issue", "--checkpoint", str(checkpoint), "--modality", "audio", "--epsilon", "1",
        "--key", str(private_path), "--out", str(base / "deleted")])
    assert result.exit_code == 0, result.output
    return base, public_path


def test_registry_finds_plugin(plugin_path):
    architecture = get_architecture(NAME)
    assert architecture.name == NAME
    assert architecture.version == "1"
    assert NAME in available_architectures()
    assert architecture.encoder_prefixes({}, "audio") == ["encoders.audio"]


def test_plugin_loads_without_torch(plugin_path):
    """R-ARCH-3: loading a plugin's entry point imports no torch."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from mbd_cert.arch import get_architecture\n"
            f"a = get_architecture({NAME!r})\n"
            "print(a.validate_config({'input_dims': {'text': 1, 'audio': 2, 'vision': 3}})"
            "['embed_dim'])\n")
    env = dict(os.environ, PYTHONPATH=plugin_path)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "8"


def test_plugin_checkpoint_layout(issued):
    base, _ = issued
    config = json.loads((base / "ck" / "config.json").read_text())
    assert config["architecture"] == NAME
    for name in ("model.safetensors", "probe.safetensors", "eval.safetensors"):
        assert (base / "ck" / name).is_file()


def test_plugin_certificate_verifies(issued):
    base, public_path = issued
    cert = json.loads((base / "deleted" / "cert.json").read_text())
    assert cert["subject_model"]["architecture"]["name"] == NAME
    assert cert["deletion"]["removed_tensors"] == ["encoders.audio.bias", "encoders.audio.weight"]
    result = CliRunner().invoke(main, [
        "verify", str(base / "deleted" / "cert.json"), str(base / "deleted" / "model.safetensors"),
        "--key", str(public_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    assert statuses["deleted-tensors-zero"] == "pass"
    assert statuses["signature"] == "pass"
    assert statuses["model-tensors"] == "pass"


def test_plugin_tensor_listing_matches_model(plugin_path):
    # The torch-free listing level 1 uses must name exactly what the model builds.
    architecture = get_architecture(NAME)
    config = {"modalities": ["text", "audio", "vision"], "embed_dim": 5,
              "input_dims": {"text": 7, "audio": 3, "vision": 4}}
    model = architecture.build(config)
    listed = architecture.tensor_shapes(config)
    assert listed == {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert {str(t.dtype) for t in model.state_dict().values()} == {"torch.float32"}


def test_plugin_tampered_model_fails(issued, tmp_path):
    base, public_path = issued
    model = tmp_path / "model.safetensors"
    data = bytearray((base / "deleted" / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    model.write_bytes(bytes(data))
    result = CliRunner().invoke(main, [
        "verify", str(base / "deleted" / "cert.json"), str(model), "--key", str(public_path),
        "--json"])
    assert result.exit_code == 1
    codes = {check["code"] for check in json.loads(result.stdout)["checks"]}
    assert "E_DIGEST_MISMATCH" in codes


def test_plugin_bad_config_exits_2(issued, tmp_path):
    base, _ = issued
    checkpoint = tmp_path / "ck"
    checkpoint.mkdir()
    for name in ("model.safetensors", "probe.safetensors"):
        (checkpoint / name).write_bytes((base / "ck" / name).read_bytes())
    config = json.loads((base / "ck" / "config.json").read_text())
    config["config"]["embed_dim"] = 0
    (checkpoint / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(main, [
        "issue", "--checkpoint", str(checkpoint), "--modality", "audio", "--epsilon", "1",
        "--key", str(base / "issuer.key"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "E_CONFIG_INVALID" in result.stderr
    assert "config.embed_dim" in result.stderr


def test_plugin_issue_never_takes_closed_form(issued, monkeypatch, tmp_path):
    # The written-out gradients are for the built-in model and objectives only.
    from mbd_cert.arch import _mbd_gradients

    results = []
    real = _mbd_gradients.for_architecture

    def recorded(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    def fail_on_build(*args, **kwargs):
        raise AssertionError("the plugin model reached the closed form")

    monkeypatch.setattr(_mbd_gradients, "for_architecture", recorded)
    monkeypatch.setattr(_mbd_gradients.LateLayerGradients, "__init__", fail_on_build)
    base, _ = issued
    result = CliRunner().invoke(main, [
        "issue", "--checkpoint", str(base / "ck"), "--modality", "audio", "--epsilon", "1",
        "--key", str(base / "issuer.key"), "--out", str(tmp_path / "deleted")])
    assert result.exit_code == 0, result.output
    assert results == [None, None]
