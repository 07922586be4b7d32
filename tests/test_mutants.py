"""The bug zoo and the mutation score: every mutant is documented and resolvable; on a fast
subset, the fuzzer kills each mutant with a repro equal to its documented minimal trigger;
the command scores the seed's fixed checks beside it, and the correct engine survives both
(tests/test_properties.py runs every property on it under the ci profile)."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from hypothesis import settings

from fuzzcache.cli import main
from fuzzcache.contract import EngineConfig, Request
from fuzzcache.known_bugs import KnownBug
from fuzzcache.minimize import finding_of
from fuzzcache.mutants import ZOO
from fuzzcache.mutation_score import score_target, short_form_tokens
from fuzzcache.properties import PROPERTIES, get
from fuzzcache.scenario import TraceScenario
from fuzzcache.targets import resolve_target

PATHS = {"kv", "batching", "paged", "prefix_cache", "chunked_prefill", "speculative", "fused", "preemption", "surgery", "lifecycle"}
FAST = ["mutant:kv_trim_keeps_one_rejected", "mutant:paged_gather_floor_blocks", "mutant:chunk_short_last_dropped"]


def test_zoo_is_documented_and_covers_every_fast_path():
    assert len(ZOO) >= 16
    assert {m.path for m in ZOO.values()} == PATHS
    for m in ZOO.values():
        assert m.bug and m.triggers, m.name
        for trigger in m.triggers:
            prop, _, short = trigger.partition(": ")
            assert prop in PROPERTIES and short, f"{m.name}: {trigger!r}"


@pytest.mark.slow
def test_fast_subset_is_killed_at_its_documented_trigger(tmp_path):
    ci = settings.get_profile("ci")
    for spec in FAST:
        m = ZOO[spec.removeprefix("mutant:")]
        score = score_target(spec, lambda: resolve_target(spec), ci, budget_s=120, mutant=m)
        assert score.fuzz_killed, spec
        assert score.equals_documented, f"{spec}: shrunk to {score.repro!r}, documented {m.triggers}"
        assert score.repro_tokens <= score.documented_tokens <= score.shrunk_tokens, score
        assert score.minimize_checks is not None and score.minimize_seconds is not None


def explains_everything(scenario, finding) -> bool:
    return True


@pytest.mark.slow
def test_a_finding_a_known_bug_claims_is_no_kill():
    """A finding that one of the target's known bugs claims (fuzzcache.known_bugs) is the
    engine's own, as in a fuzz run: the score lists the bug and the target survives."""
    spec = FAST[0]

    def make():
        target = resolve_target(spec)
        target.known_bugs = (KnownBug("planted-known", "claims every finding", explains=explains_everything),)
        return target

    score = score_target(spec, make, settings.get_profile("ci"), budget_s=10, mutant=ZOO[spec.removeprefix("mutant:")])
    assert not score.fuzz_killed and score.known_bugs == ["planted-known"], score


def trace_of(short: str) -> TraceScenario:
    """A documented trace trigger's short form as a scenario, every token 0."""
    pattern = r"\[prompt=(\d+) new=(\d+)(?: n=(\d+))?(?: stop=\[([\d,]*)\])?(?: abort=(\d+))?(?: at=(\d+))?\]"
    requests = tuple(Request(i, (0,) * int(p), int(new), int(at or 0), tuple(int(t) for t in stop.split(",") if t),
                             int(abort) if abort else None, int(n or 1))
                     for i, (p, new, n, stop, abort, at) in enumerate(re.findall(pattern, short)))
    config = {k: v == "True" if v in ("True", "False") else int(v) for k, v in re.findall(r"(\w+)=(\w+)", short.rsplit("]", 1)[1])}
    return TraceScenario(requests, EngineConfig(**config))


TRACE_TRIGGERS = [(m.name, kind, t) for m in ZOO.values() for kind, ts in [("any", m.triggers), *m.triggers_of_kind.items()]
                  for t in ts if t.partition(": ")[2].startswith("[")]


@pytest.mark.parametrize("name, kind, trigger", TRACE_TRIGGERS, ids=[f"{n}:{t}" for n, _, t in TRACE_TRIGGERS])
def test_every_documented_trace_trigger_fails_its_mutant_and_passes_the_reference(name, kind, trigger):
    prop, _, short = trigger.partition(": ")
    scenario = trace_of(short)
    assert scenario.short().strip() == short  # the parse is faithful
    found = finding_of(get(prop), resolve_target(f"mutant:{name}"), scenario)
    assert found is not None and kind in ("any", found.kind), found
    assert finding_of(get(prop), resolve_target("reference"), scenario) is None


def test_short_form_tokens_counts_prompt_plus_generated():
    assert short_form_tokens("engine.trace: [prompt=1 new=1] [prompt=3 new=1 at=1] block_size=1 prefix_cache=True") == 6
    assert short_form_tokens("batch.ragged: prompts=[1, 2] new=2") == 7
    assert short_form_tokens("kv.recompute: prompt=4 new=10 model=learned/h1kv1") == 14
    assert short_form_tokens("surgery.bpe: prefix='a' doc='t'") == 2
    assert short_form_tokens("surgery.rope.model: llama/linear/fp32 p=0 delta=1") == 0


def test_mutants_command_writes_markdown_and_json(tmp_path):
    result = CliRunner().invoke(main, ["mutants", "--targets", "mutant:kv_trim_keeps_one_rejected", "--profile", "dev", "--out", str(tmp_path)])  # --out: --report-dir's old name
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "mutants.json").read_text())
    assert [m["target"] for m in data["mutants"]] == ["reference", "mutant:kv_trim_keeps_one_rejected"]
    assert data["fuzzer_killed"] == 1 and data["clean"] == ["reference"] and data["clean_flagged"] == []
    assert "| mutant:kv_trim_keeps_one_rejected |" in (tmp_path / "mutants.md").read_text()


def test_unknown_mutant_target_is_a_clear_error():
    result = CliRunner().invoke(main, ["mutants", "--targets", "mutant:nope"])
    assert result.exit_code == 2 and "unknown mutant 'nope'" in result.output


def test_a_target_named_both_to_kill_and_to_stay_clean_is_a_clear_error():
    result = CliRunner().invoke(main, ["mutants", "--targets", "mutant:kv_trim_keeps_one_rejected", "--clean", "reference,mutant:kv_trim_keeps_one_rejected"])
    assert result.exit_code == 2 and "mutant:kv_trim_keeps_one_rejected: named both as a mutant to kill" in result.output


def test_a_clean_target_the_fuzzer_flags_fails_the_run(tmp_path):
    """Exit 0 exactly when every mutant died and every clean target stayed clean: a buggy engine
    named as clean fails the run even though the mutant to kill died."""
    result = CliRunner().invoke(main, ["mutants", "--targets", "mutant:kv_trim_keeps_one_rejected", "--clean", "mutant:spec_bonus_from_wrong_row",
                                       "--profile", "dev", "--report-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    data = json.loads((tmp_path / "mutants.json").read_text())
    assert data["fuzzer_killed"] == 1 and data["clean"] == ["mutant:spec_bonus_from_wrong_row"]
    assert data["clean_flagged"] == ["mutant:spec_bonus_from_wrong_row"]
    assert [m["clean"] for m in data["mutants"]] == [True, False]
