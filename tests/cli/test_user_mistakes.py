"""Messages for mistakes a new user makes: each names the problem and the fix."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
from cli_support import (
    TINY_ISSUE_OPTIONS,
    HonestRun,
    assert_check_failed,
    assert_clean,
    assert_input_error,
    run_cli,
    verify,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def _assert_issue_input_error(outcome, code: str) -> None:
    # issue has no --json report, so the code is read from its message on stderr.
    assert_clean(outcome)
    assert outcome.exit_code == 2, outcome.stderr
    assert f"[{code}]" in outcome.stderr


def test_swapped_cert_and_model(honest_run: HonestRun):
    outcome = verify(honest_run.model, honest_run.cert, honest_run.public_key)
    assert_input_error(outcome, "E_CERT_MALFORMED")
    assert "is a safetensors file" in outcome.stderr
    assert "CERT MODEL" in outcome.stderr


@pytest.mark.parametrize("which", ["cert", "model"])
def test_git_lfs_pointer_named(honest_run: HonestRun, tmp_path: Path, which: str):
    # A checkout without Git LFS leaves text pointers in place of the files.
    pointer = tmp_path / f"{which}.pointer"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:"
                       + "0" * 64 + "\nsize 402688\n")
    cert, model = (pointer, honest_run.model) if which == "cert" else (honest_run.cert, pointer)
    outcome = verify(cert, model, honest_run.public_key)
    assert_input_error(outcome, "E_CERT_MALFORMED" if which == "cert"
                       else "E_SAFETENSORS_NOT_SAFETENSORS")
    assert "is a Git LFS pointer file" in outcome.stderr
    assert "git lfs pull" in outcome.stderr


def test_issue_without_torch(honest_run: HonestRun, tmp_path: Path, monkeypatch):
    # A verification-only install has no torch: importing the issuer's steps fails as
    # it would there. The command must name the extra to install, not report a bug.
    import mbd_cert

    monkeypatch.delitem(sys.modules, "mbd_cert._issue_steps", raising=False)
    monkeypatch.delattr(mbd_cert, "_issue_steps", raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)
    outcome = run_cli(["issue", "--checkpoint", honest_run.checkpoint, *TINY_ISSUE_OPTIONS,
                       "--key", honest_run.private_key, "--out", tmp_path / "out"])
    _assert_issue_input_error(outcome, "E_INPUT")
    assert "needs torch" in outcome.stderr
    assert "'mbd-cert[torch]' where you install it from a package or git URL, or pip " \
        "install -e '.[torch]' in a checkout" in outcome.stderr
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_directory(honest_run: HonestRun, tmp_path: Path):
    outcome = run_cli(["issue", "--checkpoint", tmp_path / "checkpont", *TINY_ISSUE_OPTIONS,
                       "--key", honest_run.private_key, "--out", tmp_path / "out"])
    _assert_issue_input_error(outcome, "E_FILE_MISSING")
    assert "checkpoint directory not found" in outcome.stderr
    assert not (tmp_path / "out").exists()


def test_checkpoint_that_is_a_file(honest_run: HonestRun, tmp_path: Path):
    outcome = run_cli(["issue", "--checkpoint", honest_run.cert, *TINY_ISSUE_OPTIONS,
                       "--key", honest_run.private_key, "--out", tmp_path / "out"])
    _assert_issue_input_error(outcome, "E_PARAMETER_INVALID")
    assert "not a directory" in outcome.stderr


def _delete(source: Path, modality: str, key: Path, out: Path) -> object:
    return run_cli(["issue", "--checkpoint", source, "--modality", modality,
                    "--epsilon", "1", "--steps", "2", "--key", key, "--out", out])


def test_last_modality_cannot_be_deleted(honest_run: HonestRun, tmp_path: Path):
    second = tmp_path / "vision"
    assert _delete(honest_run.out_dir, "vision", honest_run.private_key, second).exit_code == 0
    outcome = _delete(second, "text", honest_run.private_key, tmp_path / "text")
    assert_clean(outcome)
    assert outcome.exit_code == 1
    assert "must keep at least one modality" in outcome.stderr
    assert not (tmp_path / "text").exists()


def test_deleted_modality_again_names_remaining(honest_run: HonestRun, tmp_path: Path):
    outcome = _delete(honest_run.out_dir, "audio", honest_run.private_key, tmp_path / "again")
    assert outcome.exit_code == 1
    assert "already deleted from this model (deleted: audio)" in outcome.stderr
    assert "one that the model still uses: text, vision" in outcome.stderr
    assert not (tmp_path / "again").exists()


def test_two_issuer_chain_warns(honest_run: HonestRun,
                                                          tmp_path: Path, caplog):
    other = tmp_path / "other"
    assert run_cli(["keygen", "--out", other]).exit_code == 0
    second = tmp_path / "vision"
    with caplog.at_level(logging.WARNING, logger="mbd_cert._issue_inputs"):
        assert _delete(honest_run.out_dir, "vision", other.with_suffix(".key"),
                       second).exit_code == 0
    assert "signed with other keys" in caplog.text

    alone = verify(second / "cert.json", second / "model.safetensors",
                   other.with_suffix(".pub"))
    assert_check_failed(alone, "accounting", "E_KEY_UNTRUSTED")
    assert "earlier certificate 1 of the chain" in alone.check_detail("accounting")
    both = verify(second / "cert.json", second / "model.safetensors",
                  other.with_suffix(".pub"), "--key", honest_run.public_key)
    assert both.exit_code == 0, both.stderr


def test_mistyped_chain_directory(honest_run: HonestRun, tmp_path: Path):
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key,
                     "--chain", tmp_path / "nope")
    assert_input_error(outcome, "E_FILE_MISSING")
    assert "chain directory" in outcome.stderr


def test_malformed_chain_link_is_named():
    vector = Path(__file__).resolve().parents[2] / "schema/vectors/v1/invalid" \
        / "chain-link-schema-invalid"
    outcome = verify(vector / "cert.json", vector / "model.safetensors",
                     vector / "issuer.pub", "--chain", vector)
    assert_input_error(outcome, "E_CERT_MALFORMED")
    assert "chain-00001.json" in outcome.stderr


def test_issuer_refuses_nonfinite_scores(honest_run: HonestRun, tmp_path: Path, monkeypatch):
    """R-SAL-4: issue refuses a model whose scores are not finite (E_SCORES_NONFINITE, exit 1)."""
    from mbd_cert import _issue_steps

    real = _issue_steps.saliency_scores

    def with_inf(*args, **kwargs):
        scores = real(*args, **kwargs)
        first = sorted(scores)[0]
        scores[first] = scores[first].copy()
        scores[first].flat[0] = float("inf")
        return scores

    monkeypatch.setattr(_issue_steps, "saliency_scores", with_inf)
    outcome = _delete(honest_run.checkpoint, "audio", honest_run.private_key, tmp_path / "out")
    assert_clean(outcome)
    assert outcome.exit_code == 1
    assert "[E_SCORES_NONFINITE]" in outcome.stderr
    assert not (tmp_path / "out").exists()


def test_two_threads_verify_at_level_2(honest_run: HonestRun, tmp_path: Path):
    # Another thread count changes only the reduction order, which the level-2 score
    # band absorbs.
    out = tmp_path / "threads"
    outcome = run_cli(["issue", "--checkpoint", honest_run.checkpoint, *TINY_ISSUE_OPTIONS,
                       "--threads", "2", "--key", honest_run.private_key, "--out", out])
    assert outcome.exit_code == 0, outcome.stderr
    verified = verify(out / "cert.json", out / "model.safetensors", honest_run.public_key,
                      "--level", "2", "--bundle", out, "--allow-inconclusive")
    # The tiny test model has 8 masked entries, too few for the normality test.
    assert verified.exit_code == 0, [c for c in verified.report["checks"]
                                     if c["status"] != "pass"]
    assert {c["name"]: c["status"] for c in verified.report["checks"]}["saliency-mask"] == "pass"
    zero = run_cli(["issue", "--checkpoint", honest_run.checkpoint, *TINY_ISSUE_OPTIONS,
                    "--threads", "0", "--key", honest_run.private_key, "--out", tmp_path / "z"])
    assert_clean(zero)
    assert zero.exit_code == 2
    assert "--threads" in zero.stderr


def test_evaluate_accepts_issue_output(honest_run: HonestRun, tmp_path: Path):
    # An issue output has no config.json or training.json. The released config is the
    # certificate's, and the samples are the test split copied to eval.safetensors.
    released = tmp_path / "released.json"
    outcome = run_cli(["evaluate", "--checkpoint", honest_run.out_dir, "--json", released])
    assert outcome.exit_code == 0, outcome.stderr
    trained = tmp_path / "trained.json"
    assert run_cli(["evaluate", "--checkpoint", honest_run.checkpoint,
                    "--json", trained]).exit_code == 0
    metrics = json.loads(released.read_text())
    assert metrics["deleted_modalities"] == ["audio"]
    assert metrics["views"]["deleted:audio"]["max_abs_change_vs_all"] == 0.0
    assert metrics["n"] == json.loads(trained.read_text())["n"]


def test_evaluate_ignores_deleted_modality_input(honest_run: HonestRun, tmp_path: Path):
    # A sample that observes only the deleted audio gives the released model no input,
    # so it counts in n_without_any_modality.
    import numpy as np

    from mbd_cert.checkpoint import read_probe_set

    out = tmp_path / "released.json"
    outcome = run_cli(["evaluate", "--checkpoint", honest_run.out_dir, "--json", out])
    assert outcome.exit_code == 0, outcome.stderr
    views = json.loads(out.read_text())["views"]
    samples = read_probe_set(honest_run.out_dir / "eval.safetensors",
                             modalities=("text", "audio", "vision"))
    present = np.asarray(samples.present, dtype=bool)
    text, vision = present[:, 0], present[:, 2]
    assert views["all"]["n_without_any_modality"] == int(np.sum(~text & ~vision))
    assert views["missing:text"]["n_without_any_modality"] == int(np.sum(~vision))
    assert views["missing:vision"]["n_without_any_modality"] == int(np.sum(~text))


def test_evaluate_published_model_with_eval_set(honest_run: HonestRun, tmp_path: Path):
    # A downstream user holds only the published files and brings held-out samples.
    published = tmp_path / "published"
    published.mkdir()
    for name in ("cert.json", "model.safetensors"):
        shutil.copy(honest_run.out_dir / name, published / name)
    missing = run_cli(["evaluate", "--checkpoint", published])
    _assert_issue_input_error(missing, "E_FILE_MISSING")
    assert "--eval-set" in missing.stderr
    out = tmp_path / "metrics.json"
    outcome = run_cli(["evaluate", "--checkpoint", published, "--eval-set",
                       honest_run.checkpoint / "eval.safetensors", "--json", out])
    assert outcome.exit_code == 0, outcome.stderr
    metrics = json.loads(out.read_text())
    assert metrics["split"] == "eval.safetensors"
    assert metrics["deleted_modalities"] == ["audio"]
    assert "training members" not in outcome.stderr


def test_evaluate_on_probe_set_warns(honest_run: HonestRun, tmp_path: Path):
    # probe.safetensors contains training members, which flatter every metric.
    outcome = run_cli(["evaluate", "--checkpoint", honest_run.out_dir, "--eval-set",
                       honest_run.out_dir / "probe.safetensors", "--json", tmp_path / "m.json"])
    assert outcome.exit_code == 0, outcome.stderr
    assert "samples in probe.safetensors are training members" in outcome.stderr


def test_evaluate_issue_output_other_split(honest_run: HonestRun):
    outcome = run_cli(["evaluate", "--checkpoint", honest_run.out_dir, "--split", "train"])
    _assert_issue_input_error(outcome, "E_PARAMETER_INVALID")
    assert "--split test" in outcome.stderr


def test_level_2_without_bundle_names_both_options(honest_run: HonestRun):
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key, "--level", "2")
    assert_input_error(outcome, "E_BUNDLE_MISSING")
    assert "--bundle DIR" in outcome.stderr
    assert "--auditor-private-key" in outcome.stderr


@pytest.mark.parametrize(("level", "advice"), [
    ("1", "or drop --bundle"),
    ("2", "levels 2 and 3 need the audit bundle"),
])
def test_missing_bundle_file_hint_per_level(honest_run: HonestRun, tmp_path: Path,
                                            level: str, advice: str):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(honest_run.diff, bundle)
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key,
                     "--level", level, "--bundle", bundle)
    assert_input_error(outcome, "E_FILE_MISSING")
    assert "probe.safetensors" in outcome.stderr
    assert advice in outcome.stderr
    # The run fails, so no hint may claim that level 1 can do without the bundle.
    assert "needs no bundle" not in outcome.stderr


def test_missing_certificate_hint_names_issue(honest_run: HonestRun, tmp_path: Path):
    outcome = verify(tmp_path / "cert.jsn", honest_run.model, honest_run.public_key)
    assert_input_error(outcome, "E_FILE_MISSING")
    assert "certificate not found" in outcome.stderr
    assert "the cert.json that 'mbd-cert issue' wrote" in outcome.stderr


def test_missing_public_key_hint_names_keygen(honest_run: HonestRun, tmp_path: Path):
    outcome = verify(honest_run.cert, honest_run.model, tmp_path / "issuer.pb")
    assert_input_error(outcome, "E_FILE_MISSING")
    assert "public key file not found" in outcome.stderr
    assert "PREFIX.pub file that 'mbd-cert keygen --out PREFIX' wrote" in outcome.stderr
    assert "mbd-cert key-id FILE" in outcome.stderr


def test_missing_private_key_hint_names_keygen(honest_run: HonestRun, tmp_path: Path):
    outcome = run_cli(["issue", "--checkpoint", honest_run.checkpoint, *TINY_ISSUE_OPTIONS,
                       "--key", tmp_path / "issuer.ky", "--out", tmp_path / "out"])
    _assert_issue_input_error(outcome, "E_FILE_MISSING")
    assert "private key file not found" in outcome.stderr
    assert "PREFIX.key file that 'mbd-cert keygen --out PREFIX' wrote" in outcome.stderr
    assert not (tmp_path / "out").exists()


def test_missing_corpus_hint_names_data_root(tmp_path: Path):
    outcome = run_cli(["train", "--corpus", "mosei-subset", "--data-root", tmp_path / "none",
                       "--out", tmp_path / "ck", "--no-progress"])
    _assert_issue_input_error(outcome, "E_FILE_MISSING")
    assert "pass --data-root" in outcome.stderr
    assert "root=" not in outcome.stderr


def test_attest_existing_output_names_force(honest_run: HonestRun, tmp_path: Path):
    out = tmp_path / "statement.json"
    attest = ["attest", honest_run.cert, "--model", honest_run.model, "--out", out]
    assert run_cli(attest).exit_code == 0
    outcome = run_cli(attest)
    _assert_issue_input_error(outcome, "E_FILE_EXISTS")
    assert "--force" in outcome.stderr
    assert run_cli([*attest, "--force"]).exit_code == 0


def test_attest_over_an_input_rejected(fresh_run: HonestRun):
    # --force replaces an existing statement, never the certificate or the model.
    for out in (fresh_run.cert, fresh_run.model):
        before = out.read_bytes()
        outcome = run_cli(["attest", fresh_run.cert, "--model", fresh_run.model, "--out", out,
                           "--force"])
        _assert_issue_input_error(outcome, "E_OUTPUT_IS_INPUT")
        assert "--out names an input file" in outcome.stderr
        assert out.read_bytes() == before


def test_model_given_as_certificate(honest_run: HonestRun, tmp_path: Path):
    for arguments in (["inspect", honest_run.model],
                      ["attest", honest_run.model, "--model", honest_run.model,
                       "--out", tmp_path / "statement.json"]):
        outcome = run_cli(arguments)
        _assert_issue_input_error(outcome, "E_CERT_MALFORMED")
        assert "takes the certificate (cert.json), not the model" in outcome.stderr


def test_certificate_given_as_model_file(honest_run: HonestRun, tmp_path: Path):
    # A certificate where a tensor file belongs is unusable input (exit 2), reported
    # as a JSON document, not as a digest mismatch (exit 1) or a huge header length.
    for arguments in (["attest", honest_run.cert, "--model", honest_run.cert,
                       "--out", tmp_path / "statement.json"],
                      ["evaluate", "--checkpoint", honest_run.checkpoint,
                       "--eval-set", honest_run.cert]):
        outcome = run_cli(arguments)
        _assert_issue_input_error(outcome, "E_SAFETENSORS_NOT_SAFETENSORS")
        assert "looks like a JSON document" in outcome.stderr


def test_config_as_certificate_names_file(honest_run: HonestRun):
    config = Path(honest_run.checkpoint) / "config.json"
    outcome = run_cli(["inspect", config])
    _assert_issue_input_error(outcome, "E_FORMAT_VERSION_INVALID")
    assert f"{config}: certificate has no format_version field" in outcome.stderr


def _issue_with_config(honest_run: HonestRun, tmp_path: Path, edit):
    """Run issue on a copy of the checkpoint whose config.json ``edit`` changed in place."""
    checkpoint = tmp_path / "ck"
    shutil.copytree(honest_run.checkpoint, checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    edit(config)
    (checkpoint / "config.json").write_text(json.dumps(config))
    return run_cli(["issue", "--checkpoint", checkpoint, "--modality", "audio",
                    "--epsilon", "1", "--key", honest_run.private_key,
                    "--out", tmp_path / "out"])


@pytest.mark.parametrize("version", [1, "2", None], ids=["integer", "other", "absent"])
def test_issue_checks_architecture_version(honest_run: HonestRun, tmp_path: Path, version):
    # evaluate already compared it strictly; issue took any value, or none.
    def edit(config: dict) -> None:
        if version is None:
            del config["architecture_version"]
        else:
            config["architecture_version"] = version

    outcome = _issue_with_config(honest_run, tmp_path, edit)
    _assert_issue_input_error(outcome, "E_DATA_MALFORMED")
    assert f"architecture_version is {version!r}" in outcome.stderr
    assert not (tmp_path / "out").exists()


def test_issue_rejects_unknown_config_member(honest_run: HonestRun, tmp_path: Path):
    outcome = _issue_with_config(honest_run, tmp_path,
                                 lambda config: config.update(precision="fp8"))
    _assert_issue_input_error(outcome, "E_DATA_MALFORMED")
    assert "unknown member(s) ['precision']" in outcome.stderr


def test_issue_warns_probe_without_nonmembers(honest_run: HonestRun, tmp_path: Path):
    # Level 3 would report the membership probe inconclusive, so issue warns first.
    from safetensors import safe_open
    from safetensors.numpy import save_file

    checkpoint = tmp_path / "ck"
    shutil.copytree(honest_run.checkpoint, checkpoint)
    probe = checkpoint / "probe.safetensors"
    with safe_open(str(probe), "np") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    tensors["member"] = tensors["member"] * 0 + 1
    save_file(tensors, str(probe), metadata=metadata)
    outcome = run_cli(["issue", "--checkpoint", checkpoint, *TINY_ISSUE_OPTIONS,
                       "--key", honest_run.private_key, "--out", tmp_path / "out"])
    assert outcome.exit_code == 0, outcome.stderr
    assert "0 non-members: level 3's membership probe needs 10 of each" in outcome.stderr


def test_report_install_hint_matches_readme(honest_run: HonestRun, tmp_path: Path,
                                            monkeypatch):
    import mbd_cert

    # None in sys.modules makes the import raise ImportError, as without matplotlib;
    # an attribute left by an earlier import would be used instead.
    monkeypatch.setitem(sys.modules, "mbd_cert.report_figures", None)
    monkeypatch.delattr(mbd_cert, "report_figures", raising=False)
    outcome = run_cli(["report", honest_run.cert, "--out", tmp_path / "report"])
    _assert_issue_input_error(outcome, "E_INPUT")
    command = "pip install -e '.[report]'"
    assert command in outcome.stderr
    assert command in README.read_text()


def test_train_existing_output_code(honest_run: HonestRun):
    outcome = run_cli(["train", "--out", honest_run.checkpoint, "--no-progress"])
    _assert_issue_input_error(outcome, "E_OUTPUT_EXISTS")
    assert "--force" in outcome.stderr


def test_attest_says_it_did_not_verify(honest_run: HonestRun, tmp_path: Path):
    outcome = run_cli(["attest", honest_run.cert, "--model", honest_run.model,
                       "--out", tmp_path / "statement.json"])
    assert outcome.exit_code == 0, outcome.stderr
    assert "not verified" in outcome.stderr


@pytest.mark.parametrize(("flag", "value", "field"), [
    ("--top-k", "0", "top_k_fraction"), ("--epsilon", "-1", "epsilon"),
    ("--delta", "1", "delta"), ("--clip-norm", "0", "clip_norm"),
    ("--learning-rate", "nan", "learning_rate"), ("--max-epsilon", "0", "max_epsilon"),
    ("--steps", "1001", "steps"), ("--proxy-sample", "-1", "proxy_sample_size"),
])
def test_issue_range_error_names_flag(honest_run: HonestRun, tmp_path: Path, flag: str,
                                      value: str, field: str):
    outcome = run_cli(["issue", "--checkpoint", honest_run.checkpoint, *TINY_ISSUE_OPTIONS,
                       "--key", honest_run.private_key, "--out", tmp_path / "out",
                       flag, value])
    _assert_issue_input_error(outcome, "E_PARAMETER_INVALID")
    assert f"{field} ({flag})" in outcome.stderr
    assert "hint:" in outcome.stderr
    assert not (tmp_path / "out").exists()


def test_train_range_error_names_flag(tmp_path: Path):
    outcome = run_cli(["train", "--corpus", "synthetic", "--modality-dropout", "1.5",
                       "--out", tmp_path / "ck"])
    _assert_issue_input_error(outcome, "E_PARAMETER_INVALID")
    assert "pass --modality-dropout" in outcome.stderr
    assert not (tmp_path / "ck").exists()


def test_verify_max_epsilon_error_names_flag(honest_run: HonestRun):
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key,
                     "--max-epsilon", "-1")
    assert_input_error(outcome, "E_PARAMETER_INVALID")
    assert "max_epsilon (--max-epsilon)" in outcome.stderr
    assert "limit of 0" not in outcome.stderr


def test_verify_junit_directory_rejected_first(honest_run: HonestRun, tmp_path: Path):
    outcome = run_cli(["verify", honest_run.cert, honest_run.model, "--key",
                       honest_run.public_key, "--junit", tmp_path])
    assert_clean(outcome)
    assert outcome.exit_code == 2
    assert "[E_FILE_NOT_REGULAR]" in outcome.stderr
    assert "--junit names a directory" in outcome.stderr


def test_evaluate_json_destination_checked_first(honest_run: HonestRun, tmp_path: Path):
    outcome = run_cli(["evaluate", "--checkpoint", honest_run.checkpoint, "--json",
                       tmp_path / "missing" / "metrics.json"])
    assert_clean(outcome)
    assert outcome.exit_code == 2
    assert "--json directory not found" in outcome.stderr
    assert outcome.stdout == ""  # the evaluation table never ran


def test_evaluate_usage_error_writes_no_json():
    # evaluate's --json names a file, so a usage error prints no report on stdout.
    outcome = run_cli(["evaluate", "--json", "m.json"])
    assert outcome.exit_code == 2
    assert outcome.stdout == ""


def test_signing_key_as_auditor_key_names_option(honest_run: HonestRun, tmp_path: Path):
    outcome = run_cli(["issue", "--checkpoint", honest_run.checkpoint, *TINY_ISSUE_OPTIONS,
                       "--key", honest_run.private_key, "--out", tmp_path / "out",
                       "--auditor-key", honest_run.public_key])
    _assert_issue_input_error(outcome, "E_KEY_INVALID")
    assert "(--auditor-key): contains a public key of kind Ed25519" in outcome.stderr
    assert "Ed25519PublicKey" not in outcome.stderr


def test_inconclusive_only_names_the_option(honest_run: HonestRun) -> None:
    """R-L3-4: an inconclusive check fails verification by default (exit 1)."""
    # The tiny test model has 8 masked entries, too few for the normality test.
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key,
                     "--level", "2", "--bundle", honest_run.cert.parent)
    assert outcome.exit_code == 1
    statuses = {c["status"] for c in outcome.report["checks"]}
    assert "inconclusive" in statuses
    assert "fail" not in statuses
    assert "--allow-inconclusive" in outcome.stderr


def test_allow_inconclusive_passes_inconclusive(honest_run: HonestRun) -> None:
    """R-L3-4: with --allow-inconclusive an inconclusive check no longer fails."""
    outcome = verify(honest_run.cert, honest_run.model, honest_run.public_key,
                     "--level", "2", "--bundle", honest_run.cert.parent, "--allow-inconclusive")
    assert outcome.exit_code == 0, outcome.stderr
    statuses = {c["name"]: c["status"] for c in outcome.report["checks"]}
    assert statuses["residual-normality"] == "inconclusive"
    assert outcome.report["verified"] is True


def test_failed_check_omits_inconclusive_hint(honest_run: HonestRun) -> None:
    outcome = verify(honest_run.cert, honest_run.cert.parent / "diff.safetensors",
                     honest_run.public_key)
    assert outcome.exit_code == 1
    assert "--allow-inconclusive" not in outcome.stderr


def test_evaluate_json_over_an_input_rejected(honest_run: HonestRun):
    # --json must not replace a file evaluate reads, such as the checkpoint's config.
    config = honest_run.checkpoint / "config.json"
    before = config.read_bytes()
    outcome = run_cli(["evaluate", "--checkpoint", honest_run.checkpoint, "--json", config])
    _assert_issue_input_error(outcome, "E_OUTPUT_IS_INPUT")
    assert config.read_bytes() == before


@pytest.mark.parametrize("prefix", [b"\xef\xbb\xbf", b"\xff"])
def test_certificate_encoding_hint_asks_for_original(honest_run: HonestRun, tmp_path: Path,
                                                     prefix: bytes):
    # Re-saving a signed file is the wrong advice: the user needs the file as issued.
    cert = tmp_path / "cert.json"
    cert.write_bytes(prefix + honest_run.cert.read_bytes())
    outcome = verify(cert, honest_run.model, honest_run.public_key)
    assert_input_error(outcome, "E_JSON_ENCODING")
    assert "not the file the issuer signed" in outcome.stderr
    assert "save the file as UTF-8" not in outcome.stderr


def test_unknown_modality_hint_lists_modalities(honest_run: HonestRun, tmp_path: Path):
    outcome = run_cli(["issue", "--checkpoint", honest_run.checkpoint, "--modality", "foo",
                       "--epsilon", "1", "--key", honest_run.private_key,
                       "--out", tmp_path / "out"])
    _assert_issue_input_error(outcome, "E_PARAMETER_INVALID")
    assert "hint: pass --modality with one that the model still uses: text, audio, " \
        "vision" in outcome.stderr


@pytest.mark.parametrize("seed", ["-1", str(2**53), str(10**23)])
def test_issue_seed_out_of_range(honest_run: HonestRun, tmp_path: Path, seed: str):
    # Out-of-range seeds used to reach numpy or torch and end as an internal error.
    outcome = run_cli(["issue", "--checkpoint", honest_run.checkpoint, *TINY_ISSUE_OPTIONS,
                       "--key", honest_run.private_key, "--out", tmp_path / "out",
                       "--seed", seed])
    _assert_issue_input_error(outcome, "E_PARAMETER_INVALID")
    assert "seed (--seed) must be an integer in [0, 2**53 - 1]" in outcome.stderr
    assert not (tmp_path / "out").exists()


def test_issue_seed_help_names_what_it_seeds():
    outcome = run_cli(["issue", "--help"])
    assert outcome.exit_code == 0
    # click wraps lines after a hyphen too, so "proxy-quality" can come out split.
    text = " ".join(outcome.stdout.split()).replace("- ", "-")
    start = text.index("--seed INTEGER")
    seed_help = text[start:text.index("--eval-set")]
    assert "saliency.seed" in seed_help
    assert "proxy-quality check" in seed_help
    assert "reference-retrain run" in seed_help
    assert "does not set the noise" in seed_help
    assert "Recorded seed." not in seed_help
