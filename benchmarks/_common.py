"""Helpers shared by the benchmark scripts: machine description, timing, ratio spread.

Each benchmark runs the measured command and its alternative alternately in the same
process tree, so both see the same machine load; ratios are taken pairwise per
repetition and reported as median with min and max.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """Describe the machine: CPU model, cores, memory, Python and torch versions."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_kib"] = int(line.split()[1])
        info["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.is_available()
    except ImportError:
        info["torch"] = None
    return info


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    """Return (wall seconds, result) of one call."""
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def run_measured(command: Sequence[str], **kwargs: Any) -> dict[str, float]:
    """Run a command in a child that reports its own wall time and peak RSS.

    The child is a small Python wrapper, so the peak RSS (``ru_maxrss`` of its
    children) belongs to this one command and not to earlier runs.
    """
    wrapper = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
        "wall = time.perf_counter() - t\n"
        "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(json.dumps({'rc': r.returncode, 'wall_s': wall, 'max_rss_mib': u.ru_maxrss / 1024,"
        " 'user_s': u.ru_utime, 'sys_s': u.ru_stime}))\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *command], check=True,
                         capture_output=True, text=True, **kwargs)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result['rc']}: {out.stderr[-2000:]}")
    return result


def spread(values: Sequence[float]) -> dict[str, float]:
    """Return median, min, max and count of a list of numbers."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def checkpoint_or_train(checkpoint: Path | None, work: Path) -> Path:
    """Return ``checkpoint``, or train one on the synthetic corpus (seed 0) under ``work``."""
    if checkpoint is not None:
        return checkpoint
    trained = work / "ck"
    subprocess.run([sys.executable, "-m", "mbd_cert.cli", "train", "--corpus", "synthetic",
                    "--seed", "0", "--no-progress", "--out", str(trained)],
                   check=True, capture_output=True)
    return trained


def save(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/NAME.json`` with the machine description added."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
               "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def show(rows: Sequence[Sequence[Any]]) -> None:
    """Print rows as an aligned plain-text table."""
    text = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in text) for i in range(len(text[0]))]
    for row in text:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
