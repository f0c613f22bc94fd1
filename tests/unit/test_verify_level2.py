"""Level-2 verification: honest certificates pass, options and edge cases behave."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from level_factories import copy_bundle, honest_bundle, load_doc, read, resign, run_verify  # noqa: E402,E501

import mbd_cert  # noqa: E402
from mbd_cert import _recompute  # noqa: E402
from mbd_cert.errors import InputError  # noqa: E402
from mbd_cert.verify_recompute import DEFAULT_ALPHA, resolve_alpha  # noqa: E402

# The directory that contains the mbd_cert package.
PACKAGE_ROOT = Path(mbd_cert.__file__).resolve().parents[1]

LEVEL2_CHECKS = ["pre-rebuild", "mask-commitment", "diff-support", "saliency-mask",
                 "update-clip", "residual-variance", "residual-normality",
                 "residual-projection"]


@pytest.fixture(scope="module")
def honest():
    return honest_bundle()


@pytest.fixture(scope="module")
def honest_report(honest):
    _, out, key = honest
    return run_verify(out, key, 2)


def test_honest_passes_every_level2_check(honest_report):
    """R-PRIV-1, R-L2-1, R-DIFF-3: an honest bundle passes every level-2 check."""
    statuses = {c.name: c.status for c in honest_report.checks}
    for name in LEVEL2_CHECKS:
        assert statuses[name] == "pass", name
    assert honest_report.verified


def test_residual_checks_report_value_threshold_n(honest, honest_report):
    doc = load_doc(honest[1])
    for check in honest_report.checks:
        if check.name.startswith("residual-"):
            assert check.n == doc["saliency"]["mask_size"]
            assert check.threshold == pytest.approx(doc["update"]["residual_alpha"] / 3)
            assert check.value is not None


def test_saliency_reports_boundary_swaps(honest_report):
    """R-L2-4: the saliency check reports the number of boundary swaps."""
    check = next(c for c in honest_report.checks if c.name == "saliency-mask")
    assert check.value == 0
    assert "boundary swaps" in check.detail


def test_alpha_option_overrides_certificate(honest):
    _, out, key = honest
    report = run_verify(out, key, 2, alpha=0.3)
    check = next(c for c in report.checks if c.name == "residual-variance")
    assert check.threshold == pytest.approx(0.1)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5, float("nan")])
def test_alpha_out_of_range_rejected(honest, alpha):
    _, out, key = honest
    with pytest.raises(InputError) as caught:
        run_verify(out, key, 2, alpha=alpha)
    assert caught.value.code == "E_PARAMETER_INVALID"


def test_resolve_alpha_default_without_field():
    assert resolve_alpha({"update": {}}, None) == DEFAULT_ALPHA
    assert resolve_alpha({"update": {"residual_alpha": 0.05}}, None) == 0.05
    assert resolve_alpha({"update": {"residual_alpha": 0.05}}, 0.2) == 0.2
    # The certificate can make the tests stricter, never weaker; the caller can do both.
    assert resolve_alpha({"update": {"residual_alpha": 1e-300}}, None) == DEFAULT_ALPHA
    assert resolve_alpha({"update": {"residual_alpha": 1e-300}}, 1e-6) == 1e-6


@pytest.mark.parametrize(
    ("fraction", "count", "k"),
    # 0.07 x 100 is 7.000000000000001 in binary floating point, which would round up to 8.
    [(0.02, 5000, 100), (0.02, 19808, 397), (1.0, 7, 7), (1e-9, 10, 1), (0.3, 10, 3),
     (0.07, 100, 7)],
)
def test_mask_count_decimal_rule(fraction, count, k):
    """R-SAL-2, R-L2-2: k = max(1, ceil(top_k_fraction x count)) on the written decimal."""
    assert _recompute.mask_count(count, fraction) == k


def test_rank_ties_break_by_index():
    """R-SAL-2: level 2 breaks ties of |score| by flat index ascending."""
    scores = {"a": np.array([1.0, 2.0, 2.0]), "b": np.array([2.0, -2.0])}
    ranking = _recompute.rank_top_k(scores, 0.6)
    # k = 3 of five entries with |score| 2 at flat indices 1, 2, 3, 4: the first three win.
    assert ranking.selected.tolist() == [False, True, True, True, False]
    assert ranking.cut == 2.0


def test_masked_update_without_samples_is_input_error():
    import torch

    model = torch.nn.Linear(2, 1)
    batch = {"inputs": {}, "present": torch.zeros((0, 1), dtype=torch.bool),
             "label": torch.zeros(0)}
    with pytest.raises(InputError) as caught:
        _recompute.masked_update(
            model, {"weight": np.ones((1, 2), dtype=bool)}, lambda m, b: b["label"], batch,
            steps=1, learning_rate=0.1, damping=1e-3, clip_norm=1.0)
    assert caught.value.code == "E_DATA_MALFORMED"
    assert "0 samples" in caught.value.message


def test_failed_rebuild_skips_dependent_checks(honest, tmp_path):
    """R-L2-1: a failed rebuild fails pre-rebuild and skips checks 4 to 6."""
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    diff = read(out, "diff.safetensors")
    name = next(k for k in diff if k.startswith("diff."))
    diff[name] = diff[name] + 1.0
    from level_factories import write_tensors

    write_tensors(out / "diff.safetensors", diff)
    resign(out, key)
    statuses = {c.name: c.status for c in run_verify(out, key, 2).checks}
    assert statuses["pre-rebuild"] == "fail"
    assert statuses["saliency-mask"] == "skipped"
    assert statuses["residual-variance"] == "skipped"


@pytest.mark.parametrize(("changes", "field"), [
    ({"saliency.mask_digest": "sha256:" + "0" * 64}, "saliency.mask_digest"),
    ({"saliency.eligible_count": 1}, "saliency.eligible_count"),
    # noise_dimension follows mask_size, or level 1's calibration check fails first.
    ({"saliency.mask_size": -1, "privacy.noise_dimension": -1}, "saliency.mask_size"),
    ({"saliency.top_k_fraction": 0.5}, "rule k = ceil(top_k_fraction x eligible_count)"),
], ids=["mask-digest", "eligible-count", "mask-size", "top-k-rule"])
def test_mask_commitment_binds_saliency_fields(honest, tmp_path, changes, field):
    """R-L2-2: mask digest, eligible count and mask size must match the mask tensors."""
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    doc = load_doc(out)
    for path, change in changes.items():
        section, member = path.split(".")
        value = doc[section][member]
        # Integers are shifted by the change, and other values are replaced by it.
        doc[section][member] = value + change if isinstance(value, int) else change
    resign(out, key, doc)
    report = run_verify(out, key, 2)
    check = next(c for c in report.checks if c.name == "mask-commitment")
    assert (check.status, check.code) == ("fail", "E_MASK_MISMATCH")
    assert field in check.detail
    statuses = {c.name: c.status for c in report.checks}
    assert statuses["saliency-mask"] == "skipped"
    assert statuses["residual-variance"] == "skipped"


def test_diff_with_wrong_shape_is_input_error(honest, tmp_path):
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    diff = read(out, "diff.safetensors")
    name = next(k for k in diff if k.startswith("diff."))
    diff[name] = np.zeros((2, 2))
    from level_factories import write_tensors

    write_tensors(out / "diff.safetensors", diff)
    resign(out, key)
    with pytest.raises(InputError) as caught:
        run_verify(out, key, 2)
    assert caught.value.code == "E_DIFF_SHAPE"


def test_cli_level2_json_and_junit(honest, tmp_path):
    from cryptography.hazmat.primitives import serialization

    from mbd_cert.cli import main

    _, out, key = honest
    public = tmp_path / "issuer.pub"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    junit = tmp_path / "report.xml"
    result = CliRunner().invoke(main, [
        "verify", str(out / "cert.json"), str(out / "model.safetensors"), "--key", str(public),
        "--level", "2", "--bundle", str(out), "--json", "--junit", str(junit),
        "--alpha", "0.01"])
    assert result.exit_code == 0, result.output
    names = [c["name"] for c in json.loads(result.output)["checks"]]
    assert set(LEVEL2_CHECKS) <= set(names)
    assert b'name="residual-variance"' in junit.read_bytes()


def test_missing_raw_norm_is_inconclusive(honest, tmp_path):
    """R-L2-5: without update.norm_before_clip the update check is inconclusive."""
    # Without update.norm_before_clip a claim of other steps, learning rate or damping
    # hides in the noise, so the check cannot pass.
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "no-raw-norm")
    doc = load_doc(out)
    del doc["update"]["norm_before_clip"]
    doc["update"]["steps"] = doc["update"]["steps"] // 2
    resign(out, key, doc)
    report = run_verify(out, key, 2)
    check = next(c for c in report.checks if c.name == "update-clip")
    assert check.status == "inconclusive"
    assert "norm_before_clip" in check.detail
    assert not report.verified


def test_other_steps_fail_update_clip(honest, tmp_path):
    """R-L2-5: the stated norm_before_clip pins steps, learning rate and damping."""
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "other-steps")
    doc = load_doc(out)
    doc["update"]["steps"] = doc["update"]["steps"] // 2
    resign(out, key, doc)
    report = run_verify(out, key, 2)
    check = next(c for c in report.checks if c.name == "update-clip")
    assert (check.status, check.code) == ("fail", "E_UPDATE_MISMATCH")
    assert "update.norm_before_clip is" in check.detail
    assert not report.verified


def test_update_over_clip_norm_fails():
    """R-L2-5: a recomputed update whose norm exceeds clip_norm fails the check."""
    from mbd_cert._recompute import Update
    from mbd_cert.verify_recompute import _check_clip

    doc = {"update": {"clip_norm": 1.0, "norm_before_clip": 2.0}}
    check = _check_clip(doc, Update(displacement={}, raw_norm=2.0, norm=2.0))
    assert (check.status, check.code) == ("fail", "E_UPDATE_MISMATCH")
    assert "exceeds clip_norm" in check.detail
    within = _check_clip(doc, Update(displacement={}, raw_norm=2.0, norm=1.0))
    assert within.status == "pass"


def test_projection_states_power_against_unclipped(honest, honest_report):
    """R-L2-10: the projection check reports the unclipped shift and the power against it."""
    doc = load_doc(honest[1])
    check = next(c for c in honest_report.checks if c.name == "residual-projection")
    raw, clip = doc["update"]["norm_before_clip"], doc["update"]["clip_norm"]
    if raw <= clip:
        assert "within the clip" in check.detail
    else:
        shift = (raw - clip) / doc["privacy"]["sigma"]
        assert f"shift z by {shift:.2f}" in check.detail
        assert "detects with probability" in check.detail


# The issuer's modules that compute the saliency mask, the masked update and the noise,
# with their private helpers.
ISSUER_ROUTINES = {
    "mbd_cert.saliency", "mbd_cert.update", "mbd_cert.issue", "mbd_cert._issue_steps",
    "mbd_cert._issue_options", "mbd_cert._issue_privacy", "mbd_cert._issue_inputs",
    "mbd_cert._issue_preflight", "mbd_cert._issue_utility", "mbd_cert._issue_release",
    "mbd_cert.sensitivity", "mbd_cert.proxy_quality", "mbd_cert._linear_per_sample",
    "mbd_cert._frozen_memo", "mbd_cert._zeroed_linear",
}

# The verifier's modules that hold the level-2 checks, which the walk below must reach.
LEVEL2_CHECK_MODULES = (
    "mbd_cert._level2_bundle_checks", "mbd_cert._level2_recomputation",
    "mbd_cert._residual_tests", "mbd_cert._sensitivity_evidence",
)


def _module_file(name):
    relative = Path(*name.split("."))
    for candidate in (relative.with_suffix(".py"), relative / "__init__.py"):
        if (PACKAGE_ROOT / candidate).is_file():
            return PACKAGE_ROOT / candidate
    return None


def _imported_modules(name):
    """Return the mbd_cert modules that ``name`` imports anywhere, in function bodies too."""
    found = set()
    for node in ast.walk(ast.parse(_module_file(name).read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            # "from mbd_cert import update" imports the module mbd_cert.update.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {module for module in found
            if module.split(".")[0] == "mbd_cert" and _module_file(module) is not None}


def test_levels_2_and_3_share_no_issuer_routine():
    """R-LVL-2: levels 2 and 3 reach none of the issuer's saliency, update or noise code.

    Every module that verify_recompute and verify_leakage import, directly or through
    others, is listed from the source, so an import inside a function counts too.
    """
    reached, pending = set(), ["mbd_cert.verify_recompute", "mbd_cert.verify_leakage"]
    while pending:
        module = pending.pop()
        if module not in reached:
            reached.add(module)
            pending.extend(_imported_modules(module))
    assert "mbd_cert._recompute" in reached
    for module in LEVEL2_CHECK_MODULES:
        assert module in reached
    assert reached & ISSUER_ROUTINES == set()
