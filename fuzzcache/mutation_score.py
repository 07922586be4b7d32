"""The mutation score: for each mutant, do the seed's fixed checks (seed 000's ten on the
engine, seed 004's at its own parameters on the KV-cache surgery) kill it, does the
fuzzer, how fast, and is the shrunk repro the documented minimal trigger? The correct
engine runs in the same table and must survive both."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from hypothesis import settings as Settings

from fuzzcache.mutants import Mutant
from fuzzcache.properties import PROPERTIES, Property
from fuzzcache.runner import run_property
from fuzzcache.html_report import write_html
from fuzzcache.scenario import short_form


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
    repro: str = ""  # "<property>: <short form>" of the minimized repro
    shrunk_repro: str = ""  # the same of Hypothesis's shrunk example, before the minimizer
    documented: list[str] = field(default_factory=list)
    equals_documented: bool | None = None
    repro_tokens: int | None = None  # total tokens (``short_form_tokens``) of the minimized repro
    shrunk_tokens: int | None = None
    documented_tokens: int | None = None  # of the smallest documented trigger
    minimize_checks: int | None = None  # the minimizer's property checks on this finding
    minimize_seconds: float | None = None
    seconds_total: float = 0.0
    known_bugs: list[str] = field(default_factory=list)  # the target's known bugs the fuzzer found (``fuzzcache.known_bugs``): no kill
    finding: dict | None = None  # the killing finding as report.json records it (``Saved.record``), drawn in index.html
    clean: bool = False  # a target that must stay clean (``mutants --clean``), not a mutant to kill

    @property
    def fixed_killed(self) -> bool:
        return self.fixed_checks.startswith("killed")

    @property
    def flagged(self) -> bool:
        """The fixed checks or the fuzzer found something: a kill for a mutant, a failure for a clean target."""
        return self.fuzz_killed or self.fixed_killed


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


def score_target(spec: str, make: Callable[[], object], base: Settings, budget_s: float, mutant: Mutant | None = None, bug: str = "",
                 clean: bool = False) -> MutantScore:
    """Seed checks, then properties in ``property_order`` until the first kill or the budget.
    A zoo ``mutant``'s repro is held to its documented minimal triggers for the finding's kind."""
    start = time.monotonic()
    target = make()
    result = MutantScore(spec, mutant.bug if mutant else bug, fixed_checks(target), clean=clean)
    spent_examples, spent_seconds = 0, 0.0
    for prop in property_order():
        if not prop.applies_to(target) or time.monotonic() - start > budget_s:
            continue
        run = run_property(prop, target, spec, Settings(base, database=None), corpus_dir=None, stop_at=start + budget_s)
        result.known_bugs += [b for saved in run.found for b in saved.known_bugs if b not in result.known_bugs]
        killing = [saved for saved in run.found if not saved.known_bugs]  # a known bug's finding is the engine's, not a kill
        if killing:
            found = killing[0]
            result.fuzz_killed, result.killed_by, result.kind = True, prop.id, found.kind
            result.examples_to_kill = spent_examples + (run.examples_to_find or run.examples)
            result.seconds_to_kill = round(spent_seconds + (run.seconds_to_find or run.seconds), 2)
            documented = result.documented = list(mutant.documented(found.kind)) if mutant else []
            result.repro = f"{prop.id}: {short_form(found.scenario)}"
            result.finding = found.record() | {"property": f"{spec}: {prop.id}"}
            result.shrunk_repro = f"{prop.id}: {short_form(found.shrunk_scenario)}"
            result.equals_documented = result.repro in documented if documented else None
            result.repro_tokens, result.shrunk_tokens = short_form_tokens(result.repro), short_form_tokens(result.shrunk_repro)
            result.documented_tokens = min((short_form_tokens(d) for d in documented), default=None)
            if found.minimized is not None:
                result.minimize_checks, result.minimize_seconds = found.minimized.checks, round(found.minimized.seconds, 2)
            break
        spent_examples += run.examples
        spent_seconds += run.seconds
    result.seconds_total = round(time.monotonic() - start, 2)
    return result


def short_form_tokens(repro: str) -> int | None:
    """Total tokens of a repro's short form ("<property>: <short>"): prompt plus generated over
    all requests. Request traces: each ``[prompt=P new=N]``. Other scenarios: their token counts
    (prompt, decoded, passage, query, context, answer, prefix, doc, T; each length in prompts /
    decode / prefill, plus new for each prompt; each token of a corpus / context list; each
    character of a quoted text). Positions, offsets, k, block and chunk sizes are not tokens."""
    if not repro:
        return None
    short = repro.split(": ", 1)[-1]
    requests = re.findall(r"\[prompt=(\d+) new=(\d+)(?: n=(\d+))?", short)
    if requests:
        return sum(int(p) + int(forks or 1) * int(n) for p, n, forks in requests)
    fields = dict(re.findall(r"(\w+)=(\[[^\]]*\]|'[^']*'|\"[^\"]*\"|-?\d+)", short))
    total, rows = 0, 1
    for name, value in fields.items():
        if value[0] in "'\"":
            total += len(value) - 2
        elif value.startswith("["):
            items = [int(x) for x in value[1:-1].split(",") if x.strip()]
            if name in ("prompts", "decode", "prefill"):
                total, rows = total + sum(items), len(items) if name == "prompts" else rows
            elif name in ("corpus", "context"):
                total += len(items)
        elif name in ("prompt", "decoded", "passage", "query", "context", "answer", "prefix", "doc", "T"):
            total += int(value)
    return total + rows * int(fields.get("new", 0))


def minimizer_costs(scores: list[MutantScore]) -> dict:
    """Median and worst extra property checks and seconds the minimizer spent per kill."""
    out = {}
    for name, values in (("checks", [s.minimize_checks for s in scores]), ("seconds", [s.minimize_seconds for s in scores])):
        ran = sorted(v for v in values if v is not None)
        out[f"minimizer_{name}_median"] = ran[len(ran) // 2] if ran else None
        out[f"minimizer_{name}_worst"] = ran[-1] if ran else None
    return out


def fuzzer_verdict(score: MutantScore) -> str:
    """killed / survived, and the target's known bugs the fuzzer found on the way."""
    verdict = "killed" if score.fuzz_killed else "survived"
    return f"{verdict} (known bug: {', '.join(score.known_bugs)})" if score.known_bugs else verdict


def markdown_table(scores: list[MutantScore]) -> str:
    head = ("| mutant | fixed checks | fuzzer | property | s to kill | examples to kill | shrunk repro | minimized repro | tokens: shrunk / "
            "minimized / documented | minimizer checks, s | = documented trigger |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    dash = lambda v: "-" if v is None or v == "" else v  # noqa: E731
    for s in scores:
        equal = {True: "yes", False: "no", None: "-"}[s.equals_documented]
        rows.append(
            f"| {s.target} | {s.fixed_checks} | {fuzzer_verdict(s)} | {s.killed_by or '-'} | "
            f"{dash(s.seconds_to_kill)} | {dash(s.examples_to_kill)} | {dash(s.shrunk_repro.split(': ', 1)[-1])} | "
            f"{dash(s.repro.split(': ', 1)[-1])} | {dash(s.shrunk_tokens)} / {dash(s.repro_tokens)} / {dash(s.documented_tokens)} | "
            f"{dash(s.minimize_checks)}, {dash(s.minimize_seconds)} | {equal} |"
        )
    return head + "\n".join(rows) + "\n"


def write_outputs(scores: list[MutantScore], out_dir: Path, header: dict) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "mutants.md", out_dir / "mutants.json"
    md.write_text(markdown_table(scores))
    data = {**header, "mutants": [asdict(s) | {"fixed_killed": s.fixed_killed, "flagged": s.flagged} for s in scores]}
    js.write_text(json.dumps(data, indent=2) + "\n")
    write_html(data, out_dir)
    return md, js
