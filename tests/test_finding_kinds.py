"""Every finding kind, end to end: a toy target with one planted misbehaviour is fuzzed with
``engine.trace`` through ``run_property``; the finding has the right kind and message, its
scenario is shrunk to the smallest input that still shows the misbehaviour, and exactly one
corpus file records it. Config refusals naming an ``EngineConfig`` field are not findings.

The toys wrap the reference engine on a tiny model and declare only the features their bug
needs, so Hypothesis draws (and shrinks) small configs and each run takes a second or two."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from fuzzcache import EngineError, corpus, guard, runner
from fuzzcache.model import ModelConfig
from fuzzcache.properties import PROPERTIES
from fuzzcache.runner import PropertyRun, run_property
from fuzzcache.scenario import TraceScenario, to_jsonable
from fuzzcache.targets.reference import ReferenceTarget

SMALL = ModelConfig(vocab_size=32, n_layer=1, n_head=2, n_kv_head=1, head_dim=4, max_seq_len=16)
TRACE = PROPERTIES["engine.trace"]
RECORD_KEYS = {"kind", "scenario", "property", "target", "schema", "versions", "date"}


class Toy(ReferenceTarget):
    """The reference engine on a tiny model, declaring only ``FEATURES``; subclasses plant a bug."""

    FEATURES: frozenset[str] = frozenset()

    def __init__(self):
        super().__init__(SMALL, name=type(self).__name__)
        self.features = self.FEATURES


def fuzz(target, corpus_dir: Path, max_examples: int = 30) -> PropertyRun:
    s = settings(max_examples=max_examples, deadline=None, database=None, derandomize=True)
    return run_property(TRACE, target, target.name, s, corpus_dir=corpus_dir)


def only_finding(run: PropertyRun, corpus_dir: Path, kind: str):
    """The run's single finding, checked against the single corpus file it wrote."""
    assert run.error is None
    assert len(run.found) == 1, run.found
    saved = run.found[0]
    assert saved.kind == kind, saved.message
    assert saved.property == "engine.trace"
    assert isinstance(saved.scenario, TraceScenario)
    files = [p for p in corpus_dir.rglob("*") if p.is_file()]
    assert files == [saved.path], files
    assert saved.new
    record = json.loads(saved.path.read_text())
    assert saved.path.parent == corpus_dir / record["target"] / "engine.trace"
    assert saved.path.name == f"{corpus.PREFIXES[kind]}-{corpus.case_hash(record['target'], 'engine.trace', saved.scenario)}.json"
    assert RECORD_KEYS <= set(record)
    assert record["kind"] == kind
    assert record["property"] == "engine.trace"
    assert record["schema"] == corpus.SCHEMA_VERSION
    assert record["message"] == saved.message
    assert record["scenario"] == to_jsonable(saved.scenario)
    assert {"fuzzcache", "torch", "hypothesis"} <= set(record["versions"])
    case = corpus.load(saved.path)  # the file reads back as the very scenario that failed
    assert case.scenario == saved.scenario and case.kind == kind and case.target == record["target"]
    return saved, record


def replays_as(target, saved, kind: str) -> None:
    """The saved case, run again on the same target, fails the same way."""
    again = runner.replay(corpus.load(saved.path), target)
    assert again is not None and again.kind == kind, again


# --- crash -------------------------------------------------------------------------------


class PoolExhausted(Toy):
    """Crashes as a real engine did on two 1-token prompts sharing a small pool."""

    FEATURES = frozenset({"paged", "preemption"})

    def generate(self, requests, config):
        if len(requests) >= 2 and config.num_blocks is not None:
            raise RuntimeError("Block pool exhausted")
        return super().generate(requests, config)


def test_crash_is_found_shrunk_and_saved(tmp_path):
    target = PoolExhausted()
    saved, record = only_finding(fuzz(target, tmp_path), tmp_path, "crash")
    assert "RuntimeError: Block pool exhausted" in saved.message
    assert record["target"] == "PoolExhausted"
    assert "Block pool exhausted" in record["traceback"]
    s = saved.scenario
    assert s.config.num_blocks is not None
    # Shrunk to the real engine's trigger: exactly two requests, each the smallest one (a
    # 1-token prompt, one new token (the shrink target of max_new_tokens), at step 0).
    assert len(s.requests) == 2
    assert all(r.prompt == (0,) and r.max_new_tokens == 1 and r.arrival == 0 for r in s.requests)
    replays_as(target, saved, "crash")


# --- engine_error --------------------------------------------------------------------------


class FailsTheBatch(Toy):
    """Its engine reports every request of a step failed when two requests share the pool (as
    transformers' continuous batching fails the rest of the batch on a scheduling error)."""

    FEATURES = frozenset({"paged", "preemption"})

    def generate(self, requests, config):
        if len(requests) >= 2 and config.num_blocks is not None:
            raise EngineError(f"request {requests[0].rid} could not be scheduled; failed the {len(requests)} requests of its batch")
        return super().generate(requests, config)


def test_engine_reported_failure_is_its_own_kind(tmp_path):
    target = FailsTheBatch()
    saved, record = only_finding(fuzz(target, tmp_path), tmp_path, "engine_error")
    assert saved.message == "FailsTheBatch.generate: request 0 could not be scheduled; failed the 2 requests of its batch"
    assert len(saved.scenario.requests) == 2 and saved.scenario.config.num_blocks is not None
    replays_as(target, saved, "engine_error")


# --- hang ----------------------------------------------------------------------------------


class SpinsOnPrefixCache(Toy):
    """Livelocks when prefix caching is on and a prompt has two tokens or more. Its max_seq_len
    of 10 keeps drawn prompts at 1 or 2 tokens (room is left for 8 new tokens), so shrinking
    runs few hanging examples, each of which costs the full time limit."""

    FEATURES = frozenset({"prefix_cache"})

    def __init__(self):
        ReferenceTarget.__init__(self, dataclasses.replace(SMALL, max_seq_len=10), name="SpinsOnPrefixCache")
        self.features = self.FEATURES

    def generate(self, requests, config):
        if config.prefix_cache and any(len(r.prompt) >= 2 for r in requests):
            while True:
                pass
        return super().generate(requests, config)


def test_hang_is_found_within_the_time_limit_and_saved(tmp_path, monkeypatch):
    monkeypatch.setattr(guard, "TIME_LIMIT_S", 0.2)  # some 40x the slowest legitimate generate here
    # Every hanging example costs the full limit and shrinking runs a couple of dozen of them,
    # so no reruns here (the nondeterminism test below covers them): this keeps the test short.
    monkeypatch.setattr(runner, "RERUNS", 0)
    target = SpinsOnPrefixCache()
    run = fuzz(target, tmp_path)
    saved, record = only_finding(run, tmp_path, "hang")
    assert run.seconds < 60  # it returned, in bounded time: a spinning target does not stall the campaign
    assert "SpinsOnPrefixCache.generate made no progress within 0.2s" in saved.message
    assert record["divergence"] == {"limit_s": 0.2}
    s = saved.scenario
    assert s.config.prefix_cache is True
    (req,) = s.requests
    assert req.prompt == (0, 0) and req.max_new_tokens == 1 and req.arrival == 0
    replays_as(target, saved, "hang")


# --- contract ------------------------------------------------------------------------------


class TokenForNothing(Toy):
    """Returns one token for a request that asked for none."""

    def generate(self, requests, config):
        out = super().generate(requests, config)
        for r, c in zip(requests, out):
            if r.max_new_tokens == 0:
                c.tokens = [0]
        return out


class NaNLogits(Toy):
    """Right tokens, but the logits it says it chose them from are all NaN."""

    def generate(self, requests, config):
        out = super().generate(requests, config)
        for c in out:
            c.logits = torch.full((len(c.tokens), self.vocab_size), float("nan"))
        return out


class DropsLastCompletion(Toy):
    """One completion short."""

    def generate(self, requests, config):
        return super().generate(requests, config)[:-1]


def test_tokens_for_max_new_tokens_zero_is_a_contract_finding(tmp_path):
    target = TokenForNothing()
    saved, _ = only_finding(fuzz(target, tmp_path), tmp_path, "contract")
    assert "1 tokens, max_new_tokens=0" in saved.message
    (req,) = saved.scenario.requests
    assert req.max_new_tokens == 0 and req.prompt == (0,)
    replays_as(target, saved, "contract")


def test_nan_logits_are_a_contract_finding(tmp_path):
    target = NaNLogits()
    saved, record = only_finding(fuzz(target, tmp_path), tmp_path, "contract")
    assert saved.message == "request 0: NaN/inf logits at step 0"
    assert record["divergence"] == {"rid": 0, "step": 0}
    (req,) = saved.scenario.requests
    assert req.max_new_tokens == 1 and req.prompt == (0,)  # the fewest tokens that carry logits
    replays_as(target, saved, "contract")


def test_wrong_number_of_completions_is_a_contract_finding(tmp_path):
    target = DropsLastCompletion()
    saved, _ = only_finding(fuzz(target, tmp_path), tmp_path, "contract")
    assert saved.message == "generate returned 0 completions for 1 requests"
    (req,) = saved.scenario.requests
    assert req.prompt == (0,) and req.max_new_tokens == 1  # the shrink target
    replays_as(target, saved, "contract")


# --- nondeterministic ----------------------------------------------------------------------


class Flaky(Toy):
    """Every other call that produces tokens gets the last token of each completion wrong."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def generate(self, requests, config):
        out = super().generate(requests, config)
        if any(c.tokens for c in out):
            self.calls += 1
            if self.calls % 2:
                for c in out:
                    if c.tokens:
                        c.tokens[-1] = (c.tokens[-1] + 1) % self.vocab_size
        return out


def test_a_target_that_disagrees_with_itself_is_nondeterministic(tmp_path):
    target = Flaky()
    saved, _ = only_finding(fuzz(target, tmp_path), tmp_path, "nondeterministic")
    # wrong, right, wrong: the first run's mismatch is not repeatable, so not a mismatch finding
    assert saved.message.startswith("the same input gave ['mismatch', None, 'mismatch'] on 3 runs; first: request ")
    assert any(r.max_new_tokens > 0 for r in saved.scenario.requests)
    assert target.calls >= 3


# --- not a finding -------------------------------------------------------------------------


class NoSpeculation(Toy):
    """Declares speculation but refuses any ``spec_k`` up front, naming the field."""

    FEATURES = frozenset({"speculative"})
    REFUSAL = "EngineConfig.spec_k: speculative decoding not supported"

    def __init__(self):
        super().__init__()
        self.served = self.refused = 0

    def generate(self, requests, config):
        if config.spec_k > 0:
            self.refused += 1
            raise ValueError(self.REFUSAL)
        self.served += 1
        return super().generate(requests, config)


class UnrelatedValueError(NoSpeculation):
    REFUSAL = "something unrelated"


def test_refusing_a_config_field_up_front_is_not_a_finding(tmp_path):
    target = NoSpeculation()
    run = fuzz(target, tmp_path, max_examples=15)
    assert run.error is None
    assert run.found == []
    assert target.refused > 0 and target.served > 0  # both paths were really taken
    assert run.paths["config rejected by target"] == target.refused
    assert not any(tmp_path.rglob("*.json"))


def test_a_value_error_not_naming_a_config_field_is_a_crash(tmp_path):
    target = UnrelatedValueError()
    saved, _ = only_finding(fuzz(target, tmp_path), tmp_path, "crash")
    assert "ValueError: something unrelated" in saved.message
    assert saved.scenario.config.spec_k == 1
    assert len(saved.scenario.requests) == 1
    replays_as(target, saved, "crash")



def test_a_crash_in_the_same_package_line_of_two_environments_is_one_failure():
    """A corpus file found in one virtual environment is recognised in another (vLLM's own venv vs CI's)."""
    from fuzzcache.findings import Finding, crash_site, signature

    def crash(path: str, line: int = 1372) -> Finding:
        tb = f'Traceback (most recent call last):\n  File "{path}", line {line}, in schedule\n    assert ok\nAssertionError\n'
        return Finding("crash", "boom", {"traceback": tb})

    here = crash("/tmp/a/.venv-vllm/lib/python3.11/site-packages/vllm/v1/core/sched/scheduler.py")
    there = crash("/opt/ci/venv/lib/python3.12/site-packages/vllm/v1/core/sched/scheduler.py")
    assert signature("engine.trace", here) == signature("engine.trace", there)
    assert crash_site(here)[0] == 'File "vllm/v1/core/sched/scheduler.py", line 1372, in schedule'
    assert signature("engine.trace", here) != signature("engine.trace", crash("/x/site-packages/vllm/v1/core/sched/scheduler.py", 1373))
