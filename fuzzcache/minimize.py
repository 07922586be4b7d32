"""The scenario minimizer: after Hypothesis's shrink, reduce a failing scenario by its structure.

Hypothesis only makes the generator's choices smaller, and the strategies tie choices together
(a pool derived from the requests, prompt lengths tied to the block size), so its shrink can stop
at a local minimum. Like libFuzzer's ``-minimize_crash`` or C-Reduce, this pass works on the
scenario itself: it tries the reductions the scenario type offers (``scenario.reductions(target)``,
e.g. delete a request, delete a token, lower a field, turn a feature off) and keeps a candidate
only if the same property still fails the same way (``same_failure``) and the candidate is smaller
(``scenario.size_key()``, else a generic size). It repeats until no reduction applies (1-minimal
with respect to the set) or the cap on checks is reached.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from fuzzcache import coverage
from fuzzcache.findings import Finding, crash_site
from fuzzcache.jsonable import to_jsonable

MAX_CHECKS = 400  # property checks (each one or two target calls plus the oracle) per finding
MAX_SECONDS = 120.0  # wall-clock per finding, whatever the checks cost


@dataclass(frozen=True)
class Reduced:
    """One candidate: a smaller scenario, and how its request ids map from the current one's
    (None: unchanged) so a mismatch can be held to the same request."""

    scenario: Any
    renamed: dict[int, int] | None = None


@dataclass
class Minimized:
    scenario: Any  # the smallest failing scenario found (the input when nothing was smaller)
    finding: Finding  # its finding
    checks: int  # property checks run
    seconds: float
    capped: bool  # stopped at the cap, not at a fixed point
    interrupted: bool = False  # Ctrl-C: the best so far is returned, the caller re-raises
    note: str = ""  # why the repro is not the minimizer's form, when it is not
    history: list = field(default_factory=list)  # {"checks", "tokens", "repro"} at the start and at each accepted step

    def record(self) -> dict:
        """What the corpus file keeps about this pass."""
        record = {"checks": self.checks, "seconds": round(self.seconds, 2), "capped": self.capped, "interrupted": self.interrupted}
        return record | ({"note": self.note} if self.note else {})


def request_of(finding: Finding) -> int | None:
    """The request (or batch row) a mismatch or contract breach was found on, if it names one."""
    if finding.kind not in ("mismatch", "contract"):
        return None
    return finding.details.get("rid", finding.details.get("row"))


def same_failure(original: Finding, candidate: Finding, rid: int | None) -> bool:
    """The candidate fails the way the original did: the same kind; a mismatch or contract breach
    on the same request (``rid``, already mapped to the candidate's ids) and of the same sort
    (``what``: a wrong token, logits, a metamorphic difference); a crash at the same place with
    the same exception type."""
    if candidate.kind != original.kind:
        return False
    if rid is not None and request_of(candidate) != rid:
        return False
    if original.details.get("what") != candidate.details.get("what"):
        return False
    if original.kind == "crash":
        return crash_site(original) == crash_site(candidate)
    return True


def generic_size(scenario: Any) -> tuple:
    """A size for scenario types without ``size_key``: (list elements and characters, then the
    sum of integer values, then true flags), over the scenario's JSON form."""
    items = numbers = flags = 0

    def walk(x):
        nonlocal items, numbers, flags
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            items += len(x)
            for v in x:
                walk(v)
        elif isinstance(x, str):
            items += len(x)
        elif isinstance(x, bool):
            flags += x
        elif isinstance(x, (int, float)):
            numbers += abs(x)

    walk(to_jsonable(scenario))
    return (items, numbers, flags)


def size_of(scenario: Any) -> tuple:
    key = getattr(scenario, "size_key", None)
    return key() if key is not None else generic_size(scenario)


def candidates(scenario: Any, target) -> Iterator[Reduced]:
    reductions = getattr(scenario, "reductions", None)
    if reductions is None:
        return iter(())
    return (c if isinstance(c, Reduced) else Reduced(c) for c in reductions(target))


def request_ids(scenario: Any, default: int) -> set[int]:
    """The request ids a scenario holds (``scenario.request_ids()``; else assume ``default`` is there)."""
    ids = getattr(scenario, "request_ids", None)
    return set(ids()) if ids is not None else {default}


def minimize(prop, target, scenario: Any, finding: Finding, max_checks: int = MAX_CHECKS, max_seconds: float | None = None) -> Minimized:
    """Reduce ``scenario`` (which fails ``prop`` on ``target`` with ``finding``) until no
    reduction keeps the same failure, or ``max_checks`` property checks have run, or
    ``max_seconds`` (default ``MAX_SECONDS``, read at the call) have passed (a ``hang`` check
    takes the whole time limit)."""
    max_seconds = MAX_SECONDS if max_seconds is None else max_seconds
    start = time.perf_counter()
    best, best_finding = scenario, finding
    rid = request_of(finding)
    checks = 0
    capped = interrupted = False
    if finding.kind == "nondeterministic":  # it does not fail reliably: nothing to hold a candidate to
        return Minimized(best, best_finding, 0, 0.0, False, note="not minimized: the target disagrees with itself")
    tried: set = set()  # (candidate, request): a deterministic target answers the same again
    history = [step_record(0, scenario)]
    coverage.muted = True
    try:
        progress = True
        while progress and not capped:
            progress = False
            current_size = size_of(best)
            for candidate in candidates(best, target):
                if size_of(candidate.scenario) >= current_size:
                    continue
                want = rid if candidate.renamed is None or rid is None else candidate.renamed.get(rid)
                if rid is not None and (want is None or want not in request_ids(candidate.scenario, want)):
                    continue  # the failing request was deleted
                if (candidate.scenario, want) in tried:
                    continue
                if checks >= max_checks or time.perf_counter() - start > max_seconds:
                    capped = True
                    break
                tried.add((candidate.scenario, want))
                checks += 1
                got = finding_of(prop, target, candidate.scenario)
                if got is not None and same_failure(finding, got, want):
                    best, best_finding, rid = candidate.scenario, got, want
                    history.append(step_record(checks, best))
                    progress = True
                    break  # restart from the smaller scenario
    except KeyboardInterrupt:
        interrupted = True
    finally:
        coverage.muted = False
    return Minimized(best, best_finding, checks, time.perf_counter() - start, capped, interrupted, history=history)


def token_count(scenario: Any) -> int:
    """The tokens a repro asks for: prompts and new tokens of a trace, else its list elements."""
    requests = getattr(scenario, "requests", None)
    if requests is not None:
        return sum(len(r.prompt) + r.n * r.max_new_tokens for r in requests)
    return generic_size(scenario)[0]


def step_record(checks: int, scenario: Any) -> dict:
    """One point of the minimizer's history: checks run so far, and the repro's size then."""
    short = getattr(scenario, "short", None)
    return {"checks": checks, "tokens": token_count(scenario), "repro": short() if short else str(to_jsonable(scenario))[:200]}


def finding_of(prop, target, scenario) -> Finding | None:
    """The finding ``scenario`` raises, or None (it passes, or is not a valid input)."""
    try:
        prop.check(target, scenario)
    except Finding as f:
        return f
    except Exception:  # noqa: BLE001 - a target's own errors come as Findings; this is Unsupported (a refused
        return None  # config), hypothesis' UnsatisfiedAssumption, or a candidate outside the property's assumptions
    return None
