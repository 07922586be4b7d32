"""HF transformers as a target (hf:<arch>): every path agrees with the oracle on fixed traces, the
request lifecycle (stop tokens, aborts by phase, forks, the pool account) maps onto continuous
batching, a bounded fuzz run of every applicable property on hf:llama finds nothing but triaged
upstream bugs, and planted bugs in wrapped transformers paths are caught and shrunk."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from fuzzcache import EngineConfig, Request
from fuzzcache.corpus import load
from fuzzcache.findings import Finding
from fuzzcache.known_bugs import claim
from fuzzcache.properties import PROPERTIES
from fuzzcache.runner import run_property
from fuzzcache.scenario import TraceScenario
from fuzzcache.targets import UnknownTarget, resolve_target
from fuzzcache.targets.hf import PATHS, HFTarget

from bounded import assert_only_triaged_findings

import transformers  # noqa: F401,E402  (the hf extra is part of the test set-up, never skipped: pip install -e '.[test]')

pytestmark = pytest.mark.engine

ARCHS = ("llama", "mistral", "qwen2", "phi", "gemma3")
BOUNDED = settings(max_examples=20, deadline=None, database=None, derandomize=True)
FIND = settings(max_examples=300, deadline=None, database=None, derandomize=True)
TRACE = (
    Request(0, (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13), 6),
    Request(1, (1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2), 5, arrival=1),
    Request(2, (7, 7), 3),
    Request(3, (5,), 0),
)


@pytest.fixture(scope="module", params=ARCHS)
def hf(request) -> HFTarget:
    return resolve_target(f"hf:{request.param}")


def greedy(target, prompt, n) -> list[int]:
    tokens = list(prompt)
    for _ in range(n):
        tokens.append(int(target.reference_logits(tokens)[-1].argmax()))
    return tokens[len(prompt) :]


def test_features_are_declared_honestly(hf):
    assert hf.features <= {"batching", "paged", "prefix_cache", "chunked_prefill", "speculative", "preemption", "stop", "abort", "fork"}
    assert {"stop", "abort", "fork"} <= hf.features  # continuous batching expresses all three
    assert "interleave" not in hf.features  # continuous batching always fuses; there is no knob to compare against
    assert ("prefix_cache" in hf.features) == (hf.window is None)  # no block sharing for sliding-window layers
    assert hf.min_block_size == 4


@pytest.mark.parametrize("path", PATHS)
def test_every_path_equals_the_oracle(hf, path):
    config = EngineConfig(block_size=4, num_blocks=8, prefix_cache="prefix_cache" in hf.features, chunk_size=3, spec_k=2, max_batch_tokens=6)
    out = hf.generate_via(path, TRACE, config)
    assert [c.rid for c in out] == [r.rid for r in TRACE]
    for req, comp in zip(TRACE, out):
        assert comp.tokens == greedy(hf, req.prompt, req.max_new_tokens), (path, req.rid)
        assert comp.logits is not None and tuple(comp.logits.shape) == (req.max_new_tokens, hf.vocab_size)
        if comp.tokens:
            oracle = hf.reference_logits(list(req.prompt) + comp.tokens)[len(req.prompt) - 1 : -1]  # (n, V)
            assert (comp.logits - oracle).abs().max() < 1e-4, (path, req.rid)


def test_routing_follows_the_config_and_says_what_it_cannot_express():
    path, ignored = HFTarget.path_for, HFTarget.ignored_fields
    assert path(TRACE[:1], EngineConfig()) == "single"
    assert path(TRACE[2:], EngineConfig(chunk_size=2)) == "batched"
    assert path(TRACE, EngineConfig()) == "continuous"  # request 1 arrives at step 1
    assert path(TRACE, EngineConfig(chunk_size=2)) == "batched"  # a chunk size only generate honours
    assert ignored("batched", TRACE, EngineConfig(chunk_size=2)) == ("arrival",)
    assert path(TRACE[2:], EngineConfig(num_blocks=4)) == "continuous"
    assert ignored("continuous", TRACE, EngineConfig(num_blocks=9, chunk_size=2)) == ("chunk_size",)
    assert path(TRACE, EngineConfig(spec_k=1)) == "speculative"
    assert ignored("speculative", TRACE, EngineConfig(spec_k=1, prefix_cache=True)) == ("arrival", "prefix_cache")
    lifecycle = (Request(0, (1, 2), 3, abort_at=2), Request(1, (3,), 2, n=2, stop=(5,)))
    assert path(lifecycle[:1], EngineConfig()) == path(lifecycle[1:], EngineConfig()) == "continuous"  # aborts and forks are exact there
    assert ignored("continuous", lifecycle, EngineConfig()) == ()
    assert ignored("batched", lifecycle, EngineConfig(chunk_size=2)) == ("abort_at", "n")  # run to the end; n independent rows
    assert path((Request(0, (1, 2), 3, stop=(5,)),), EngineConfig()) == "single"  # every path honours stop tokens


def test_speculative_configs_come_alone():
    """exclusive_features: the strategy never pairs drafts with what assisted generation ignores."""
    from hypothesis import given

    from fuzzcache.strategies.engine import target_trace_scenarios

    target, seen = resolve_target("hf:llama"), set()

    @given(target_trace_scenarios(target))
    @settings(max_examples=150, database=None, derandomize=True)
    def drafts_alone(s):
        c = s.config
        seen.add(c.spec_k > 0)
        if c.spec_k:
            assert c.num_blocks is None and c.max_batch_tokens is None and not c.prefix_cache and c.chunk_size is None

    drafts_alone()
    assert seen == {True, False}


def test_continuous_batching_reuses_prefixes_and_preempts():
    target = resolve_target("hf:llama")
    shared = tuple(range(1, 9))
    out = target.generate([Request(0, shared + (9,), 2), Request(1, shared + (10,), 2, arrival=3)], EngineConfig(block_size=4, prefix_cache=True))
    assert out[1].stats["cached_prefix_tokens"] == 8
    many = [Request(i, tuple(range(1 + i, 9 + i)), 12) for i in range(3)]  # admitted together, they outgrow 5 blocks
    out = target.generate(many, EngineConfig(block_size=4, num_blocks=5))
    assert target.last_stats["preemptions"] > 0
    assert [c.tokens for c in out] == [greedy(target, r.prompt, 12) for r in many]


def test_dynamic_rope_target_does_not_depend_on_earlier_calls():
    """hf:llama-dynamic resets its stateful rotary before every call: a long call (which grows
    transformers' frequencies) does not change the next call's result."""
    target = resolve_target("hf:llama-dynamic")
    short = [Request(0, (1, 2, 3), 4)]
    before = target.generate(short, EngineConfig())[0].logits
    target.reference_logits(list(range(40)))  # past the original 16 positions
    target.generate([Request(0, tuple(range(1, 30)), 8)], EngineConfig())
    assert torch.equal(target.generate(short, EngineConfig())[0].logits, before)
    assert torch.equal(target.reference_logits([1, 2, 3]), resolve_target("hf:llama-dynamic").reference_logits([1, 2, 3]))


def test_dynamic_rope_divergence_is_classified_by_design_not_reported():
    target = resolve_target("hf:llama-dynamic")
    long, short = (Request(0, tuple(range(1, 11)), 7),), (Request(0, tuple(range(1, 11)), 6),)
    assert target.divergence_by_design(long) == "dynamic RoPE past its original 16 positions"
    assert target.divergence_by_design(short) is None and resolve_target("hf:llama").divergence_by_design(long) is None
    padded = (Request(0, (1,), 8), Request(1, tuple(range(1, 11)), 1))  # batched: 10 + 8 positions
    assert target.divergence_by_design(padded) is not None
    PROPERTIES["paths.batched"].check(target, TraceScenario(padded, EngineConfig()))
    scenario = TraceScenario(long, EngineConfig())
    out = target.generate(long, EngineConfig())[0]
    oracle = target.reference_logits(list(long[0].prompt) + out.tokens)[9:-1]
    assert (out.logits - oracle).abs().max() > 1e-2  # it does diverge ...
    PROPERTIES["engine.trace"].check(target, scenario)  # ... and the property does not call that a bug


def test_a_failing_engine_step_is_an_engine_error_and_no_progress_a_timeout():
    from fuzzcache.contract import EngineError
    from fuzzcache.targets.hf.continuous import SteppedResult

    target = resolve_target("hf:llama")
    config = EngineConfig(block_size=4, num_blocks=8)
    hook = target.cb_model.model.register_forward_pre_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("kernel failed")))
    try:
        with pytest.raises(EngineError, match=r"continuous batching step 0 failed, failing the 2 unfinished request\(s\): RuntimeError: kernel failed"):
            target.generate(TRACE[:2], config)
    finally:
        hook.remove()
    target.generate(TRACE[:2], config)  # the model is fine again
    from fuzzcache.targets.hf import continuous as hf_continuous
    from fuzzcache.targets.hf import quiet_transformers

    with pytest.raises(TimeoutError, match="no progress: 1 request"), quiet_transformers():
        hf_continuous.stepped_generate(target.cb_model, target._generation_config(eos_token_id=-1),
                                       _cb_config(), TRACE[:1], max_steps=2)
    assert SteppedResult(tokens=[1, 2], logit_rows=[torch.zeros(64)]).logits() is None  # rows and tokens must pair up


def _cb_config():
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    return ContinuousBatchingConfig(page_size=4, num_blocks=8, max_batch_tokens=64, use_async_batching=False, use_cuda_graph=False,
                                    max_blocks_per_request=0, auto_switch_to_flash=False, cpu_offload_space=0.0)


# ---- the request lifecycle -------------------------------------------------------------------

PROMPT = tuple(range(1, 11))


@pytest.fixture(scope="module")
def llama() -> HFTarget:
    return resolve_target("hf:llama")


@pytest.fixture(scope="module")
def continuation(llama) -> list[int]:
    return greedy(llama, PROMPT, 6)


def _oracle_prefix(target, req, comp):
    """A continuation's tokens are a prefix of the greedy continuation, logits row for row."""
    assert comp.tokens == greedy(target, req.prompt, len(comp.tokens)), req
    if comp.tokens:
        oracle = target.reference_logits(list(req.prompt) + comp.tokens)[len(req.prompt) - 1 : -1]
        assert comp.logits is not None and (comp.logits - oracle).abs().max() < 1e-4, req


@pytest.mark.parametrize("path", PATHS)
def test_stop_tokens_end_requests_on_every_path(llama, continuation, path):
    """The stop token is the request's EOS on every path and is kept in the output; the batched
    path runs one batch per stop set, a stop at max_new_tokens or past it changes nothing."""
    g = continuation
    requests = (
        Request(0, PROMPT, 6, stop=(g[2],)),  # ends at its third token
        Request(1, PROMPT, 6),
        Request(2, PROMPT, 6, stop=(g[5], 63 if g[5] != 63 else 62)),  # the stop token is the last one anyway
        Request(3, PROMPT, 6, stop=(g[0],), n=2),  # the first token stops it, in both continuations
    )
    out = llama.generate_via(path, requests, EngineConfig(block_size=4, spec_k=2))
    expected = [g[:3], g, g, g[:1]]
    assert [c.tokens for c in out] == expected, path
    assert [f.tokens for f in out[3].forks] == [g[:1]]
    for req, comp in zip(requests, out):
        _oracle_prefix(llama, req, comp)


def test_stopped_rows_are_cut_only_where_transformers_padded_them():
    from fuzzcache.targets.hf.target import stopped_row

    req = Request(0, (1,), 4, stop=(9,))
    assert stopped_row([5, 9, 0, 0, 0], req) == [5, 9]  # finished: padded after its stop token
    assert stopped_row([5, 9, 7, 0, 0], req) == [5, 9, 7, 0]  # went on past it: uncut, for the contract check
    assert stopped_row([5, 6, 7, 8, 9], req) == [5, 6, 7, 8]  # the stop token past max_new_tokens


ABORTS = [  # (abort_at, n, abort_phase, tokens emitted)
    (0, 1, 1, 0), (1, 1, 2, 0), (2, 1, 2, 0), (3, 1, 3, 1), (4, 1, 3, 2), (30, 1, 0, 6),
    (0, 3, 1, 0), (1, 3, 2, 0), (3, 3, 2, 0), (4, 3, 3, 1), (30, 3, 0, 6),
]


@pytest.mark.parametrize("abort_at,n,phase,emitted", ABORTS)
def test_aborts_cancel_the_request_at_their_step(llama, continuation, abort_at, n, phase, emitted):
    """A 10-token prompt prefilled 4 tokens a step: an abort at step 0 finds it not yet prefilled,
    at steps 1-2 mid-prefill, from step 3 on (first token at step 2) decoding; at step 30 it has
    finished. With n=3 transformers prefills 9 tokens, forks, and each continuation computes the
    last prompt token on its own (first tokens at step 3): the forks are cancelled with the
    request or, aborted before the fork, never made. The other request is unaffected and every
    block is back in the pool, free or cached."""
    for prefix_cache in (False, True):
        requests = (Request(0, PROMPT, 6, abort_at=abort_at, n=n), Request(1, (5, 6, 7), 4, arrival=1))
        out = llama.generate(requests, EngineConfig(block_size=4, max_batch_tokens=4, prefix_cache=prefix_cache))
        assert len(out[0].forks) == n - 1
        for comp in continuous_and_forks(out[0]):
            assert comp.tokens == continuation[:emitted] and comp.stats.get("abort_phase", 0) == phase, (prefix_cache, comp)
            _oracle_prefix(llama, requests[0], comp)
        assert out[1].tokens == greedy(llama, (5, 6, 7), 4) and "abort_phase" not in out[1].stats
        pool = llama.last_pool
        assert pool.leaked == 0 and pool.unit == "blocks" and (pool.cached > 0) == prefix_cache, pool


def test_forks_share_the_prompt_blocks_and_equal_the_oracle(llama, continuation):
    """n=3 on continuous batching: transformers prefills all but the last prompt token once, then
    forks; with block sharing the full prompt blocks are shared, not copied. The other paths run
    n independent rows and say so."""
    from fuzzcache.targets.hf import continuous

    copied = []
    llama.engine_hook = lambda manager, processor: _record_fork_copies(processor, copied)
    try:
        out = llama.generate((Request(0, PROMPT, 6, n=3),), EngineConfig(block_size=4, prefix_cache=True))
    finally:
        llama.engine_hook = None
    assert [c.tokens for c in continuous_and_forks(out[0])] == [continuation] * 3
    assert copied == [1, 1]  # per child: only the partial third block (tokens 8-9) is copied; blocks 0-1 are shared
    assert llama.last_pool.leaked == 0
    assert continuous.key_of("7__child#1") == (7, 2) and continuous.engine_id((7, 2)) == "7__child#1"
    out = llama.generate_via("batched", (Request(0, PROMPT, 6, n=3),), EngineConfig())
    assert [c.tokens for c in continuous_and_forks(out[0])] == [continuation] * 3 and llama.last_ignored == ("n",)


def continuous_and_forks(completion) -> list:
    return [completion, *completion.forks]


def _record_fork_copies(processor, copied: list) -> None:
    prepare = processor.cache.prepare_fork_request

    def recorded(state, ids, src_and_dst):
        forked = prepare(state, ids, src_and_dst)
        copied.extend([len(src_and_dst["full_attention"][0]) // max(1, len(forked))] * len(forked))
        return forked

    processor.cache.prepare_fork_request = recorded


def test_the_pool_account_counts_cached_blocks_apart():
    """After a prefix-cached trace the blocks the ledger keeps for reuse are cached, not leaked;
    the non-continuous paths have no pool."""
    target = resolve_target("hf:llama")
    target.generate((Request(0, PROMPT, 3), Request(1, PROMPT, 2, arrival=2)), EngineConfig(block_size=4, prefix_cache=True))
    pool = target.last_pool
    assert pool.leaked == 0 and pool.cached >= 2 and pool.free + pool.cached == pool.total
    target.generate((Request(0, PROMPT, 3),), EngineConfig())
    assert target.last_pool is None


def test_small_pages_are_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"EngineConfig.block_size=2: .*page_size >= 4"):
        resolve_target("hf:llama").generate(TRACE, EngineConfig(block_size=2, num_blocks=30))


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(UnknownTarget, match="hf:llama, hf:llama-dynamic, hf:mistral, hf:mistral-w32, hf:gemma3, hf:qwen2, hf:phi"):
        resolve_target("hf:gpt5")


@pytest.mark.parametrize("property_id", [p.id for p in PROPERTIES.values() if p.applies_to(resolve_target("hf:llama"))])
def test_bounded_run_on_hf_llama(property_id, tmp_path):
    """The ci profile's bounded HF run: a few examples of every property hf:llama supports; the
    only finding allowed is a case already triaged in corpus/hf:llama (an upstream bug)."""
    assert_only_triaged_findings(resolve_target("hf:llama"), "hf:llama", property_id, BOUNDED, tmp_path)


PLANTED = [
    ("crop_drops_last_position", "engine.same.speculative"),
    ("crop_drops_last_position", "engine.trace"),
]  # the paths.* planted bugs run in tests/test_planted_bugs.py with every other property's
LIFECYCLE_PLANTED = [("cancel_keeps_blocks", "leak"), ("stop_token_dropped", "contract")]
# transformers' own lifecycle bugs (corpus/hf-fork-one-token-prompt.md, corpus/hf-cancel-after-soft-reset-hang.md),
# passed over as a keep-going campaign passes over known failures
UPSTREAM = {(p, kind, "") for p in PROPERTIES if p.startswith("engine.") for kind in ("engine_error", "hang")}


@pytest.mark.parametrize("planted,property_id", PLANTED)
def test_planted_bug_in_a_transformers_path_is_caught_and_shrunk(planted, property_id, tmp_path):
    spec = f"fuzzcache.targets.hf.planted:{planted}"
    run = run_property(PROPERTIES[property_id], resolve_target(spec), spec, FIND, tmp_path, known=UPSTREAM)
    assert len(run.found) == 1 and run.found[0].kind == "mismatch", run.found
    shrunk = run.found[0].scenario
    # the bug needs one rejected draft after one accepted token: the shrinker gets down to 1-token
    # prompts, one draft per step and at most 2 new tokens per request
    assert shrunk.config.spec_k == 1 and all(len(r.prompt) == 1 and r.max_new_tokens <= 2 for r in shrunk.requests), shrunk.short()
    record = json.loads(run.found[0].path.read_text())
    print(f"{planted} / {property_id}: found after {run.examples_to_find} examples; repro {run.found[0].scenario.short()}")
    assert record["target"] == spec
    clean = resolve_target("hf:llama")
    PROPERTIES[property_id].check(clean, run.found[0].scenario)  # the correct target passes the shrunk case


@pytest.mark.parametrize("planted,kind", LIFECYCLE_PLANTED)
def test_planted_lifecycle_bug_in_continuous_batching_is_caught(planted, kind, tmp_path):
    """An engine that keeps a cancelled request's blocks is a leak; one that drops the stop token
    from the output breaks the contract's length rule. Both shrink to one short request."""
    spec = f"fuzzcache.targets.hf.planted:{planted}"
    run = run_property(PROPERTIES["engine.trace"], resolve_target(spec), spec, FIND, tmp_path, known=UPSTREAM)
    assert len(run.found) == 1 and run.found[0].kind == kind, run.found
    shrunk = run.found[0].scenario
    print(f"{planted}: found after {run.examples_to_find} examples; repro {shrunk.short()}")
    assert len(shrunk.requests) == 1 and len(shrunk.requests[0].prompt) == 1, shrunk.short()
    if kind == "leak":
        assert shrunk.requests[0].abort_at is not None
    else:
        assert shrunk.requests[0].stop
    PROPERTIES["engine.trace"].check(resolve_target("hf:llama"), shrunk)  # the correct target passes the shrunk case


TRIAGED = sorted(p for p in (Path(__file__).parent.parent / "corpus").glob("hf:*/*/*.json")
                 if any(bug.id in json.loads(p.read_text()).get("triage", {}).get("writeup", "") for bug in HFTarget.known_bugs))


@pytest.mark.parametrize("path", TRIAGED, ids=[f"{p.parent.parent.name}/{p.parent.name}/{p.stem[6:14]}" for p in TRIAGED])
def test_each_triaged_repro_is_claimed_by_the_known_bug_its_write_up_names(path):
    """The known bugs' predicates (fuzzcache/targets/hf/known_bugs.py) on each hand-triaged file,
    as its finding was saved; another kind, or the trigger without the bug's request shape, is
    not claimed."""
    case = load(path)
    (bug,) = [b for b in HFTarget.known_bugs if b.id in case.triage["writeup"]]
    finding, prop = Finding(case.kind, case.message), PROPERTIES[case.property]
    assert claim(prop, HFTarget, case.scenario, finding).ids == [bug.id]
    assert claim(prop, HFTarget, case.scenario, Finding("crash" if case.kind != "crash" else "mismatch", case.message)) is None
    assert claim(prop, HFTarget, without_trigger(case.scenario), finding) is None


def without_trigger(scenario):
    """The scenario without the request shape each bug needs: no fork nor abort in a trace; two
    new tokens per request (a request no longer finishes in its prefill forward) for prefix.hit."""
    if hasattr(scenario, "requests"):
        return dataclasses.replace(scenario, requests=tuple(dataclasses.replace(r, n=1, abort_at=None) for r in scenario.requests))
    return dataclasses.replace(scenario, max_new_tokens=2)


def test_the_known_bugs_claim_their_files():
    assert {b.id for b in HFTarget.known_bugs} == {"hf-fork-one-token-prompt", "hf-cancel-after-soft-reset-hang",
                                                   "hf-prefix-blocks-unregistered-on-finish"}
    assert len(TRIAGED) >= 22 and all((Path(__file__).parent.parent / f"corpus/{b.id}.md").exists() for b in HFTarget.known_bugs)


def test_continuous_batching_reports_its_steps():
    """The HTML report's timeline: transformers' steps read off its RequestStates (prefill chunks,
    decodes, a request waiting for blocks, an abort, a stop, the end); the other paths keep none."""
    target = resolve_target("hf:llama")
    requests = [Request(0, tuple(range(1, 8)), 4, n=2), Request(1, (7, 8, 9), 3, arrival=1, abort_at=3),
                Request(2, (5, 6, 5, 6), 5, arrival=1, stop=tuple(range(target.vocab_size)))]
    out = target.generate(requests, EngineConfig(block_size=4, chunk_size=3, max_batch_tokens=8, prefix_cache=True, num_blocks=4))
    events = target.last_timeline
    kinds = {(e.rid, e.kind) for e in events}
    assert {(0, "prefill"), (0, "decode"), (0, "finished"), (1, "abort"), (2, "queued"), (2, "stop")} <= kinds, kinds
    for rid, comp in enumerate(out):  # a continuation's prefill covers its prompt, its decodes its other tokens
        if rid == 0:
            work = [e for e in events if e.rid == 0 and e.fork == 0 and e.kind in ("prefill", "decode")]
            assert sum(e.tokens for e in work) == len(requests[0].prompt) + len(comp.tokens) - 1
    assert all(e.step >= 1 for e in events if e.rid in (1, 2))  # nothing before their arrival
    many = [Request(i, tuple(range(1 + i, 9 + i)), 12) for i in range(3)]  # admitted together, they outgrow 5 blocks
    target.generate(many, EngineConfig(block_size=4, num_blocks=5))
    assert sum(e.kind == "preempted" for e in target.last_timeline) == target.last_stats["preemptions"] > 0
    target.generate_via("static", requests[:1], EngineConfig())
    assert target.last_timeline is None
