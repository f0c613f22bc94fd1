"""Hold Ctrl-C back from the moment a command publishes its output until it reports it.

``issue`` and ``train`` build their output in a staging directory and rename it onto
``--out`` only when it is complete (SPEC.md section 6.5, R-ISS-2). A SIGINT that
arrived after that rename used to end the command with exit 130 and the message that
nothing was written, although ``--out`` already held the new, valid output.

The CLI opens a :func:`command_window` around such a command, and the library enters
:func:`publishing` right before the rename. From there until the window closes, SIGINT
sets :attr:`CommandWindow.interrupted` instead of raising KeyboardInterrupt, so the
command finishes and prints its result. Without an open window (library callers), the
hold covers only the ``publishing`` block. A SIGINT received inside it then raises
KeyboardInterrupt when the block ends, after the rename.

Python runs signal handlers in the main thread only, so the hold is installed only
there; elsewhere these functions change nothing.

Stability: internal.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any


class CommandWindow:
    """SIGINT hold of one CLI command, from :func:`publishing` to the window's end.

    Attributes:
        interrupted: True when a SIGINT arrived while the hold was installed.
    """

    def __init__(self) -> None:
        self.interrupted = False
        self._previous: Any = None
        self._installed = False

    def hold(self) -> None:
        """Record SIGINT instead of raising KeyboardInterrupt until :meth:`release`."""
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._record)
        self._installed = True

    def release(self) -> None:
        """Restore the SIGINT handler that :meth:`hold` replaced."""
        if not self._installed:
            return
        # getsignal() returns None for a handler installed outside Python; the default
        # handler is the closest one Python can put back.
        previous = self._previous if self._previous is not None else signal.SIG_DFL
        signal.signal(signal.SIGINT, previous)
        self._installed = False

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.interrupted = True


_open_window: CommandWindow | None = None


@contextlib.contextmanager
def command_window() -> Iterator[CommandWindow]:
    """Open the window of one CLI command; a hold started inside ends when it closes."""
    global _open_window
    window = CommandWindow()
    outer, _open_window = _open_window, window
    try:
        yield window
    finally:
        _open_window = outer
        window.release()


@contextlib.contextmanager
def publishing() -> Iterator[None]:
    """Hold SIGINT while the finished output is renamed into place (see module docs).

    Raises:
        KeyboardInterrupt: A SIGINT arrived inside the block and no command window is
            open; raised after the block has completed.
    """
    if _open_window is not None:
        _open_window.hold()
        yield
        return
    window = CommandWindow()
    window.hold()
    try:
        yield
    finally:
        window.release()
    if window.interrupted:
        raise KeyboardInterrupt


__all__ = ["CommandWindow", "command_window", "publishing"]
