"""The mutation score: for each mutant, do the seed's fixed checks (seed 000's ten on the
engine, seed 004's at its own parameters on the KV-cache surgery) kill it, does the
fuzzer, how fast, and is the shrunk repro the documented minimal trigger? The correct
engine runs in the same table and must survive both."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from hypothesis import settings as Settings

from fuzzcache.properties import PROPERTIES, Property
from fuzzcache.runner import run_property


@dataclass
class MutantScore:
    target: str
    bug: str
    fixed_checks: str  # "killed (7 kv trim)", "survived", or "n/a" for targets without engine ops
    fuzz_killed: bool = False
    killed_by: str = ""  # the property that killed it
    kind: str = ""
    seconds_to_kill: float | None = None  # until the first failing example, before shrinking
    examples_to_kill: int | None = None
    repro: str = ""  # "<property>: <short form>" of the shrunk example
    documented: list[str] = field(default_factory=list)
    equals_documented: bool | None = None
    seconds_total: float = 0.0

    @property
    def fixed_killed(self) -> bool:
        return self.fixed_checks.startswith("killed")


def property_order() -> list[Property]:
    """Cheap op-level properties first, then the (cheap) surgery ones, engine-level ones, a
    multi-path target's own paths, the sampling test last."""
    props = list(PROPERTIES.values())
    slow = [p for p in props if p.example_scale < 1]
    return [p for level in ("op", "surgery", "engine", "paths") for p in props if p.level == level and p not in slow] + slow


def fixed_checks(target) -> str:
    """The seed-000 fixed suite on engine ops, plus the seed-004 checks at the seed's own
    parameters (the surgery properties' explicit examples) on a target's surgery ops."""
    from fuzzcache.seed_suite import run_seed_checks

    failed, ran = [], False
    if hasattr(target, "ops") and hasattr(target, "model"):
        ran = True
        failed += [name for name, passed, _ in run_seed_checks(target) if not passed]
    surgery = [p for p in PROPERTIES.values() if p.level == "surgery" and p.applies_to(target)]
    ran = ran or bool(surgery)
    failed += [f"004 {p.id}" for p in surgery if not _examples_pass(p, target)]
    if not ran:
        return "n/a"
    return f"killed ({', '.join(failed)})" if failed else "survived"


def _examples_pass(prop: Property, target) -> bool:
    from fuzzcache.findings import Finding

    try:
        for example in prop.examples:
            prop.check(target, example)
    except Finding:
        return False
    return True


def score_target(spec: str, make: Callable[[], object], bug: str, documented: list[str], base: Settings, budget_s: float) -> MutantScore:
    """Seed checks, then properties in ``property_order`` until the first kill or the budget."""
    start = time.monotonic()
    target = make()
    result = MutantScore(spec, bug, fixed_checks(target), documented=documented)
    spent_examples, spent_seconds = 0, 0.0
    for prop in property_order():
        if not prop.applies_to(target) or time.monotonic() - start > budget_s:
            continue
        run = run_property(prop, target, spec, Settings(base, database=None), corpus_dir=None, stop_at=start + budget_s)
        if run.found:
            found = run.found[0]
            short = found.scenario.short() if hasattr(found.scenario, "short") else str(found.scenario)
            result.fuzz_killed, result.killed_by, result.kind = True, prop.id, found.kind
            result.examples_to_kill = spent_examples + (run.examples_to_find or run.examples)
            result.seconds_to_kill = round(spent_seconds + (run.seconds_to_find or run.seconds), 2)
            result.repro = f"{prop.id}: {short.strip()}"
            result.equals_documented = result.repro in documented if documented else None
            break
        spent_examples += run.examples
        spent_seconds += run.seconds
    result.seconds_total = round(time.monotonic() - start, 2)
    return result


def markdown_table(scores: list[MutantScore]) -> str:
    head = "| mutant | fixed checks | fuzzer | property | s to kill | examples to kill | shrunk repro | = documented trigger |\n|---|---|---|---|---|---|---|---|\n"
    rows = []
    for s in scores:
        equal = {True: "yes", False: "no", None: "-"}[s.equals_documented]
        rows.append(
            f"| {s.target} | {s.fixed_checks} | {'killed' if s.fuzz_killed else 'survived'} | {s.killed_by or '-'} | "
            f"{s.seconds_to_kill if s.seconds_to_kill is not None else '-'} | {s.examples_to_kill if s.examples_to_kill is not None else '-'} | "
            f"{s.repro.split(': ', 1)[-1] if s.repro else '-'} | {equal} |"
        )
    return head + "\n".join(rows) + "\n"


def write_outputs(scores: list[MutantScore], out_dir: Path, header: dict) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "mutants.md", out_dir / "mutants.json"
    md.write_text(markdown_table(scores))
    js.write_text(json.dumps({**header, "mutants": [asdict(s) | {"fixed_killed": s.fixed_killed} for s in scores]}, indent=2) + "\n")
    return md, js
