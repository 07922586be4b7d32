"""A fuzz campaign over worker processes: the properties are spread over them (every N-th, as
``--shard``), each worker builds its own target and runs ``run_campaign`` on its share for the
whole budget, and the parent shows one live table and merges one end report. Workers share the
corpus folder (atomic, never-overwriting writes) and the example database. Ctrl-C reaches every
worker (the parent passes SIGTERM on: fuzzcache.stopping); each saves what it found and reports back."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue as queues
import signal
import time
from pathlib import Path

from hypothesis import settings as Settings

from fuzzcache.branch_coverage import BranchCoverage
from fuzzcache.campaign import CampaignResult, Progress, rows_of, run_campaign
from fuzzcache.stopping import stop_on_signals

PROGRESS_EVERY_S = 0.25  # a worker's updates to the parent's live table
WIND_DOWN_S = 300.0  # after Ctrl-C, how long the parent waits for workers to save and report


def _worker(index: int, spec: str, options: dict, property_ids: list[str], budget_s: float, base: Settings,
            corpus_dir: Path | None, database_spec: str | None, example_timeout: float, out, coverage: tuple | None = None) -> None:
    from fuzzcache import guard
    from fuzzcache.database import make_database
    from fuzzcache.properties import get
    from fuzzcache.targets import resolve_target
    from fuzzcache.threads import configure_threads

    configure_threads()
    guard.TIME_LIMIT_S = example_timeout
    last = [0.0]

    def progress(rows, elapsed):
        if time.monotonic() - last[0] >= PROGRESS_EVERY_S:
            last[0] = time.monotonic()
            out.put(("progress", index, rows))

    with stop_on_signals():  # a SIGTERM from the parent (or a CI runner) stops this worker as Ctrl-C does
        try:
            measuring = BranchCoverage(*coverage) if coverage else None  # (packages, data folder)
            if measuring:
                measuring.start()
            target = resolve_target(spec, **options)
            database = make_database(database_spec) if database_spec else None
            result = run_campaign(target, spec, [get(p) for p in property_ids], budget_s, base, corpus_dir, database, progress, measuring)
        except BaseException as exc:  # noqa: BLE001 - the parent reports it and the campaign goes on
            out.put(("failed", index, f"{type(exc).__name__}: {exc}"))
            return
        out.put(("done", index, result))


def run_workers(spec: str, options: dict, property_ids: list[str], workers: int, budget_s: float, base: Settings,
                corpus_dir: Path | None, database_spec: str | None, example_timeout: float,
                progress: Progress | None = None, coverage: tuple | None = None) -> tuple[CampaignResult, list[str]]:
    """Fuzz ``property_ids`` of target ``spec`` in ``workers`` processes; (merged result, errors
    of workers that failed). ``coverage``: (packages, data folder) each worker measures
    (fuzzcache.branch_coverage)."""
    shares = [property_ids[i::workers] for i in range(workers) if property_ids[i::workers]]
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    out = context.Queue()
    # not daemonic: an isolated target's worker process (fuzzcache.isolation) is a child of the worker;
    # the parent joins or terminates every worker below
    procs = [context.Process(target=_worker, args=(i, spec, options, share, budget_s, base, corpus_dir, database_spec, example_timeout, out, coverage))
             for i, share in enumerate(shares)]
    for p in procs:
        p.start()
    start, rows, results, errors, interrupted = time.monotonic(), {}, {}, [], False
    deadline = start + budget_s + WIND_DOWN_S
    while len(results) + len(errors) < len(procs):
        try:
            kind, index, payload = out.get(timeout=1.0)
        except queues.Empty:
            if time.monotonic() > deadline or not any(p.is_alive() for p in procs):
                errors += [f"worker {i} ended without a report" for i, p in enumerate(procs) if i not in results and not p.is_alive()]
                break
            continue
        except KeyboardInterrupt:  # Ctrl-C reached the workers too, SIGTERM may not have: pass it on, wait for their reports
            interrupted, deadline = True, time.monotonic() + WIND_DOWN_S
            for p in procs:
                if p.is_alive():
                    with contextlib.suppress(ProcessLookupError):  # it may end in between
                        os.kill(p.pid, signal.SIGTERM)  # a worker stops once, whatever number of signals it gets
            continue
        if kind == "progress":
            rows[index] = payload
            if progress:
                progress([row for i in sorted(rows) for row in rows[i]], time.monotonic() - start)
        elif kind == "done":
            results[index] = payload
            rows[index] = rows_of(payload.totals)
            if progress:
                progress([row for i in sorted(rows) for row in rows[i]], time.monotonic() - start)
        else:
            errors.append(f"worker {index}: {payload}")
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
    found = {pid: t for r in results.values() for pid, t in r.totals.items()}
    totals = {pid: found[pid] for pid in property_ids if pid in found}
    merged = CampaignResult(spec, totals, time.monotonic() - start, interrupted or any(r.interrupted for r in results.values()),
                            coverage_snapshots=[snaps for r in results.values() for snaps in r.coverage_snapshots])
    return merged, errors
