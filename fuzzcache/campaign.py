"""A fuzz campaign: round-robin over properties under a time budget, and its JSON / JUnit XML /
HTML report files (the terminal's view: fuzzcache.terminal). Ctrl-C stops cleanly and keeps what was found."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hypothesis import settings as Settings
from hypothesis.database import ExampleDatabase

from fuzzcache.branch_coverage import BranchCoverage
from fuzzcache.database import KeepingFailures
from fuzzcache.html_report import write_html
from fuzzcache.properties import Property
from fuzzcache.runner import Interrupted, PropertyRun, Saved, run_property


# Examples per Hypothesis run in a campaign (runs repeat, with fresh seeds, until the budget is
# spent): from half of them on, Hypothesis climbs toward the rare paths (fuzzcache.rare_paths), so
# a run must end often enough for every property to climb within its share of a short budget.
RUN_EXAMPLES = 200


@dataclass
class PropertyTotals:
    property: str
    examples: int = 0
    seconds: float = 0.0
    found: list[Saved] = field(default_factory=list)
    paths: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    examples_to_first_failure: int | None = None  # a failure replayed from a shared database: 1
    target: str | None = None  # set in a campaign over several targets (a target pattern)

    @property
    def label(self) -> str:
        """How reports name it: the property id, after its target's name in a multi-target campaign."""
        return f"{self.target} {self.property}" if self.target else self.property

    def add(self, run: PropertyRun) -> None:
        if self.examples_to_first_failure is None and run.examples_to_find is not None:
            self.examples_to_first_failure = self.examples + run.examples_to_find
        self.examples += run.examples
        self.seconds += run.seconds
        saved = {f.path for f in self.found}
        self.found += [s for s in run.found if s.path is None or s.path not in saved]  # one file, one distinct failure
        self.paths.update(run.paths)
        if run.error:
            self.errors.append(run.error)

    @property
    def known(self) -> set:
        """Signatures of the failures found so far: a keep-going run passes over them."""
        return {sig for s in self.found for sig in s.signatures}


@dataclass
class CampaignResult:
    target: str
    totals: dict[str, PropertyTotals]
    seconds: float
    interrupted: bool
    server: dict | None = None  # a server target's own account (``target.server_report()``): requests/s, start-ups
    coverage_snapshots: list = field(default_factory=list)  # per process measuring: its BranchCoverage snapshots
    branch_coverage: dict | None = None  # fuzzcache.branch_coverage.report, once the processes' data is combined

    @property
    def findings(self) -> list[Saved]:
        return [s for t in self.totals.values() for s in t.found]

    @property
    def new_findings(self) -> list[Saved]:
        return [s for s in self.findings if s.new]

    @property
    def untriaged_findings(self) -> list[Saved]:
        """New findings that no triage or known bug explains: what fails a run."""
        return [s for s in self.findings if s.untriaged]


def parse_budget(text: str) -> float:
    """'90s', '10m', '2h' or plain seconds -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except (ValueError, IndexError):
        raise ValueError(f"budget {text!r}: expected e.g. 90s, 10m, 2h") from None


Progress = Callable[[list, float], None]  # (rows as in ``rows_of``, seconds elapsed): told after every example


def rows_of(totals: dict[str, PropertyTotals]) -> list[tuple[str, int, float, int]]:
    """(property, examples, seconds, distinct failures) per property: what the progress line counts."""
    return [(t.property, t.examples, t.seconds, len(t.found)) for t in totals.values()]


def run_campaign(
    target,
    target_spec: str,
    properties: list[Property],
    budget_s: float,
    base_settings: Settings,
    corpus_dir: Path | None,
    database: ExampleDatabase | None,
    progress: Progress | None = None,
    coverage: BranchCoverage | None = None,
) -> CampaignResult:
    """Fuzz until the budget is spent. Each cycle gives every property one continuous
    Hypothesis run (up to the profile's max_examples, at most RUN_EXAMPLES) in an equal share
    of the remaining time; cycles repeat with fresh seeds. Keep going: after a finding a property searches on,
    passing over failures with a signature it already found (one file per distinct failure;
    one already in the corpus, triaged or not, is reported and passed over too). A property
    whose run could not complete is done. ``progress`` is told after every example.

    A target that runs one config at a time (a managed server: ``config_shards``, a name ->
    EngineConfig mapping, or ``shards_for_budget(budget_s)`` returning one, and ``use_config``)
    gets an equal share of the budget per config, in turn; a config whose server does not start
    is reported as every property's error. ``coverage`` (started by the caller, before the
    target was built) takes its snapshots here and is stopped at the end."""
    totals = {p.id: PropertyTotals(p.id) for p in properties}
    database = database if database is not None else base_settings.database
    database = KeepingFailures(database) if database is not None else None  # keep-going must not evict failures
    start = time.monotonic()
    interrupted = False
    examples = [0]  # run so far, counted as they end (a property's totals grow when its run ends)

    def tick(example_ended: bool = True) -> None:
        examples[0] += example_ended
        if progress:
            progress(rows_of(totals), time.monotonic() - start)
        if coverage:
            coverage.snapshot(examples[0])

    shards_for = getattr(target, "shards_for_budget", None)
    shards = list((shards_for(budget_s) if callable(shards_for) else getattr(target, "config_shards", None) or {}).items()) or [(None, None)]
    try:
        active = list(properties)
        s = Settings(base_settings, database=database, derandomize=False, max_examples=min(base_settings.max_examples, RUN_EXAMPLES))
        for n, (name, config) in enumerate(shards):
            shard_end = time.monotonic() + (budget_s - (time.monotonic() - start)) / (len(shards) - n)  # a start-up counts in its shard
            if config is not None:
                try:
                    target.use_config(config)
                except Exception as exc:  # noqa: BLE001 - the next config may start
                    for t in totals.values():
                        t.errors.append(f"server config {name!r} did not start: {exc}")
                    continue
            shard_active = list(active)
            while shard_active and time.monotonic() < shard_end:
                cycle = list(shard_active)
                for i, prop in enumerate(cycle):
                    remaining = shard_end - time.monotonic()
                    if remaining <= 0:
                        break
                    stop_at = time.monotonic() + remaining / (len(cycle) - i)
                    run = run_property(prop, target, target_spec, s, corpus_dir, on_example=tick, stop_at=stop_at, known=totals[prop.id].known)
                    totals[prop.id].add(run)
                    if run.error:
                        shard_active.remove(prop)
                        if config is None:
                            active.remove(prop)
                    tick(example_ended=False)
    except KeyboardInterrupt as exc:
        interrupted = True
        if isinstance(exc, Interrupted):  # what the interrupted property found is saved; report it
            totals[exc.run.property].add(exc.run)
    server = target.server_report() if callable(getattr(target, "server_report", None)) else None
    snapshots = [coverage.stop(examples[0])] if coverage else []
    return CampaignResult(target_spec, totals, time.monotonic() - start, interrupted, server, snapshots)


def write_reports(result: CampaignResult, out_dir: Path) -> tuple[Path, Path]:
    """report.json, junit.xml and the HTML report (index.html) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "target": result.target,
        "seconds": round(result.seconds, 2),
        "interrupted": result.interrupted,
        "server": result.server,
        "branch_coverage": result.branch_coverage,
        "properties": {
            t.label: {
                "examples": t.examples,
                "seconds": round(t.seconds, 2),
                "paths": dict(t.paths),
                "errors": t.errors,
                "distinct_failures": len(t.found),
                "examples_to_first_failure": t.examples_to_first_failure,
                "findings": [s.record() for s in t.found],
            }
            for t in result.totals.values()
        },
    }
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    suite = ET.Element("testsuite", name=f"fuzzcache:{result.target}", tests=str(len(result.totals)),
                       failures=str(sum(1 for t in result.totals.values() if t.found)),
                       errors=str(sum(1 for t in result.totals.values() if t.errors and not t.found)), time=f"{result.seconds:.2f}")
    for t in result.totals.values():
        case = ET.SubElement(suite, "testcase", classname=t.target or result.target, name=t.property, time=f"{t.seconds:.2f}")
        for s in t.found:
            ET.SubElement(case, "failure", type=s.kind, message=s.message).text = str(s.path)
        if t.errors and not t.found:
            ET.SubElement(case, "error", message=t.errors[0])
    junit_path = out_dir / "junit.xml"
    ET.ElementTree(suite).write(junit_path, encoding="unicode", xml_declaration=True)
    write_html(data, out_dir)
    return json_path, junit_path


def merge_results(pattern: str, results: list[CampaignResult]) -> CampaignResult:
    """One campaign's result from the per-target results of a target pattern (``vllm:*``): every
    property's totals under its target's name, the seconds summed, coverage snapshots in order."""
    totals: dict[str, PropertyTotals] = {}
    for result in results:
        for t in result.totals.values():
            t.target = result.target
            totals[t.label] = t
    merged = CampaignResult(pattern, totals, sum(r.seconds for r in results), any(r.interrupted for r in results))
    processes: dict[int, list] = {}  # an in-process measurement returns its one list after every target: kept once
    for result in results:
        for snapshots in result.coverage_snapshots:
            processes.setdefault(id(snapshots), snapshots)
    merged.coverage_snapshots = list(processes.values())
    return merged
