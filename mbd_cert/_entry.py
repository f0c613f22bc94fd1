"""The ``mbd-cert`` console script: load the command line, then run it.

Loading :mod:`mbd_cert.cli` (click and the command modules) takes about 0.05 s. A
Ctrl-C in that time used to end the command with a Python traceback, because the CLI's
own SIGINT handling was not loaded yet. This module imports nothing heavy, so only the
interpreter's start-up remains outside the handling.

Stability: internal; the console script name ``mbd-cert`` is public.
"""

from __future__ import annotations

import sys

# Same status and wording as mbd_cert.cli.exit_interrupted, which is not loaded yet.
_EXIT_INTERRUPTED = 130


def main() -> None:
    """Import the CLI and run it. A Ctrl-C during the import exits 130 with one line."""
    try:
        from mbd_cert.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; the command did not start\n")
        raise SystemExit(_EXIT_INTERRUPTED) from None
    cli_main()
