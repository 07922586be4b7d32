"""The scenario minimizer (fuzzcache.minimize, fuzzcache.reductions): it only keeps candidates
that fail the same way, its trace reductions stay inside the contract, it reaches the documented
minimal triggers from Hypothesis's local minima, it is capped, it never runs on passing
examples, and corpus files keep both forms (``fuzzcache minimize`` on existing files too)."""

from __future__ import annotations

import json
import signal

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
from fuzzcache.strategies.engine import min_pool_blocks, target_trace_scenarios

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
    assert list(fewer_items((1, 2), 1)) == [(2,), (1,)]  # the halves are the single deletions: each once
    assert list(fewer_items((1, 2, 3), 2)) == [(1, 2), (2, 3), (1, 3)]  # no half below the minimum length


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
    # calls: the first failure, then (2, 3) and (3,) accepted; Ctrl-C at the next check
    assert result.interrupted and result.scenario == trace(((3,), 1)) and result.checks == 3


# ---- the runner and the corpus -----------------------------------------------------------------


def test_the_minimizer_never_runs_on_a_passing_example(monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "minimize", lambda *a, **kw: calls.append(a) or pytest.fail("minimize on a passing run"))
    run = runner.run_property(TRACE, resolve_target("reference"), "reference", settings(max_examples=15, database=None, deadline=None), None)
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
    old, _ = corpus.save(tmp_path / "old", spec, TRACE.id, HASH_SHRUNK, failure_of(target, HASH_SHRUNK))  # an older version's file
    minimized = runner._save(TRACE, spec, tmp_path / "new", HASH_SHRUNK, failure_of(target, HASH_SHRUNK), target=target)
    monkeypatch.setattr(runner, "minimize", lambda *a, **kw: pytest.fail("minimized a case the corpus holds"))
    for folder, path in ((tmp_path / "old", old), (tmp_path / "new", minimized.path)):  # as the repro; as a repro's shrunk form
        again = runner._save(TRACE, spec, folder, HASH_SHRUNK, failure_of(target, HASH_SHRUNK), target=target)
        assert again.path == path and not again.new and again.minimized is None
        assert again.scenario == corpus.load(path).scenario and again.shrunk_scenario == HASH_SHRUNK
    assert minimized.scenario != HASH_SHRUNK


class WrongFirstToken(ReferenceTarget):
    """Every first token is the oracle's least likely; Ctrl-C arrives at call ``stop_at`` made while
    path counting is muted (confirming reruns and minimizer checks)."""

    def __init__(self, stop_at: int | None = None):
        super().__init__(name="wrong-first-token")
        self.stop_at, self.muted_calls = stop_at, 0

    def generate(self, requests, config):
        from fuzzcache import coverage

        if coverage.muted:
            self.muted_calls += 1
            if self.muted_calls == self.stop_at:
                raise KeyboardInterrupt
        out = super().generate(requests, config)
        for r, c in zip(requests, out):
            if c.tokens:
                c.tokens[0], c.logits = int(self.reference_logits(r.prompt)[-1].argmin()), None
        return out


def test_ctrl_c_after_reductions_saves_the_best_so_far_and_a_minimizer_error_the_shrunk_form(tmp_path, monkeypatch):
    start = trace(((1, 2, 3), 1))
    # muted calls: two confirming reruns, then (2, 3) and (3,) accepted; Ctrl-C at the next check
    target = WrongFirstToken(stop_at=5)
    saved = runner._save(TRACE, "wrong", tmp_path, start, failure_of(WrongFirstToken(), start), target=target)
    assert saved.minimized.interrupted and saved.scenario == trace(((3,), 1)) and saved.shrunk_scenario == start
    assert corpus.load(saved.path).scenario == trace(((3,), 1))
    monkeypatch.setattr(runner, "minimize", lambda *a, **kw: 1 / 0)
    saved = runner._save(TRACE, "wrong", tmp_path / "broken", start, failure_of(WrongFirstToken(), start), target=WrongFirstToken())
    assert saved.new and saved.scenario == start and "minimizer failed (ZeroDivisionError" in saved.minimized.note
    assert "minimizer failed" in json.loads(saved.path.read_text())["minimized"]["note"]


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
    old = old.rename(old.with_name(f"crash-{corpus.digest_of(old)}.json"))  # a mismatch as older versions named it
    result = invoke("minimize", old)
    assert result.exit_code == 0, result.output
    assert "reduced" in result.output
    (new,) = corpus.iter_files([tmp_path])
    assert new != old and not old.exists() and new.name.startswith("mismatch-")
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



def test_trades_never_turn_on_a_path_the_failure_did_not_take():
    target = resolve_target("reference")
    plain = trace(((1, 2, 3), 2), ((4, 5), 1))
    for s in plain.reductions(target):
        c = s.config
        assert (c.max_batch_tokens, c.chunk_size, c.max_num_seqs, c.block_size, c.num_blocks) == (None, None, 8, 16, None), s.short()
    chunked = trace(((1, 2, 3), 2), ((4, 5), 1), block_size=2, chunk_size=2, max_num_seqs=2)
    made = {(s.config.max_batch_tokens, s.config.max_num_seqs) for s in chunked.reductions(target) if len(s.requests) == 2}
    assert (1, 2) in made and (None, 1) in made  # a budget and a batch limit, where the config already uses them


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


class TokenOrLogits(ReferenceTarget):
    """Two planted bugs on the same request, both mismatches: a prompt starting with 5 gets a wrong
    first token (bug 1); an all-zero prompt gets its first logits row off by 1 (bug 2, tokens right)."""

    def generate(self, requests, config):
        out = super().generate(requests, config)
        for r, c in zip(requests, out):
            if r.prompt[0] == 5 and c.tokens:
                c.tokens[0], c.logits = int(self.reference_logits(r.prompt)[-1].argmin()), None
            elif not any(r.prompt) and c.logits is not None:
                c.logits = c.logits.clone()
                c.logits[0, 0] += 1.0
        return out


def test_a_mismatch_of_another_sort_on_the_same_request_is_another_bug():
    target = TokenOrLogits()
    start = trace(((5, 0, 0), 2))
    original = failure_of(target, start)
    other = failure_of(target, trace(((0, 0, 0), 2)))  # one reduction away (token values to 0)
    assert (original.details["what"], other.details["what"]) == ("token", "logits") and other.details["rid"] == 0
    assert not same_failure(original, other, 0)
    result = minimize(TRACE, target, start, original)
    assert result.scenario.requests[0].prompt[0] == 5 and result.finding.details["what"] == "token"


def interrupted_at_first_check():
    """For ``fuzzcache minimize``: Ctrl-C at the minimizer's first check (after the two confirming reruns)."""
    return WrongFirstToken(stop_at=3)


def test_minimize_command_never_deletes_an_input_whose_content_is_kept_nowhere(tmp_path):
    spec = "mutant:prefix_hash_not_chained"
    target = resolve_target(spec)
    first, _ = corpus.save(tmp_path, spec, TRACE.id, HASH_SHRUNK, failure_of(target, HASH_SHRUNK))
    assert invoke("minimize", first).exit_code == 0 and not first.exists()
    # another shrunk form of the same bug, with a triage of its own: it minimizes to the file just written
    other = TraceScenario(HASH_SHRUNK.requests + (Request(2, (7,), 1, 3),), HASH_SHRUNK.config)
    second, _ = corpus.save(tmp_path, spec, TRACE.id, other, failure_of(target, other),
                            triage={"classification": "by-design", "writeup": "only here"})
    result = invoke("minimize", second)
    assert result.exit_code == 0 and "(already there); input kept" in result.output and second.exists()
    # with --target the input belongs to another target: kept, and its triage is not copied
    third, _ = corpus.save(tmp_path / "t", "mutant:prefix_weak_hash_no_token_check", TRACE.id, other, failure_of(target, other),
                           triage={"classification": "by-design", "writeup": "about the weak hash"})
    result = invoke("minimize", "--target", spec, third)
    assert result.exit_code == 0 and "input kept" in result.output and third.exists()
    (made,) = corpus.iter_files([tmp_path / "t" / spec])
    assert corpus.load(made).triage is None and corpus.load(made).target == spec


def test_minimize_command_stops_at_ctrl_c(tmp_path):
    spec = "test_minimize:interrupted_at_first_check"
    start = trace(((1, 2, 3), 1))
    a, _ = corpus.save(tmp_path, spec, TRACE.id, start, failure_of(WrongFirstToken(), start))
    b, _ = corpus.save(tmp_path, spec, TRACE.id, trace(((1, 2), 1)), failure_of(WrongFirstToken(), trace(((1, 2), 1))))
    result = invoke("minimize", a, b)
    assert result.exit_code == 130 and result.output.count("interrupted") >= 1
    assert result.output.count(" checks, ") == 1 and a.exists() and b.exists()  # the first file only, nothing deleted


@pytest.fixture
def ctrl_c_reaches_python():
    """Python's own SIGINT handler, as a terminal's foreground job has it: a background job of a
    non-interactive shell (``nohup ... &``) starts with SIGINT ignored, and Python keeps that."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_a_ctrl_c_that_hypothesis_keeps_to_itself_still_stops_the_run(tmp_path, stop_signal, ctrl_c_reaches_python):
    from hypothesis.control import current_build_context

    from fuzzcache.stopping import stop_on_signals

    class SwallowedCtrlC(WrongFirstToken):
        """Ctrl-C during Hypothesis's final replay of the failing example, where Hypothesis catches
        BaseException: simulated by swallowing the KeyboardInterrupt right here."""

        def generate(self, requests, config):
            if current_build_context().is_final:
                try:
                    signal.raise_signal(stop_signal)
                except KeyboardInterrupt:
                    pass
            return super().generate(requests, config)

    with pytest.raises(runner.Interrupted) as stopped, stop_on_signals():  # as `fuzzcache fuzz` runs
        runner.run_property(TRACE, SwallowedCtrlC(), "swallowed", settings(max_examples=20, database=None, derandomize=True), tmp_path)
    (saved,) = stopped.value.run.found
    assert saved.path.exists() and saved.minimized is None  # saved as shrunk, no minimizing after Ctrl-C
