"""Train a small late-fusion-linear model and write a checkpoint that mbd-cert issues from.

The checkpoint directory has the layout ``mbd-cert issue`` reads: ``model.safetensors``
(float32 weights), ``config.json`` (``architecture``, ``architecture_version``,
``config``), ``probe.safetensors`` (members and non-members, format
``mbd-cert-probe/1``) and ``eval.safetensors`` (held-out samples, same layout).

The data are synthetic: a latent sentiment z drives every modality's features, and the
label is 3 * tanh(z). With the defaults, `time mbd-cert-example-checkpoint --out ck` took
2.2 s on a machine with two CPU cores.

    mbd-cert-example-checkpoint --out ck --seed 0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from mbd_cert_example_arch import NAME, VERSION, validate_config
from mbd_cert_example_arch.model import LateFusionModel

PROBE_FORMAT = "mbd-cert-probe/1"


def make_data(n: int, config: dict, seq_len: int, rng: np.random.Generator) -> dict:
    """Return inputs, presence (about 20 % of entries missing, one modality kept) and labels."""
    modalities = config["modalities"]
    latent = rng.normal(size=n)
    inputs = {}
    for m in modalities:
        direction = rng.normal(size=config["input_dims"][m])
        noise = rng.normal(scale=0.5, size=(n, seq_len, config["input_dims"][m]))
        inputs[m] = (latent[:, None, None] * direction[None, None, :] + noise).astype(np.float32)
    present = rng.random((n, len(modalities))) > 0.2
    present[np.arange(n), rng.integers(0, len(modalities), size=n)] = True
    for column, m in enumerate(modalities):
        inputs[m][~present[:, column]] = 0.0
    label = (3.0 * np.tanh(latent)).astype(np.float32)
    return {"inputs": inputs, "present": present, "label": label}


def _subset(data: dict, rows: np.ndarray) -> dict:
    return {"inputs": {m: v[rows] for m, v in data["inputs"].items()},
            "present": data["present"][rows], "label": data["label"][rows]}


def _write_probe(path: Path, data: dict, member: np.ndarray, modalities: list[str]) -> None:
    tensors = {f"inputs.{m}": np.array(data["inputs"][m], order="C") for m in modalities}
    tensors["present"] = data["present"].astype(np.uint8)
    tensors["label"] = data["label"]
    tensors["member"] = member.astype(np.uint8)
    save_file(tensors, str(path),
              metadata={"format": PROBE_FORMAT, "modalities": json.dumps(modalities)})


def train(out: Path, *, seed: int = 0, epochs: int = 60, n_train: int = 256,
          n_test: int = 128, probe_size: int = 32) -> Path:
    """Train the model and write the checkpoint directory ``out`` (must not exist)."""
    config = validate_config({"input_dims": {"text": 6, "audio": 4, "vision": 5}})
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    data = make_data(n_train + n_test, config, seq_len=3, rng=rng)
    train_data = _subset(data, np.arange(n_train))
    test_data = _subset(data, np.arange(n_train, n_train + n_test))

    model = LateFusionModel(config)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    inputs = {m: torch.from_numpy(v) for m, v in train_data["inputs"].items()}
    present = torch.from_numpy(train_data["present"])
    label = torch.from_numpy(train_data["label"])
    for _ in range(epochs):
        # Modality dropout: hide each observed modality with probability 0.3, so the
        # generators learn to stand in for a missing one.
        keep = present & (torch.rand(present.shape) > 0.3)
        keep[~keep.any(dim=1), 0] = True
        optimiser.zero_grad()
        loss = (model(inputs, keep) - label).abs().mean()
        loss.backward()
        optimiser.step()

    out.mkdir(parents=True)
    # np.array(order="C") and not np.ascontiguousarray, which turns a 0-d tensor (a
    # BatchNorm's num_batches_tracked, say) into shape [1].
    weights = {name: np.array(value.detach().numpy().astype(np.float32), order="C")
               for name, value in model.state_dict().items()}
    # The metadata the issuer writes on released models; 'mbd-cert evaluate' and level 1
    # read the same two keys.
    save_file(weights, str(out / "model.safetensors"),
              metadata={"format": "mbd-cert-model/1", "architecture": NAME})
    (out / "config.json").write_text(json.dumps(
        {"architecture": NAME, "architecture_version": VERSION, "config": config}, indent=2) + "\n")
    half = probe_size // 2
    probe_rows = np.concatenate([np.arange(half), n_train + np.arange(half)])
    member = np.arange(len(probe_rows)) < half
    _write_probe(out / "probe.safetensors", _subset(data, probe_rows), member,
                 config["modalities"])
    eval_rows = np.arange(half, n_test)
    _write_probe(out / "eval.safetensors", _subset(test_data, eval_rows),
                 np.zeros(len(eval_rows), dtype=bool), config["modalities"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to create")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and initialisation")
    parser.add_argument("--epochs", type=int, default=60, help="full-batch Adam steps")
    args = parser.parse_args(argv)
    train(args.out, seed=args.seed, epochs=args.epochs)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
