"""Settings shared by every test directory."""

from __future__ import annotations

import signal

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # A shell without job control starts `pytest &` with SIGINT ignored, and Python keeps
    # that. The Ctrl-C tests send real SIGINTs, so one would hang and another would see
    # the command finish where it expects exit 130. Subprocesses inherit the fix.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
