"""``python -m mbd_cert``: the same entry as the ``mbd-cert`` console script.

Going through :mod:`mbd_cert._entry` means a Ctrl-C while the command line loads exits
130 with one line, as it does for the script.
"""

from __future__ import annotations

from mbd_cert._entry import main

if __name__ == "__main__":
    main()
