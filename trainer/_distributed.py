"""Data-parallel training under ``torchrun`` and mixed precision on CUDA.

Launch: ``torchrun --nproc_per_node N -m mbd_cert.cli train ...``. torchrun sets
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`init_from_env` reads them and joins
the process group (NCCL on CUDA, gloo on CPU). Every rank draws the same batch order
and modality dropout from the same seeded generator and trains on its own strided
share of each batch. The masks of the model's dropout layers come from the global
torch generator, which :func:`seed_rank` seeds per rank. DistributedDataParallel
averages the gradients, so all ranks hold the same weights after each step. Only
rank 0 writes the checkpoint.

Mixed precision: on CUDA the forward pass runs under ``torch.autocast`` in bfloat16
where the GPU supports it, else float16 with a ``GradScaler``. Parameters and the
optimiser state stay float32. CPU training always runs in float32.

Stability: internal to the trainer.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mbd_cert.errors import InputError

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "off", "bf16", "fp16")


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run (world size 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """Whether more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes outputs (rank 0)."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise InputError(f"environment variable {name}={raw!r} is not an integer",
                         hint="launch with torchrun, which sets it",
                         code="E_PARAMETER_INVALID") from exc


def requested_world_size() -> int:
    """Return the number of processes ``torchrun`` started (``WORLD_SIZE``; 1 when unset).

    Raises:
        InputError: ``WORLD_SIZE`` is not an integer.
    """
    return _env_int("WORLD_SIZE", 1)


def init_from_env(device: torch.device) -> Distributed:
    """Join the process group that ``torchrun`` describes in the environment.

    Returns world size 1 without touching ``torch.distributed`` when ``WORLD_SIZE`` is
    unset or 1. An already initialised default group is used as it is.

    Raises:
        InputError: The environment variables are malformed, RANK is outside
            [0, WORLD_SIZE), or RANK, MASTER_ADDR or MASTER_PORT is missing while no
            process group is initialised.
    """
    world_size = requested_world_size()
    if world_size <= 1:
        return Distributed()
    if not dist.is_initialized():
        # init_process_group reads these from the environment (env:// rendezvous).
        missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT")
                   if not os.environ.get(name)]
        if missing:
            raise InputError(
                f"WORLD_SIZE={world_size} requests data-parallel training, but "
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set",
                hint="launch with torchrun --nproc_per_node N -m mbd_cert.cli train ..., "
                "or unset WORLD_SIZE to train in one process",
                code="E_PARAMETER_INVALID",
            )
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise InputError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size})",
                         hint="launch with torchrun, which sets both",
                         code="E_PARAMETER_INVALID")
    owns_group = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        owns_group = True
    logger.info("data-parallel training: rank %d of %d (%s)", rank, world_size,
                dist.get_backend())
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank,
                       owns_group=owns_group)


def seed_rank(seed: int, context: Distributed) -> None:
    """Seed the global torch generator from ``seed`` and the rank (no-op in one process).

    nn.Dropout draws its masks from the global generator. With one seed on every rank,
    the i-th rows of all shares would get the same mask, so the rows of a batch would
    not be dropped independently as they are in one process.
    """
    if not context.enabled:
        return
    state = np.random.SeedSequence([seed, context.rank]).generate_state(1, dtype=np.uint64)
    torch.manual_seed(int(state[0]))


def device_for(device: torch.device, context: Distributed) -> torch.device:
    """Return this rank's device: ``cuda:LOCAL_RANK`` for a distributed CUDA run."""
    if context.enabled and device.type == "cuda":
        torch.cuda.set_device(context.local_rank)
        return torch.device("cuda", context.local_rank)
    return device


def shutdown(context: Distributed) -> None:
    """Leave the process group if :func:`init_from_env` created it."""
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard(index: torch.Tensor, context: Distributed) -> torch.Tensor:
    """Return this rank's strided share of one batch's row indices."""
    if not context.enabled:
        return index
    return index[context.rank::context.world_size]


def share_weight(share_rows: int, batch_rows: int, context: Distributed) -> float:
    """Return the factor for this rank's mean loss so that averaging over ranks weighs rows equally.

    DistributedDataParallel averages the ranks' gradients. With a batch of 63 rows on
    two ranks the shares have 32 and 31 rows, and each rank's mean would weigh its rows
    by 1/64 or 1/62. Scaling each mean by share_rows * world_size / batch_rows gives
    every row 1/63, as in one process. The factor is exactly 1.0 in one process and for
    equal shares.
    """
    if not context.enabled:
        return 1.0
    return share_rows * context.world_size / batch_rows


def broadcast_float(value: float, context: Distributed, device: torch.device) -> float:
    """Return rank 0's ``value`` on every rank, so all ranks take the same decisions."""
    if not context.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def barrier(context: Distributed) -> None:
    """Wait for every rank (no-op when not distributed)."""
    if context.enabled:
        dist.barrier()


class LossModule(torch.nn.Module):
    """Wrap a loss function so that its forward pass runs inside DistributedDataParallel.

    DDP synchronises gradients only for work done inside its own ``forward``. The
    training losses call ``forward_parts`` and ``predict_from_parts`` directly, so the
    whole loss computation is wrapped.
    """

    def __init__(self, model: torch.nn.Module, loss: Any) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.loss(self.model, *args, **kwargs)


def wrap(model: torch.nn.Module, loss: Any, context: Distributed,
         device: torch.device) -> torch.nn.Module:
    """Return a module computing ``loss(model, ...)``, under DDP when distributed."""
    module = LossModule(model, loss)
    if not context.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # Every parameter takes part in each step (encoders run on absent inputs too, and
    # their outputs are masked), except the encoders of modalities deleted in the config.
    unused = bool(getattr(model, "deleted", ()))
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=unused)


@dataclass(frozen=True)
class Precision:
    """Mixed-precision setting: the autocast dtype (None for float32) and GradScaler use."""

    dtype: torch.dtype | None
    scaled: bool

    @property
    def name(self) -> str:
        """The recorded name: ``float32``, ``bf16`` or ``fp16``."""
        return {None: "float32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """Choose the training precision; anything but float32 only on CUDA.

    Raises:
        InputError: An unknown name, or bf16/fp16 requested on a CPU device.
    """
    if requested not in PRECISIONS:
        raise InputError(f"mixed precision must be one of {', '.join(PRECISIONS)}, "
                         f"got {requested!r}", code="E_PARAMETER_INVALID")
    if device.type != "cuda":
        if requested in ("bf16", "fp16"):
            raise InputError(f"mixed precision {requested} needs a CUDA device, got {device}",
                             hint="use auto or off on CPU", code="E_PARAMETER_INVALID")
        return Precision(None, False)
    if requested == "off":
        return Precision(None, False)
    if requested == "bf16" or (requested == "auto" and torch.cuda.is_bf16_supported()):
        return Precision(torch.bfloat16, False)
    return Precision(torch.float16, True)


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Return the autocast context for one forward pass (a no-op for float32)."""
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision.dtype)


def grad_scaler(precision: Precision, device: torch.device) -> Any:
    """Return a GradScaler that is active only for float16."""
    return torch.amp.GradScaler(device.type, enabled=precision.scaled)
