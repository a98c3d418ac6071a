"""The package's one error type (bad input ends in one clear message), and the signals that
end a run (SIGINT, SIGTERM) raised where the program is."""

from __future__ import annotations

import contextlib
import os
import signal
import threading


class ElasticKerasError(Exception):
    """A user-facing error: the CLI prints its message and exits with status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a cluster scheduler sends), raised where the program is, as SIGINT's
    KeyboardInterrupt is: the same path out, state left resumable (FIDELITY.md R12)."""


def _raise_for(signum, frame):
    """Raise KeyboardInterrupt (SIGINT) or Terminated (SIGTERM) where the program is. Python
    swallows what a finalizer raises ("Exception ignored in ... __del__": TensorFlow frees
    its traced functions in one), and the run would go on: there the signal is sent again
    50 ms later instead."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            again = threading.Timer(0.05, os.kill, (os.getpid(), signum))
            again.daemon = True
            again.start()
            return
        frame = frame.f_back
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def interrupts():
    """SIGINT and SIGTERM raise where the program is (`_raise_for`) inside the block."""
    previous = {s: signal.signal(s, _raise_for) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
