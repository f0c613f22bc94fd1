"""The ``train`` and ``evaluate`` commands, mounted on the ``mbd-cert`` group.

``mbd_cert.cli`` calls :func:`register`. Commands raise ``mbd_cert.errors`` classes and
the group's ``guarded`` wrapper turns them into messages and exit codes. stdout
carries the result (one line for ``train``, the metrics table for ``evaluate``);
progress and logs go to stderr.

Stability: internal; the options are documented in ``--help``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from mbd_cert._interrupts import output_left_text
from mbd_cert.arch._mbd_config import DEFAULTS as ARCHITECTURE_DEFAULTS
from mbd_cert.errors import InputError, MalformedData
from trainer.config import FIELD_BOUNDS, MAX_SEED, TrainingConfig
from trainer.losses import TASK_LOSSES, LossWeights

CORPUS_NAMES = ("synthetic", "mosei-subset", "ict-mmmo", "mosi-text", "mmsa")
_DEFAULTS = TrainingConfig()
_MMSA_LAYOUT = ("a dict with train, valid and test splits, each holding float arrays text "
                "(or text_bert), audio and vision of shape [n, T, d] or [n, d] and "
                "regression_labels [n] in [-3, 3]; optional id, audio_lengths and "
                "vision_lengths (valid time steps). An all-zero or all-NaN row marks a "
                "missing modality. The file is read with an unpickler that builds only "
                "numpy arrays and plain containers, and training.json records its path "
                "and SHA-256.")
_WEIGHTS = LossWeights()

# (option, TrainingConfig field or "model.<key>" or "loss_weights.<key>", type,
# description with unit, default). The help adds the valid range from FIELD_BOUNDS.
_HYPER_PARAMETERS: tuple[tuple[str, str, type, str, object], ...] = (
    ("--epochs", "epochs", int, "Maximum passes over the training split (epochs)",
     _DEFAULTS.epochs),
    ("--batch-size", "batch_size", int, "Samples per optimiser step", _DEFAULTS.batch_size),
    ("--learning-rate", "learning_rate", float, "AdamW step size", _DEFAULTS.learning_rate),
    ("--weight-decay", "weight_decay", float,
     "AdamW decoupled weight decay coefficient", _DEFAULTS.weight_decay),
    ("--modality-dropout", "modality_dropout", float,
     "Probability of hiding each observed modality per sample and step",
     _DEFAULTS.modality_dropout),
    ("--patience", "patience", int,
     "Epochs without a validation MAE gain before stopping", _DEFAULTS.patience),
    ("--grad-clip", "grad_clip", float,
     "Maximum global L2 norm of the gradient per step", _DEFAULTS.grad_clip),
    ("--probe-members", "probe_members", int,
     "Training samples in probe.safetensors", _DEFAULTS.probe_members),
    ("--probe-nonmembers", "probe_nonmembers", int,
     "Held-out test samples in probe.safetensors", _DEFAULTS.probe_nonmembers),
    ("--hidden-dim", "model.hidden_dim", int, "Encoder and generator width (units)",
     ARCHITECTURE_DEFAULTS["hidden_dim"]),
    ("--shared-dim", "model.shared_dim", int, "Size k of each shared part (units)",
     ARCHITECTURE_DEFAULTS["shared_dim"]),
    ("--private-dim", "model.private_dim", int, "Size q of each private part (units)",
     ARCHITECTURE_DEFAULTS["private_dim"]),
    ("--fusion-hidden", "model.fusion_hidden", int, "Fusion layer width (units)",
     ARCHITECTURE_DEFAULTS["fusion_hidden"]),
    ("--dropout", "model.dropout", float,
     "Dropout probability in encoders and fusion", ARCHITECTURE_DEFAULTS["dropout"]),
    ("--similarity-weight", "loss_weights.similarity", float,
     "Weight (multiplier) of the shared-part similarity loss", _WEIGHTS.similarity),
    ("--orthogonality-weight", "loss_weights.orthogonality", float,
     "Weight (multiplier) of the shared/private orthogonality loss", _WEIGHTS.orthogonality),
    ("--reconstruction-weight", "loss_weights.reconstruction", float,
     "Weight (multiplier) of the generator reconstruction loss", _WEIGHTS.reconstruction),
    ("--preservation-weight", "loss_weights.preservation", float,
     "Weight (multiplier) of the task preservation loss", _WEIGHTS.preservation),
)


def hyper_parameter_help(field_name: str, description: str, default: object) -> str:
    """Return the --help text of a hyper-parameter option: what, valid range, default."""
    return f"{description}; {FIELD_BOUNDS[field_name].text()} [default: {default}]."


def interrupted_text(arguments: Mapping[str, Any]) -> str:
    """Return what ``train`` prints after ``interrupted; `` on Ctrl-C.

    ``arguments`` are the command's keyword arguments, where ``out_dir`` is its ``--out``.

    In one process, or on rank 0 under torchrun, the output directory is as it was
    until the checkpoint is in place, and from then on Ctrl-C is held
    (mbd_cert._interrupts). Another rank writes nothing, and rank 0 may already have
    moved the checkpoint into place when the interrupt reaches it, so it leaves the
    account to rank 0.
    """
    if os.environ.get("RANK", "0") in ("", "0"):
        return output_left_text(arguments)
    return (f"rank {os.environ['RANK']} writes no output; rank 0's message reports "
            "whether the checkpoint was written")


def register(group: click.Group, guarded: Callable[..., Any] | None = None) -> None:
    """Add the ``train`` and ``evaluate`` commands to ``group``.

    Args:
        group: The ``mbd-cert`` click group.
        guarded: The group's error wrapper factory (``guarded()`` returns a decorator);
            None leaves errors to click.
    """
    if guarded is None:
        group.add_command(click.command("train")(_train_options(_train)))
        group.add_command(click.command("evaluate")(_evaluate_options(_evaluate)))
        return
    wrap_train = guarded(interrupted=interrupted_text)
    group.add_command(click.command("train")(_train_options(wrap_train(_train))))
    group.add_command(click.command("evaluate")(_evaluate_options(guarded()(_evaluate))))


def _train_options(function: Callable[..., Any]) -> Callable[..., Any]:
    for option, field_name, kind, description, default in reversed(_HYPER_PARAMETERS):
        function = click.option(option, field_name.replace(".", "__"), type=kind, default=None,
                                help=hyper_parameter_help(field_name, description,
                                                          default))(function)
    decorators = (
        click.option("--corpus", type=click.Choice(CORPUS_NAMES), default="synthetic",
                     show_default=True, help="Corpus to train on; mmsa reads your own "
                     "pickle named by --data-file."),
        click.option("--data-root", type=click.Path(path_type=Path, file_okay=False),
                     default=None, help="Folder holding the published real corpora "
                     "mosei-subset, ict-mmmo and mosi-text [default: $MBD_CERT_DATA or "
                     "../shared/data]."),
        click.option("--data-file", type=click.Path(path_type=Path), default=None,
                     help=f"MMSA-style pickle to train on, with --corpus mmsa: {_MMSA_LAYOUT}"),
        click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
                     help="Checkpoint directory to create."),
        click.option("--seed", type=click.IntRange(min=0, max=MAX_SEED), default=0,
                     show_default=True,
                     help="Seed of initialisation, batch order, modality dropout and probe draw."),
        click.option("--corpus-seed", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Seed of the synthetic corpus or of the mosei-subset split; the "
                     "other corpora keep their files' own splits and only record it."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                     show_default=True, help="Torch device; auto picks CUDA when available."),
        click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Torch CPU threads during training."),
        click.option("--task-loss", type=click.Choice(TASK_LOSSES), default=None,
                     help=f"Task loss [default: {_DEFAULTS.task_loss}]."),
        click.option("--no-progress", is_flag=True,
                     help="Hide the progress bars of transcript embedding and training."),
        click.option("--force", is_flag=True, help="Replace a non-empty output directory."),
    )
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def _train(corpus: str, data_root: Path | None, data_file: Path | None, out_dir: Path,
           seed: int, corpus_seed: int, device: str, threads: int, task_loss: str | None,
           no_progress: bool, force: bool, **hyper: Any) -> None:
    """Train the MBD sentiment model and write a checkpoint directory."""
    from mbd_cert._interrupts import command_window
    from trainer.data import load_corpus
    from trainer.train import train

    _check_data_options(corpus, data_root, data_file)
    _reject_output_over_data(out_dir, corpus, data_root, data_file)
    settings: dict[str, Any] = {"model": {}, "loss_weights": {}}
    if task_loss is not None:
        settings["task_loss"] = task_loss
    for key, value in hyper.items():
        if value is None:
            continue
        section, _, name = key.partition("__")
        if name:
            settings[section][name] = value
        else:
            settings[section] = value
    options: dict[str, Any] = {} if data_file is None else {"data_file": data_file}
    if corpus == "mosi-text":
        # Embedding the transcripts takes minutes before training starts when no cache
        # contains them. Under torchrun only rank 0 shows the bar, as for the epochs.
        options["progress"] = not no_progress and os.environ.get("RANK", "0") in ("", "0")
    loaded = load_corpus(corpus, data_root, corpus_seed, **options)
    source: dict[str, Any] = {"name": corpus,
                              "data_root": None if data_root is None else str(data_root),
                              "seed": corpus_seed}
    if data_file is not None:
        # evaluate reloads the file from this absolute path (or from its --data-file)
        # and rejects any other content than the digest the loader computed here.
        source["options"] = {"data_file": str(data_file.resolve()),
                             "sha256": loaded.info["sha256"]}
    with command_window() as window:
        result = train(loaded, settings, out_dir, seed=seed, device=device,
                       progress=not no_progress, force=force, corpus_source=source,
                       cpu_threads=threads)
        if not result.wrote:
            # Under torchrun every rank runs this command, and rank 0 alone reports.
            return
        test = result.metrics["views"]["all"]
        click.echo(
            f"trained {result.training['epochs_run']} epochs "
            f"(best {result.training['best_epoch']}) on {result.training['device']}: "
            f"test MAE {test['mae']:.4f}, r {_number(test['pearson_r'])}; "
            f"wrote {result.out_dir}"
        )
    if window.interrupted:
        click.echo(f"Ctrl-C arrived after the checkpoint was moved into {result.out_dir}; "
                   "training is complete", err=True)


def _check_data_options(corpus: str, data_root: Path | None, data_file: Path | None) -> None:
    """Reject --data-file without --corpus mmsa, and --data-root or no --data-file with it."""
    if corpus == "mmsa" and data_file is None:
        raise InputError("--corpus mmsa needs --data-file",
                         hint="pass --data-file PATH with your MMSA-style pickle",
                         code="E_PARAMETER_INVALID")
    if corpus == "mmsa" and data_root is not None:
        raise InputError("--data-root is for the published corpora; --corpus mmsa reads "
                         "only --data-file",
                         hint="remove --data-root", code="E_PARAMETER_INVALID")
    if corpus != "mmsa" and data_file is not None:
        raise InputError(f"--data-file is read only with --corpus mmsa, not {corpus!r}",
                         hint="pass --corpus mmsa, or remove --data-file",
                         code="E_PARAMETER_INVALID")


def _reject_output_over_data(out_dir: Path, corpus: str, data_root: Path | None,
                             data_file: Path | None = None) -> None:
    """Reject an --out that is or contains a folder or file the corpus is read from.

    An explicit --data-root counts even for the synthetic corpus, which ignores it,
    because --force would still delete it.
    """
    from mbd_cert._paths import reject_output_over_inputs
    from trainer.data import CORPORA, default_data_root

    inputs: list[tuple[str, Path | None]] = [("--data-root", data_root),
                                             ("--data-file", data_file)]
    if data_root is None and CORPORA[corpus].reads_files:
        inputs.append(("data root ($MBD_CERT_DATA or ../shared/data)", default_data_root()))
    if corpus == "mosi-text":
        from trainer.data.mosi_text import default_cache_dir

        inputs.append(("embedding cache ($MBD_CERT_CACHE)", default_cache_dir()))
    reject_output_over_inputs(out_dir, inputs)


def _evaluate_options(function: Callable[..., Any]) -> Callable[..., Any]:
    decorators = (
        click.option("--checkpoint", type=click.Path(path_type=Path, file_okay=False),
                     required=True, help="Checkpoint directory written by 'mbd-cert train', "
                     "or the output directory of 'mbd-cert issue' (test split only)."),
        click.option("--split", "split_name", type=click.Choice(["train", "valid", "test"]),
                     default="test", show_default=True, help="Corpus split to evaluate."),
        click.option("--eval-set", type=click.Path(path_type=Path, dir_okay=False),
                     default=None, help="Evaluate on this file of held-out samples in the "
                     "probe layout (like eval.safetensors) instead of a corpus split."),
        click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False),
                     default=None, help="Also write the metrics as JSON to this file."),
        click.option("--data-root", type=click.Path(path_type=Path, file_okay=False),
                     default=None, help="Folder holding the real corpora [default: the one "
                     "recorded at training time]."),
        click.option("--data-file", type=click.Path(path_type=Path), default=None,
                     help="MMSA-style pickle of a checkpoint trained with --corpus mmsa; its "
                     "SHA-256 must match the one training.json records [default: the path "
                     "recorded at training time]."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu",
                     show_default=True, help="Torch device for the forward passes."),
    )
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def _evaluate(checkpoint: Path, split_name: str, eval_set: Path | None, json_out: Path | None,
              data_root: Path | None, data_file: Path | None, device: str) -> None:
    """Evaluate a checkpoint on a split, with every modality-missing view.

    CHECKPOINT may also be the output directory of 'mbd-cert issue' (the released
    model); it keeps only the test split, in eval.safetensors.
    """
    from mbd_cert._paths import check_output_file
    from trainer._checkpoint_io import json_safe, write_json
    from trainer.evaluate import evaluate, load_checkpoint, released_test_split
    from trainer.train import resolve_device

    if json_out is not None:
        # The files evaluate reads, which --json must not replace (SPEC.md, R-SEC-1).
        read = [checkpoint / name for name in ("model.safetensors", "config.json",
                                               "training.json", "cert.json",
                                               "eval.safetensors", "probe.safetensors")]
        check_output_file(json_out, "--json", inputs=[*read, *([eval_set] if eval_set else [])])
    loaded = load_checkpoint(checkpoint, resolve_device(device))
    if eval_set is not None:
        split_name = eval_set.name
        split, corpus = released_test_split(loaded, eval_set)
    elif loaded.certificate is not None and not loaded.training:
        if split_name != "test":
            raise InputError(
                f"{checkpoint} is the output of 'mbd-cert issue', which keeps only the test "
                f"split (eval.safetensors), not split {split_name!r}",
                hint="pass --split test, or evaluate the checkpoint the deletion started "
                "from for the other splits",
                code="E_PARAMETER_INVALID",
            )
        split, corpus = released_test_split(loaded)
    else:
        split, corpus = _corpus_split(loaded, checkpoint, split_name, data_root, data_file)
    result = {"split": split_name, "checkpoint": str(checkpoint),
              **evaluate(loaded.model, split, corpus)}
    _print_table(result)
    if json_out is not None:
        write_json(json_out, json_safe(result), overwrite=True)


def _corpus_split(loaded: Any, checkpoint: Path, split_name: str, data_root: Path | None,
                  data_file: Path | None = None) -> tuple[Any, Any]:
    """Reload the corpus that training.json records and return one split of it.

    training.json comes with the checkpoint, so it is untrusted input. Its options may
    only describe the corpus: they may not turn off the data digest check or name a
    cache or device of this machine. The synthetic loader bounds the corpus size.
    """
    from trainer.data import load_corpus

    path = checkpoint / "training.json"
    record = loaded.training.get("corpus", {})
    source = record.get("source", {}) if isinstance(record, dict) else {}
    if not isinstance(source, dict) or not isinstance(source.get("name"), str):
        raise MalformedData(f"{path} does not record the training corpus",
                            hint="retrain with 'mbd-cert train' to get a complete record")
    seed = source.get("seed", 0)
    options = source.get("options", {})
    if isinstance(seed, bool) or not isinstance(seed, int) or not isinstance(options, dict):
        raise MalformedData(f"{path} records an invalid corpus seed or "
                            "options", hint="retrain with 'mbd-cert train'")
    recorded_root = source.get("data_root")
    if recorded_root is not None and not isinstance(recorded_root, str):
        raise MalformedData(
            f"{path}: corpus.source.data_root must be a string or null, got "
            f"{type(recorded_root).__name__}",
            hint="pass --data-root with the folder that holds the corpus",
        )
    split_ids = record.get("split_ids", {})
    recorded_ids = split_ids.get(split_name) if isinstance(split_ids, dict) else None
    if not isinstance(split_ids, dict) or not (
            recorded_ids is None or (isinstance(recorded_ids, list)
                                     and all(isinstance(i, str) for i in recorded_ids))):
        raise MalformedData(
            f"{path}: corpus.split_ids must map each split name to a list of sample ids",
            hint="restore training.json from the training run, or retrain",
        )
    _check_recorded_options(path, source["name"], options)
    if data_file is not None and source["name"] != "mmsa":
        raise InputError(
            f"--data-file applies only to a checkpoint trained on corpus 'mmsa', not "
            f"{source['name']!r}",
            hint="remove --data-file; pass --data-root for the published corpora",
            code="E_PARAMETER_INVALID",
        )
    if data_root is not None and source["name"] == "mmsa":
        raise InputError(
            "--data-root does not apply to a checkpoint trained on corpus 'mmsa'",
            hint="pass --data-file with the pickle instead",
            code="E_PARAMETER_INVALID",
        )
    if data_file is not None:
        options = {**options, "data_file": str(data_file)}
    root = data_root if data_root is not None else recorded_root
    try:
        corpus = load_corpus(source["name"], root, seed, **options)
    except InputError as error:
        if error.code != "E_PARAMETER_INVALID":
            raise
        raise MalformedData(
            f"{path}: corpus.source records a corpus that cannot be loaded: {error.message}",
            hint="restore training.json from the training run, or retrain",
        ) from error
    actual_ids = [str(i) for i in corpus.splits[split_name].ids]
    if recorded_ids is not None and recorded_ids != actual_ids:
        raise MalformedData(
            f"split {split_name!r} of corpus {source['name']!r} has other samples than at "
            "training time",
            hint="point --data-root at the data the checkpoint was trained on",
        )
    return corpus.splits[split_name], corpus


def _check_recorded_options(path: Path, name: str, options: dict[str, Any]) -> None:
    """Reject corpus options in training.json that are not the corpus's own description.

    The synthetic corpus is defined by its options, which its loader checks and bounds.
    A corpus read from files is defined by the published files, so the only option it
    may record is ``verify_digests: true``. With ``false``, a crafted training.json
    would load unverified files. ``cache_dir``, ``device`` and ``batch_size`` are
    settings of the evaluating machine, not of the checkpoint.
    """
    from trainer.data import CORPORA

    if name == "mmsa":
        _check_recorded_mmsa_options(path, options)
        return
    entry = CORPORA.get(name)
    if entry is None or not entry.reads_files:
        return
    for key, value in options.items():
        field = f"corpus.source.options.{key}"
        if key == "verify_digests" and value is True:
            continue
        if key == "verify_digests":
            raise MalformedData(
                f"{path}: {field} is {value!r}; evaluate always checks the digests of "
                f"the {name} files against the published ones",
                hint="remove the option from training.json; to evaluate on another copy of "
                "the corpus, load it in Python with load_corpus(..., verify_digests=False) "
                "and call trainer.evaluate.evaluate",
            )
        raise MalformedData(
            f"{path}: {field} is not an option evaluate takes from training.json; "
            f"for corpus {name!r} only verify_digests (true) is",
            hint="remove the option; set $MBD_CERT_CACHE for the embedding cache and pass "
            "--device for the device",
        )


def _check_recorded_mmsa_options(path: Path, options: dict[str, Any]) -> None:
    """Require the pickle's path and SHA-256 in training.json, and nothing else.

    The loader compares the file it reads with the recorded digest, so a checkpoint is
    evaluated on the data it was trained on or not at all.
    """
    unknown = sorted(set(options) - {"data_file", "sha256"})
    if unknown:
        raise MalformedData(
            f"{path}: corpus.source.options.{unknown[0]} is not an option of corpus 'mmsa'; "
            "only data_file and sha256 are",
            hint="remove the option from training.json",
        )
    for key in ("data_file", "sha256"):
        if not isinstance(options.get(key), str):
            raise MalformedData(
                f"{path}: corpus.source.options.{key} must be a string for corpus 'mmsa', "
                f"got {type(options.get(key)).__name__}",
                hint="restore training.json from the training run, or retrain",
            )


def _print_table(result: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"{result['corpus']} / {result['split']} (n = {result['n']})",
        caption="Acc2, F1: negative vs non-negative, all samples. Acc2 nz, F1 nz: negative "
        "vs positive, label-zero samples excluded. Acc7: rounded to -3..3.",
    )
    columns = (("MAE", "mae"), ("r", "pearson_r"), ("Acc2", "acc2_non_negative"),
               ("F1", "f1_non_negative"), ("Acc2 nz", "acc2_positive"),
               ("F1 nz", "f1_positive"), ("Acc7", "acc7"))
    table.add_column("view", no_wrap=True)
    for title, _ in columns:
        table.add_column(title, justify="right", no_wrap=True)
    for view, metrics in result["views"].items():
        table.add_row(view, *(_number(metrics[key]) for _, key in columns))
    Console().print(table)


def _number(value: object) -> str:
    if isinstance(value, (int, float)):
        return f"{float(value):.3f}"
    return "n/a"
