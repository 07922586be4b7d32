"""Every property catches a planted bug of its kind, shrinks it, and saves exactly one corpus
file that ``fuzzcache replay`` reports as failing; the same scenario passes on the correct
engine (and tests/test_properties.py runs each whole property on the correct engine)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from hypothesis import settings

from fuzzcache.cli import main
from fuzzcache.properties import PROPERTIES
from fuzzcache.runner import replay, run_property
from fuzzcache.corpus import PREFIXES, load
from fuzzcache.mutants import ZOO
from fuzzcache.targets import resolve_target

import planted

FIND = settings(max_examples=300, deadline=None, database=None, derandomize=True)  # stops at the first failure


@pytest.fixture(autouse=True)
def minimizer_capped_by_checks_only(monkeypatch):
    """The repro is held to a documented minimal trigger: it must not depend on how loaded the
    machine is, so the minimizer's wall-clock cap is off here (its 400 checks still bound it)."""
    import math

    from fuzzcache import minimize

    monkeypatch.setattr(minimize, "MAX_SECONDS", math.inf)


def test_every_property_has_a_planted_bug():
    assert set(planted.PLANTED) == set(PROPERTIES)


# the slowest searches (over 8 s each on 2 busy cores) are left out of the fast tier; the paths.* bugs are in HF transformers
SLOW = {"engine.same.pool", "surgery.memory", "spec.distribution", "engine.same.speculative", "engine.same.fused", "engine.same.prefix_cache"}
TIERS = [pytest.param(p, marks=pytest.mark.engine if p.startswith("paths.") else pytest.mark.slow if p in SLOW else ()) for p in sorted(PROPERTIES)]


@pytest.mark.parametrize("property_id", TIERS)
def test_planted_bug_is_found_shrunk_saved_and_replayed(property_id, tmp_path):
    spec = f"planted:{property_id.replace('.', '_')}"
    buggy = resolve_target(spec)
    run = run_property(PROPERTIES[property_id], buggy, spec, FIND, tmp_path)
    assert run.error is None
    assert len(run.found) == 1, f"{property_id} did not catch {buggy.name} in {run.examples} examples"
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 1 and files[0].parent == tmp_path / spec / property_id
    assert files[0].name.startswith(PREFIXES[run.found[0].kind] + "-")  # named by its kind: mismatch-, leak-, ...
    record = json.loads(files[0].read_text())
    assert record["property"] == property_id and record["target"] == spec
    short = load(files[0]).scenario.short().strip()
    print(f"{property_id}: {run.found[0].kind} found after {run.examples_to_find} examples ({run.examples} with shrinking); repro {short}")
    assert run.examples > run.examples_to_find, "the failure was not shrunk"
    mutant = ZOO.get(buggy.name.removeprefix("mutant:"))
    triggers = mutant.documented(run.found[0].kind) if mutant else ()  # a finding kind may have minimal forms of its own
    documented = [t.partition(": ")[2] for t in triggers if t.startswith(property_id + ": ")]
    if documented:  # a zoo mutant with a hand-derived minimal trigger for this property and kind
        assert short in documented, f"shrunk to {short!r}; documented minimal {documented}"

    result = CliRunner().invoke(main, ["replay", str(files[0])])
    assert result.exit_code == 1 and "FAILS" in result.output, result.output

    assert replay(load(files[0]), resolve_target(planted.CORRECT.get(property_id, "reference"))) is None, "the correct engine fails the shrunk scenario"


def test_surgery_memory_passes_on_the_correct_memory_model(tmp_path):
    """surgery.memory applies to no fuzzcache engine of its own (the reference edits no KV memory):
    its whole property runs on the memory model's engine, right by construction, and finds nothing."""
    spec = planted.CORRECT["surgery.memory"]
    bounded = settings(max_examples=15, deadline=None, database=None, derandomize=True)
    run = run_property(PROPERTIES["surgery.memory"], resolve_target(spec), spec, bounded, tmp_path)
    assert run.error is None and run.examples > 0 and not run.found
