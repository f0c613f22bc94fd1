"""Data-parallel training with torchrun: two CPU processes on the gloo backend.

The run must finish on both ranks and write one checkpoint (rank 0 only) that records
the world size.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mbd_cert import _safetensors

TINY = [
    "--corpus", "synthetic", "--seed", "0", "--epochs", "2", "--hidden-dim", "8",
    "--shared-dim", "4", "--private-dim", "4", "--fusion-hidden", "8",
    "--probe-members", "16", "--probe-nonmembers", "16", "--no-progress",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _torchrun(tmp_path: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "mbd_cert.cli", "train", *TINY, "--device", "cpu", "--out", str(out),
    ]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_two_process_gloo_training(tmp_path):
    out = tmp_path / "ck"
    result = _torchrun(tmp_path, out)
    assert result.returncode == 0, result.stderr[-4000:]
    training = json.loads((out / "training.json").read_text())
    assert training["world_size"] == 2
    assert training["precision"] == "float32"
    assert training["epochs_run"] == 2
    header = _safetensors.read_header(out / "model.safetensors")
    assert any(name.startswith("encoders.audio.") for name in header.tensors)
    # Only rank 0 wrote: no second or partial directory next to the checkpoint.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    # Only rank 0 reports, so stdout has the one result line of a single process.
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("trained 2 epochs")


def test_precision_rejects_half_on_cpu():
    import torch

    from mbd_cert.errors import InputError
    from trainer._distributed import resolve_precision

    assert resolve_precision("auto", torch.device("cpu")).name == "float32"
    with pytest.raises(InputError, match="needs a CUDA device"):
        resolve_precision("bf16", torch.device("cpu"))
    with pytest.raises(InputError, match="must be one of"):
        resolve_precision("fp8", torch.device("cpu"))


def test_shard_splits_batch_by_rank():
    import torch

    from trainer._distributed import Distributed, shard

    index = torch.arange(7)
    first = shard(index, Distributed(rank=0, world_size=2))
    second = shard(index, Distributed(rank=1, world_size=2))
    assert first.tolist() == [0, 2, 4, 6]
    assert second.tolist() == [1, 3, 5]
    assert shard(index, Distributed()).tolist() == list(range(7))


def test_share_weight_equalises_rows():
    from trainer._distributed import Distributed, share_weight

    two = [Distributed(rank=rank, world_size=2) for rank in (0, 1)]
    # 7 rows as 4 + 3: after DDP's average each row weighs 1/7, as in one process.
    first = share_weight(4, 7, two[0])
    second = share_weight(3, 7, two[1])
    assert first / 4 / 2 == pytest.approx(1 / 7)
    assert second / 3 / 2 == pytest.approx(1 / 7)
    assert share_weight(4, 8, two[0]) == 1.0
    assert share_weight(7, 7, Distributed()) == 1.0


def test_batch_below_world_size_rejected(tmp_path, monkeypatch):
    # Two ranks skip every one-sample batch, so training would take no step and write
    # the untrained model with exit 0.
    import torch.distributed as dist
    from mbd_factories import build_corpus

    from mbd_cert.errors import InputError
    from trainer import train as train_module

    def never(*args, **kwargs):
        raise AssertionError("the process group must not be joined")

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(train_module._distributed, "init_from_env", never)
    out = tmp_path / "ck"
    with pytest.raises(InputError) as info:
        train_module.train(build_corpus(), {"epochs": 1, "batch_size": 1}, out, seed=0,
                           progress=False)
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "batch size 1" in str(info.value)
    assert "--batch-size 2" in info.value.hint
    assert not out.exists()
    assert not dist.is_initialized()


def test_batch_equal_world_size_accepted(tmp_path, monkeypatch):
    from mbd_factories import build_corpus

    from trainer import train as train_module

    class GroupJoined(Exception):
        pass

    def join_group(*args, **kwargs):
        raise GroupJoined

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(train_module._distributed, "init_from_env", join_group)
    with pytest.raises(GroupJoined):
        train_module.train(build_corpus(), {"epochs": 1, "batch_size": 2}, tmp_path / "ck",
                           seed=0, progress=False)


@pytest.mark.parametrize("name", ["RANK", "MASTER_ADDR", "MASTER_PORT"])
def test_missing_torchrun_variable_rejected(monkeypatch, name):
    # Without the check torch.distributed raises ValueError, which the CLI reports as an
    # internal error: exit 3 and "this is a bug in mbd-cert".
    import torch
    import torch.distributed as dist

    from mbd_cert.errors import InputError
    from trainer._distributed import init_from_env

    for variable, value in {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1",
                            "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv(name)
    with pytest.raises(InputError) as info:
        init_from_env(torch.device("cpu"))
    assert info.value.code == "E_PARAMETER_INVALID"
    assert f"{name} is not set" in str(info.value)
    assert "torchrun" in info.value.hint
    assert not dist.is_initialized()


def test_rank_outside_world_size_rejected(monkeypatch):
    # Without the check init_process_group blocks until its timeout, waiting for a
    # rendezvous that no process serves.
    import torch
    import torch.distributed as dist

    from mbd_cert.errors import InputError
    from trainer._distributed import init_from_env

    def never(*args, **kwargs):
        raise AssertionError("the process group must not be joined")

    monkeypatch.setattr(dist, "init_process_group", never)

    for variable, value in {"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1",
                            "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(InputError, match="RANK=2 is outside"):
        init_from_env(torch.device("cpu"))


def test_cli_world_size_alone_exits_2(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from mbd_cert.cli import main

    for variable in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(variable, raising=False)
    out = tmp_path / "ck"
    result = CliRunner().invoke(main, ["train", *TINY, "--out", str(out)],
                                env={"WORLD_SIZE": "2"})
    assert result.exit_code == 2, result.output
    assert "E_PARAMETER_INVALID" in result.stderr
    assert "RANK, MASTER_ADDR, MASTER_PORT are not set" in result.stderr
    assert not out.exists()


def _first_dropout_mask(tmp_path, monkeypatch, rank):
    """Train one epoch as ``rank`` of two ranks, without a process group.

    Returns the first dropout mask that this rank draws.
    """
    import torch
    from mbd_factories import build_corpus

    from trainer import _distributed
    from trainer import train as train_module

    context = _distributed.Distributed(rank=rank, world_size=2)
    monkeypatch.setattr(_distributed, "init_from_env", lambda device: context)
    monkeypatch.setattr(_distributed, "wrap",
                        lambda model, loss, context, device: _distributed.LossModule(model,
                                                                                     loss))
    monkeypatch.setattr(_distributed, "broadcast_float", lambda value, context, device: value)
    monkeypatch.setattr(_distributed, "barrier", lambda context: None)
    masks = []

    def record(module, inputs, output):
        if isinstance(module, torch.nn.Dropout) and module.training and not masks:
            masks.append((output == 0) & (inputs[0] != 0))

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        train_module.train(build_corpus(), {"epochs": 1, "batch_size": 64},
                           tmp_path / f"rank{rank}", seed=0, progress=False)
    finally:
        hook.remove()
    return masks[0]


def test_ranks_draw_own_dropout_masks(tmp_path, monkeypatch):
    import torch

    first = _first_dropout_mask(tmp_path, monkeypatch, 0)
    second = _first_dropout_mask(tmp_path, monkeypatch, 1)
    assert first.shape == second.shape
    assert first.any()
    assert not torch.equal(first, second)
    # Each rank's stream stays a function of the seed and the rank.
    assert torch.equal(first, _first_dropout_mask(tmp_path / "again", monkeypatch, 0))


@pytest.mark.parametrize(("rank", "expected"), [
    (None, "the output directory ck was left as it was"),
    ("0", "the output directory ck was left as it was"),
    ("1", "rank 1 writes no output; rank 0's message reports whether the checkpoint was written"),
])
def test_interrupt_text_per_rank(monkeypatch, tmp_path, rank, expected):
    # Rank 0 may have published the checkpoint when Ctrl-C reaches the other ranks,
    # so only rank 0 can report that the output directory was left as it was.
    from trainer.cli import interrupted_text

    monkeypatch.chdir(tmp_path)
    Path("ck").mkdir()
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    assert interrupted_text({"out_dir": Path("ck")}) == expected
