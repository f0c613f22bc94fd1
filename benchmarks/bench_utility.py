"""Utility after deleting audio at epsilon 1, against the model before deletion with audio missing.

For each corpus and seed, the script trains with the default hyper-parameters and
issues the deletion of ``audio`` at epsilon 1 (delta 1e-5, default clip and top-k).
It then reads the utility metrics that ``issue`` measures on the held-out test split
(``eval.safetensors``): ``before.missing_audio`` (the original model, audio input
absent) and ``after.deleted_audio`` (the released model). The drop is before minus after, so a
positive drop is a loss. Acc2 is reported in percentage points for both definitions
(negative vs non-negative, and negative vs positive with zero labels left out).

Usage: python benchmarks/bench_utility.py [--quick] [--corpora ...] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import save, show, spread  # noqa: E402

DATA_ROOT = Path("/work/shared/data")
METRICS = ("acc2_non_negative", "acc2_positive", "pearson_r", "mae")


def run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}: "
                           f"{result.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="synthetic corpus, seed 0")
    parser.add_argument("--corpora", nargs="+",
                        default=["synthetic", "ict-mmmo", "mosei-subset"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT,
                        help=f"folder holding the real corpora [default: {DATA_ROOT}]")
    args = parser.parse_args()
    corpora, seeds = (["synthetic"], [0]) if args.quick else (args.corpora, args.seeds)
    cli = [sys.executable, "-m", "mbd_cert.cli"]

    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="mbd-bench-utility-") as tmp:
        work = Path(tmp)
        run([*cli, "keygen", "--out", str(work / "issuer")])
        for corpus in corpora:
            extra = [] if corpus == "synthetic" else ["--data-root", str(args.data_root)]
            if extra and not args.data_root.exists():
                print(f"skipping {corpus}: {args.data_root} does not exist")
                continue
            per_seed = []
            for seed in seeds:
                ck, out = work / f"ck-{corpus}-{seed}", work / f"del-{corpus}-{seed}"
                run([*cli, "train", "--corpus", corpus, "--seed", str(seed), "--no-progress",
                     "--out", str(ck), *extra])
                run([*cli, "issue", "--checkpoint", str(ck), "--modality", "audio",
                     "--epsilon", "1", "--key", str(work / "issuer.key"), "--out", str(out)])
                utility = json.loads((out / "cert.json").read_text())["metrics"]["utility"]
                before = utility["before"]["missing_audio"]
                after = utility["after"]["deleted_audio"]
                per_seed.append({
                    "seed": seed, "n": utility["n"], "before_all": utility["before"]["all"],
                    "before_missing_audio": before, "after_deleted_audio": after,
                    "drop": {m: before[m] - after[m] for m in METRICS},
                })
            results[corpus] = {
                "seeds": per_seed,
                "drop": {m: spread([s["drop"][m] for s in per_seed]) for m in METRICS},
            }
    saved = save("utility" + ("_quick" if args.quick else ""),
                 {"modality": "audio", "epsilon": 1.0, "results": results})
    rows = [["corpus", "seeds", "Acc2 drop (pts) median", "min", "max",
             "Acc2 nz drop (pts)", "Pearson r drop median", "min", "max"]]
    for name, r in results.items():
        drop = r["drop"]
        rows.append([name, len(r["seeds"]), 100 * drop["acc2_non_negative"]["median"],
                     100 * drop["acc2_non_negative"]["min"],
                     100 * drop["acc2_non_negative"]["max"],
                     100 * drop["acc2_positive"]["median"], drop["pearson_r"]["median"],
                     drop["pearson_r"]["min"], drop["pearson_r"]["max"]])
    show(rows)
    print(f"wrote {saved}")


if __name__ == "__main__":
    main()
