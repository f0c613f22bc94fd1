"""Tests for mbd_cert._background: a second-thread stage that is always joined."""

from __future__ import annotations

import threading

import pytest

from mbd_cert._background import Background, Cancelled, FirstComer


def test_result_is_the_value_computed_on_another_thread():
    callers = []

    def task(stopping: threading.Event) -> int:
        callers.append(threading.current_thread())
        return 42

    with Background(task, name="test task") as background:
        assert background.result() == 42
    assert callers and callers[0] is not threading.main_thread()


def test_exception_reaches_the_caller():
    def task(stopping: threading.Event) -> None:
        raise ValueError("bad probe")

    with Background(task, name="test task") as background, pytest.raises(ValueError,
                                                                         match="bad probe"):
        background.result()


def test_exception_cancels_and_joins_task():
    started = threading.Event()
    seen_stop = []

    def task(stopping: threading.Event) -> None:
        started.set()
        # Polls like the proxy check does between its passes; without a cancel it
        # would run for 60 s.
        if stopping.wait(60):
            seen_stop.append(True)
            raise Cancelled("stopped")

    with pytest.raises(RuntimeError, match="main thread failed"):
        with Background(task, name="test task") as background:
            assert started.wait(10)
            raise RuntimeError("main thread failed")
    assert seen_stop == [True]
    assert not background._thread.is_alive()
    assert "test task" not in {thread.name for thread in threading.enumerate()}


def test_cancel_after_result_changes_nothing():
    background = Background(lambda stopping: "done", name="test task")
    assert background.result() == "done"
    background.cancel()
    assert background.result() == "done"


def test_ctrl_c_during_result_waits_for_task():
    # A real SIGINT to the main thread while it waits in result(). On Python 3.11 an
    # interrupted Thread.join marks the running thread as stopped, so a later join
    # returned at once and the task went on running after the block.
    import signal
    import time

    finished = []

    def task(stopping: threading.Event) -> None:
        while not stopping.is_set():
            time.sleep(0.01)
        time.sleep(0.2)  # the last unit of work after the stop was seen
        finished.append(True)

    main_id = threading.main_thread().ident
    assert main_id is not None
    timer = threading.Timer(0.2, signal.pthread_kill, (main_id, signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        with Background(task, name="test task") as background:
            timer.start()
            background.result()
    timer.join()
    assert finished == [True]
    assert "test task" not in {thread.name for thread in threading.enumerate()}


def _counting_job(runners: list[threading.Thread], value: int = 7):
    def job() -> int:
        runners.append(threading.current_thread())
        return value

    return job


def test_first_comer_runs_unclaimed_job_here():
    runners: list[threading.Thread] = []
    shared = FirstComer(_counting_job(runners))
    assert shared.result() == 7
    helper = threading.Thread(target=shared.run_if_unclaimed)
    helper.start()
    helper.join()
    assert runners == [threading.main_thread()]  # the helper came too late and skipped


def test_first_comer_waits_for_claiming_thread():
    runners: list[threading.Thread] = []
    started, release = threading.Event(), threading.Event()

    def slow() -> int:
        started.set()
        release.wait(5.0)
        return _counting_job(runners, 9)()

    shared = FirstComer(slow)
    helper = threading.Thread(target=shared.run_if_unclaimed)
    helper.start()
    assert started.wait(5.0)
    threading.Timer(0.05, release.set).start()
    assert shared.result() == 9  # blocks until the helper's run ends
    helper.join()
    assert runners == [helper]


def test_first_comer_error_reaches_caller():
    def failing() -> int:
        raise ValueError("eval set unreadable")

    shared = FirstComer(failing)
    helper = threading.Thread(target=shared.run_if_unclaimed)
    helper.start()
    helper.join()
    with pytest.raises(ValueError, match="eval set unreadable"):
        shared.result()
