from __future__ import annotations

import math

import pytest

from mbd_cert.errors import InputError
from mbd_cert.issue import IssueOptions, draw_noise, sensitivity_for, validate_options


def _options(**changes):
    values = {"modality": "audio", "epsilon": 1.0, "delta": 1e-5}
    values.update(changes)
    return IssueOptions(**values)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epsilon", 0.0),
        ("epsilon", -1.0),
        ("epsilon", math.nan),
        ("epsilon", math.inf),
        ("epsilon", True),
        ("delta", 0.0),
        ("delta", 1.0),
        ("delta", math.nan),
        ("clip_norm", 0.0),
        ("learning_rate", -1e-3),
        ("damping", math.inf),
        ("top_k_fraction", 0.0),
        ("top_k_fraction", 1.5),
        ("steps", -1),
        ("steps", 2.5),
        ("steps", 1001),
        ("threads", 0),
        ("threads", 1.5),
        ("threads", True),
    ],
)
def test_validate_options_rejects_out_of_range(field, value):
    # C20: zero is never read as "no limit"; the message names the parameter.
    with pytest.raises(InputError) as info:
        validate_options(_options(**{field: value}))
    assert info.value.code == "E_PARAMETER_INVALID"
    assert field in str(info.value)


def test_declared_sensitivity_needs_value():
    with pytest.raises(InputError) as info:
        validate_options(_options(sensitivity_method="declared"))
    assert "sensitivity" in str(info.value)
    with pytest.raises(InputError):
        validate_options(_options(sensitivity_method="declared", sensitivity=0.0))


@pytest.mark.parametrize("method", ["clip-bound", "reference-retrain"])
def test_sensitivity_value_needs_declared_method(method):
    # A value the method ignores would calibrate the noise for another sensitivity.
    with pytest.raises(InputError) as info:
        validate_options(_options(sensitivity_method=method, sensitivity=0.01))
    assert info.value.code == "E_PARAMETER_INVALID"
    assert "declared" in str(info.value)


def test_sensitivity_for_clip_bound_is_diameter():
    assert sensitivity_for(_options(clip_norm=0.25)) == 0.5
    assert sensitivity_for(_options(sensitivity_method="declared", sensitivity=3.0)) == 3.0


def test_draw_noise_scale_and_fresh_seed():
    noise = draw_noise({"w": (200, 200)}, 0.5, noise_seed=1)
    assert abs(float(noise["w"].std()) - 0.5) < 0.01
    again = draw_noise({"w": (200, 200)}, 0.5, noise_seed=None)
    other = draw_noise({"w": (200, 200)}, 0.5, noise_seed=None)
    assert not (again["w"] == other["w"]).all()


def test_noise_seed_not_written(tmp_path):
    """R-PRIV-1: no file that issue writes records the noise seed, which undoes the noise."""
    pytest.importorskip("torch")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from level_factories import honest_bundle, issue_tiny

    checkpoint, _, _ = honest_bundle()
    # 16 digits, which no other number in the outputs is likely to spell by chance, and
    # below 2**53, so that a certificate could hold it as a JSON integer.
    seed = 7_318_450_926_153_847
    out = tmp_path / "out"
    issue_tiny(checkpoint, out, Ed25519PrivateKey.generate(), noise_seed=seed)
    written = sorted(path for path in out.rglob("*") if path.is_file())
    assert out / "cert.json" in written
    for path in written:
        data = path.read_bytes()
        for spelling in (str(seed), f"{seed:x}", f"{seed:X}"):
            assert spelling.encode("ascii") not in data, (path.name, spelling)


@pytest.mark.parametrize("threads", [1, 3])
def test_issue_threads_set_and_restored(monkeypatch, threads):
    import torch

    from mbd_cert import _issue_steps

    seen = []
    monkeypatch.setattr(_issue_steps, "_run",
                        lambda **kwargs: seen.append(torch.get_num_threads()) or {})
    before = torch.get_num_threads()
    _issue_steps.run(options=_options(threads=threads))
    assert seen == [threads]
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("changes", "expected"),
    [({"sensitivity_method": "declared", "sensitivity": 1e-6}, "below the clip bound"),
     ({"sensitivity_method": "reference-retrain", "reference_runs": 1}, "rough estimate"),
     ({"delta": 0.5}, "delta 0.5 is large"),
     ({"epsilon": 1e6}, "epsilon 1e+06 is large"),
     ({"epsilon": 10.5}, "epsilon 10.5 is large")],
    ids=["declared-below-clip", "one-rerun", "large-delta", "huge-epsilon", "epsilon-above-10"],
)
def test_weak_settings_warn(caplog, changes, expected):
    from mbd_cert._issue_options import warn_weak_settings

    with caplog.at_level("WARNING", logger="mbd_cert._issue_options"):
        warn_weak_settings(_options(**changes))
    assert expected in caplog.text


def test_default_settings_do_not_warn(caplog):
    from mbd_cert._issue_options import warn_weak_settings

    with caplog.at_level("WARNING", logger="mbd_cert._issue_options"):
        warn_weak_settings(_options())
        warn_weak_settings(_options(sensitivity_method="declared", sensitivity=0.002))
        warn_weak_settings(_options(epsilon=10.0))
    assert caplog.text == ""


def test_small_mask_warning_matches_level_2():
    from mbd_cert import _issue_steps, stats

    assert _issue_steps.NORMALITY_MIN_ENTRIES == stats.MIN_NORMALITY_SAMPLES


def test_membership_warning_matches_level_3():
    from mbd_cert import _issue_preflight, verify_leakage

    assert _issue_preflight.MEMBERSHIP_MIN_GROUP == verify_leakage.MIN_GROUP


def test_probe_minimum_matches_level_3():
    # R-PRB-4: below 10 members and 10 non-members level 3 cannot reach a verdict.
    from mbd_cert import checkpoint, verify_leakage

    assert checkpoint.MIN_ISSUE_PROBE_SAMPLES == 2 * verify_leakage.MIN_GROUP
