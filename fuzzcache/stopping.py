"""Stopping a run early: Ctrl-C (SIGINT) and SIGTERM (what a CI runner on a timeout, `timeout` and
`kill` send) both raise KeyboardInterrupt in the main thread, once: the run saves what it found,
writes its report and exits. Further signals are ignored while it winds down (SIGKILL ends it at
once, losing only the example at hand). A background job of a non-interactive shell (``nohup
... &``) starts with SIGINT ignored; it stays ignored, so there only SIGTERM stops a run."""

from __future__ import annotations

import functools
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Stopper:
    """The handler: KeyboardInterrupt on the first stop signal, nothing on later ones."""

    def __init__(self):
        self.received: list[int] = []

    def __call__(self, signum, frame):
        self.received.append(signum)
        if len(self.received) == 1:
            raise KeyboardInterrupt


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: SIGTERM, and SIGINT unless it is ignored, stop the run (see the module docstring);
    the previous handlers come back after. Only in the main thread (elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopper = _Stopper()
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        if sig == signal.SIGTERM or previous[sig] is not signal.SIG_IGN:
            signal.signal(sig, stopper)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stops_the_run(handler) -> bool:
    """Whether ``handler`` raises KeyboardInterrupt: Python's own SIGINT handler or ours."""
    return handler is signal.default_int_handler or isinstance(handler, _Stopper)


def stopped_by_signals(command):
    """``command`` run under ``stop_on_signals``: a signal stops its work once; its report is
    written whatever further signals come."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        with stop_on_signals():
            return command(*args, **kwargs)
    return run
