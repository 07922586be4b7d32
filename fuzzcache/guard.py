"""Calling a target safely: exceptions become ``crash`` findings, overruns become ``hang``
findings, and an up-front ValueError naming an EngineConfig field marks the config unsupported.
A target in a worker process (``fuzzcache.isolation``) enforces the time limit itself, by killing
its worker, so its calls need no SIGALRM and are guarded in any thread."""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
import traceback
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator

from fuzzcache.contract import EngineConfig, EngineError
from fuzzcache.findings import Finding

TIME_LIMIT_S = 60.0  # per call into a target; `fuzzcache fuzz --example-timeout` sets it
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(EngineConfig))


class Unsupported(Exception):
    """The target declined a config field it does not support (not a finding)."""


# (what, limit_s) of the call_target in progress: an isolated target names its calls and times them by it
CURRENT_CALL: ContextVar[tuple[str, float] | None] = ContextVar("fuzzcache_current_call", default=None)


class _Overrun(BaseException):
    """Raised by the alarm inside the target's code; BaseException so targets cannot swallow it."""


# A target refuses a config by raising ValueError("EngineConfig.<field>...: why").


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (SIGALRM; only in the main thread, else unguarded)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise _Overrun()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay:  # re-arm a caller's timer (e.g. pytest-timeout) with what was left of it
            signal.setitimer(signal.ITIMER_REAL, max(outer_delay - (time.monotonic() - started), 1e-3), outer_interval)


@contextmanager
def time_limit_paused() -> Iterator[None]:
    """The running call's time limit suspended for the block (e.g. while a target starts the
    server it manages, which is set-up, not the engine's progress), re-armed after with what was left."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    delay, interval = signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        yield
    finally:
        if delay:
            signal.setitimer(signal.ITIMER_REAL, delay, interval)


def call_target(what: str, fn: Callable[..., Any], *args: Any, limit_s: float | None = None) -> Any:
    """``fn(*args)`` with findings for crashes and hangs; ``what`` names the call in messages."""
    limit_s = TIME_LIMIT_S if limit_s is None else limit_s
    token = CURRENT_CALL.set((what, limit_s))
    try:
        with time_limit(0 if runs_isolated(fn) else limit_s):
            return fn(*args)
    except _Overrun:
        raise Finding("hang", f"{what} made no progress within {limit_s:g}s", {"limit_s": limit_s}) from None
    except (Finding, Unsupported):  # an isolated target's worker classified it already
        raise
    except EngineError as exc:
        raise Finding("engine_error", f"{what}: {exc}") from exc
    except TimeoutError as exc:  # the target's own no-progress detection
        raise Finding("hang", f"{what}: {exc}", {"limit_s": limit_s}) from exc
    except ValueError as exc:
        if any(f"EngineConfig.{name}" in str(exc) for name in CONFIG_FIELDS):
            raise Unsupported(str(exc)) from exc
        raise Finding("crash", f"{what} raised ValueError: {exc}", {"traceback": traceback.format_exc(limit=-8)}) from exc
    except Exception as exc:  # a crash on an input the contract allows
        raise Finding("crash", f"{what} raised {type(exc).__name__}: {exc}", {"traceback": traceback.format_exc(limit=-8)}) from exc
    finally:
        CURRENT_CALL.reset(token)


def runs_isolated(fn: Callable) -> bool:
    """``fn`` is a method of a target in a worker process (or a partial of one)."""
    return getattr(getattr(fn, "func", fn), "runs_isolated", False)
