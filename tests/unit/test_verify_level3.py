"""Level-3 verification: the leakage probes before and after deletion."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from level_factories import honest_bundle, load_doc, run_verify  # noqa: E402

from mbd_cert import verify_leakage  # noqa: E402
from mbd_cert.verify_recompute import load_bundle  # noqa: E402

LEVEL3_CHECKS = ["functional-probe", "membership-inference", "representation-probe",
                 "membership-inference-pre", "representation-probe-pre"]


@pytest.fixture(scope="module")
def honest():
    return honest_bundle()


@pytest.fixture(scope="module")
def report(honest):
    _, out, key = honest
    return run_verify(out, key, 3)


def test_honest_passes_level3(report):
    statuses = {c.name: c.status for c in report.checks}
    for name in LEVEL3_CHECKS:
        assert statuses[name] == "pass", name
    assert report.verified


def test_functional_probe_exact(report):
    check = next(c for c in report.checks if c.name == "functional-probe")
    assert check.value == 0.0
    assert check.threshold == 0.0
    assert check.n == 200


def test_membership_reports_rates(report):
    check = next(c for c in report.checks if c.name == "membership-inference")
    for field in ("auc", "auc_interval", "tpr_at_fpr_0.01", "tpr_at_fpr_0.1",
                  "epsilon_lower_bound"):
        assert field in check.value
    assert check.threshold == 4.0
    assert check.n == 200


def test_membership_fails_on_strong_signal(honest):
    _, out, _ = honest
    doc = load_doc(out)
    bundle = load_bundle(doc, out / "model.safetensors", out)
    # With 100 members and 100 non-members even a perfect attack bounds epsilon only
    # above 3.28, so the claim under test is lowered from 4 to 1.
    doc["privacy"]["epsilon"] = 1.0
    member = bundle.probe.member
    # Members score far above non-members: a perfect attack.
    scores = np.where(member, 10.0, 0.0) + np.arange(member.size) * 1e-6
    check = verify_leakage._membership_check(doc, bundle, "membership-inference", scores,
                                             reference=False)
    assert check.status == "fail"
    assert check.code == "E_MEMBERSHIP_LEAK"
    assert check.value["epsilon_lower_bound"] > doc["privacy"]["epsilon"]


def test_representation_skipped_without_attribute(honest):
    _, out, _ = honest
    doc = load_doc(out)
    bundle = load_bundle(doc, out / "model.safetensors", out)
    bundle.probe.attributes.clear()
    check = verify_leakage._representation_check(bundle, "representation-probe", bundle.post,
                                                 bundle.config_post, reference=False)
    assert check.status == "skipped"
    assert "audio_private" in check.detail


@pytest.mark.parametrize("per_sample", [False, True])
def test_representation_classes_listed_briefly(honest, per_sample):
    _, out, _ = honest
    doc = load_doc(out)
    bundle = load_bundle(doc, out / "model.safetensors", out)
    attribute = bundle.probe.attributes["audio_private"]
    # Three classes, or one class per sample as a crafted probe set could hold.
    crafted = np.arange(attribute.size) if per_sample else np.arange(attribute.size) % 3
    bundle.probe.attributes["audio_private"] = crafted.astype(attribute.dtype)
    check = verify_leakage._representation_check(bundle, "representation-probe", bundle.post,
                                                 bundle.config_post, reference=False)
    assert check.status == "inconclusive"
    if per_sample:
        assert "classes, the first 5 [0, 1, 2, 3, 4]" in check.detail
        assert len(check.detail) < 200
    else:
        assert "classes [0, 1, 2] with counts" in check.detail


def test_representation_probe_reads_a_planted_attribute(honest):
    _, out, _ = honest
    doc = load_doc(out)
    bundle = load_bundle(doc, out / "model.safetensors", out)
    features = np.random.default_rng(0).normal(size=(200, 5))
    labels = (features[:, 0] > 0).astype(np.int64)
    predictions = verify_leakage._logistic_predictions(features, labels)
    assert np.mean(predictions == labels) > 0.9
    assert bundle.probe.size == 200


def test_inconclusive_fails_unless_allowed(honest):
    from mbd_cert.report import CheckResult, VerificationReport

    strict = VerificationReport("x", 3, [CheckResult("a", "inconclusive", "few samples")])
    assert not strict.verified
    lenient = VerificationReport("x", 3, [CheckResult("a", "inconclusive", "few samples")],
                                 allow_inconclusive=True)
    assert lenient.verified


def test_progress_reaches_every_total(honest):
    _, out, key = honest
    calls: list[tuple[str, int, int]] = []
    report = run_verify(out, key, 3, progress=lambda *call: calls.append(call))
    assert report.verified
    last = {stage: (done, total) for stage, done, total in calls}
    assert set(last) == {"hashing model (bytes)", "level 2 recompute", "level 3 probes"}
    for stage, (done, total) in last.items():
        assert done == total > 0, stage
    # Each stage counts up from its first report.
    for stage in last:
        done = [d for s, d, _ in calls if s == stage]
        assert done == sorted(done), stage


def _honest_bundle(honest):
    """Return the level-3 bundle of the honest deletion."""
    _, out, _ = honest
    return load_bundle(load_doc(out), out / "model.safetensors", out)


@pytest.mark.parametrize("bad_value", [np.inf, np.nan])
def test_functional_probe_fails_nonfinite_output(honest, monkeypatch, bad_value):
    # A plugin model that reads the deleted input and overflows on one sample: max()
    # skips the NaN difference, so only the finiteness check catches it.
    bundle = _honest_bundle(honest)
    real_predict = verify_leakage.predict

    def leaky_predict(model, batch):
        output = real_predict(model, batch) + batch["inputs"]["audio"].double().mean(
            dim=tuple(range(1, batch["inputs"]["audio"].dim()))).numpy()
        output[0] = bad_value
        return output

    monkeypatch.setattr(verify_leakage, "predict", leaky_predict)
    check = verify_leakage._functional_probe(bundle)
    assert check.status == "fail"
    assert check.code == "E_OUTPUT_NONFINITE"
    assert "NaN or infinite" in check.detail
    assert "1 with the inputs unchanged" in check.detail
    assert check.value == 5


def test_functional_probe_fails_nonfinite_variant(honest, monkeypatch):
    # Finite outputs on the probe set, but NaN once the deleted input is replaced.
    bundle = _honest_bundle(honest)
    real_predict = verify_leakage.predict
    original = verify_leakage.probe_batch(bundle.probe)["inputs"]["audio"]

    def predict_nan_when_changed(model, batch):
        output = real_predict(model, batch)
        if not bool((batch["inputs"]["audio"] == original).all()):
            output[:] = np.nan
        return output

    monkeypatch.setattr(verify_leakage, "predict", predict_nan_when_changed)
    check = verify_leakage._functional_probe(bundle)
    assert check.status == "fail"
    assert check.code == "E_OUTPUT_NONFINITE"
    assert "with audio zeroed" in check.detail
