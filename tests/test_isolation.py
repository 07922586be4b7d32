"""Targets in a worker process (``fuzzcache.isolation``): a target that kills its own process is
a ``crash`` finding with the signal, shrunk to its trigger, and the campaign goes on; a stuck
target is a ``hang`` and its worker is killed, from any thread; replay and pytest work through
it; a correct target behaves exactly as in-process. The targets are in isolation_targets.py."""

from __future__ import annotations

import json
import os
import threading

import pytest
import torch
from click.testing import CliRunner
from hypothesis import settings

from fuzzcache import corpus, guard, runner
from fuzzcache.campaign import run_campaign
from fuzzcache.cli import main
from fuzzcache.contract import EngineConfig, Request
from fuzzcache.findings import Finding, crash_site, signature
from fuzzcache.guard import Unsupported, call_target
from fuzzcache.isolation import IsolatedTarget
from fuzzcache.properties import get
from fuzzcache.scenario import TraceScenario
from fuzzcache.targets import UnknownTarget, resolve_target

ABORTS = "isolation_targets:AbortsOnToken7"
SLEEPS = "isolation_targets:SleepsOnToken5"
TRACE = get("engine.trace")
pytest_plugins = ["pytester"]


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def aborts():
    target = resolve_target(ABORTS)  # the class sets isolate = True
    yield target
    target.close()


@pytest.mark.slow
def test_an_abort_is_a_crash_with_its_signal_shrunk_to_its_trigger_and_the_campaign_goes_on(tmp_path, aborts):
    assert isinstance(aborts, IsolatedTarget)
    other = get("kv.recompute")
    base = settings(max_examples=100, deadline=None, database=None)
    # the other property first: the crash's shrinking runs past its slice whatever the budget, and
    # on a loaded machine it may spend what is left of the campaign
    result = run_campaign(aborts, ABORTS, [other, TRACE], 12.0, base, tmp_path / "corpus", None)
    assert not result.interrupted
    (saved,) = result.totals[TRACE.id].found
    assert saved.kind == "crash" and "killed by SIGABRT" in saved.message, saved.message
    (request,) = saved.scenario.requests  # shrunk and minimized to the trigger: 7 and two zeros, in any order
    assert sorted(request.prompt) == [0, 0, 7] and request.max_new_tokens == 1, saved.scenario
    record = json.loads(saved.path.read_text())
    assert record["divergence"]["signal"] == "SIGABRT" and record["divergence"]["exitcode"] == -6
    assert "GGML_ASSERT(token != 7) failed" in record["divergence"]["stderr_tail"]
    assert "isolation_targets.py" in record["traceback"] and record["traceback"].endswith("SIGABRT: the worker process died")
    # the other property, which the crash never touched, passes, and the target serves it after the crash
    assert result.totals[other.id].examples > 0 and not result.totals[other.id].errors and not result.totals[other.id].found
    assert aborts.worker_starts > 2  # a fresh worker after every abort
    after = runner.run_property(other, aborts, ABORTS, settings(base, max_examples=5), tmp_path / "after")
    assert after.examples > 0 and not after.found and after.error is None


def test_crashes_group_by_signal_and_site(aborts):
    crash = Request(0, (1, 2, 7), 1)
    with pytest.raises(Finding) as first:
        call_target("aborts.generate", aborts.generate, [crash], EngineConfig())
    with pytest.raises(Finding) as again:
        call_target("aborts.generate", aborts.generate, [Request(3, (7, 7, 7, 7), 2)], EngineConfig())
    assert signature("engine.trace", first.value) == signature("engine.trace", again.value)
    assert crash_site(first.value)[1] == "SIGABRT"
    assert call_target("aborts.generate", aborts.generate, [Request(0, (1, 2), 1)], EngineConfig())[0].tokens  # restarted


@pytest.mark.parametrize("in_thread", [False, True], ids=["main-thread", "other-thread"])
def test_a_stuck_target_is_a_hang_and_its_worker_is_killed_in_any_thread(monkeypatch, in_thread):
    monkeypatch.setattr(guard, "TIME_LIMIT_S", 1.0)
    target = resolve_target(SLEEPS)
    stuck = target.worker_pid
    outcome: list = []

    def call():
        try:
            call_target("sleeps.generate", target.generate, [Request(0, (5,), 1)], EngineConfig())
        except Finding as f:
            outcome.append(f)

    if in_thread:
        thread = threading.Thread(target=call)
        thread.start()
        thread.join(timeout=30)
    else:
        call()
    (finding,) = outcome
    assert finding.kind == "hang" and "sleeps.generate made no progress within 1s" in finding.message
    assert not alive(stuck)
    assert call_target("sleeps.generate", target.generate, [Request(0, (1,), 1)], EngineConfig())[0].tokens
    assert target.worker_pid != stuck
    target.close()


@pytest.mark.slow
def test_a_hang_in_a_fuzz_run_outside_the_main_thread_is_found(tmp_path, monkeypatch):
    """SIGALRM only works in the main thread; a worker process is timed by the pipe."""
    monkeypatch.setattr(guard, "TIME_LIMIT_S", 0.3)  # some 30x the slowest legitimate generate here, under load
    monkeypatch.setattr(runner, "RERUNS", 0)  # each hanging example costs the whole limit
    target = resolve_target(SLEEPS)
    out: list = []
    thread = threading.Thread(target=lambda: out.append(runner.run_property(TRACE, target, SLEEPS, settings(max_examples=50, deadline=None, database=None), tmp_path)))
    thread.start()
    thread.join(timeout=120)
    (run,) = out
    assert [(s.kind, s.scenario.requests) for s in run.found] == [("hang", (Request(0, (5,), 1),))], (run.found, run.error)
    target.close()


def trace_with(prompt) -> TraceScenario:
    return TraceScenario((Request(0, tuple(prompt), 1),), EngineConfig())


def test_a_saved_abort_replays_through_a_worker_process(tmp_path):
    crash = Finding("crash", "saved", {"signal": "SIGABRT"})
    path, _ = corpus.save(tmp_path / "corpus", ABORTS, TRACE.id, trace_with((0, 0, 7)), crash)
    finding = runner.replay(corpus.load(path))
    assert finding.kind == "crash" and finding.details["signal"] == "SIGABRT"
    result = CliRunner().invoke(main, ["replay", str(path)], catch_exceptions=False)
    assert result.exit_code == 1 and "FAILS" in result.output and "killed by SIGABRT" in result.output, result.output
    fixed, _ = corpus.save(tmp_path / "corpus", ABORTS, TRACE.id, trace_with((0, 0, 1)), crash)
    assert runner.replay(corpus.load(fixed)) is None


@pytest.mark.slow
def test_pytest_collects_an_aborting_corpus_file_and_survives_it(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    crash = Finding("crash", "saved", {"signal": "SIGABRT"})
    corpus.save(pytester.path / "corpus", ABORTS, TRACE.id, trace_with((0, 0, 7)), crash)
    corpus.save(pytester.path / "corpus", ABORTS, TRACE.id, trace_with((0, 0, 1)), crash)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*still fails: [[]crash[]]*killed by SIGABRT*"])


def test_a_correct_target_gives_the_same_results_in_a_worker_process():
    s = settings(max_examples=25, deadline=None, database=None, derandomize=True)
    isolated = resolve_target("reference", isolate=True)
    local = resolve_target("reference")
    runs = [runner.run_property(TRACE, t, "reference", s, corpus_dir=None) for t in (local, isolated)]
    assert [r.found for r in runs] == [[], []] and runs[0].examples == runs[1].examples
    assert runs[0].paths == runs[1].paths  # the same paths reached: last_stats comes back with every call
    requests, config = [Request(0, (1, 2, 3), 4), Request(1, (4, 5), 3, arrival=1)], EngineConfig(block_size=2, num_blocks=8)
    for a, b in zip(local.generate(requests, config), isolated.generate(requests, config)):
        assert a.tokens == b.tokens and torch.equal(a.logits, b.logits) and a.stats == b.stats
    assert isolated.last_stats == local.last_stats
    isolated.close()


def test_the_proxy_forwards_attributes_and_classifies_exceptions_as_in_process(monkeypatch):
    local, isolated = resolve_target("mutant:kv_append_drops_oldest_past_16"), resolve_target("mutant:kv_append_drops_oldest_past_16", isolate=True)
    for name in ("name", "vocab_size", "max_seq_len", "features", "dtype", "device", "ops"):
        assert getattr(isolated, name) == getattr(local, name), name
    assert not hasattr(isolated, "min_block_size") and not hasattr(isolated, "no_such_attribute")
    assert get("kv.recompute").applies_to(isolated)  # op-level properties take the ops across
    with pytest.raises(Unsupported, match="EngineConfig.block_size"):
        call_target("m.generate", isolated.generate, [Request(0, (1,), 1)], EngineConfig(block_size=0))
    with pytest.raises(Finding, match=r"\[crash\] m.generate raised ValueError: request rid=0: empty prompt") as crash:
        call_target("m.generate", isolated.generate, [Request(0, (), 1)], EngineConfig())
    assert "contract.py" in crash_site(crash.value)[0]  # the worker's own traceback
    isolated.close()
    assert call_target("m.generate", isolated.generate, [Request(0, (1,), 1)], EngineConfig())  # a closed proxy starts a worker again
    isolated.close()


def test_how_isolation_is_asked_for(monkeypatch):
    assert not isinstance(resolve_target(ABORTS, isolate=False), IsolatedTarget)
    assert not isinstance(resolve_target("reference"), IsolatedTarget)
    monkeypatch.setenv("FUZZCACHE_ISOLATE", "1")
    target = resolve_target("reference")
    assert isinstance(target, IsolatedTarget)
    target.close()
    monkeypatch.setenv("FUZZCACHE_ISOLATE", "0")
    assert not isinstance(resolve_target(ABORTS), IsolatedTarget)
    with pytest.raises(UnknownTarget, match="unknown target 'nope'"):
        resolve_target("nope", isolate=True)
