"""``mbd-cert issue`` against retraining the model without the modality.

For each corpus a checkpoint is trained once (not timed). Two comparisons follow, each
alternating the order of its pair on every repetition:

* command line: ``mbd-cert issue --modality audio --epsilon 1`` against a fresh Python
  process that retrains from scratch on the corpus with audio removed
  (``trainer.train.train``, the same default hyper-parameters and the same
  early-stopping rule as the original training). Both pay the interpreter and torch
  start-up.
* in process: one worker process imports everything, runs each side once untimed
  (first calls of torch kernels are slower), then times the library calls
  ``mbd_cert.issue.issue`` and, for retraining, ``trainer.data.load_corpus`` followed
  by ``trainer.train.train``. Both sides start from files on disk. This is the work
  itself, without the start-up that both sides pay once per process.

``--scale N`` adds an in-process row for the synthetic corpus with N times the
training samples (the probe set keeps its size), to show how the ratio moves with the
size of the training set.

Usage: python benchmarks/bench_issue_vs_retrain.py [--quick] [--corpora synthetic ...]
       [--repeats 3] [--scale 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_measured, save, show, spread  # noqa: E402

DATA_ROOT = Path("/work/shared/data")
MODALITY = "audio"
SYNTHETIC_TRAIN = 1200  # the bundled corpus's default n_train
RETRAIN = """
import sys
sys.path.insert(0, sys.argv[5])
from bench_issue_vs_retrain import retrain
retrain(sys.argv[1], sys.argv[2] or None, sys.argv[3], sys.argv[4], {})
"""


def _corpus(name: str, root: str | None, options: dict[str, Any]) -> Any:
    from trainer.data import load_corpus

    return load_corpus(name, root=root, seed=0, **options)


def _without(corpus: Any, modality: str) -> Any:
    """Return ``corpus`` without ``modality``: the data a model trained without it gets."""
    import dataclasses

    import numpy as np

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
            ids=[i for i, r in zip(split.ids, rows, strict=True) if r],
        )
    return dataclasses.replace(
        corpus, modalities=keep, splits=splits,
        input_dims={m: corpus.input_dims[m] for m in keep},
        seq_len={m: corpus.seq_len[m] for m in keep},
    )


def retrain(name: str, root: str | None, out: str, modality: str,
            options: dict[str, Any]) -> int:
    """Retrain from scratch without ``modality``; return the number of epochs run."""
    from trainer.train import train

    reduced = _without(_corpus(name, root, options), modality)
    result = train(reduced, None, out, seed=0, progress=False, force=True)
    return int(result.training["epochs_run"])


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time the library calls of issue and retrain in this process (see module docstring)."""
    from mbd_cert import signing
    from mbd_cert.issue import IssueOptions, issue
    from trainer.train import train

    work = Path(spec["work"])
    options = spec["options"]
    checkpoint = work / "ck"
    if not (checkpoint / "model.safetensors").exists():
        corpus = _corpus(spec["corpus"], spec["root"], options)
        train(corpus, None, checkpoint, seed=0, progress=False, force=True)
    key = signing.load_private_key(spec["key"])
    deletion = IssueOptions(modality=MODALITY, epsilon=1.0, delta=1e-5, force=True)

    def run_issue() -> None:
        issue(checkpoint, work / "del", deletion, key)

    epochs: list[int] = []
    sizes: list[int] = []

    def run_retrain() -> None:
        # Both sides start from files: issue reads the checkpoint, retraining the corpus.
        corpus = _corpus(spec["corpus"], spec["root"], options)
        reduced = _without(corpus, MODALITY)
        result = train(reduced, None, work / "retrain", seed=0, progress=False, force=True)
        epochs.append(int(result.training["epochs_run"]))
        sizes.append(len(corpus.splits["train"].labels))

    run_issue(), run_retrain()  # untimed: first calls pay one-time costs
    runs = []
    for repeat in range(spec["repeats"]):
        pair = [("issue", run_issue), ("retrain", run_retrain)]
        if repeat % 2:
            pair.reverse()
        times = {}
        for label, function in pair:
            start = time.perf_counter()
            function()
            times[label] = time.perf_counter() - start
        runs.append(times)
    return {"runs": runs, "retrain_epochs": epochs, "train_samples": sizes[0]}


def _in_process(corpus: str, root: str, work: Path, key: Path, repeats: int,
                options: dict[str, Any]) -> dict[str, Any]:
    spec = {"corpus": corpus, "root": root or None, "work": str(work), "key": str(key),
            "repeats": repeats, "options": options}
    script = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "from bench_issue_vs_retrain import worker\n"
              "print(json.dumps(worker(json.loads(sys.argv[1]))))\n")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(spec)], check=True,
                          capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    runs = result["runs"]
    result.update({
        "issue_s": spread([r["issue"] for r in runs]),
        "retrain_s": spread([r["retrain"] for r in runs]),
        "ratio_issue_over_retrain": spread([r["issue"] / r["retrain"] for r in runs]),
    })
    return result


def _command_line(cli: list[str], corpus: str, root: str, work: Path, checkpoint: Path,
                  repeats: int) -> dict[str, Any]:
    runs = []
    for repeat in range(repeats):
        issue = [*cli, "issue", "--checkpoint", str(checkpoint), "--modality", MODALITY,
                 "--epsilon", "1", "--key", str(work / "issuer.key"),
                 "--out", str(work / f"del-{corpus}"), "--force"]
        retrain_command = [sys.executable, "-c", RETRAIN, corpus, root,
                           str(work / f"retrain-{corpus}"), MODALITY,
                           str(Path(__file__).parent)]
        pair = [("issue", issue), ("retrain", retrain_command)]
        if repeat % 2:
            pair.reverse()
        runs.append({label: run_measured(command) for label, command in pair})
    return {
        "issue_s": spread([r["issue"]["wall_s"] for r in runs]),
        "retrain_s": spread([r["retrain"]["wall_s"] for r in runs]),
        "ratio_issue_over_retrain": spread([r["issue"]["wall_s"] / r["retrain"]["wall_s"]
                                            for r in runs]),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="synthetic only, 1 repeat")
    parser.add_argument("--corpora", nargs="+", default=["synthetic", "mosei-subset"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=int, default=0,
                        help="also time the synthetic corpus with this many times the "
                             "training samples, in process [default: 0, off]")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT,
                        help=f"folder holding the real corpora [default: {DATA_ROOT}]")
    args = parser.parse_args()
    corpora = ["synthetic"] if args.quick else args.corpora
    repeats = 1 if args.quick else args.repeats
    cli = [sys.executable, "-m", "mbd_cert.cli"]

    results: dict[str, Any] = {}
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
            inside = work / f"in-{corpus}"
            inside.mkdir()
            (inside / "ck").symlink_to(checkpoint)
            results[corpus] = {
                "original_training_s": original["wall_s"],
                "command_line": _command_line(cli, corpus, root, work, checkpoint, repeats),
                "in_process": _in_process(corpus, root, inside, work / "issuer.key", repeats,
                                          {}),
            }
        if args.scale > 1:
            name = f"synthetic-x{args.scale}"
            inside = work / f"in-{name}"
            inside.mkdir()
            results[name] = {"in_process": _in_process(
                "synthetic", "", inside, work / "issuer.key", repeats,
                {"n_train": SYNTHETIC_TRAIN * args.scale})}
    saved = save("issue_vs_retrain" + ("_quick" if args.quick else ""),
                 {"modality": MODALITY, "epsilon": 1.0, "repeats": repeats, "results": results})
    rows = [["corpus", "comparison", "issue s", "retrain s", "ratio median", "min", "max"]]
    for name, result in results.items():
        for kind in ("command_line", "in_process"):
            if kind in result:
                r = result[kind]
                rows.append([name, kind, r["issue_s"]["median"], r["retrain_s"]["median"],
                             r["ratio_issue_over_retrain"]["median"],
                             r["ratio_issue_over_retrain"]["min"],
                             r["ratio_issue_over_retrain"]["max"]])
    show(rows)
    print(f"wrote {saved}")


if __name__ == "__main__":
    main()
