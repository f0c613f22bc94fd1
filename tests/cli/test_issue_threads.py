"""``issue`` runs two stages on a second thread, and a failure anywhere must stop them all."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from cli_support import IssuerKeys

from mbd_cert import _issue_release, _issue_steps, signing
from mbd_cert.issue import IssueOptions, issue


def _stage_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("mbd-cert ")}


def _issue(checkpoint: Path, out: Path, keys: IssuerKeys) -> dict:
    options = IssueOptions(modality="audio", epsilon=1.0, delta=1e-5, steps=2)
    return issue(checkpoint, out, options, signing.load_private_key(keys.private))


def test_update_failure_stops_the_proxy_check(monkeypatch, tmp_path, tiny_checkpoint,
                                              issuer_keys):
    stopped = []
    real_proxy = _issue_steps.measure_proxy_quality

    def slow_proxy(*args, **kwargs):
        # Holds the check open until the main thread gives up, as a large sample would.
        assert kwargs["stopping"].wait(60)
        stopped.append(True)
        return real_proxy(*args, **kwargs)

    def failing_update(*args, **kwargs):
        raise RuntimeError("update failed")

    monkeypatch.setattr(_issue_steps, "measure_proxy_quality", slow_proxy)
    monkeypatch.setattr(_issue_steps, "masked_update", failing_update)
    with pytest.raises(RuntimeError, match="update failed"):
        _issue(tiny_checkpoint, tmp_path / "out", issuer_keys)
    assert stopped == [True]
    assert _stage_threads() == set()
    assert not (tmp_path / "out").exists()


def test_proxy_failure_reaches_the_caller(monkeypatch, tmp_path, tiny_checkpoint,
                                          issuer_keys):
    def failing_proxy(*args, **kwargs):
        raise RuntimeError("proxy check failed")

    monkeypatch.setattr(_issue_steps, "measure_proxy_quality", failing_proxy)
    with pytest.raises(RuntimeError, match="proxy check failed"):
        _issue(tiny_checkpoint, tmp_path / "out", issuer_keys)
    assert _stage_threads() == set()
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_stages_run_on_a_second_thread(monkeypatch, tmp_path, tiny_checkpoint, issuer_keys):
    threads = {}
    for name in ("measure_proxy_quality", "masked_update", "gradient_moments"):
        real = getattr(_issue_steps, name)

        def record(*args, _real=real, _name=name, **kwargs):
            threads.setdefault(_name, set()).add(threading.current_thread().name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(_issue_steps, name, record)
    doc = _issue(tiny_checkpoint, tmp_path / "out", issuer_keys)
    assert doc["saliency"]["proxy_quality"]["sample_size"] > 0
    assert threads["measure_proxy_quality"] == {"mbd-cert proxy check"}
    assert threads["masked_update"] == {"MainThread"}
    # The saliency moments on this thread, the update's Fisher on the second one.
    assert threads["gradient_moments"] == {"MainThread", "mbd-cert update Fisher"}
    assert _stage_threads() == set()


def test_saliency_failure_stops_the_fisher(monkeypatch, tmp_path, tiny_checkpoint,
                                           issuer_keys):
    import time

    from mbd_cert._background import Cancelled

    cancelled = []

    def moments(model, names, objective, batch, weights, progress=None, **kwargs):
        if threading.current_thread() is threading.main_thread():
            raise RuntimeError("saliency failed")
        # The update's Fisher, chunk after chunk, as on a model too large to be quick.
        try:
            for chunk in range(6000):
                time.sleep(0.01)
                progress(chunk)
        except Cancelled:
            cancelled.append(True)
            raise
        raise AssertionError("the Fisher was never cancelled")

    monkeypatch.setattr(_issue_steps, "gradient_moments", moments)
    with pytest.raises(RuntimeError, match="saliency failed"):
        _issue(tiny_checkpoint, tmp_path / "out", issuer_keys)
    assert cancelled == [True]
    assert _stage_threads() == set()


def _record_threads(monkeypatch, name: str) -> list[str]:
    """Record the thread that runs ``_issue_steps.<name>`` on each call."""
    runners: list[str] = []
    real = getattr(_issue_steps, name)

    def recorded(*args, **kwargs):
        runners.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(_issue_steps, name, recorded)
    return runners


def _delay(monkeypatch, name: str, seconds: float = 0.5, module=_issue_steps) -> None:
    """Make ``module.<name>`` start late, so the other thread gets ahead."""
    import time

    real = getattr(module, name)

    def delayed(*args, **kwargs):
        time.sleep(seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, delayed)


@pytest.mark.parametrize("slow", ["proxy check", "update"])
def test_utility_before_follows_proxy_check(slow, monkeypatch, tmp_path, tiny_checkpoint,
                                            issuer_keys):
    # It reuses model_pre, which the proxy check reads, so it runs after the check on
    # the second thread even when the main thread is free first.
    runners = _record_threads(monkeypatch, "utility_before_deletion")
    baseline = _issue(tiny_checkpoint, tmp_path / "first", issuer_keys)["metrics"]["utility"]
    _delay(monkeypatch, "measure_proxy_quality" if slow == "proxy check" else "masked_update")
    runners.clear()
    utility = _issue(tiny_checkpoint, tmp_path / "out", issuer_keys)["metrics"]["utility"]
    assert runners == ["mbd-cert proxy check"]
    assert utility["before"] == baseline["before"]  # "after" has fresh noise each run
    assert set(utility["before"]) == {"all", "missing_audio"}
    assert set(utility["after"]) == {"deleted_audio"}
    assert _stage_threads() == set()


@pytest.mark.parametrize("slow", ["proxy check", "writes"])
def test_utility_after_goes_to_the_free_thread(slow, monkeypatch, tmp_path,
                                               tiny_checkpoint, issuer_keys):
    runners = _record_threads(monkeypatch, "utility_after_deletion")
    if slow == "proxy check":
        _delay(monkeypatch, "measure_proxy_quality")
    else:
        _delay(monkeypatch, "write_chain_copies", module=_issue_release)
    doc = _issue(tiny_checkpoint, tmp_path / "out", issuer_keys)
    # A slow proxy check leaves the job to the main thread. Slow writes on the main
    # thread let the second thread, done with its check, take the job.
    assert runners == ["MainThread" if slow == "proxy check" else "mbd-cert proxy check"]
    assert set(doc["metrics"]["utility"]["after"]) == {"deleted_audio"}
    assert _stage_threads() == set()


def test_full_disk_is_unwritable_output(monkeypatch, tmp_path, tiny_checkpoint, issuer_keys):
    import errno
    import shutil

    from mbd_cert.errors import InputError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full)
    with pytest.raises(InputError, match="No space left on device") as caught:
        _issue(tiny_checkpoint, tmp_path / "out", issuer_keys)
    assert caught.value.code == "E_FILE_UNWRITABLE"
    assert caught.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []  # no output and no staging directory left
    assert _stage_threads() == set()
