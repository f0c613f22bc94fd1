"""Run one issuance stage on a second thread while the main thread runs another.

The proxy-quality check (:func:`mbd_cert.proxy_quality.measure_proxy_quality`) and the
masked update (:func:`mbd_cert.update.masked_update`) read disjoint models, and each
costs about 0.1 s on the default model with one intra-op thread. Torch releases the
GIL inside its kernels, so on two cores the two stages overlap: a warm ``issue`` on the
CMU-MOSEI subset went from 0.28 s to 0.18 s (docs/benchmarks.md). Each stage keeps its
own kernel order, so its results are the same as in a serial run.

The task polls :attr:`Background.stopping` between units of work. When the main thread
fails or is interrupted, :meth:`Background.cancel` sets it and waits for the task to
stop, so no thread outlives the call that started it.

Stability: internal.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Cancelled(Exception):
    """Raised inside a background task that saw :attr:`Background.stopping` set."""


class Background(Generic[T]):
    """One call of ``function(stopping)`` on a daemon thread, started at construction.

    ``function`` receives the :class:`threading.Event` it should poll and raise
    :class:`Cancelled` on. Use it as a context manager: leaving the block, by an
    exception or after :meth:`result`, cancels and joins the task, so the thread is a
    daemon only as a last resort.
    """

    def __init__(self, function: Callable[[threading.Event], T], *, name: str) -> None:
        self.stopping = threading.Event()
        self._done = threading.Event()
        self._function = function
        self._values: list[T] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._values.append(self._function(self.stopping))
        except BaseException as exc:  # re-raised in the caller's thread by result()
            self._error = exc
        finally:
            self._done.set()

    def __enter__(self) -> Background[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    def result(self) -> T:
        """Wait for the task and return its value, or raise the exception it raised."""
        self._wait()
        if self._error is not None:
            raise self._error
        return self._values[0]

    def cancel(self) -> None:
        """Ask the task to stop, then wait until it has stopped. Its result is discarded.

        A Ctrl-C during the wait does not cut it short, because the task would go on
        running torch code while the interpreter shuts down. It is raised once the
        task has stopped, which takes at most one unit of the task's work.
        """
        self.stopping.set()
        interrupted = False
        while True:
            try:
                self._wait()
                break
            except KeyboardInterrupt:
                interrupted = True
        if interrupted:
            raise KeyboardInterrupt

    def _wait(self) -> None:
        # Python 3.11 marks a running thread as stopped when KeyboardInterrupt cuts a
        # join short, so a later join returns at once. The process then aborted at exit,
        # inside the thread's torch code. An interrupted Event.wait has no such effect,
        # and once the event is set the thread only has to return.
        self._done.wait()
        self._thread.join()


class FirstComer(Generic[T]):
    """A computation run by whichever thread requests it first.

    Two threads that each end with some slack can share a small job this way. The
    helper thread calls :meth:`run_if_unclaimed` when its own stage is done. The thread
    that needs the value calls :meth:`result`, which runs the job itself if no thread
    has started it, or waits for the thread that did.
    """

    def __init__(self, function: Callable[[], T]) -> None:
        self._function = function
        self._lock = threading.Lock()
        self._claimed = False
        self._done = threading.Event()
        self._values: list[T] = []
        self._error: BaseException | None = None

    def _claim(self) -> bool:
        with self._lock:
            if self._claimed:
                return False
            self._claimed = True
            return True

    def _run(self) -> None:
        try:
            self._values.append(self._function())
        except BaseException as exc:  # re-raised by result() in the thread that needs it
            self._error = exc
        finally:
            self._done.set()

    def run_if_unclaimed(self) -> None:
        """Run the job in this thread unless another thread has started it."""
        if self._claim():
            self._run()

    def result(self) -> T:
        """Return the job's value, running it here if no thread has started it."""
        if self._claim():
            self._run()
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._values[0]
