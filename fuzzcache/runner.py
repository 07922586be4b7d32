"""Running a property under Hypothesis against a target, and replaying saved cases.

The final failing example is run twice more; a target that disagrees with itself is
reported as ``nondeterministic``. The minimal example Hypothesis ends on is saved to the corpus.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from hypothesis import HealthCheck, Phase, Verbosity, example, given, settings as Settings

from fuzzcache import corpus, coverage, known_bugs
from fuzzcache.coverage import reached
from fuzzcache.database import ReadOnlyOnceStopped
from fuzzcache.findings import Finding, signature
from fuzzcache.minimize import MAX_CHECKS, Minimized, minimize
from fuzzcache.properties import Property, get
from fuzzcache.scenario import short_form
from fuzzcache.stopping import STOP_SIGNALS, stops_the_run

RERUNS = 2


class BudgetExhausted(BaseException):
    """Ends a run at its stop time; a BaseException, so Hypothesis neither catches nor shrinks it."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a property run, carrying what the run found (already saved)."""

    def __init__(self, run: "PropertyRun"):
        super().__init__()
        self.run = run


@dataclass
class Saved:
    property: str
    kind: str
    message: str
    path: Path | None
    new: bool
    scenario: Any  # the repro: the minimized scenario (Hypothesis's shrunk one when not minimized)
    triage: str | None = None  # the classification of an existing, triaged corpus file
    shrunk_scenario: Any = None  # Hypothesis's shrunk scenario, before the minimizer
    minimized: Minimized | None = None  # the minimizer's pass (None: it did not run)
    signatures: frozenset = frozenset()  # of the failure as found, as confirmed and as saved (``findings.signature``)
    known_bugs: list[str] = field(default_factory=list)  # the known bugs that claimed it (``fuzzcache.known_bugs``)
    picture: dict | None = None  # the data of its pictures in the HTML report (``fuzzcache.finding_picture``)

    @property
    def untriaged(self) -> bool:
        """New in the corpus and explained by no triage nor known bug: what fails a run."""
        return self.new and self.triage is None

    def record(self) -> dict:
        """This finding in report.json: what the terminal report says, and its HTML pictures' data."""
        return {"property": self.property, "kind": self.kind, "message": self.message, "path": str(self.path) if self.path else None,
                "new": self.new, "triage": self.triage, "known_bugs": self.known_bugs, "writeup": self.writeup(),
                "repro": short_form(self.scenario), "shrunk": short_form(self.shrunk_scenario),
                "minimized": self.minimized.record() if self.minimized else None,
                "history": self.minimized.history if self.minimized else [], "picture": self.picture}

    def writeup(self) -> str | None:
        """The triage write-up it points at (``corpus.writeup_link``): one its corpus file's triage
        names, or its known bug's."""
        if self.path is None or not (self.triage or self.known_bugs):
            return None
        try:
            triage = corpus.load(self.path).triage
        except corpus.CorpusError:
            triage = None
        return corpus.writeup_link(triage, self.known_bugs)


@dataclass
class PropertyRun:
    property: str
    examples: int = 0
    seconds: float = 0.0
    found: list[Saved] = field(default_factory=list)
    paths: Counter = field(default_factory=Counter)
    error: str | None = None  # the run could not complete (e.g. every example rejected)
    examples_to_find: int | None = None  # examples run when the first failure appeared
    seconds_to_find: float | None = None


def confirmed(prop: Property, target, scenario, first: Finding) -> Finding:
    """Rerun a failing scenario: the finding if it fails the same way every time, else a
    ``nondeterministic`` finding (a target that disagrees with itself). A target whose traces
    depend on timing (``timing_dependent``, e.g. a server under concurrent requests) is rerun its
    own ``reruns`` times: the finding if it failed the same way again at least once, recording
    how often (``details["reproduced"]``), else ``nondeterministic``."""
    outcomes = []
    timing = bool(getattr(target, "timing_dependent", False))
    reruns = getattr(target, "reruns", RERUNS) if timing else RERUNS
    coverage.muted = True
    try:
        for _ in range(reruns):
            try:
                prop.check(target, scenario)
                outcomes.append(None)
            except Finding as again:
                outcomes.append(again.kind)
    finally:
        coverage.muted = False
    again = sum(kind == first.kind for kind in outcomes)
    if timing and again:
        first.details["reproduced"] = f"{1 + again} of {1 + reruns} runs"
        return first
    if again < len(outcomes):
        return Finding("nondeterministic", f"the same input gave {[first.kind, *outcomes]} on {1 + reruns} runs; first: {first.message}", first.details)
    return first


def checked(prop: Property, target, scenario) -> None:
    """Run the check; a finding is confirmed by reruns before it is raised."""
    try:
        prop.check(target, scenario)
    except Finding as first:
        raise confirmed(prop, target, scenario, first) from None


def run_property(
    prop: Property,
    target,
    target_spec: str,
    hypothesis_settings: Settings,
    corpus_dir: Path | str | None,
    on_example: Callable[[], None] | None = None,
    stop_at: float | None = None,
    known: set | None = None,
) -> PropertyRun:
    """One Hypothesis run of ``prop`` on ``target``; saves the shrunk failure if any.
    ``stop_at`` (a ``time.monotonic()`` value) ends the search early; once a failure is
    found, shrinking runs to completion. A failure whose ``signature`` is in ``known`` (found
    before in a keep-going campaign) counts as a pass, so the search goes on to other failures."""
    run = PropertyRun(prop.id)
    last_failure: list = []
    start = time.perf_counter()
    # Nothing is written to the database once the stop time interrupts an example (which never
    # ran: Hypothesis would save it beside the failures; see ReadOnlyOnceStopped).
    database = None
    if stop_at is not None and hypothesis_settings.database is not None:
        database = ReadOnlyOnceStopped(hypothesis_settings.database)
        hypothesis_settings = Settings(hypothesis_settings, database=database)

    def test(scenario):
        if stop_at is not None and not last_failure and time.monotonic() >= stop_at:
            if database is not None:
                database.stop()
            raise BudgetExhausted()
        run.examples += 1
        if on_example:
            on_example()
        try:
            prop.check(target, scenario)  # reruns for nondeterminism happen once, on the final example
        except Finding as f:
            if known is not None and signature(prop.id, f) in known:
                reached(f"known failure passed over: {f.kind}")
                return
            if not last_failure:
                run.examples_to_find = run.examples
                run.seconds_to_find = time.perf_counter() - start
            last_failure[:] = [scenario, f]
            raise

    # One example-database key per (target, property): the closure above is the same code for all.
    test._hypothesis_internal_add_digest = f"{target_spec}\0{prop.id}".encode()
    # Generated examples first, so a failure is shrunk; the explicit examples (the seeds'
    # fixed parameters, which Hypothesis never shrinks) only when nothing was found.
    phases = [p for p in hypothesis_settings.phases if p != Phase.explain]
    generated = Settings(hypothesis_settings, report_multiple_bugs=False, suppress_health_check=list(HealthCheck),
                         verbosity=Verbosity.quiet,  # fuzzcache reports findings itself; no seed hints at slice ends
                         phases=[p for p in phases if p != Phase.explicit],
                         max_examples=max(1, round(hypothesis_settings.max_examples * prop.example_scale)))
    passes = [generated(given(prop.strategy(target))(test))]
    if prop.examples and Phase.explicit in phases:
        explicit_test = given(prop.strategy(target))(test)
        for ex in prop.examples:
            explicit_test = example(ex)(explicit_test)
        passes.append(Settings(generated, phases=[Phase.explicit])(explicit_test))
    coverage.take()
    with ctrl_c_noted() as ctrl_c:
        try:
            for hypothesis_test in passes:
                if not last_failure:
                    hypothesis_test()
        except BudgetExhausted:
            pass
        except KeyboardInterrupt:
            run.seconds = time.perf_counter() - start
            run.paths = coverage.take()
            if last_failure:  # keep what was found, shrunk or not; no minimizing on the way out
                run.found.append(_save(prop, target_spec, corpus_dir, *last_failure, target=target, reduce=False))
            raise Interrupted(run) from None
        except Exception as exc:  # noqa: BLE001 - Hypothesis re-raises the minimal failure
            if last_failure:
                run.found.append(_save(prop, target_spec, corpus_dir, *last_failure, target=target, reduce=not ctrl_c))
                if ctrl_c or (run.found[-1].minimized is not None and run.found[-1].minimized.interrupted):
                    run.seconds, run.paths = time.perf_counter() - start, coverage.take()
                    raise Interrupted(run) from None  # Ctrl-C while shrinking or minimizing: what was found is saved
            else:
                run.error = f"{type(exc).__name__}: {exc}"
    run.seconds = time.perf_counter() - start
    run.paths = coverage.take()
    if ctrl_c:  # a Ctrl-C that Hypothesis kept to itself
        raise Interrupted(run)
    return run


@contextmanager
def ctrl_c_noted() -> Iterator[list]:
    """A list that a stop signal (Ctrl-C, or SIGTERM under ``fuzzcache.stopping``) appends to
    before its handler raises KeyboardInterrupt as usual. Hypothesis's final replay of a failing
    example catches BaseException, so a signal landing there never reaches ``run_property``'s
    handler; the note does. Only for signals whose handler stops the run, in the main thread."""
    noted: list = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def noting(handler):
        def note(signum, frame):
            noted.append(signum)
            handler(signum, frame)
        return note

    for sig, handler in previous.items():
        if stops_the_run(handler):
            signal.signal(sig, noting(handler))
    try:
        yield noted
    finally:
        for sig, handler in previous.items():
            if stops_the_run(handler):
                signal.signal(sig, handler)


def target_options(target) -> dict:
    """The dtype / device a built-in style target was made with (recorded in corpus files)."""
    from fuzzcache.targets import DTYPES

    options = {}
    names = {v: k for k, v in DTYPES.items()}
    if getattr(target, "dtype", torch.float32) != torch.float32:
        options["dtype"] = names.get(target.dtype, str(target.dtype))
    if str(getattr(target, "device", "cpu")) != "cpu":
        options["device"] = str(target.device)
    return options


def minimize_found(prop: Property, target, scenario, finding: Finding, max_checks: int = MAX_CHECKS) -> tuple[Any, Finding, Minimized]:
    """The minimizer on a confirmed failure: (repro, its finding, the pass). The repro is the
    minimized scenario when it fails the same way on every confirming run (after Ctrl-C, the
    best so far, unconfirmed), else ``scenario``."""
    result = minimize(prop, target, scenario, finding, max_checks)
    if result.scenario == scenario:
        return scenario, finding, result
    if result.interrupted:  # no more target calls on the way out
        return result.scenario, result.finding, result
    try:
        again = confirmed(prop, target, result.scenario, result.finding)
    except KeyboardInterrupt:
        result.interrupted, result.note = True, "interrupted while confirming the minimized form; Hypothesis's shrunk form kept"
        return scenario, finding, result
    if again.kind == "nondeterministic":
        result.note = "the minimized form did not fail on every confirming run; Hypothesis's shrunk form kept"
        return scenario, finding, result
    return result.scenario, again, result


def _save(prop: Property, target_spec: str, corpus_dir, scenario, finding: Finding, target=None, reduce: bool = True) -> Saved:
    """Confirm the failure, minimize it (unless the corpus already holds it, as a repro or as a
    repro's shrunk form, or ``reduce`` is off), and save the repro with Hypothesis's shrunk
    scenario beside it. A minimizer that fails or is interrupted leaves the shrunk form to save."""
    first = signature(prop.id, finding)  # as the search saw it (a flaky failure is confirmed as nondeterministic)
    finding = confirmed(prop, target, scenario, finding)
    options = target_options(target)
    existing = corpus.find(corpus_dir, target_spec, prop.id, scenario, options) if corpus_dir is not None else None
    if existing is not None:
        return _already_saved(prop, existing, scenario, finding, first, target if reduce else None)
    shrunk, result = scenario, None
    found_by = known_bugs.claim(prop, target, scenario, finding, model=reduce)  # a known bug's shape is not minimized
    if reduce and found_by is None:
        try:
            scenario, finding, result = minimize_found(prop, target, shrunk, finding)
        except Exception as exc:  # noqa: BLE001 - a bug of the minimizer must not lose the confirmed shrunk form
            result = Minimized(shrunk, finding, 0, 0.0, False, note=f"minimizer failed ({type(exc).__name__}: {exc}); Hypothesis's shrunk form kept")
    path, new = (None, True)
    if corpus_dir is not None:
        path, new = corpus.save(corpus_dir, target_spec, prop.id, scenario, finding, options,
                                shrunk_scenario=shrunk if result else None, minimized=result.record() if result else None,
                                triage=found_by.triage() if found_by else None)
    if found_by is not None:
        triage = found_by.triage()["classification"]
    else:
        triage = None if new or path is None else _classification(path)
    stopping = not reduce or (result is not None and result.interrupted)  # no more target calls on the way out
    return Saved(prop.id, finding.kind, finding.message, path, new, scenario, triage, shrunk, result,
                 frozenset({first, signature(prop.id, finding)}), found_by.ids if found_by else [],
                 STOPPED if stopping else picture_of(prop, target, scenario, finding))


STOPPED = {"note": "not drawn: the run was being stopped (no more target calls on the way out)"}


def picture_of(prop: Property, target, scenario, finding: Finding) -> dict:
    """The report's picture data of a saved finding; a failure to draw it loses nothing else."""
    from fuzzcache.finding_picture import picture

    start = time.perf_counter()
    try:
        return picture(prop, target, scenario, finding) | {"seconds": round(time.perf_counter() - start, 2)}
    except KeyboardInterrupt:
        return {"note": "interrupted before its picture was drawn"}
    except Exception as exc:  # noqa: BLE001 - the finding is saved already; the report says why it has no picture
        return {"note": f"no picture: {type(exc).__name__}: {exc}"}


def _already_saved(prop: Property, path: Path, shrunk, finding: Finding, first: tuple, target=None) -> Saved:
    """A finding the corpus holds at ``path``: its repro and triage as saved there."""
    try:
        case = corpus.load(path)
    except corpus.CorpusError:
        case = None  # `fuzzcache replay` names the broken file
    repro = case.scenario if case else shrunk
    triage = (case.triage or {}).get("classification") if case else None
    bugs = list((case.triage or {}).get("known_bugs", [])) if case else []
    return Saved(prop.id, finding.kind, finding.message, path, False, repro, triage, shrunk,
                 signatures=frozenset({first, signature(prop.id, finding)}), known_bugs=bugs,
                 picture=picture_of(prop, target, repro, finding) if target is not None else STOPPED)


def _classification(path: Path) -> str | None:
    try:
        return (corpus.load(path).triage or {}).get("classification")
    except corpus.CorpusError:
        return None  # `fuzzcache replay` names the broken file


def replay(case: corpus.Case, target=None, isolate: bool | None = None) -> Finding | None:
    """Run a saved case again; the finding if it still fails, None if the target now agrees.
    ``isolate`` as ``resolve_target``'s, when ``target`` is not given."""
    from fuzzcache.guard import Unsupported
    from fuzzcache.targets import resolve_target

    target = target if target is not None else resolve_target(case.target, **case.target_options, isolate=isolate)
    try:
        checked(get(case.property), target, case.scenario)
    except Finding as f:
        return f
    except Unsupported as exc:
        return Finding("contract", f"the target now rejects this config: {exc}")
    return None


def replayed_record(path: Path, case: corpus.Case, target, finding: Finding, claimed_by: list[str]) -> dict:
    """A replayed file that still fails, in report.json: as a campaign's finding, drawn again."""
    saved = Saved(case.property, finding.kind, finding.message, path, False, case.scenario,
                  (case.triage or {}).get("classification") or ("known bug" if claimed_by else None), case.shrunk_scenario,
                  known_bugs=list((case.triage or {}).get("known_bugs", [])) or claimed_by,
                  picture=picture_of(get(case.property), target, case.scenario, finding))
    return saved.record()


def claimed_on_replay(case: corpus.Case, target, finding: Finding) -> "known_bugs.Claim | None":
    """The known bugs of ``target`` that explain a replayed, untriaged case's ``finding``."""
    return known_bugs.claim(get(case.property), target, case.scenario, finding)
