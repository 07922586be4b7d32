"""The request lifecycle (stop tokens, aborts, n continuations, the leak check): the reference
engine implements it, the contract checks catch each way a target can break it, the strategies
draw only what a target declares, and the paths report counts what was reached."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner
from hypothesis import given, settings

from fuzzcache.cli import main
from fuzzcache.contract import LIFECYCLE, EngineConfig, PoolAccount, Request
from fuzzcache.coverage import take
from fuzzcache.findings import Finding
from fuzzcache.oracle import greedy_continuation
from fuzzcache.properties.engine_level import check_trace
from fuzzcache.scenario import TraceScenario
from fuzzcache.targets.reference import ReferenceTarget
from fuzzcache.strategies.engine import target_trace_scenarios

TARGET = ReferenceTarget()


def greedy(prompt, n):
    return greedy_continuation(TARGET.reference_logits, prompt, n)[0]


def run(requests, **config):
    return TARGET.generate(requests, EngineConfig(**config))


# ---- the reference engine ---------------------------------------------------------------------


@pytest.mark.parametrize("config", [{}, {"spec_k": 3}, {"block_size": 1, "prefix_cache": True}])
def test_a_stop_token_ends_the_request_at_its_first_occurrence(config):
    prompt = (0, 1, 2)
    full = greedy(prompt, 8)
    for i, token in enumerate(full):
        out = run([Request(0, prompt, 8, stop=(token,))], **config)[0]
        first = full.index(token)
        assert out.tokens == full[: first + 1] and out.logits.shape[0] == first + 1, (i, config)
    assert TARGET.last_pool.leaked == 0


def test_an_abort_ends_the_request_in_each_phase_and_frees_its_blocks():
    prompt = (3,) * 5
    full = greedy(prompt, 4)
    phases = {}
    for abort_at in range(0, 12):
        out = run([Request(0, prompt, 4, arrival=1, abort_at=abort_at + 1), Request(1, (5, 6), 6)], chunk_size=2, block_size=2)
        assert out[0].tokens == full[: len(out[0].tokens)]  # a prefix of the greedy continuation
        assert out[1].tokens == greedy((5, 6), 6)  # the other request is unaffected
        phases[abort_at] = out[0].stats.get("abort_phase", 0)
        assert TARGET.last_pool.leaked == 0 and TARGET.last_pool.free + TARGET.last_pool.cached == TARGET.last_pool.total
    # arrival 1, aborted at its arrival: before prefill; 2 prompt tokens a step: during (steps 2, 3); then after; then ended
    assert phases[0] == 1 and phases[1] == 2 and phases[2] == 2 and phases[3] == 3 and phases[11] == 0


def test_n_continuations_share_the_prompts_blocks_and_each_equals_the_oracle():
    prompt = (7,) * 5
    for config in ({"block_size": 4}, {"block_size": 4, "spec_k": 2}, {"block_size": 2, "num_blocks": 6}, {"max_num_seqs": 1}):
        out = run([Request(0, prompt, 6, n=3)], **config)[0]
        assert [out.tokens] + [f.tokens for f in out.forks] == [greedy(prompt, 6)] * 3, config
        assert TARGET.last_pool.leaked == 0
    assert TARGET.last_stats["forks"] == 2


def test_forks_copy_a_shared_block_before_writing_into_it():
    from fuzzcache.engine.scheduler import Scheduler

    copies = []

    class Counting(Scheduler):
        def prepare(self, work):
            copies.extend(self.shared_blocks_written(work))
            super().prepare(work)

    scheduler = Counting(TARGET.model, EngineConfig(block_size=4), [Request(0, (1, 2, 3), 3, n=2)])
    out = scheduler.run()[0]
    assert copies == [0]  # the first to write into the prompt's partial block copies it; the other then holds it alone
    assert out.tokens == out.forks[0].tokens == greedy((1, 2, 3), 3)
    assert scheduler.pool_account.leaked == 0


def test_defaults_keep_the_old_behaviour():
    r = Request(0, (1, 2), 3)
    assert (r.stop, r.abort_at, r.n) == ((), None, 1)
    out = run([r])[0]
    assert out.tokens == greedy((1, 2), 3) and out.forks == [] and "abort_phase" not in out.stats


def test_the_contract_rejects_bad_lifecycle_fields():
    for bad, why in (({"stop": (999,)}, "stop token outside vocab"), ({"abort_at": 0, "arrival": 1}, "before its arrival"),
                     ({"n": 0}, "n=0")):
        with pytest.raises(ValueError, match=why):
            run([Request(0, (1,), 2, **bad)])


# ---- the checks -------------------------------------------------------------------------------


class Broken(ReferenceTarget):
    """The reference engine with its completions edited after the fact."""

    def __init__(self, edit):
        super().__init__(name="broken")
        self.edit = edit

    def generate(self, requests, config):
        out = super().generate(requests, config)
        self.edit(out)
        return out


def finding(target, *requests, **config):
    with pytest.raises(Finding) as raised:
        check_trace(target, TraceScenario(tuple(requests), EngineConfig(**config)))
    return raised.value


def test_each_broken_lifecycle_rule_is_a_finding():
    full = greedy((0,), 4)
    stop = Request(0, (0,), 4, stop=(full[1],))

    def go_past_stop(out):
        out[0].tokens.append(full[2])
        out[0].logits = out[0].logits[[0, 1, 1]]

    assert finding(Broken(go_past_stop), stop).kind == "contract"
    assert "went on past stop token" in finding(Broken(go_past_stop), stop).message

    def end_early(out):
        del out[0].tokens[-1]
        out[0].logits = out[0].logits[:-1]

    kept = stop.expected_length(full) - 1  # the stop token cut off: the continuation ends early, on no stop token
    assert f": {kept} tokens, max_new_tokens=4" in finding(Broken(end_early), stop).message
    assert finding(Broken(lambda out: out[0].forks.pop()), Request(0, (0,), 2, n=3)).message.endswith("2 continuations, n=3")

    def wrong_fork(out):
        out[0].forks[0].tokens[1] = (out[0].forks[0].tokens[1] + 1) % 64

    assert finding(Broken(wrong_fork), Request(0, (0,), 2, n=2)).kind == "mismatch"

    class Leaky(ReferenceTarget):  # one block of the pool not accounted free after the trace
        def generate(self, requests, config):
            out = super().generate(requests, config)
            self.last_pool = dataclasses.replace(self.last_pool, free=self.last_pool.free - 1)
            return out

    leaky = Leaky(name="leaky")
    found = finding(leaky, Request(0, (0,), 2))
    assert found.kind == "leak" and found.message.startswith("1 of ")


def test_an_aborted_request_may_stop_anywhere_but_must_follow_the_oracle():
    def cut(out):
        del out[0].tokens[1:]
        out[0].logits = out[0].logits[:1]

    check_trace(Broken(cut), TraceScenario((Request(0, (0,), 4, abort_at=99),), EngineConfig()))  # a prefix: fine

    def wrong(out):
        out[0].tokens[0] = (out[0].tokens[0] + 1) % 64

    assert finding(Broken(wrong), Request(0, (0,), 4, abort_at=99)).kind == "mismatch"


def test_cached_blocks_are_not_a_leak():
    assert PoolAccount(total=8, free=5, cached=3).leaked == 0
    assert PoolAccount(total=8, free=5, cached=2).leaked == 1


# ---- strategies and reports -------------------------------------------------------------------


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(target_trace_scenarios(TARGET))
def test_the_reference_passes_lifecycle_traces(scenario):
    check_trace(TARGET, scenario)


def test_lifecycle_paths_are_reached_and_counted():
    take()

    @settings(max_examples=150, deadline=None, database=None, derandomize=True)
    @given(target_trace_scenarios(TARGET))
    def reach(scenario):
        check_trace(TARGET, scenario)

    reach()
    paths = take()
    for path in ("early stop", "abort before prefill", "abort during prefill", "abort after prefill", "fork", "leak check"):
        assert paths[path] > 0, (path, paths)


def test_strategies_draw_only_the_lifecycle_a_target_declares():
    bare = ReferenceTarget(name="bare")
    bare.features = bare.features - LIFECYCLE
    seen = []

    @settings(max_examples=80, deadline=None, database=None, derandomize=True)
    @given(target_trace_scenarios(bare))
    def draw(scenario):
        seen.extend(scenario.requests)

    draw()
    assert seen and all(r.stop == () and r.abort_at is None and r.n == 1 for r in seen)
    take()
    check_trace(bare, TraceScenario((Request(0, (1,), 1),), EngineConfig()))
    assert take()["fork not expressible on this target (never drawn)"] == 1


def test_list_names_what_each_target_cannot_express():
    out = CliRunner().invoke(main, ["list"]).output
    reference_line = next(line for line in out.splitlines() if line.strip().startswith("reference "))
    assert "cannot express" not in reference_line and "fork" in reference_line


def test_short_form_shows_the_lifecycle():
    s = TraceScenario((Request(0, (0,), 2, arrival=1, stop=(5, 7), abort_at=3, n=2),), EngineConfig())
    assert s.short().strip() == "[prompt=1 new=2 n=2 stop=[5,7] abort=3 at=1]"
