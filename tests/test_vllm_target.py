"""vLLM as a target (vllm:<arch>): vLLM's engine agrees with the oracle on a fixed trace that
reaches every mapped path, and on one with each of the request lifecycle's paths (stop token,
abort before / during / after prefill, n continuations, the leak check); it refuses what it cannot
run by naming the field, reuses engines without carrying state between calls, a bounded fuzz run
(lifecycle drawn) finds nothing but the triaged upstream bug, and bugs planted in vLLM's own
prefix-cache hashing, abort path and stop handling are caught. vLLM's known bugs claim their
findings and nothing else; a hang says what is stuck.

These run in the vLLM environment (.venv-vllm, the README's test command, second part): vLLM pins
transformers below the hf extra's version."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import Phase, settings

from fuzzcache import EngineConfig, Request
from fuzzcache.contract import LIFECYCLE
from fuzzcache.corpus import load
from fuzzcache.findings import Finding
from fuzzcache.known_bugs import claim
from fuzzcache.oracle import greedy_continuation
from fuzzcache.properties import PROPERTIES
from fuzzcache.properties.engine_level import check_trace
from fuzzcache.runner import replay, run_property
from fuzzcache.scenario import TraceScenario
from fuzzcache.targets import resolve_target

from bounded import CORPUS, assert_only_triaged_findings
from exported import COMMITTED, engine_of, reported, reports_finding, run_standalone, source_of

pytest.importorskip("vllm", reason="vllm:<arch> targets run in .venv-vllm (README: the test command's second part)")
pytestmark = [pytest.mark.vllm, pytest.mark.engine]

BOUNDED = settings(max_examples=25, deadline=None, database=None, derandomize=True)
# the planted bug needs two requests of 2+ blocks sharing a later block after different first ones:
# found after 88-124 examples with three random seeds (the derandomized seed follows the runner's code)
FIND = settings(max_examples=500, deadline=None, database=None, derandomize=True)
# the planted abort leak: the first failing example is enough (found after 12 examples; shrinking it costs 30 s)
FIND_UNSHRUNK = settings(max_examples=100, deadline=None, database=None, derandomize=True, phases=[Phase.generate])
SHARED = tuple(range(1, 40))  # more than one block of 32
TRACE = (
    Request(0, SHARED + (7, 7), 6),
    Request(1, SHARED + (9,), 5, arrival=2),  # a prefix hit on the first block, arriving late
    Request(2, (5, 6, 5, 6, 5, 6, 5, 6), 8),  # repetitive: n-gram drafts get accepted
    Request(3, (5,), 0),
)
GROWING = (Request(0, tuple(range(1, 31)), 8), Request(1, tuple(range(2, 32)), 8))  # each outgrows its first block


def lifecycle_trace(target) -> tuple[Request, ...]:
    """One request per lifecycle path: an early stop (a token of the oracle's own continuation),
    aborts at step 0 (before prefill), 2 (a 40-token prompt in chunks of 8: during prefill) and 3
    (a 5-token prompt: after prefill, 3 tokens out), and n = 3."""
    continuation = greedy_continuation(target.reference_logits, SHARED + (7, 7), 6)[0]
    return (
        Request(0, SHARED + (7, 7), 6, stop=(continuation[2],)),
        Request(1, SHARED + (9,), 5, abort_at=0),
        Request(2, SHARED + (11,), 5, abort_at=2),
        Request(3, (3, 1, 4, 1, 5), 6, abort_at=3),
        Request(4, SHARED, 5, n=3),
    )


_TARGETS: dict[str, object] = {}  # one per architecture for the whole run: a collected vllm.LLM
# tears down the process-wide state the engines still alive run on


def vllm_target_for(arch: str):
    if arch not in _TARGETS:
        _TARGETS[arch] = resolve_target(f"vllm:{arch}")
    return _TARGETS[arch]


@pytest.fixture
def vllm_llama():
    return vllm_target_for("llama")


@pytest.fixture(params=["llama", "qwen2", "mistral", "gemma3"])
def vllm_target(request):
    return vllm_target_for(request.param)


@pytest.mark.parametrize("config,trace", [
    (EngineConfig(block_size=32), TRACE),
    (EngineConfig(block_size=32, prefix_cache=True, max_num_seqs=1), TRACE),
    (EngineConfig(block_size=32, num_blocks=3), GROWING),  # 3 blocks for 2 requests that need 2 each: preemption
    (EngineConfig(block_size=64, chunk_size=5, max_batch_tokens=9, max_num_seqs=2), TRACE),  # short last chunks
    (EngineConfig(block_size=32, spec_k=3, draft="prompt_lookup"), TRACE),
], ids=["plain", "prefix", "pool", "chunked", "speculative"])
def test_every_mapped_path_equals_the_oracle(vllm_target, config, trace):
    out = vllm_target.generate(trace, config)
    for request, completion in zip(trace, out):
        assert completion.tokens == greedy_continuation(vllm_target.reference_logits, request.prompt, request.max_new_tokens)[0]
        if completion.tokens:
            oracle = vllm_target.reference_logits(list(request.prompt) + completion.tokens)[len(request.prompt) - 1 : -1]
            assert (completion.logits - oracle).abs().max() < vllm_target.tolerance.logits
    stats = [c.stats for c in out]
    if config.prefix_cache:
        assert stats[1]["cached_prefix_tokens"] == 32
    if config.num_blocks:
        assert vllm_target.last_stats["preemptions"] > 0
    if config.spec_k:
        assert sum(s.get("draft_proposed", 0) for s in stats) > 0  # accepted drafts: the fuzz runs' paths report
        assert all(0 <= s.get("draft_accepted", 0) <= s.get("draft_proposed", 0) for s in stats)


@pytest.mark.parametrize("config,phases", [
    (EngineConfig(block_size=32, chunk_size=8, prefix_cache=True), (1, 2, 3)),  # vLLM's n (top_k=1 children)
    (EngineConfig(block_size=32, num_blocks=3), (1, 1, 3)),  # 3 blocks: the 40-token prompt still waits at step 2, forks take turns
    (EngineConfig(block_size=32, spec_k=3, draft="prompt_lookup"), (1, 3, 3)),  # n fanned out by the target
], ids=["chunked+prefix", "pool", "speculative"])
def test_the_request_lifecycle_maps_onto_vllm(vllm_llama, config, phases):
    trace = lifecycle_trace(vllm_llama)
    out = check_trace(vllm_llama, TraceScenario(trace, config))  # engine.trace's check: shapes, leak check, oracle
    greedy = lambda r: greedy_continuation(vllm_llama.reference_logits, r.prompt, r.max_new_tokens)[0]
    stopped = greedy(trace[0])[: trace[0].expected_length(greedy(trace[0]))]
    assert out[0].tokens == stopped and len(stopped) < 6 and stopped[-1] in trace[0].stop  # the stop token included
    assert tuple(c.stats.get("abort_phase") for c in out[1:4]) == phases
    assert out[1].tokens == [] and out[3].tokens and out[3].tokens == greedy(trace[3])[: len(out[3].tokens)]  # a prefix
    assert len(out[4].forks) == 2 and all(c.tokens == greedy(trace[4]) for c in [out[4], *out[4].forks])
    pool = vllm_llama.last_pool
    assert pool.leaked == 0 and pool.total == (config.num_blocks or pool.total)
    if config.prefix_cache:
        assert pool.cached > 0  # evictable prefix blocks are counted as cached, not leaked


def test_an_interleaved_model_runs_two_kv_cache_groups_on_one_pool():
    """Gemma 3's sliding and full layers are two KV-cache groups (vLLM's hybrid coordinator);
    ``num_blocks`` is room in each, so the contract's smallest pool still runs a request; a
    prefix longer than the window is hit, and everything equals the oracle."""
    target = vllm_target_for("gemma3")
    long = tuple((5 * i + 1) % 63 for i in range(70))  # three of its windows of 20, two blocks and more
    out = target.generate((Request(0, (3, 4), 5),), EngineConfig(block_size=32, num_blocks=1))
    assert out[0].tokens == greedy_continuation(target.reference_logits, (3, 4), 5)[0]
    trace = (Request(0, long, 6), Request(1, long + (9, 9), 6, arrival=10))
    out = target.generate(trace, EngineConfig(block_size=32, prefix_cache=True))
    scheduler = target.engines.llm(next(iter(target.engines.engines))).llm_engine.engine_core.engine_core.scheduler
    kinds = sorted(type(g.kv_cache_spec).__name__ for g in scheduler.kv_cache_config.kv_cache_groups)
    assert kinds == ["FullAttentionSpec", "SlidingWindowSpec"], kinds
    assert out[1].stats["cached_prefix_tokens"] == 64  # two whole blocks, past the window
    for request, completion in zip(trace, out):
        assert completion.tokens == greedy_continuation(target.reference_logits, request.prompt, request.max_new_tokens)[0]


def test_a_moe_family_with_chunked_attention_runs_after_a_dense_family_in_one_process():
    """Llama 4 after a llama in the same process (a ``vllm:*`` campaign): its MoE layers need the
    expert-parallel group vLLM makes only for a first model that is MoE (engines.expert_group_ready);
    its chunked local layer and its global layer are two KV-cache groups, and it equals the oracle."""
    dense = vllm_target_for("llama")
    dense.generate((Request(0, (3, 4), 2),), EngineConfig(block_size=32))
    target = vllm_target_for("llama4")
    long = tuple((5 * i + 1) % 63 for i in range(70))  # past two of its chunks of 32
    trace = (Request(0, long, 6), Request(1, long + (9, 9), 6, arrival=10), Request(2, (3, 4), 5))
    out = target.generate(trace, EngineConfig(block_size=32, prefix_cache=True))
    scheduler = target.engines.llm(next(iter(target.engines.engines))).llm_engine.engine_core.engine_core.scheduler
    kinds = sorted(type(g.kv_cache_spec).__name__ for g in scheduler.kv_cache_config.kv_cache_groups)
    assert kinds == ["ChunkedLocalAttentionSpec", "FullAttentionSpec"], kinds
    assert target.block_sizes == (32,)  # vLLM asserts the chunk divides the block size at the first step
    with pytest.raises(ValueError, match="chunks of 32 positions need a block size that divides them"):
        target.generate(trace, EngineConfig(block_size=64))
    for request, completion in zip(trace, out):
        assert completion.tokens == greedy_continuation(target.reference_logits, request.prompt, request.max_new_tokens)[0]
        oracle = target.reference_logits(list(request.prompt) + completion.tokens)[len(request.prompt) - 1 : -1]
        assert (completion.logits - oracle).abs().max() < target.tolerance.logits


def test_engines_are_reused_and_start_each_call_empty(vllm_target):
    config = EngineConfig(block_size=32, prefix_cache=True)
    first = vllm_target.generate(TRACE[:1], config)
    engines = dict(vllm_target.engines.engines)
    second = vllm_target.generate(TRACE[:1], config)
    assert vllm_target.engines.engines == engines  # no new vllm.LLM
    assert first[0].stats["cached_prefix_tokens"] == second[0].stats["cached_prefix_tokens"] == 0  # the prefix cache starts empty


@pytest.mark.parametrize("config,field", [
    (EngineConfig(block_size=16), "block_size"),
    (EngineConfig(block_size=32, spec_k=2, draft="trigram"), "draft"),
    (EngineConfig(block_size=32, max_batch_tokens=2, max_num_seqs=4), "max_batch_tokens"),
    (EngineConfig(block_size=32, max_num_seqs=9), "max_num_seqs"),
])
def test_configs_vllm_cannot_run_are_refused_naming_the_field(vllm_target, config, field):
    with pytest.raises(ValueError, match=f"EngineConfig.{field}"):
        vllm_target.generate(TRACE[:1], config)
    assert vllm_target.generate(TRACE[:1], EngineConfig(block_size=32))[0].tokens  # and the engine still runs


@pytest.mark.parametrize("property_id", ["engine.trace", "engine.same.prefix_cache", "engine.same.pool", "engine.same.chunked", "engine.same.speculative", "prefix.hit"])
def test_bounded_run_on_vllm_llama(property_id, vllm_llama, tmp_path):
    """The ci profile's bounded vLLM run: the only finding allowed is a case already triaged in
    corpus/vllm:llama (an upstream bug). One target for all of them: each call starts empty."""
    assert PROPERTIES[property_id].applies_to(vllm_llama)
    assert_only_triaged_findings(vllm_llama, "vllm:llama", property_id, BOUNDED, tmp_path)


def test_a_bug_planted_in_vllms_prefix_cache_is_caught_and_shrunk(tmp_path):
    spec = "fuzzcache.targets.vllm.planted:prefix_hash_not_chained"
    target = resolve_target(spec)
    target.features = target.features - LIFECYCLE  # not this bug's path: the search and the shrink stay as short as before
    run = run_property(PROPERTIES["engine.same.prefix_cache"], target, spec, FIND, tmp_path)
    assert len(run.found) == 1 and run.found[0].kind == "mismatch", run.found
    found = run.found[0]
    print(f"prefix_hash_not_chained: found after {run.examples_to_find} examples; repro {found.scenario.short()}")
    # the minimal trigger: a block equal to a cached one after a different first block, so two
    # requests of at least two blocks (64 tokens at block size 32) and a prefix cache
    requests = found.scenario.requests
    assert found.scenario.config.prefix_cache and len(requests) == 2 and found.scenario.config.block_size == 32, found.scenario.short()
    PROPERTIES["engine.same.prefix_cache"].check(resolve_target("vllm:llama"), found.scenario)  # vLLM as shipped passes it


def test_a_leak_planted_in_vllms_abort_path_is_caught(vllm_llama, tmp_path):
    spec = "fuzzcache.targets.vllm.planted:abort_keeps_blocks"
    planted = resolve_target(spec)
    aborted = TraceScenario((Request(0, (1, 2), 4, abort_at=1),), EngineConfig(block_size=32))  # 1 block held after prefill
    with pytest.raises(Finding) as leak:
        check_trace(planted, aborted)
    assert leak.value.kind == "leak" and planted.last_pool.leaked == 1, leak.value
    check_trace(vllm_llama, aborted)  # vLLM as shipped frees it
    run = run_property(PROPERTIES["engine.trace"], planted, spec, FIND_UNSHRUNK, tmp_path)
    assert len(run.found) == 1 and run.found[0].kind == "leak", run.found
    print(f"abort_keeps_blocks: found after {run.examples_to_find} examples: {run.found[0].scenario.short()}")


def test_a_stop_bug_planted_in_vllms_scheduler_is_caught(vllm_llama):
    # the model continues (35, 29) with 35 29 35 29: after 35, the n-gram drafter proposes the
    # prompt's 29, accepted; the step that emits the stop token 29 also emits the bonus token
    trace = (Request(0, (35, 29), 6, stop=(29,)),)
    assert greedy_continuation(vllm_llama.reference_logits, (35, 29), 4)[0] == [35, 29, 35, 29]
    scenario = TraceScenario(trace, EngineConfig(block_size=32, spec_k=3, draft="prompt_lookup"))
    with pytest.raises(Finding) as past:
        check_trace(resolve_target("fuzzcache.targets.vllm.planted:stop_not_trimmed"), scenario)
    assert past.value.kind == "contract" and past.value.details.get("what") == "past stop", past.value
    assert check_trace(vllm_llama, scenario)[0].tokens == [35, 29]  # vLLM as shipped trims the step at the stop token


VLLM_CORPUS = sorted((CORPUS / "vllm:llama").rglob("*.json"))
PAD_ASSERT_FILES = [p for p in VLLM_CORPUS if "vllm-spec-pad-clipped-by-threshold" in (load(p).triage or {}).get("known_bugs", [])]
STARVED = TraceScenario((Request(0, tuple(range(1, 33)), 1), Request(1, tuple(range(1, 34)), 1)),
                        EngineConfig(block_size=32, max_num_seqs=1, max_batch_tokens=1, prefix_cache=True, spec_k=1, draft="prompt_lookup"))


def test_every_known_bug_of_vllm_has_its_writeup(vllm_llama):
    assert {b.id for b in vllm_llama.known_bugs} == {"vllm-spec-pad-clipped-by-threshold", "vllm-spec-pad-starves-small-budget"}
    for bug in vllm_llama.known_bugs:
        assert (CORPUS / f"{bug.id}.md").exists(), bug.writeup


def test_a_request_one_token_past_its_prefix_hit_starves_below_the_spec_budget(vllm_llama):
    """corpus/vllm-spec-pad-starves-small-budget.md: with a budget below 1 + spec_k, request 1
    (32 of its 33 tokens in the prefix cache) is padded to a spec-decode step that never fits and
    never admitted: a hang whose message names the stuck request and the budget, claimed by the
    known bug. The same requests finish without the prefix cache or with a budget of 1 + spec_k."""
    with pytest.raises(Finding) as hang:
        check_trace(vllm_llama, STARVED)
    assert hang.value.kind == "hang", hang.value
    message = hang.value.message
    assert "1 of 2 continuations unfinished, the output processor awaits 1 request" in message, message
    assert ("waiting: request 1 (33 tokens, 0 computed, 32 in the prefix cache, 1 to compute); running: none; "
            "token budget 1 a step (max_num_batched_tokens), a speculative decode step takes 1 + 1 tokens") in message, message
    assert claim(PROPERTIES["engine.trace"], vllm_llama, STARVED, hang.value).ids == ["vllm-spec-pad-starves-small-budget"]
    for fine in (dataclasses.replace(STARVED.config, prefix_cache=False), dataclasses.replace(STARVED.config, max_batch_tokens=2)):
        check_trace(vllm_llama, TraceScenario(STARVED.requests, fine))  # both finish and agree with the oracle


@pytest.mark.parametrize("path", PAD_ASSERT_FILES, ids=lambda p: f"{p.parent.name}/{p.name[:14]}")
def test_the_scheduler_assertion_corpus_is_claimed_by_its_known_bug(vllm_llama, path):
    case = load(path)
    finding = replay(case, vllm_llama)
    assert finding is not None and finding.kind == "crash", finding
    found = claim(PROPERTIES[case.property], vllm_llama, case.scenario, finding)
    assert found is not None and found.ids == ["vllm-spec-pad-clipped-by-threshold"], (found, finding.message)


def planted_crash(frame: str, code: str, error: str = "AssertionError") -> Finding:
    """A crash finding whose traceback ends in ``frame`` (a site-packages path, line, function)."""
    tb = f'Traceback (most recent call last):\n  File "/venv/lib/python3.11/site-packages/{frame}\n    {code}\n{error}\n'
    return Finding("crash", f"vllm:llama.generate raised {error}: ", {"traceback": tb})


PAD_SITE = 'vllm/v1/core/sched/scheduler.py", line 1372, in schedule'
PAD_CODE = "assert num_new_tokens == 1 + self.num_spec_tokens"
THRESHOLD = EngineConfig(block_size=32, chunk_size=1, spec_k=1, draft="prompt_lookup")


@pytest.mark.parametrize("config,finding,claimed", [
    (THRESHOLD, planted_crash(PAD_SITE, PAD_CODE), True),
    (dataclasses.replace(THRESHOLD, chunk_size=2, spec_k=3), planted_crash(PAD_SITE, PAD_CODE), True),
    (dataclasses.replace(THRESHOLD, chunk_size=2), planted_crash(PAD_SITE, PAD_CODE), False),  # 1 + k rows fit the threshold
    (dataclasses.replace(THRESHOLD, chunk_size=None), planted_crash(PAD_SITE, PAD_CODE), False),
    (dataclasses.replace(THRESHOLD, spec_k=0), planted_crash(PAD_SITE, PAD_CODE), False),
    (THRESHOLD, planted_crash('vllm/v1/core/sched/scheduler.py", line 1405, in schedule', "assert total_num_scheduled_tokens <= self.max_num_scheduled_tokens"), False),
    (THRESHOLD, planted_crash('vllm/v1/core/kv_cache_manager.py", line 1372, in schedule', PAD_CODE), False),
    (THRESHOLD, planted_crash(PAD_SITE, PAD_CODE, error="RuntimeError"), False),
    (STARVED.config, Finding("hang", "vllm:llama.generate made no progress within 60s", {"limit_s": 60.0}), False),  # not the stuck report
    (dataclasses.replace(STARVED.config, max_batch_tokens=2), None, False),
    (dataclasses.replace(STARVED.config, prefix_cache=False), None, False),
], ids=["threshold-1-k-1", "threshold-2-k-3", "threshold-2-k-1", "no-threshold", "no-spec", "other-assert", "other-file",
        "other-error", "hang-unknown-shape", "hang-budget-fits", "hang-no-prefix-cache"])
def test_vllms_known_bugs_claim_only_their_trigger(vllm_llama, config, finding, claimed):
    """Planted findings: a known bug claims its crash site on its config, and nothing at another
    site, with another error or on a config its write-up rules out (None: the starved hang's
    own message on another config)."""
    if finding is None:
        finding = Finding("hang", "vllm:llama.generate: vLLM made no progress (nothing scheduled in the last 32 steps): 1 of 2 "
                          "continuations unfinished, the output processor awaits 1 request; vLLM's scheduler holds: waiting: request 1 "
                          "(33 tokens, 0 computed, 32 in the prefix cache, 1 to compute); running: none; token budget 1 a step", {"limit_s": 60.0})
    found = claim(PROPERTIES["engine.trace"], vllm_llama, TraceScenario(STARVED.requests, config), finding)
    assert (found is not None) == claimed, found


def test_fuzz_measures_vllms_own_branch_coverage(tmp_path):
    """``fuzz --coverage vllm.v1.core``: the scheduler's, block pool's and KV cache manager's
    branches, per file, in the end report and report.json."""
    import json
    import subprocess
    import sys

    report = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "fuzzcache.cli", "fuzz", "--target", "vllm:llama", "--property", "engine.trace", "--budget", "20s",
                           "--workers", "1", "--coverage", "vllm.v1.core", "--corpus", str(tmp_path / "corpus"), "--report-dir", str(report)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # a new shape of a known bug is claimed by it
    files = json.loads((report / "report.json").read_text())["branch_coverage"]["files"]
    for name in ("vllm/v1/core/sched/scheduler.py", "vllm/v1/core/block_pool.py", "vllm/v1/core/kv_cache_manager.py"):
        assert files[name]["reached"] > 5, (name, files[name])
    assert "engine branch coverage of vllm.v1.core" in proc.stdout


def test_vllm_reports_its_steps(vllm_llama):
    """The HTML report's timeline (``targets/vllm/steps.py``), read off vLLM's Requests and KV cache
    manager: chunked prefill, a prefix hit's shared block, drafts verified, a preemption, an abort."""
    config = EngineConfig(block_size=32, chunk_size=8, prefix_cache=True, spec_k=2, draft="prompt_lookup")
    trace = (TRACE[0], Request(1, SHARED + (9,), 5, arrival=6), TRACE[2], Request(4, SHARED + (11,), 5, arrival=1, abort_at=4))
    out = vllm_llama.generate(trace, config)
    events = vllm_llama.last_timeline
    kinds = {(e.rid, e.kind) for e in events}
    assert {(0, "prefill"), (0, "finished"), (2, "verify"), (4, "abort")} <= kinds, kinds
    assert kinds & {(1, "decode"), (1, "verify")}, kinds
    prefill = [e.tokens for e in events if e.rid == 0 and e.kind == "prefill"]
    assert prefill and max(prefill) <= 8 and sum(prefill) == len(TRACE[0].prompt)  # chunks of at most 8
    assert any(e.drafts for e in events if e.kind == "verify")
    assert any(e.shared for e in events if e.rid == 1), "request 1 (arriving once request 0's prompt is in) shares its cached first block"
    assert sum(1 for e in events if e.rid == 0 and e.kind in ("decode", "verify")) <= len(out[0].tokens)
    vllm_llama.generate(GROWING, EngineConfig(block_size=32, num_blocks=3))
    assert sum(e.kind == "preempted" for e in vllm_llama.last_timeline) == vllm_llama.last_stats["preemptions"] > 0


VLLM_EXPORTS = [f for f in COMMITTED if engine_of(f) == "vllm"]


@pytest.mark.parametrize("folder", VLLM_EXPORTS, ids=lambda f: f.name)
def test_the_exported_vllm_script_reproduces_the_finding_with_vllm_alone(folder, tmp_path):
    """corpus/export/<write-up>/repro.py (``fuzzcache export``, tests/test_export.py) run by this
    environment's Python, fuzzcache unimportable: it exits 1 and prints what the finding says."""
    case = source_of(folder)
    done = run_standalone(folder / "repro.py", tmp_path, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert "\nFAIL " in "\n" + done.stdout and reports_finding(case, out), (reported(case), out[-3000:])


def test_an_exported_vllm_script_passes_where_vllm_agrees(tmp_path):
    """STARVED with a budget of 1 + spec_k finishes (corpus/vllm-spec-pad-starves-small-budget.md):
    its export as an engine.same.speculative case runs two engines, drafting and not, in one
    process (the second built past vLLM's llvmlite scan, corpus/vllm-rebind-kernels-llvmlite.md),
    and both agree with the oracle."""
    from fuzzcache import corpus
    from fuzzcache.export import export

    fine = TraceScenario(STARVED.requests, dataclasses.replace(STARVED.config, max_batch_tokens=2))
    path, _ = corpus.save(tmp_path / "corpus", "vllm:llama", "engine.same.speculative", fine, Finding("mismatch", "a control"))
    folder = export(path, tmp_path / "out", "control").folder
    done = run_standalone(folder / "repro.py", tmp_path, timeout=600)
    assert done.returncode == 0 and done.stdout.count("== config") == 2 and "PASS" in done.stdout, (done.stdout + done.stderr)[-3000:]
