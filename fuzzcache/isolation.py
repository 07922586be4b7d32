"""Targets in a worker process: a target that may kill its own process (a native assert, a
signal, running out of memory) runs in a child, behind a proxy that looks like the target.

The child builds the target from its spec (``build_target``). Attributes are fetched from it
once and cached (``last_stats`` / ``last_ignored`` come back with every call); method calls are
sent over a pipe and run there under ``call_target``, so exceptions are classified exactly as
in-process. A child that dies is a ``crash`` finding with the signal and the tail of its stderr,
and the next call starts a new child; a call that overruns the time limit kills the child and is
a ``hang`` finding, in any thread (no SIGALRM).
"""

from __future__ import annotations

import functools
import inspect
import io
import multiprocessing
import os
import pickle
import re
import signal
import tempfile
import threading
import traceback
import weakref
from typing import Any

import torch

from fuzzcache import guard
from fuzzcache.findings import Finding
from fuzzcache.stopping import STOP_SIGNALS
from fuzzcache.targets.registry import UnknownTarget, build_target

START_LIMIT_S = 300.0  # building the target, or reading an attribute, in the worker
TAIL_CHARS = 2000  # of the worker's stderr, kept in a crash finding
VOLATILE = ("last_stats", "last_ignored", "last_pool")  # attributes a call changes: sent back after every call
_MISSING = object()


class IsolationError(RuntimeError):
    """The worker process could not build the target or answer for it."""


# Imported once by the forkserver. A child also imports the parent's main script again (the
# rule of multiprocessing's spawn and forkserver: a script needs `if __name__ == "__main__":`);
# for fuzzcache's command and pytest that import is then already done.
PRELOAD = ["fuzzcache.targets", "fuzzcache.isolation", "fuzzcache.cli", "pytest"]


def _context():
    """forkserver (a fresh child is a fork of a clean server that imported torch once: tens of
    milliseconds instead of seconds), else spawn; never fork (the fuzzer holds threads)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _forget_inherited_forkserver() -> None:
    """In a process forked from one that started the forkserver (a ``--workers`` worker), start a
    forkserver of its own: CPython's would ``waitpid`` a process that is not this one's child."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is not None and getattr(server, "_forkserver_pid", None) is not None:
        if server._forkserver_alive_fd is not None:
            os.close(server._forkserver_alive_fd)
        server.__init__()


os.register_at_fork(after_in_child=_forget_inherited_forkserver)


def _start_forkserver_deaf_to_stop_signals(context) -> None:
    """Start the forkserver ignoring SIGINT and SIGTERM, as its children do (stopping is the
    fuzzer's to handle): CPython's ignores SIGINT only after importing PRELOAD, seconds in which
    Ctrl-C would kill it. It ends when the fuzzer's end of its pipe closes."""
    if context.get_start_method() != "forkserver" or threading.current_thread() is not threading.main_thread():
        return
    from multiprocessing import forkserver

    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}  # inherited by the server it spawns
    try:
        forkserver.ensure_running()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Method:
    """A method of the isolated target: calls it in the worker."""

    runs_isolated = True  # ``guard.call_target`` leaves the time limit to the worker's proxy

    def __init__(self, proxy: IsolatedTarget, name: str):
        self.proxy, self.name = proxy, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # outside call_target (a warm-up, divergence_by_design) unlimited, as in-process
        what, limit_s = guard.CURRENT_CALL.get() or (f"{self.proxy.name}.{self.name}", 0)
        status, value, state = self.proxy._request(("call", self.name, what, args, kwargs), what, limit_s, self.name)
        self.proxy._attrs.update(state)
        if status == "raise":
            raise value
        return value


class IsolatedTarget:
    """The target ``spec`` (built with ``dtype`` / ``device``) running in a worker process."""

    def __init__(self, spec: str, dtype: str | None = None, device: str | None = None):
        self._spec, self._options = spec, {"dtype": dtype, "device": device}
        self._attrs: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._proc = self._conn = self._log = None
        self._worker: dict = {}  # what the finalizer stops when the proxy goes away: proc, conn, log (an open file)
        self.worker_starts = 0
        weakref.finalize(self, IsolatedTarget._stop_worker, self._worker, os.getpid())
        self._start()  # a target that cannot be built is an error now, not a finding later

    def __repr__(self) -> str:
        return f"<isolated target {self._spec!r}, worker pid {self.worker_pid}>"

    @property
    def worker_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._attrs:
            status, value = self._request(("attr", name), f"{self._spec}.{name}", START_LIMIT_S, name)
            if status == "failed":
                raise IsolationError(f"reading {name!r} of target {self._spec!r} in its worker process failed:\n{value}")
            self._attrs[name] = Method(self, name) if status == "method" else value if status == "value" else (_MISSING, value)
        value = self._attrs[name]
        if isinstance(value, tuple) and value and value[0] is _MISSING:
            raise AttributeError(value[1])
        return value

    def close(self) -> None:
        """Stop the worker (a later call starts a new one)."""
        with self._lock:
            self._kill()

    # ---- the worker -------------------------------------------------------------------------

    def _start(self) -> None:
        context = _context()
        fd, path = tempfile.mkstemp(prefix="fuzzcache-worker-", suffix=".log")
        self._log = os.fdopen(fd, "rb")  # the worker's stderr, read here through this handle
        self._worker.update(log=self._log)
        try:
            _start_forkserver_deaf_to_stop_signals(context)
            parent_end, child_end = context.Pipe()
            self._proc = context.Process(target=_serve, args=(self._spec, self._options, child_end, path), daemon=True,
                                         name=f"fuzzcache target {self._spec}")
            self._proc.start()
            child_end.close()  # so the worker's death is end-of-file here
            self._conn = parent_end
            self._worker.update(proc=self._proc, conn=self._conn)
            self.worker_starts += 1
            status, detail = self._receive("starting the worker", START_LIMIT_S, "__init__")
        except Finding as death:  # it died, or did not answer within START_LIMIT_S
            raise IsolationError(f"the worker process for target {self._spec!r} did not start: {death.message}\n"
                                 f"{death.details.get('stderr_tail', '')}") from None
        except BaseException:
            self._kill()
            raise
        finally:
            os.unlink(path)  # the worker has it open by now: nothing is left behind, however either ends
        if status != "ready":
            self._kill()
            if status == "unknown":
                raise UnknownTarget(detail)
            raise IsolationError(f"the worker process could not build target {self._spec!r}:\n{detail}")

    def _request(self, message: tuple, what: str, limit_s: float, method: str) -> tuple:
        """Send ``message``, wait for the reply; a dead worker is a ``crash``, an overrun a ``hang``."""
        with self._lock:
            if self._proc is None:
                self._start()
            data = _dumps(message)
            try:
                self._conn.send_bytes(data)
            except OSError:
                raise self._died(what, method) from None
            except BaseException:
                self._kill()
                raise
            return self._receive(what, limit_s, method)

    def _receive(self, what: str, limit_s: float, method: str) -> tuple:
        try:
            reply = self._conn.recv_bytes() if self._conn.poll(limit_s if limit_s > 0 else None) else None
        except (EOFError, OSError):
            raise self._died(what, method) from None
        except BaseException:  # Ctrl-C, or a caller's own timer: never leave a worker mid-call behind
            self._kill()
            raise
        if reply is None:
            self._kill()
            raise Finding("hang", f"{what} made no progress within {limit_s:g}s (its worker process was killed)", {"limit_s": limit_s})
        return pickle.loads(reply)

    def _died(self, what: str, method: str) -> Finding:
        """The ``crash`` finding of a worker that died, which is reaped (the next call starts one)."""
        self._proc.join(timeout=5)
        code = self._proc.exitcode
        tail = _tail(self._log)
        self._kill()
        cause = signal.Signals(-code).name if code is not None and code < 0 and -code in signal.valid_signals() else f"exit({code})"
        details: dict[str, Any] = {"exitcode": code, "stderr_tail": tail}
        if code is not None and code < 0:
            details["signal"] = cause
        # a one-frame traceback, so findings.crash_site groups crashes by where (the Python frame
        # faulthandler names, else the method) and how (the signal) the worker died
        site = _faulthandler_site(tail) or f'File "<worker process>", line 0, in {method}'
        details["traceback"] = f"Traceback (most recent call last):\n  {site}\n{cause}: the worker process died"
        return Finding("crash", f"{what}: the worker process was killed by {cause}" if "signal" in details
                       else f"{what}: the worker process exited with code {code}", details)

    def _kill(self) -> None:
        IsolatedTarget._stop_worker(self._worker, os.getpid())
        self._proc = self._conn = self._log = None

    @staticmethod
    def _stop_worker(worker: dict, owner: int) -> None:
        """Kill the worker and close its pipe and log (only in the process that started it)."""
        proc, conn, log = worker.pop("proc", None), worker.pop("conn", None), worker.pop("log", None)
        if os.getpid() != owner:
            return
        if conn is not None:
            conn.close()
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=5)
        if log is not None:
            log.close()


class _Pickler(pickle.Pickler):
    """Plain CPU tensors as NumPy arrays: about 8x faster to pickle than torch's own way."""

    def reducer_override(self, obj):
        if type(obj) is torch.Tensor and obj.device.type == "cpu" and obj.layout == torch.strided and obj.dtype != torch.bfloat16:
            try:
                return torch.from_numpy, (obj.numpy(),)
            except (RuntimeError, TypeError):  # requires grad, a conjugate or negative view: torch's own way
                pass
        return NotImplemented


def _dumps(obj: Any) -> bytes:
    out = io.BytesIO()
    _Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return out.getvalue()


def _tail(log) -> str:
    """The last TAIL_CHARS of the worker's stderr, without faulthandler's list of extension modules."""
    log.seek(max(0, os.fstat(log.fileno()).st_size - 4 * TAIL_CHARS))
    text = log.read().decode("utf-8", "replace")
    return re.sub(r"\nExtension modules: .*\n", "\n", text)[-TAIL_CHARS:]


def _faulthandler_site(tail: str) -> str | None:
    """The innermost Python frame of the dying thread, as faulthandler printed it."""
    match = re.search(r'Current thread 0x[0-9a-f]+ \(most recent call first\):\n\s+File "([^"]+)", line (\d+) in (\S+)', tail)
    return f'File "{match[1]}", line {match[2]}, in {match[3]}' if match else None


# ---- inside the worker ------------------------------------------------------------------------


def _serve(spec: str, options: dict, conn, log: str) -> None:
    """The worker's main loop: build the target, then answer attribute reads and calls until the
    pipe closes."""
    import faulthandler
    import resource

    from fuzzcache.threads import configure_threads

    try:
        out = os.open(log, os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:  # the fuzzer gave up on this worker before it started (Ctrl-C)
        return
    os.dup2(out, 1)
    os.dup2(out, 2)
    faulthandler.enable()  # a fatal signal prints the Python stack to the log
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files from deliberate aborts
    for sig in STOP_SIGNALS:  # Ctrl-C and SIGTERM (to a whole process group) are the fuzzer's to handle; it kills this worker
        signal.signal(sig, signal.SIG_IGN)
    configure_threads()
    try:
        target = build_target(spec, **options)
    except UnknownTarget as exc:
        _send(conn, ("unknown", str(exc)))
        return
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises IsolationError
        _send(conn, ("failed", traceback.format_exc()))
        return
    _send(conn, ("ready", None))
    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except EOFError:
            return
        if message[0] == "attr":
            _send_attribute(conn, target, message[1])
        else:
            _send(conn, _call(target, *message[1:]))


def _call(target, name: str, what: str, args: tuple, kwargs: dict) -> tuple:
    """("ok", value, state) or ("raise", Finding or Unsupported, state), as ``call_target`` sees it."""
    try:
        reply = ("ok", guard.call_target(what, functools.partial(getattr(target, name), **kwargs), *args, limit_s=0))
    except (Finding, guard.Unsupported) as exc:
        reply = ("raise", exc)
    except BaseException as exc:  # noqa: BLE001 - SystemExit and the like, from the target's code
        reply = ("raise", Finding("crash", f"{what} raised {type(exc).__name__}: {exc}", {"traceback": traceback.format_exc(limit=-8)}))
    return (*reply, {n: getattr(target, n) for n in VOLATILE if hasattr(target, n)})


def _send_attribute(conn, target, name: str) -> None:
    """("method", None), ("value", value), ("missing", why) or ("failed", traceback)."""
    try:
        value = getattr(target, name)
    except AttributeError as exc:
        return _send(conn, ("missing", str(exc)))
    except Exception:  # noqa: BLE001 - e.g. a property that cannot import what it needs
        return _send(conn, ("failed", traceback.format_exc()))
    if inspect.ismethod(value) or inspect.isfunction(value) or inspect.isbuiltin(value) or isinstance(value, functools.partial):
        return _send(conn, ("method", None))
    try:
        _send(conn, ("value", value), quiet=False)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        _send(conn, ("method", None) if callable(value) else ("missing", f"{name} cannot leave the worker process ({exc})"))


def _send(conn, reply: tuple, quiet: bool = True) -> None:
    """Pickle and send; a value that does not pickle is a crash finding (``quiet``) or raised."""
    try:
        data = _dumps(reply)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        if not quiet:
            raise
        data = _dumps(("raise", Finding("crash", f"the target's answer cannot leave its worker process: {exc}"), {}))
    conn.send_bytes(data)
