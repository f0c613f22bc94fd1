"""``mbd-cert issue`` against retraining the model without the modality.

For each corpus a checkpoint is trained once (not timed). Then, alternately, the
deletion of ``audio`` is issued with the CLI and the model is retrained from scratch
on the corpus with audio removed (``trainer.train.train``, the same default
hyper-parameters and the same early-stopping rule as the original training). Both
run as fresh processes, so both pay the interpreter and torch start-up.

Usage: python benchmarks/bench_issue_vs_retrain.py [--quick] [--corpora synthetic ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_measured, save, show, spread  # noqa: E402

DATA_ROOT = Path("/work/shared/data")
MODALITY = "audio"
RETRAIN = """
import dataclasses, sys
import numpy as np
from trainer.data import load_corpus
from trainer.train import train

name, root, out, modality = sys.argv[1], sys.argv[2] or None, sys.argv[3], sys.argv[4]
corpus = load_corpus(name, root=root, seed=0)
keep = [m for m in corpus.modalities if m != modality]
columns = [corpus.modalities.index(m) for m in keep]
splits = {}
for key, split in corpus.splits.items():
    present = np.asarray(split.present)[:, columns]
    rows = present.any(axis=1)  # a sample with only the deleted modality has nothing left
    splits[key] = dataclasses.replace(
        split,
        features={m: split.features[m][rows] for m in keep},
        present=present[rows],
        labels=split.labels[rows],
        attributes={k: v[rows] for k, v in split.attributes.items()},
        ids=[i for i, r in zip(split.ids, rows) if r],
    )
reduced = dataclasses.replace(
    corpus, modalities=keep, splits=splits,
    input_dims={m: corpus.input_dims[m] for m in keep},
    seq_len={m: corpus.seq_len[m] for m in keep},
)
result = train(reduced, None, out, seed=0, progress=False, force=True)
print(result.training["epochs_run"])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="synthetic only, 1 repeat")
    parser.add_argument("--corpora", nargs="+", default=["synthetic", "mosei-subset"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT,
                        help=f"folder holding the real corpora [default: {DATA_ROOT}]")
    args = parser.parse_args()
    corpora = ["synthetic"] if args.quick else args.corpora
    repeats = 1 if args.quick else args.repeats
    cli = [sys.executable, "-m", "mbd_cert.cli"]

    results = {}
    with tempfile.TemporaryDirectory(prefix="mbd-bench-issue-") as tmp:
        work = Path(tmp)
        subprocess.run([*cli, "keygen", "--out", str(work / "issuer")], check=True,
                       capture_output=True)
        for corpus in corpora:
            root = "" if corpus == "synthetic" else str(args.data_root)
            if root and not Path(root).exists():
                print(f"skipping {corpus}: {root} does not exist")
                continue
            checkpoint = work / f"ck-{corpus}"
            train = [*cli, "train", "--corpus", corpus, "--seed", "0", "--no-progress",
                     "--out", str(checkpoint)]
            if root:
                train += ["--data-root", root]
            original = run_measured(train)
            runs = []
            for repeat in range(repeats):
                issue = [*cli, "issue", "--checkpoint", str(checkpoint), "--modality",
                         MODALITY, "--epsilon", "1", "--key", str(work / "issuer.key"),
                         "--out", str(work / f"del-{corpus}"), "--force"]
                retrain = [sys.executable, "-c", RETRAIN, corpus, root,
                           str(work / f"retrain-{corpus}"), MODALITY]
                pair = [("issue", issue), ("retrain", retrain)]
                if repeat % 2:
                    pair.reverse()
                runs.append({label: run_measured(command) for label, command in pair})
            ratios = [r["issue"]["wall_s"] / r["retrain"]["wall_s"] for r in runs]
            results[corpus] = {
                "original_training_s": original["wall_s"],
                "issue_s": spread([r["issue"]["wall_s"] for r in runs]),
                "retrain_s": spread([r["retrain"]["wall_s"] for r in runs]),
                "ratio_issue_over_retrain": spread(ratios),
                "runs": runs,
            }
    saved = save("issue_vs_retrain" + ("_quick" if args.quick else ""),
                 {"modality": MODALITY, "epsilon": 1.0, "repeats": repeats, "results": results})
    show([["corpus", "issue s", "retrain s", "issue/retrain median", "min", "max"],
          *[[name, r["issue_s"]["median"], r["retrain_s"]["median"],
             r["ratio_issue_over_retrain"]["median"], r["ratio_issue_over_retrain"]["min"],
             r["ratio_issue_over_retrain"]["max"]] for name, r in results.items()]])
    print(f"wrote {saved}")


if __name__ == "__main__":
    main()
