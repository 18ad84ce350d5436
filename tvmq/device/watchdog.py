"""A client-side deadline for a whole device session.

The RPC server enforces ``session_timeout`` itself, so a hung board (a stopped server, a
wedged network) never does: the client blocks in a socket read inside TVM's C++ runtime,
where no Python exception can reach it. :func:`deadline` ends the process instead, after
one line naming the board; it is for command-line use (``tvmq bench``).
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading


@contextlib.contextmanager
def deadline(seconds: float, what: str, fix: str, prog: str = "tvmq", code: int = 2):
    """Run the block; if it is still running after ``seconds`` (0: no limit), print
    ``{prog}: error: {what} (fix: {fix})`` on stderr and exit the process with ``code``."""
    if not seconds or seconds <= 0:
        yield
        return

    def _expire():
        sys.stderr.write(f"{prog}: error: {what} (fix: {fix})\n")
        sys.stderr.flush()
        os._exit(code)  # the main thread is blocked in C++: nothing else can stop it

    timer = threading.Timer(seconds, _expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
