"""A server fuzzcache starts and stops itself: one command with its flags and environment, its
log kept in a file, ready when its health route answers, stopped by its own process group on
every exit path (``stop``, the end of a ``with`` block, interpreter exit, and the death of this
process: the kernel sends it SIGTERM, ``PR_SET_PDEATHSIG``)."""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

import httpx

LOG_TAIL_LINES = 40
STOP_GRACE_S = 10.0


class ServerFailed(RuntimeError):
    """A managed server that would not start, or died; the message ends with the tail of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: atexit still stops it


class ManagedServer:
    """``argv`` run as a server on ``port`` of 127.0.0.1 (start with ``start``, or ``with``), with
    ``env`` over this process's environment (a None value unsets a variable)."""

    def __init__(self, argv: Sequence[str], port: int, env: dict[str, str | None] | None = None, health: str = "/health",
                 log_path: Path | None = None, name: str = "server"):
        self.argv, self.port, self.env, self.health, self.name = list(argv), port, dict(env or {}), health, name
        self.url = f"http://127.0.0.1:{port}"
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"fuzzcache-{name}-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.process: subprocess.Popen | None = None
        self.start_seconds: float | None = None

    def start(self, timeout_s: float = 600.0) -> "ManagedServer":
        """Start it and wait until its health route answers 200; ServerFailed (with the log's
        tail) if it exits or is not healthy within ``timeout_s``."""
        began = time.monotonic()
        with open(self.log_path, "ab") as log:
            env = {k: v for k, v in {**os.environ, **self.env}.items() if v is not None}  # None: unset
            self.process = subprocess.Popen(self.argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        atexit.register(self.stop)
        while time.monotonic() - began < timeout_s:
            if self.process.poll() is not None:
                returncode = self.process.returncode
                self.stop()  # what it started in its group, if anything
                raise ServerFailed(f"{self.name} exited with status {returncode} while starting: {' '.join(self.argv)}\n{self.log_tail()}")
            if self.healthy(timeout_s=2.0):
                self.start_seconds = time.monotonic() - began
                return self
            time.sleep(0.5)
        self.stop()
        raise ServerFailed(f"{self.name} not healthy after {timeout_s:g}s: {' '.join(self.argv)}\n{self.log_tail()}")

    def healthy(self, timeout_s: float = 5.0) -> bool:
        try:
            return httpx.get(self.url + self.health, timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM to the server's process group (it and the engine processes it started), then
        SIGKILL after STOP_GRACE_S. Safe to call twice."""
        process, self.process = self.process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
        _signal_group(process.pid, signal.SIGKILL)  # what it left behind in its group, if anything

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def __enter__(self) -> "ManagedServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    """The group this module created for the server (start_new_session: its id is the server's PID)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
