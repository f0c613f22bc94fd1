"""Evaluation of a trained model on a corpus split, with every modality-missing view.

Views:

* ``all``: the split as it is (a sample keeps whatever modalities it has).
* ``missing:<m>``: m marked absent in every sample, for each modality the model still
  has. Modalities already absent in a sample stay absent.
* ``deleted:<m>``: for each modality deleted in the model's config, the split with
  input m replaced by zeros and marked absent. A deleted modality's input is ignored,
  so its metrics equal those of ``all``, and ``max_abs_change_vs_all`` (in score units)
  must be 0.

Stability: internal to the trainer; the key names appear in ``metrics.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mbd_cert import _json, _safetensors
from mbd_cert._torch_model import build_unloaded
from mbd_cert.arch import get_architecture, load_state_dict_strict
from mbd_cert.arch.mbd import MBDModel
from mbd_cert.errors import FileMissing, InputError, MalformedData
from mbd_cert.metrics import regression_metrics

logger = logging.getLogger(__name__)

MODEL_FORMAT = "mbd-cert-model/1"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PROBE_FILE = "probe.safetensors"
CERTIFICATE_FILE = "cert.json"
EVAL_FILE = "eval.safetensors"
TRAINING_FILE = "training.json"
METRICS_FILE = "metrics.json"

# training.json lists every sample id of the corpus, so it may be a few MB.
MAX_JSON_BYTES = 64 * 1024 * 1024
# Samples per forward pass during evaluation; bounds memory, not results.
EVAL_BATCH_SIZE = 512


@dataclass
class Checkpoint:
    """A trained model loaded from a checkpoint directory.

    Attributes:
        directory: The checkpoint directory.
        model: The model in eval mode, on the requested device.
        config_document: Contents of ``config.json``, or the same document rebuilt from
            ``cert.json`` for the output directory of ``mbd-cert issue``.
        training: Contents of ``training.json``, or an empty dict when absent.
        certificate: Contents of ``cert.json`` when the config came from it, else None.
    """

    directory: Path
    model: MBDModel
    config_document: dict[str, Any]
    training: dict[str, Any]
    certificate: dict[str, Any] | None = None


def predict(
    model: MBDModel,
    features: Mapping[str, np.ndarray],
    present: np.ndarray,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
) -> np.ndarray:
    """Return the model's predictions [n] as float64, computed in eval mode without gradients.

    Args:
        model: The model; its device and dtype are used for the inputs.
        features: Modality -> [n, T, d] arrays. A deleted modality may be left out.
        present: Bool [n, M].
        batch_size: Samples per forward pass.
    """
    parameter = model.head.weight
    rows = int(present.shape[0])
    outputs = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, rows, batch_size):
                stop = min(start + batch_size, rows)
                inputs = {
                    m: torch.as_tensor(values[start:stop], device=parameter.device,
                                       dtype=parameter.dtype)
                    for m, values in features.items()
                }
                mask = torch.as_tensor(present[start:stop], device=parameter.device)
                outputs.append(model(inputs, mask).cpu().to(torch.float64).numpy())
    finally:
        model.train(was_training)
    if not outputs:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate(outputs)


def evaluate(model: MBDModel, split: Any, corpus: Any) -> dict[str, Any]:
    """Compute the metrics of every view (see the module docstring) on one split.

    Args:
        model: The trained model.
        split: A ``trainer.data.Split``.
        corpus: The ``trainer.data.Corpus`` the split belongs to; its modalities must
            be the model's, in the same order.

    Returns:
        ``{"n", "corpus", "modalities", "deleted_modalities", "views": {name: metrics}}``;
        each view's metrics are those of :func:`mbd_cert.metrics.regression_metrics`
        plus ``n_without_any_modality``, the samples that observe no modality the
        model reads (deleted modalities do not count).

    Raises:
        InputError: The corpus modalities differ from the model's, or the split is
            empty.
    """
    if list(corpus.modalities) != list(model.modalities):
        raise InputError(
            f"corpus modalities {list(corpus.modalities)} differ from the model's "
            f"{list(model.modalities)}",
            hint="evaluate on the corpus the model was trained on",
        )
    present = np.asarray(split.present, dtype=bool)
    labels = np.asarray(split.labels, dtype=np.float64)
    features = dict(split.features)
    baseline = predict(model, features, present)

    # A deleted modality's input is ignored, so a sample that observes only deleted
    # modalities has no input the model reads.
    not_deleted = np.array([name not in model.deleted for name in model.modalities])
    views: dict[str, dict[str, Any]] = {
        "all": _view_metrics(baseline, labels, present & not_deleted)}
    for index, name in enumerate(model.modalities):
        masked = present.copy()
        masked[:, index] = False
        if name in model.deleted:
            zeroed = {**features, name: np.zeros_like(features[name])}
            prediction = predict(model, zeroed, masked)
            metrics = _view_metrics(prediction, labels, masked & not_deleted)
            metrics["max_abs_change_vs_all"] = float(np.max(np.abs(prediction - baseline)))
            views[f"deleted:{name}"] = metrics
        else:
            views[f"missing:{name}"] = _view_metrics(predict(model, features, masked),
                                                     labels, masked & not_deleted)
    return {
        "n": int(labels.shape[0]),
        "corpus": corpus.name,
        "modalities": list(model.modalities),
        "deleted_modalities": sorted(model.deleted),
        "views": views,
    }


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint directory written by :func:`trainer.train.train` or by issue.

    Args:
        directory: Folder that contains ``model.safetensors`` and ``config.json``, or
            the output directory of ``mbd-cert issue``, whose ``cert.json`` records
            the released config.
        device: Torch device for the model.

    Returns:
        The loaded checkpoint, model in eval mode.

    Raises:
        FileMissing: The directory, the model or the config does not exist.
        MalformedData: ``config.json`` or the model metadata is not in the expected
            layout, or names another architecture.
        MalformedCertificate: ``cert.json`` is not a valid certificate.
        InputError: The config is invalid, the weights do not match it, or the model
            contains one tensor under two names (``E_ARCHITECTURE_TENSORS_SHARED``).
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise FileMissing(f"checkpoint directory not found: {folder}",
                          hint="pass the --out folder of 'mbd-cert train'")
    certificate = None
    config_path = folder / CONFIG_FILE
    if not config_path.exists() and (folder / CERTIFICATE_FILE).is_file():
        # The output of 'mbd-cert issue' has no config.json; the released config is
        # the certificate's, read the way issue reads it to continue a chain.
        from mbd_cert.certificate import load_certificate
        from mbd_cert.issue import config_from_certificate

        config_path = folder / CERTIFICATE_FILE
        certificate = load_certificate(config_path)
        document = config_from_certificate(certificate)
    else:
        document = _read_json(config_path)
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        raise MalformedData(f"{config_path}: expected an object with a 'config' object")
    architecture = get_architecture(str(document.get("architecture")))
    if document.get("architecture_version") != architecture.version:
        raise MalformedData(
            f"{config_path}: architecture_version is "
            f"{document.get('architecture_version')!r}, this release has "
            f"{architecture.version!r} of {architecture.name!r}"
        )
    tensors, metadata = _read_model_file(folder / MODEL_FILE)
    if metadata.get("format") != MODEL_FORMAT or \
            metadata.get("architecture") != architecture.name:
        raise MalformedData(
            f"{folder / MODEL_FILE}: metadata format {metadata.get('format')!r} and "
            f"architecture {metadata.get('architecture')!r}, expected {MODEL_FORMAT!r} "
            f"and {architecture.name!r}"
        )
    # The build of issue and levels 2 and 3, which rejects one tensor under two names:
    # loading would keep only the last alias's values (R-ARCH-9).
    model = build_unloaded(architecture, document["config"], tensors)
    if not isinstance(model, MBDModel):
        raise MalformedData(f"architecture {architecture.name!r} is not an MBD model; "
                            "the trainer evaluates MBD models only")
    load_state_dict_strict(model, tensors)
    model.to(device).eval()
    training_path = folder / TRAINING_FILE
    training = _read_json(training_path) if training_path.exists() else {}
    return Checkpoint(folder, model, document, training if isinstance(training, dict) else {},
                      certificate)


def released_test_split(checkpoint: Checkpoint,
                        path: Path | None = None) -> tuple[Any, Any]:
    """Return the test split that an issue output directory keeps, and its corpus.

    ``mbd-cert issue`` copies the checkpoint's ``eval.safetensors`` (the whole test
    split, every sample a non-member) but no ``training.json``, so this file is the
    only split such a directory can be evaluated on. ``path`` names another file in
    the same probe layout instead, such as a downstream user's own held-out set. The
    corpus is named after the file.

    Raises:
        FileMissing: The directory has no ``eval.safetensors``.
        MalformedData: The file is not in the probe layout or its modalities differ
            from the model's.
    """
    from mbd_cert.checkpoint import read_probe_set
    from trainer.data import Corpus, Split

    if path is None:
        path = checkpoint.directory / EVAL_FILE
        if not path.exists():
            raise FileMissing(
                f"{path} not found: the output of 'mbd-cert issue' is evaluated on the "
                "copy of the test split that issue writes there",
                hint="pass --eval-set FILE with held-out samples in the probe layout, or "
                "evaluate the checkpoint the deletion started from",
            )
    samples = read_probe_set(path, modalities=checkpoint.model.modalities)
    members = int(np.count_nonzero(samples.member))
    if members:
        # A probe.safetensors mixes training members in, which flatters every metric.
        logger.warning("%d of %d samples in %s are training members: the metrics overstate "
                       "held-out quality; evaluate on eval.safetensors or your own held-out "
                       "set", members, len(samples.member), path.name)
    split = Split(features=samples.inputs, present=samples.present, labels=samples.label,
                  attributes=samples.attributes)
    corpus = Corpus(name=path.name, modalities=samples.modalities,
                    input_dims={m: int(v.shape[2]) for m, v in samples.inputs.items()},
                    seq_len={m: int(v.shape[1]) for m, v in samples.inputs.items()},
                    splits={"test": split})
    return split, corpus


def _view_metrics(prediction: np.ndarray, labels: np.ndarray,
                  present: np.ndarray) -> dict[str, Any]:
    metrics: dict[str, Any] = dict(regression_metrics(prediction, labels))
    metrics["n_without_any_modality"] = int(np.sum(~present.any(axis=1)))
    return metrics


def _read_json(path: Path) -> Any:
    return _json.read_json_file(path, what=path.name, max_bytes=MAX_JSON_BYTES,
                                error_class=MalformedData)


def _read_model_file(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not path.is_file():
        raise FileMissing(f"model file not found: {path}")
    header = _safetensors.read_header(path)
    tensors = {name: np.array(_safetensors.read_tensor(header, name)) for name in header.tensors}
    return tensors, dict(header.metadata)
