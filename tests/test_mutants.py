"""The bug zoo and the mutation score: every mutant is documented and resolvable; on a fast
subset, the fuzzer kills each mutant with a repro equal to its documented minimal trigger;
the command scores the seed's fixed checks beside it, and the correct engine survives both
(tests/test_properties.py runs every property on it under the ci profile)."""

from __future__ import annotations

import json

from click.testing import CliRunner
from hypothesis import settings

from fuzzcache.cli import main
from fuzzcache.mutants import ZOO
from fuzzcache.mutation_score import score_target
from fuzzcache.properties import PROPERTIES
from fuzzcache.targets import resolve_target

PATHS = {"kv", "batching", "paged", "prefix_cache", "chunked_prefill", "speculative", "fused", "preemption", "surgery"}
FAST = ["mutant:kv_trim_keeps_one_rejected", "mutant:paged_gather_floor_blocks", "mutant:chunk_short_last_dropped"]


def test_zoo_is_documented_and_covers_every_fast_path():
    assert len(ZOO) >= 16
    assert {m.path for m in ZOO.values()} == PATHS
    for m in ZOO.values():
        assert m.bug and m.triggers, m.name
        for trigger in m.triggers:
            prop, _, short = trigger.partition(": ")
            assert prop in PROPERTIES and short, f"{m.name}: {trigger!r}"


def test_fast_subset_is_killed_at_its_documented_trigger(tmp_path):
    ci = settings.get_profile("ci")
    for spec in FAST:
        m = ZOO[spec.removeprefix("mutant:")]
        score = score_target(spec, lambda: resolve_target(spec), m.bug, list(m.triggers), ci, budget_s=120)
        assert score.fuzz_killed, spec
        assert score.equals_documented, f"{spec}: shrunk to {score.repro!r}, documented {m.triggers}"


def test_mutants_command_writes_markdown_and_json(tmp_path):
    result = CliRunner().invoke(main, ["mutants", "--targets", "mutant:kv_trim_keeps_one_rejected", "--profile", "dev", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "mutants.json").read_text())
    assert [m["target"] for m in data["mutants"]] == ["reference", "mutant:kv_trim_keeps_one_rejected"]
    assert data["fuzzer_killed"] == 1 and data["reference_survived"] is True
    assert "| mutant:kv_trim_keeps_one_rejected |" in (tmp_path / "mutants.md").read_text()


def test_unknown_mutant_target_is_a_clear_error():
    result = CliRunner().invoke(main, ["mutants", "--targets", "mutant:nope"])
    assert result.exit_code == 2 and "unknown mutant 'nope'" in result.output
