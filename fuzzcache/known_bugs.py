"""Known bugs claim their findings: a nightly run against an engine with a triaged, unfixed bug
stays green. A new shape of a known bug is saved with a triage naming the bug and reported as
known; only a finding that no known bug explains fails the run.

A target declares its known bugs as ``target.known_bugs`` (a sequence of ``KnownBug``; an
isolated target's are pickled from its worker, so their functions are module-level). A bug
explains a finding in one of two ways:

- ``explains(scenario, finding) -> bool``: a predicate on the trigger the write-up names (a
  crash's site, the config and request shapes it needs);
- ``modeled``: the bug's name in the property's bug-modelling oracle (``Property.check_modeling``):
  the finding is the bug's when the scenario passes once the oracle behaves as the bug does. A
  finding that needs several modelled bugs at once is claimed by the fewest that explain it.

Hand triage keeps working: a corpus file with a ``triage`` is known whatever the bugs claim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from fuzzcache.findings import Finding


@dataclass(frozen=True)
class KnownBug:
    id: str  # the write-up's file stem: corpus/<id>.md
    summary: str  # one line: what is wrong, where
    properties: tuple[str, ...] = ()  # the properties it shows in (empty: any)
    kinds: tuple[str, ...] = ()  # the finding kinds it gives (empty: any)
    explains: Callable[[Any, Finding], bool] | None = None  # (scenario, finding) -> the trigger is this bug's
    modeled: str | None = None  # its name in the property's bug-modelling oracle
    classification: str = "upstream-bug"  # or "by-design"

    @property
    def writeup(self) -> str:
        return f"corpus/{self.id}.md"

    def may_explain(self, property_id: str, finding: Finding) -> bool:
        return (not self.properties or property_id in self.properties) and (not self.kinds or finding.kind in self.kinds)


@dataclass(frozen=True)
class Claim:
    bugs: tuple[KnownBug, ...]
    how: str  # why these bugs explain the finding

    @property
    def ids(self) -> list[str]:
        return [b.id for b in self.bugs]

    def triage(self) -> dict:
        """The corpus file's triage: as a person writes it, plus the claiming bugs' ids."""
        classification = "upstream-bug" if any(b.classification == "upstream-bug" for b in self.bugs) else "by-design"
        writeups = ", ".join(b.writeup for b in self.bugs)
        return {"classification": classification, "known_bugs": self.ids,
                "writeup": f"Claimed by the known bug(s) {' + '.join(self.ids)} ({writeups}): {self.how}."}


def claim(prop, target, scenario, finding: Finding, model: bool = True) -> Claim | None:
    """The known bugs of ``target`` that explain ``finding`` of ``prop`` on ``scenario``, or None.
    Predicates first; then (unless ``model`` is off: no more target calls, e.g. on the way out
    after Ctrl-C), where the property can model bugs in its oracle, each modelled bug alone, then
    the fewest of them together."""
    if finding.kind == "nondeterministic":
        return None  # a target that disagrees with itself is never a known bug's shape
    bugs = [b for b in getattr(target, "known_bugs", ()) or () if b.may_explain(prop.id, finding)]
    for bug in bugs:
        if bug.explains is not None and _holds(bug.explains, scenario, finding):
            return Claim((bug,), "the finding matches the trigger its write-up names")
    modeled = [b for b in bugs if b.modeled]
    check_modeling = getattr(prop, "check_modeling", None)
    if not model or not modeled or check_modeling is None:
        return None
    for bug in modeled:
        if _passes(check_modeling, target, scenario, [bug]):
            return Claim((bug,), "the scenario passes once the oracle models the bug")
    if len(modeled) < 2 or not _passes(check_modeling, target, scenario, modeled):
        return None
    needed = list(modeled)
    for bug in modeled:  # the fewest that still explain it together
        fewer = [b for b in needed if b is not bug]
        if _passes(check_modeling, target, scenario, fewer):
            needed = fewer
    return Claim(tuple(needed), "the scenario passes once the oracle models these bugs together")


def _holds(predicate, scenario, finding) -> bool:
    try:
        return bool(predicate(scenario, finding))
    except Exception:  # noqa: BLE001 - a predicate that cannot read this scenario does not claim it
        return False


def _passes(check_modeling, target, scenario, bugs: Sequence[KnownBug]) -> bool:
    try:
        check_modeling(target, scenario, frozenset(b.modeled for b in bugs))
    except Exception:  # noqa: BLE001 - a finding (or any error) under the modelling oracle: not explained
        return False
    return True
