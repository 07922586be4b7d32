"""The scenario minimizer (fuzzcache.minimize, fuzzcache.reductions): it only keeps candidates
that fail the same way, its trace reductions stay inside the contract, it reaches the documented
minimal triggers from Hypothesis's local minima, it is capped, it never runs on passing
examples, and corpus files keep both forms (``fuzzcache minimize`` on existing files too)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzzcache import corpus, runner
from fuzzcache.cli import main
from fuzzcache.contract import EngineConfig, Request, validate_requests
from fuzzcache.findings import Finding
from fuzzcache.minimize import finding_of, minimize, same_failure
from fuzzcache.mutants import ZOO
from fuzzcache.properties import get
from fuzzcache.reductions import fewer_items, smaller_ints, smaller_tokens
from fuzzcache.scenario import TraceScenario, to_jsonable
from fuzzcache.targets import resolve_target
from fuzzcache.targets.reference import ReferenceTarget
from strategies.engine import min_pool_blocks, target_trace_scenarios

TRACE = get("engine.trace")


def trace(*requests: tuple, **config) -> TraceScenario:
    """trace((prompt, new[, arrival]), ...) with rids 0.. and an EngineConfig(**config)."""
    return TraceScenario(tuple(Request(i, tuple(p), n, *rest) for i, (p, n, *rest) in enumerate(requests)), EngineConfig(**config))


def failure_of(target, scenario, prop=TRACE) -> Finding:
    found = finding_of(prop, target, scenario)
    assert found is not None, f"expected {scenario.short()} to fail on {target.name}"
    return found


# ---- building blocks ---------------------------------------------------------------------------


def test_fewer_items_tries_halves_then_each_position_from_the_ends():
    assert list(fewer_items((1, 2, 3, 4), 1)) == [(3, 4), (1, 2), (1, 2, 3), (2, 3, 4), (1, 3, 4), (1, 2, 4)]
    assert list(fewer_items((7,), 1)) == []
    assert list(fewer_items((7,), 0)) == [()]


def test_smaller_ints_and_tokens_go_lowest_first():
    assert list(smaller_ints(9, 1)) == [1, 5, 8]
    assert list(smaller_ints(1, 1)) == []
    assert list(smaller_tokens((0, 3)))[:3] == [(0, 0), (0, 0), (0, 1)]


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_trace_reductions_are_smaller_and_inside_the_contract(data):
    target = resolve_target("reference")
    scenario = data.draw(target_trace_scenarios(target))
    for candidate in scenario.reductions(target):
        s = candidate.scenario if hasattr(candidate, "renamed") else candidate
        assert s.size_key() < scenario.size_key(), (scenario.short(), s.short())
        validate_requests(s.requests, s.config, target.vocab_size, target.max_seq_len)
        if s.config.num_blocks is not None:
            assert s.config.num_blocks >= min_pool_blocks(s.requests, s.config)


def test_block_size_is_lowered_only_where_the_target_pages_and_not_below_its_minimum():
    assert trace(((1,), 1), block_size=4).size_key() > trace(((1,), 1)).size_key()  # the default block shows nothing
    scenario = trace(((1, 2, 3, 4, 5), 2), block_size=8)
    paged = ReferenceTarget()
    paged.min_block_size = 4
    unpaged = ReferenceTarget()
    unpaged.features = frozenset({"batching"})
    assert {s.config.block_size for s in scenario.reductions(paged)} == {8, 16, 4, 6, 7}  # 16: back to the default
    assert {s.config.block_size for s in scenario.reductions(unpaged)} == {8, 16}


def test_a_pool_limit_follows_what_the_requests_need():
    scenario = trace(((0, 0, 0), 2), ((0,), 1), block_size=1, num_blocks=6)  # minimum 5
    target = resolve_target("reference")
    fewer = [s for s in scenario.reductions(target) if len(s.requests) == 2 and s.requests[0].prompt == (0, 0)]
    assert {s.config.num_blocks for s in fewer} == {4, 6}  # the new minimum first, then unchanged
    assert fewer[0].config.num_blocks == 4


# ---- the same failure, never another bug -------------------------------------------------------


class TwoBugs(ReferenceTarget):
    """The reference engine with two planted bugs. Bug 1 (a mismatch): a request whose prompt
    starts with 5, in a trace of two or more requests, gets its oracle's least likely first token.
    Bug 2 is ``second``: "crash" raises on a one-token prompt (0,); "other request" gives the first
    request of a trace the same wrong token when its prompt is all zeros."""

    def __init__(self, second: str):
        super().__init__(name=f"two-bugs:{second}")
        self.second = second

    def generate(self, requests, config):
        if self.second == "crash" and any(r.prompt == (0,) for r in requests):
            raise RuntimeError("bug 2: a one-token zero prompt")
        out = super().generate(requests, config)
        for i, (r, c) in enumerate(zip(requests, out)):
            bug1 = len(requests) > 1 and r.prompt[0] == 5
            bug2 = self.second == "other request" and i == 0 and len(r.prompt) > 1 and not any(r.prompt)
            if (bug1 or bug2) and c.tokens:
                c.tokens[0] = int(self.reference_logits(r.prompt)[-1].argmin())
                c.logits = None
        return out


@pytest.mark.parametrize("second", ["crash", "other request"])
def test_minimizing_one_bug_never_yields_the_other(second):
    target = TwoBugs(second)
    start = trace(((5, 1), 2), ((0, 0), 1))
    original = failure_of(target, start)
    assert (original.kind, original.details["rid"]) == ("mismatch", 0)
    # The other bug is one reduction away: a naive minimizer (any failure) would take it.
    other = trace(((5, 1), 2), ((0,), 1)) if second == "crash" else TraceScenario(start.requests[1:], start.config)
    found = failure_of(target, other)
    assert (found.kind, found.details.get("rid")) == (("crash", None) if second == "crash" else ("mismatch", 1))
    assert not same_failure(original, found, 0)
    result = minimize(TRACE, target, start, original)
    assert (result.finding.kind, result.finding.details["rid"]) == ("mismatch", 0)
    assert result.scenario.requests[0].prompt == (5,) and len(result.scenario.requests) == 2
    assert result.checks > 0 and not result.capped


def test_a_crash_is_held_to_its_place_and_exception_type():
    tb = 'Traceback (most recent call last):\n  File "/x/engine.py", line 10, in step\nIndexError: list index out of range'
    crash = Finding("crash", "IndexError", {"traceback": tb})
    assert same_failure(crash, Finding("crash", "IndexError", {"traceback": tb}), None)
    assert not same_failure(crash, Finding("crash", "IndexError", {"traceback": tb.replace("line 10", "line 11")}), None)
    assert not same_failure(crash, Finding("crash", "KeyError", {"traceback": tb.replace("IndexError", "KeyError")}), None)


def test_a_nondeterministic_finding_is_not_minimized():
    finding = Finding("nondeterministic", "the same input gave [...]")
    result = minimize(TRACE, resolve_target("reference"), trace(((1, 2), 2)), finding)
    assert result.checks == 0 and result.scenario == trace(((1, 2), 2))


# ---- reaching the documented triggers; the cap ------------------------------------------------


# Hypothesis's shrink stopped here (the mutation score before the minimizer): a pool limit where
# the documented triggers have an arrival or a token budget, and one more token.
HASH_SHRUNK = trace(((0, 0), 1), ((0, 0, 1), 1), block_size=1, num_blocks=4, prefix_cache=True)


def test_the_minimizer_reaches_a_documented_trigger_from_hypothesis_local_minimum():
    target = resolve_target("mutant:prefix_hash_not_chained")
    result = minimize(TRACE, target, HASH_SHRUNK, failure_of(target, HASH_SHRUNK))
    assert f"engine.trace: {result.scenario.short().strip()}" in ZOO["prefix_hash_not_chained"].triggers
    assert finding_of(TRACE, resolve_target("reference"), result.scenario) is None  # the correct engine passes it


def test_the_minimizer_stops_at_its_cap():
    target = resolve_target("mutant:prefix_hash_not_chained")
    result = minimize(TRACE, target, HASH_SHRUNK, failure_of(target, HASH_SHRUNK), max_checks=3)
    assert result.checks == 3 and result.capped
    assert finding_of(TRACE, target, result.scenario) is not None


def test_a_metamorphic_pair_with_its_path_off_has_nothing_to_compare():
    prop = get("engine.same.prefix_cache")
    target = resolve_target("mutant:prefix_hash_not_chained")
    on = trace(((0,), 1), ((0, 0, 1), 1, 1), block_size=1, prefix_cache=True)
    assert failure_of(target, on, prop).kind == "mismatch"
    assert finding_of(prop, target, TraceScenario(on.requests, EngineConfig(block_size=1))) is None


def test_ctrl_c_while_minimizing_keeps_the_best_so_far():
    class Interrupting(ReferenceTarget):
        calls = 0

        def generate(self, requests, config):
            self.calls += 1
            if self.calls > 3:
                raise KeyboardInterrupt
            out = super().generate(requests, config)
            out[0].tokens[0], out[0].logits = int(self.reference_logits(requests[0].prompt)[-1].argmin()), None
            return out

    target = Interrupting()
    start = trace(((1, 2, 3), 1))
    result = minimize(TRACE, target, start, failure_of(target, start))
    assert result.interrupted and finding_of(TRACE, Interrupting(), result.scenario) is not None


# ---- the runner and the corpus -----------------------------------------------------------------


def test_the_minimizer_never_runs_on_a_passing_example(monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "minimize", lambda *a, **kw: calls.append(a) or pytest.fail("minimize on a passing run"))
    run = runner.run_property(TRACE, resolve_target("reference"), "reference", settings(max_examples=15, database=None), None)
    assert run.examples >= 15 and not run.found and not calls


def test_a_saved_finding_keeps_both_forms_and_replay_runs_the_minimized_one(tmp_path):
    spec = "mutant:prefix_hash_not_chained"
    target = resolve_target(spec)
    saved = runner._save(TRACE, spec, tmp_path, HASH_SHRUNK, failure_of(target, HASH_SHRUNK), target=target)
    assert saved.new and saved.shrunk_scenario == HASH_SHRUNK and saved.scenario != HASH_SHRUNK
    record = json.loads(saved.path.read_text())
    assert record["scenario"] == to_jsonable(saved.scenario)
    assert record["shrunk_scenario"] == to_jsonable(HASH_SHRUNK)
    assert record["minimized"]["checks"] == saved.minimized.checks > 0 and record["minimized"]["capped"] is False
    case = corpus.load(saved.path)
    assert (case.scenario, case.shrunk_scenario) == (saved.scenario, HASH_SHRUNK)
    assert runner.replay(case) is not None and runner.replay(case, resolve_target("reference")) is None
    again = runner._save(TRACE, spec, tmp_path, HASH_SHRUNK, failure_of(target, HASH_SHRUNK), target=target)
    assert not again.new and again.path == saved.path


def test_a_shrunk_form_already_in_the_corpus_is_not_minimized_again(tmp_path, monkeypatch):
    spec = "mutant:prefix_hash_not_chained"
    target = resolve_target(spec)
    old, _ = corpus.save(tmp_path, spec, TRACE.id, HASH_SHRUNK, failure_of(target, HASH_SHRUNK))  # an older version's file
    monkeypatch.setattr(runner, "minimize", lambda *a, **kw: pytest.fail("minimized a case the corpus holds"))
    saved = runner._save(TRACE, spec, tmp_path, HASH_SHRUNK, failure_of(target, HASH_SHRUNK), target=target)
    assert saved.path == old and not saved.new and saved.minimized is None


def test_an_old_corpus_file_without_the_new_fields_still_loads(tmp_path):
    path, _ = corpus.save(tmp_path, "reference", TRACE.id, HASH_SHRUNK, Finding("mismatch", "m", {"rid": 0}))
    record = json.loads(path.read_text())
    assert "shrunk_scenario" not in record and "minimized" not in record
    case = corpus.load(path)
    assert case.scenario == HASH_SHRUNK and case.shrunk_scenario is None and case.minimized is None


def test_a_malformed_shrunk_scenario_is_an_error_naming_the_file(tmp_path):
    path, _ = corpus.save(tmp_path, "reference", TRACE.id, HASH_SHRUNK, Finding("mismatch", "m"))
    record = json.loads(path.read_text())
    record["shrunk_scenario"] = {"requests": "nope"}
    path.write_text(json.dumps(record))
    with pytest.raises(corpus.CorpusError, match=str(path)):
        corpus.load(path)


# ---- fuzzcache minimize ------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_minimize_command_reduces_an_old_file_and_keeps_its_scenario(tmp_path):
    spec = "mutant:prefix_hash_not_chained"
    old, _ = corpus.save(tmp_path, spec, TRACE.id, HASH_SHRUNK, failure_of(resolve_target(spec), HASH_SHRUNK),
                         triage={"classification": "by-design", "writeup": "kept across minimizing"})
    result = invoke("minimize", old)
    assert result.exit_code == 0, result.output
    assert "reduced" in result.output
    (new,) = corpus.iter_files([tmp_path])
    assert new != old and not old.exists()
    case = corpus.load(new)
    assert case.shrunk_scenario == HASH_SHRUNK and case.triage["writeup"] == "kept across minimizing"
    assert f"engine.trace: {case.scenario.short().strip()}" in ZOO["prefix_hash_not_chained"].triggers
    again = invoke("minimize", new)
    assert again.exit_code == 0 and "minimal" in again.output and corpus.iter_files([tmp_path]) == [new]


def test_minimize_command_keeps_the_original_on_request_and_reports_passing_and_broken_files(tmp_path):
    spec = "mutant:prefix_hash_not_chained"
    old, _ = corpus.save(tmp_path / "a", spec, TRACE.id, HASH_SHRUNK, failure_of(resolve_target(spec), HASH_SHRUNK))
    result = invoke("minimize", "--keep-original", "--corpus", tmp_path / "out", old)
    assert result.exit_code == 0 and old.exists() and len(corpus.iter_files([tmp_path / "out"])) == 1
    passing, _ = corpus.save(tmp_path / "b", "reference", TRACE.id, HASH_SHRUNK, Finding("mismatch", "m"))
    broken = tmp_path / "b" / "broken.json"
    broken.write_text("{not json")
    result = invoke("minimize", passing, broken)
    assert result.exit_code == 1
    assert f"passes {passing}" in result.output and f"ERROR  {broken}" in result.output
    assert passing.exists()



def test_trades_add_no_feature_beside_one_the_target_runs_alone():
    target = ReferenceTarget()
    target.exclusive_features = frozenset({"speculative"})
    drafts = trace(((1, 2, 3), 2), ((4, 5), 1), block_size=4, spec_k=2)
    for s in drafts.reductions(target):
        assert s.config.max_batch_tokens is None and (s.config.block_size <= 4 or s.config.block_size == 16)
        assert not (s.config.spec_k and s.config.prefix_cache)
    plain = trace(((1, 2, 3), 2), ((4, 5), 1), block_size=4)
    assert any(s.config.max_batch_tokens == 1 for s in plain.reductions(target))


def test_ctrl_c_while_minimizing_in_a_run_saves_the_finding_and_stops_the_run(tmp_path):
    from fuzzcache import coverage

    class WrongThenInterrupted(ReferenceTarget):
        """The first token after a prompt of two or more tokens is the oracle's least likely; Ctrl-C
        arrives at the minimizer's first check (the third call made while path counting is muted,
        after the two confirming reruns)."""

        muted_calls = 0

        def generate(self, requests, config):
            if coverage.muted:
                self.muted_calls += 1
                if self.muted_calls == 3:
                    raise KeyboardInterrupt
            out = super().generate(requests, config)
            for r, c in zip(requests, out):
                if c.tokens and len(r.prompt) > 1:
                    c.tokens[0], c.logits = int(self.reference_logits(r.prompt)[-1].argmin()), None
            return out

    with pytest.raises(runner.Interrupted) as stopped:
        runner.run_property(TRACE, WrongThenInterrupted(), "wrong", settings(max_examples=20, database=None, derandomize=True), tmp_path)
    (saved,) = stopped.value.run.found
    assert saved.minimized.interrupted and saved.scenario == saved.shrunk_scenario
    assert json.loads(saved.path.read_text())["minimized"]["interrupted"] is True
