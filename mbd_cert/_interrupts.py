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

:class:`Interrupted` carries the text of the ``E_INTERRUPTED`` error that a command
writes to its ``--json`` document and ``--junit`` file after Ctrl-C.
:func:`output_left_text` returns the stderr line of a command whose ``--out`` was left
as it was, or not created.

Stability: internal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from types import FrameType
from typing import Any

# 128 + SIGINT, the status shells report for a command ended by Ctrl-C. Exit 1 would
# read as "a check failed".
EXIT_INTERRUPTED = 130
# Error code of a run stopped by Ctrl-C, in the --json document and the --junit file.
CODE_INTERRUPTED = "E_INTERRUPTED"


class Interrupted(KeyboardInterrupt):
    """KeyboardInterrupt with a message on how far the command got, for its reports.

    A command that writes ``--json`` or ``--junit`` raises it in place of the plain
    KeyboardInterrupt, and the CLI writes ``message`` and ``hint`` as the
    ``E_INTERRUPTED`` error of the JSON document.

    Attributes:
        message: What was left undone, such as ``interrupted after 3 of 12 certificates``.
        hint: What to do next.
    """

    def __init__(self, message: str = "interrupted by Ctrl-C (SIGINT) or SIGTERM before the "
                 "command finished", hint: str = "run the command again to completion") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def output_left_text(arguments: Mapping[str, Any]) -> str:
    """Return the Ctrl-C outcome of a command that left its ``--out`` directory as it was.

    The command moves its finished output onto ``--out`` at its end, with Ctrl-C held
    from then on (:func:`publishing`), so an ``--out`` that does not exist at the
    interrupt did not exist before the command either. For such an ``--out`` the text
    reads "was not created" in place of "was left as it was".

    Args:
        arguments: The command's keyword arguments, where ``out_dir`` is its ``--out``.
    """
    from mbd_cert._terminal import terminal_text

    out_dir = arguments.get("out_dir")
    if out_dir is None:
        return "the output directory was left as it was"
    name = terminal_text(str(out_dir))
    if not os.path.lexists(out_dir):
        return f"the output directory {name} was not created"
    return f"the output directory {name} was left as it was"


def interruption(interrupt: KeyboardInterrupt) -> Interrupted:
    """Return ``interrupt`` as an :class:`Interrupted`, with the default text if it has none."""
    return interrupt if isinstance(interrupt, Interrupted) else Interrupted()


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


__all__ = [
    "CODE_INTERRUPTED",
    "EXIT_INTERRUPTED",
    "CommandWindow",
    "Interrupted",
    "command_window",
    "interruption",
    "publishing",
]
