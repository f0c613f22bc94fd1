"""Checks that `issue` runs on the probe set before the deletion steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mbd_cert._issue_checks import check_probe_coverage
from mbd_cert.checkpoint import ProbeSet
from mbd_cert.errors import IssuanceError, MalformedData

MODALITIES = ["text", "audio", "vision"]
LOGGER = "mbd_cert._issue_checks"


def _probe(observed: dict[str, list[bool]]) -> ProbeSet:
    """Return a probe set whose ``present`` column per modality is ``observed[name]``."""
    n = len(next(iter(observed.values())))
    present = np.array([observed.get(name, [False] * n) for name in MODALITIES]).T
    inputs = {name: np.zeros((n, 1, 1), dtype=np.float32) for name in MODALITIES}
    return ProbeSet(modalities=list(MODALITIES), inputs=inputs, present=present,
                    label=np.zeros(n, dtype=np.float32), member=np.ones(n, dtype=bool))


def test_text_only_probe_warns_for_text(caplog):
    with caplog.at_level("WARNING", logger=LOGGER):
        check_probe_coverage(_probe({"text": [True, True]}), "text", [])
    assert "no probe sample observes any remaining modality ('audio', 'vision')" \
        in caplog.text
    assert "predicts from no input" in caplog.text


def test_text_only_probe_rejects_audio():
    with pytest.raises(IssuanceError) as caught:
        check_probe_coverage(_probe({"text": [True, True]}), "audio", [])
    assert caught.value.code == "E_ISSUANCE"
    assert "no probe sample has modality 'audio' observed" in caught.value.message
    assert "observes only 'text'" in caught.value.hint


def test_hint_leaves_out_deleted_modalities():
    probe = _probe({"text": [True, False], "vision": [False, True]})
    with pytest.raises(IssuanceError) as caught:
        check_probe_coverage(probe, "audio", ["vision"])
    assert "observes only 'text':" in caught.value.hint


def test_hint_when_nothing_observed():
    probe = _probe({"vision": [True, True]})
    with pytest.raises(IssuanceError) as caught:
        check_probe_coverage(probe, "audio", ["vision"])
    assert "observes none of the modalities" in caught.value.hint


def test_other_sample_observes_remaining_modality(caplog):
    # One sample with audio is enough for the released model to have an input.
    probe = _probe({"text": [True, True, True], "audio": [False, False, True]})
    with caplog.at_level("WARNING", logger=LOGGER):
        check_probe_coverage(probe, "text", [])
    assert caplog.text == ""


def test_only_deleted_modality_remains_observed(caplog):
    # Audio was deleted earlier, so deleting text leaves vision, which no sample observes.
    probe = _probe({"text": [True, True], "audio": [True, True]})
    with caplog.at_level("WARNING", logger=LOGGER):
        check_probe_coverage(probe, "text", ["audio"])
    assert "remaining modality ('vision')" in caplog.text


def test_negative_zero_counts_only_changed_entries():
    from mbd_cert._issue_checks import reject_negative_zero

    weights = np.array([-0.0, 0.0, -0.0, 1.0], dtype=np.float32)
    outside = np.array([False, True, False, True])
    reject_negative_zero({"w": weights}, {"w": outside})  # -0.0 entries stay unchanged
    with pytest.raises(IssuanceError) as caught:
        reject_negative_zero({"w": weights}, {"w": ~outside})
    assert caught.value.code == "E_DIFF_NOT_EXACT"
    assert caught.value.message.startswith("2 weights the deletion changes")
    with pytest.raises(IssuanceError):
        reject_negative_zero({"w": weights}, {"w": None})


def test_noise_resolution_scales_with_mask_size():
    from mbd_cert._issue_checks import reject_noise_below_resolution

    # Spacing of float32 at 1.0 is 2**-23 (1.19e-7): the rounding variance is
    # spacing**2 / 12, and the refusal comes when it reaches 0.1 of the variance
    # statistic's standard deviation sqrt(2 / n) (SPEC.md R-ISS-1), so a larger mask
    # needs a larger sigma.
    spacing = float(np.spacing(np.float32(1.0)))
    for n in (100, 10_000):
        weights = {"w": np.ones(n, dtype=np.float32)}
        mask = {"w": np.ones(n, dtype=bool)}
        bound = spacing / np.sqrt(12 * 0.1 * np.sqrt(2 / n))
        reject_noise_below_resolution(weights, mask, bound * 1.01)
        with pytest.raises(IssuanceError) as caught:
            reject_noise_below_resolution(weights, mask, bound * 0.99)
        assert caught.value.code == "E_NOISE_BELOW_RESOLUTION"


def _sized(n: int, *, label: float = 0.0, members: int = 0) -> ProbeSet:
    """Return a probe set of ``n`` samples, all observing every modality."""
    probe = _probe({name: [True] * n for name in MODALITIES})
    probe.label[:] = label
    probe.member[:] = np.arange(n) < members
    return probe


@pytest.mark.parametrize("label", [3.0, -3.0, 0.0])
def test_labels_on_scale_pass(label):
    from mbd_cert._issue_checks import check_labels

    check_labels(_sized(3, label=label), Path("probe.safetensors"))


@pytest.mark.parametrize("label", [1e30, -1e30, 3.5, float(np.nextafter(np.float32(3.0),
                                                                          np.float32(4.0)))])
def test_label_off_scale_rejected(label):
    # R-PRB-3: a probe set label of 1e30 was accepted, and its metrics were meaningless.
    from mbd_cert._issue_checks import check_labels

    probe = _sized(4)
    probe.label[2] = label
    with pytest.raises(MalformedData) as caught:
        check_labels(probe, Path("probe.safetensors"))
    assert caught.value.code == "E_DATA_MALFORMED"
    assert caught.value.message.startswith(
        "probe.safetensors: tensor 'label' has 1 value(s) outside [-3, 3]")
    assert "in row 2" in caught.value.message
    assert "[-3, 3]" in caught.value.hint


@pytest.mark.parametrize("n", [1, 2, 19])
def test_probe_below_minimum_rejected(n):
    # R-PRB-4: probe sets of 1 or 2 samples were accepted.
    from mbd_cert._issue_checks import check_probe_size

    with pytest.raises(MalformedData) as caught:
        check_probe_size(_sized(n, members=1), Path("probe.safetensors"))
    assert caught.value.code == "E_DATA_MALFORMED"
    assert caught.value.message.startswith(
        f"probe.safetensors: the probe set has {n} sample(s) (rows of tensor 'label': "
        f"1 members, {n - 1} non-members); issue needs at least 20")
    assert "--probe-members and --probe-nonmembers of 10 or more" in caught.value.hint


def test_probe_of_minimum_size_passes():
    from mbd_cert._issue_checks import check_probe_size

    check_probe_size(_sized(20), Path("probe.safetensors"))


def test_eval_set_members_rejected():
    # R-PRB-5: the certificate records the metrics as held-out utility.
    from mbd_cert._issue_checks import check_evaluation_set

    for members in (1, 5):
        with pytest.raises(MalformedData) as caught:
            check_evaluation_set(_sized(5, members=members), Path("eval.safetensors"), "audio")
        assert caught.value.message.startswith(
            f"eval.safetensors: tensor 'member' marks {members} of 5 samples as training "
            "members")


def test_eval_set_labels_checked():
    from mbd_cert._issue_checks import check_evaluation_set

    with pytest.raises(MalformedData, match="tensor 'label' has 5 value"):
        check_evaluation_set(_sized(5, label=-4.0), Path("eval.safetensors"), "audio")


def test_eval_set_without_modality_warns(caplog):
    from mbd_cert._issue_checks import check_evaluation_set

    evaluation = _probe({"text": [True, True], "vision": [False, True]})
    evaluation.member[:] = False
    with caplog.at_level("WARNING", logger=LOGGER):
        check_evaluation_set(evaluation, Path("eval.safetensors"), "vision")
    assert "observes" not in caplog.text
    with caplog.at_level("WARNING", logger=LOGGER):
        check_evaluation_set(evaluation, Path("eval.safetensors"), "audio")
    assert "no sample of the evaluation set eval.safetensors observes 'audio'" in caplog.text


def test_small_eval_set_warns(caplog):
    from mbd_cert._issue_checks import MIN_EVAL_SAMPLES, check_evaluation_set

    for size, warned in ((1, True), (MIN_EVAL_SAMPLES - 1, True), (MIN_EVAL_SAMPLES, False)):
        caplog.clear()
        evaluation = _sized(size)
        evaluation.member[:] = False
        with caplog.at_level("WARNING", logger=LOGGER):
            check_evaluation_set(evaluation, Path("eval.safetensors"), "audio")
        assert (f"the evaluation set eval.safetensors has {size} sample(s)" in caplog.text) \
            is warned
