"""The ``issue`` command's defaults are the library's: one deletion, two entry points."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mbd_cert import signing
from mbd_cert._work_limits import MAX_UPDATE_STEPS, check_update_work
from mbd_cert.cli import main
from mbd_cert.errors import LimitExceeded
from mbd_cert.issue import IssueOptions, issue

# Parameters that name files or take a different type in the library.
NOT_OPTIONS = {"checkpoint", "key_path", "out_dir", "eval_set", "auditor_key", "previous",
               "eligible_groups"}


def test_cli_defaults_match_issue_options():
    library = {f.name: f.default for f in dataclasses.fields(IssueOptions)
               if f.default is not dataclasses.MISSING}
    command = main.commands["issue"]
    compared = []
    for parameter in command.params:
        name = parameter.name
        if (name in NOT_OPTIONS or name not in library or parameter.required
                or getattr(parameter, "is_flag", False)):
            continue
        default = parameter.default
        if library[name] is None and default is None:
            compared.append(name)
            continue
        assert default == library[name], (
            f"--{name.replace('_', '-')} defaults to {default!r} on the command line "
            f"but IssueOptions.{name} to {library[name]!r}")
        compared.append(name)
    # The deletion's numeric settings are all among the compared ones.
    assert {"steps", "learning_rate", "damping", "clip_norm", "top_k_fraction",
            "reference_runs", "safety_factor", "proxy_sample_size", "seed",
            "sensitivity_method", "threads"} <= set(compared)


def test_step_cap_hint_names_the_default():
    # A step count over the cap raises an error whose hint names the issuer's default.
    with pytest.raises(LimitExceeded) as caught:
        check_update_work(MAX_UPDATE_STEPS + 1, 1, source="test")
    default = {f.name: f.default for f in dataclasses.fields(IssueOptions)}["steps"]
    assert f"the default is {default})" in caught.value.hint


def test_issue_leaves_the_callers_torch_generator_alone(tmp_path, tiny_checkpoint,
                                                        issuer_keys):
    """``issue`` is also a library call: it draws nothing from torch's global generator.

    Its sample draws use their own generators from ``saliency.seed``, so reseeding the
    global one would only change the caller's random stream.
    """
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    options = IssueOptions(modality="audio", epsilon=1.0, delta=1e-5, steps=2, seed=99)
    issue(tiny_checkpoint, tmp_path / "out", options,
          signing.load_private_key(issuer_keys.private))
    assert torch.equal(torch.get_rng_state(), state)
