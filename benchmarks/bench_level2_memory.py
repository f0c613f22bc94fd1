"""Peak resident memory of level-2 verification against the float64 size of the model.

Trains a widened model of the built-in architecture on the synthetic corpus (one
epoch: the weights only need to exist), issues a certificate for the deletion of
audio, then runs ``mbd-cert verify --level 2`` in a child process and reads its peak
RSS (``ru_maxrss``). A second child only imports torch and the level-2 modules; its
peak is the floor that any level-2 run pays before it reads a tensor. The script
reports the difference between the two peaks in units of the model's parameters in
float64 (8 bytes per entry) and of its eligible parameters in float64
(``saliency.eligible_count`` x 8 bytes).

Only the fusion layers are widened, because they are eligible by default and their
activations are small: wider encoders (``--hidden-dim``) add activation memory over
the probe sequences that does not scale with the parameters. Both children run with
``MALLOC_MMAP_THRESHOLD_`` fixed (64 KiB by default), so glibc returns a freed tensor
to the system at once. It does so anyway for blocks above the 32 MiB cap of its
dynamic threshold (glibc malloc.c, 64-bit), which is where the tensors of a large
model lie. Without the fixed threshold, freed memory of a small model stays resident
and the peak overstates what is live. Level 2 also keeps per-chunk buffers of up to
256 MiB (``mbd_cert._recompute.CHUNK_BYTES``), which a small model shows as several
copies.

    python benchmarks/bench_level2_memory.py --fusion-hidden 3072

With that width the model has about 9.9 million parameters (75 MiB in float64), and
the run takes about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_measured, save, show  # noqa: E402

MIB = 1024 * 1024
FLOOR_SNIPPET = "import torch, numpy, mbd_cert.verify, mbd_cert.verify_recompute"


def _cli(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "mbd_cert.cli", *arguments]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden-dim", type=int, default=64,
                        help="encoder and generator width [default: 64]")
    parser.add_argument("--fusion-hidden", type=int, default=3072,
                        help="fusion layer width [default: 3072]")
    parser.add_argument("--mmap-threshold", type=int, default=65536,
                        help="MALLOC_MMAP_THRESHOLD_ of both children in bytes, 0 to leave "
                        "glibc's default [default: 65536]")
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    args = parser.parse_args()

    from mbd_cert import _safetensors

    with tempfile.TemporaryDirectory(prefix="mbd-level2-memory-") as tmp:
        work = Path(tmp)
        checkpoint, out = work / "ck", work / "out"
        subprocess.run(_cli("train", "--corpus", "synthetic", "--seed", "0", "--no-progress",
                            "--epochs", "1", "--hidden-dim", str(args.hidden_dim),
                            "--fusion-hidden", str(args.fusion_hidden), "--out",
                            str(checkpoint)), check=True, capture_output=True)
        subprocess.run(_cli("keygen", "--out", str(work / "issuer")), check=True,
                       capture_output=True)
        subprocess.run(_cli("issue", "--checkpoint", str(checkpoint), "--modality", "audio",
                            "--key", str(work / "issuer.key"), "--epsilon", "10",
                            "--out", str(out)),
                       check=True, capture_output=True)
        header = _safetensors.read_header(out / "model.safetensors")
        parameters = sum(math.prod(entry.shape) for entry in header.tensors.values())
        document = json.loads((out / "cert.json").read_text())
        eligible = int(document["saliency"]["eligible_count"])

        env = dict(os.environ)
        if args.mmap_threshold:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
        floor = run_measured([sys.executable, "-c", FLOOR_SNIPPET], env=env)
        level2 = run_measured(_cli("verify", str(out / "cert.json"),
                                   str(out / "model.safetensors"), "--key",
                                   str(work / "issuer.pub"), "--level", "2", "--bundle",
                                   str(out)), env=env)

    parameter_mib = 8 * parameters / MIB
    eligible_mib = 8 * eligible / MIB
    above_floor = level2["max_rss_mib"] - floor["max_rss_mib"]
    payload = {
        "hidden_dim": args.hidden_dim, "fusion_hidden": args.fusion_hidden,
        "mmap_threshold": args.mmap_threshold,
        "parameters": parameters, "eligible_parameters": eligible,
        "parameters_float64_mib": parameter_mib, "eligible_float64_mib": eligible_mib,
        "floor": floor, "level2": level2, "above_floor_mib": above_floor,
        "above_floor_in_parameter_copies": above_floor / parameter_mib,
        "above_floor_in_eligible_copies": above_floor / eligible_mib,
    }
    show([
        ["quantity", "MiB", "x float64 parameters", "x float64 eligible"],
        ["import floor peak RSS", floor["max_rss_mib"], "", ""],
        ["level 2 peak RSS", level2["max_rss_mib"], "", ""],
        ["level 2 above floor", above_floor, above_floor / parameter_mib,
         above_floor / eligible_mib],
        [f"float64 parameters ({parameters})", parameter_mib, 1.0, ""],
        [f"float64 eligible ({eligible})", eligible_mib, "", 1.0],
    ])
    print(f"level 2 wall {level2['wall_s']:.1f} s")
    print(f"saved {save('level2_memory' + args.tag, payload)}")


if __name__ == "__main__":
    main()
