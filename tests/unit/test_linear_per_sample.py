"""Per-sample gradients of Linear layers from activations agree with the per-sample loop."""

from __future__ import annotations

import subprocess
import sys

import torch

from mbd_cert import _linear_per_sample
from mbd_cert.arch.mbd import forget_objective, retain_objective
from mbd_cert.saliency import gradient_moments
from tests.unit.test_gradient_moments import _assert_close, _batch, _model, _names


def _both(model, names, objective, batch, weights):
    loop = gradient_moments(model, names, objective, batch, weights, vectorize=False)
    fast = gradient_moments(model, names, objective, batch, weights, independent_samples=True)
    return loop, fast


def test_forget_moments_uneven_weights():
    model = _model([])
    batch = _batch(31, seed=11)
    weights = batch["present"][:, 1].to(torch.float64) * torch.linspace(0.2, 3.0, 31,
                                                                        dtype=torch.float64)
    assert 0 < int((weights > 0).sum()) < 31
    # The forget objective calls every fusion and generator layer twice per sample, so
    # the per-sample gradient is a sum of two outer products. Squaring each product
    # separately, without the cross term, would not match the loop.
    loop, fast = _both(model, _names(model), lambda m, b: forget_objective(m, b, "audio"),
                       batch, weights)
    _assert_close(fast[0], loop[0])
    _assert_close(fast[1], loop[1])
    assert any(float(f.abs().max()) > 0 for f in fast[1].values())


def test_retain_moments_mixed_names():
    model = _model(["audio"])
    batch = _batch(19, seed=12)
    names = [*_names(model), "property_embedding.weight", "encoders.text.norm.weight"]
    loop, fast = _both(model, names, lambda m, b: retain_objective(m, b, "audio"), batch,
                       torch.ones(19, dtype=torch.float64))
    _assert_close(fast[0], loop[0])
    _assert_close(fast[1], loop[1])


def test_chunks_and_progress(monkeypatch):
    from mbd_cert import saliency

    monkeypatch.setattr(saliency, "_LINEAR_CHUNK", 5)
    model = _model(["audio"])
    batch = _batch(12, seed=13)
    done: list[int] = []
    weights = torch.ones(12, dtype=torch.float64)
    objective = lambda m, b: retain_objective(m, b, "audio")  # noqa: E731
    loop = gradient_moments(model, _names(model), objective, batch, weights, vectorize=False)
    fast = gradient_moments(model, _names(model), objective, batch, weights, done.append,
                            independent_samples=True)
    _assert_close(fast[1], loop[1])
    assert done == [5, 10, 12]


def test_linear_route_one_chunk_above_256():
    # The route keeps activations, not per-sample gradients, so a probe set larger
    # than the vmap chunk (256 samples) still goes through in one forward pass.
    model = _model(["audio"])
    batch = _batch(300, seed=14)
    done: list[int] = []
    weights = torch.ones(300, dtype=torch.float64)
    objective = lambda m, b: retain_objective(m, b, "audio")  # noqa: E731
    gradient_moments(model, _names(model), objective, batch, weights, done.append,
                     independent_samples=True)
    assert done == [300]


def test_linear_chunk_shrinks_for_wide_layers():
    from mbd_cert import saliency
    from mbd_cert._linear_per_sample import linear_owners

    model = _model(["audio"])
    batch = _batch(3, seed=15)
    narrow = saliency._linear_chunk_size(model, linear_owners(model, _names(model)), batch)
    assert narrow == saliency._LINEAR_CHUNK
    with torch.device("meta"):  # shapes only: the real layers would take 512 MiB
        wide = torch.nn.Sequential(torch.nn.Linear(8192, 8192), torch.nn.Linear(8192, 8192))
    owners = linear_owners(wide, ["0.weight", "1.weight"])
    # 4 x 8192 features x 48 bytes per sample: about 1.5 MiB, so 170 samples per chunk.
    assert saliency._linear_chunk_size(wide, owners, {}) == 170


def test_linear_chunk_shrinks_for_long_inputs():
    # The forward pass keeps activations of layers outside the covered ones, such as the
    # encoders over a sequence. Their size grows with each sample's inputs.
    from mbd_cert import saliency
    from mbd_cert._linear_per_sample import linear_owners

    model = _model(["audio"])
    owners = linear_owners(model, _names(model))
    with torch.device("meta"):  # shapes only: 1 MiB of float64 inputs per sample
        batch = {"inputs": {"text": torch.empty(4, 1024, 128, dtype=torch.float64)},
                 "present": torch.empty(4, 3, dtype=torch.bool)}
    chunk = saliency._linear_chunk_size(model, owners, batch)
    assert chunk < 32
    assert chunk * saliency._LINEAR_BYTES_PER_INPUT_BYTE * 2**20 <= saliency._CHUNK_BYTES


def test_no_linear_names_skip_batched_pass():
    # Without a Linear parameter among the names, every name goes through vmap, one
    # sample per call. A pass over the whole chunk would compute nothing.
    model = _model(["audio"])
    batch = _batch(12, seed=16)
    names = ["property_embedding.weight", "encoders.text.norm.weight"]
    rows: list[int] = []

    def objective(m, b):
        rows.append(int(b["present"].shape[0]))
        return retain_objective(m, b, "audio")

    weights = torch.ones(12, dtype=torch.float64)
    loop = gradient_moments(model, names, objective, batch, weights, vectorize=False)
    rows.clear()
    done: list[int] = []
    fast = gradient_moments(model, names, objective, batch, weights, done.append,
                            independent_samples=True)
    _assert_close(fast[0], loop[0])
    _assert_close(fast[1], loop[1])
    assert rows
    assert set(rows) == {1}
    assert done[-1] == 12


class _Tied(torch.nn.Module):
    """Uses its layer's weight a second time outside the layer's forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 3).to(torch.float64)
        self.other = torch.nn.Linear(3, 1).to(torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.layer(x)) @ self.layer.weight
        return self.other(hidden).squeeze(-1) ** 2


class _Sequence(torch.nn.Module):
    """Applies its layer to [n, T, d] steps, where one sample's gradient sums over steps."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.layer = torch.nn.Linear(3, 2).to(torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = x.unsqueeze(1).expand(-1, 4, -1) * torch.arange(1.0, 5.0, dtype=x.dtype)[:, None]
        return torch.tanh(self.layer(steps)).sum(dim=(1, 2)) ** 2


def _toy_case(module: torch.nn.Module, names: list[str]) -> None:
    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    batch = {"x": x}
    weights = torch.linspace(0.5, 1.5, 7, dtype=torch.float64)
    objective = lambda m, b: m(b["x"])  # noqa: E731
    owners = _linear_per_sample.linear_owners(module, names)
    _, _, rejected = _linear_per_sample.per_sample_linear_moments(
        module, owners, lambda: objective(module, batch), weights)
    loop, fast = _both(module, names, objective, batch, weights)
    _assert_close(fast[0], loop[0])
    _assert_close(fast[1], loop[1])
    return rejected


def test_tied_weight_falls_back():
    rejected = _toy_case(_Tied(), ["layer.weight", "layer.bias", "other.weight"])
    assert rejected == ["layer.weight"]


def test_sequence_input_falls_back():
    rejected = _toy_case(_Sequence(), ["layer.weight", "layer.bias"])
    assert rejected == ["layer.bias", "layer.weight"]


def test_linear_subclass_is_not_claimed():
    class Scaled(torch.nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2.0 * super().forward(x)

    model = torch.nn.Sequential(Scaled(2, 2), torch.nn.Linear(2, 1))
    assert sorted(_linear_per_sample.linear_owners(model, ["0.weight", "1.weight"])) == \
        ["1.weight"]


def test_issuer_saliency_does_not_import_dynamo():
    # torch.func.grad imports torch._dynamo on first use, 1.5 s of start-up for every
    # `mbd-cert issue`; the Linear path must not need it for the MBD model.
    script = (
        "import sys, torch\n"
        "from tests.unit.test_gradient_moments import _batch, _model, _names\n"
        "from mbd_cert.arch.mbd import forget_objective\n"
        "from mbd_cert.saliency import gradient_moments\n"
        "m = _model([]); b = _batch(9, seed=3)\n"
        "gradient_moments(m, _names(m), lambda x, y: forget_objective(x, y, 'audio'), b,\n"
        "                 torch.ones(9, dtype=torch.float64), independent_samples=True)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"
