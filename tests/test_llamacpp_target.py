"""llama.cpp as a target (llamacpp:<arch>): the GGUF-written tiny models agree with the HF oracle
on traces that reach every mapped path (shared batches, seq_cp prefix reuse, n_batch / n_ubatch
splits, drafts trimmed with seq_rm, a full cache that preempts), in every precision variant
within its measured tolerance; surgery.memory's oracle agrees with llama.cpp's own memory ops
where llama.cpp is right and catches a planted wrapper bug; bounded fuzz runs find nothing but
the triaged upstream bugs; a trim bug planted in the serving loop is caught and shrunk; and the
upstream abort the target works around is still there (a subprocess)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest
from hypothesis import given, settings

from fuzzcache import EngineConfig, Request
from fuzzcache.compare import target_tolerance
from fuzzcache.corpus import load
from fuzzcache.findings import Finding
from fuzzcache.guard import Unsupported
from fuzzcache.known_bugs import claim
from fuzzcache.oracle import greedy_continuation
from fuzzcache.properties import PROPERTIES
from fuzzcache.runner import replay, run_property
from fuzzcache.surgery.memory_model_bugs import BUGS
from fuzzcache.surgery.memory_ops import MemoryOp, MemoryScenario
from fuzzcache.targets import UnknownTarget, build_target, resolve_target
from fuzzcache.strategies.memory import memory_scenarios

import planted
from bounded import CORPUS, assert_only_triaged_findings

pytest.importorskip("llama_cpp", reason="llamacpp:<arch> targets need the llamacpp extra (README: the test command installs it)")
pytestmark = [pytest.mark.llamacpp, pytest.mark.engine]

BOUNDED = settings(max_examples=40, deadline=None, database=None, derandomize=True)
FIND = settings(max_examples=300, deadline=None, database=None, derandomize=True)
SHARED = (5, 9, 3, 17, 40, 22, 8, 11, 60, 33)
TRACE = (
    Request(0, SHARED + (7, 7), 6),
    Request(1, SHARED + (9,), 5, arrival=2),  # shares 10 tokens with request 0, arriving late
    Request(2, (16, 16, 16, 16), 8),  # trigram drafts: some accepted, some rejected (llama and qwen2)
    Request(3, (5,), 0),
)
_TARGETS: dict[str, object] = {}


def target_for(spec: str):
    if spec not in _TARGETS:
        _TARGETS[spec] = resolve_target(spec)
    return _TARGETS[spec]


@pytest.fixture(params=["llama", "qwen2"])
def llamacpp_target(request):
    return target_for(f"llamacpp:{request.param}")


def assert_equals_oracle(target, trace, config) -> list:
    out = target.generate(trace, config)
    tol = target_tolerance(target)
    for r, c in zip(trace, out):
        want = greedy_continuation(target.reference_logits, r.prompt, r.max_new_tokens)[0]
        assert c.tokens == want, (r.rid, c.tokens, want, config)
        if c.tokens:
            rows = target.reference_logits(list(r.prompt) + c.tokens)[len(r.prompt) - 1 : -1]
            assert float((rows - c.logits).abs().max()) <= tol.logits, (r.rid, config)
    return out


@pytest.mark.parametrize("config,reaches", [
    (EngineConfig(), "one shared batch per step"),
    (EngineConfig(prefix_cache=True, max_num_seqs=1), "prefix"),
    (EngineConfig(max_batch_tokens=5, chunk_size=2), "budget"),
    (EngineConfig(spec_k=3, draft="trigram"), "drafts"),
    (EngineConfig(num_blocks=9, block_size=4, max_num_seqs=3), "preemption"),
])
def test_every_mapped_path_equals_the_oracle(llamacpp_target, config, reaches):
    out = assert_equals_oracle(llamacpp_target, TRACE, config)
    stats = llamacpp_target.last_stats
    if reaches == "prefix":
        assert out[1].stats["cached_prefix_tokens"] == len(SHARED), out[1].stats  # seq_cp of the shared 10 tokens
    if reaches == "budget":
        assert stats["steps"] > EngineConfig(max_batch_tokens=5).max_batch_tokens  # prompts span several decodes
    if reaches == "drafts":
        proposed, accepted = (sum(c.stats[k] for c in out) for k in ("draft_proposed", "draft_accepted"))
        assert 0 < accepted < proposed, [c.stats for c in out]  # drafts accepted and rejected ones trimmed
    if reaches == "preemption":
        assert stats["no_slot"] > 0 and stats["preemptions"] > 0, stats  # llama_decode returned 1 on the full cache


@pytest.mark.parametrize("variant", ["+f16kv", "+flash", "+f16kv+flash"])
def test_precision_variants_stay_within_their_measured_tolerance(variant):
    target = target_for(f"llamacpp:llama{variant}")
    assert target_tolerance(target).logits > target_tolerance(target_for("llamacpp:llama")).logits
    out = target.generate(TRACE, EngineConfig(prefix_cache=True, spec_k=2, draft="prompt_lookup"))
    for r, c in zip(TRACE, out):
        if c.tokens:
            rows = target.reference_logits(list(r.prompt) + c.tokens)[len(r.prompt) - 1 : -1]
            assert float((rows - c.logits).abs().max()) <= target.tolerance.logits, (variant, r.rid)


def test_each_call_starts_with_an_empty_cache(llamacpp_target):
    config = EngineConfig(prefix_cache=True)
    first = llamacpp_target.generate(TRACE[:1], config)
    again = llamacpp_target.generate(TRACE[:1], config)
    assert again[0].stats["cached_prefix_tokens"] == 0 and again[0].tokens == first[0].tokens


def test_unknown_names_and_unsupported_options_are_refused_clearly():
    with pytest.raises(UnknownTarget, match="llamacpp:llama\\+f16kv"):
        resolve_target("llamacpp:mistral")
    with pytest.raises(UnknownTarget, match="f32 weights on the CPU"):
        resolve_target("llamacpp:llama", dtype="fp16")


MEMORY_SAMPLES = [  # (scenario, what it exercises); llama.cpp is right on each
    (MemoryScenario(((3, 4, 5, 6, 7, 8),), (MemoryOp("add", 0, p0=2, p1=-1, value=5), MemoryOp("decode", 0, tokens=(9, 10))), (11,)), "shift by +5"),
    (MemoryScenario((tuple(range(3, 13)),), (MemoryOp("context_shift", 0, p0=2, value=4),), (11, 12)), "context shift"),
    (MemoryScenario(((3, 4, 5), (6, 7)), (MemoryOp("cp", 0, other=2, p0=0, p1=2), MemoryOp("rm", 1, p0=1), MemoryOp("keep", 2)), (5,)), "cp, rm, keep"),
    (MemoryScenario(((3, 4, 5, 6),), (MemoryOp("decode", 0, tokens=(7,)), MemoryOp("save_restore", 0, other=3)), (8,)), "state restored into another id"),
]


@pytest.mark.parametrize("scenario,what", MEMORY_SAMPLES, ids=[w for _, w in MEMORY_SAMPLES])
def test_memory_ops_agree_with_the_independent_oracle(scenario, what):
    PROPERTIES["surgery.memory"].check(target_for("llamacpp:llama"), scenario)


@pytest.mark.parametrize("property_id", ["engine.trace", "engine.same.prefix_cache", "engine.same.pool", "engine.same.chunked",
                                         "engine.same.speculative", "prefix.hit", "surgery.memory"])
def test_bounded_run_on_llamacpp_llama(property_id, tmp_path):
    """The ci profile's bounded run: the only findings allowed are triaged in corpus/llamacpp:llama."""
    target = target_for("llamacpp:llama")
    assert PROPERTIES[property_id].applies_to(target)
    assert_only_triaged_findings(target, "llamacpp:llama", property_id, BOUNDED, tmp_path)


def test_a_trim_that_leaves_a_rejected_draft_is_caught_and_shrunk(tmp_path):
    spec = "fuzzcache.targets.llamacpp.planted:trim_one_short"
    run = run_property(PROPERTIES["engine.trace"], resolve_target(spec), spec, FIND, tmp_path)
    assert len(run.found) == 1, run.found
    found = run.found[0]
    print(f"trim_one_short: found after {run.examples_to_find} examples; repro {found.scenario.short()}")
    # minimal trigger: one request whose single draft is rejected, then one more decode
    assert len(found.scenario.requests) == 1 and found.scenario.config.spec_k == 1, found.scenario.short()
    PROPERTIES["engine.trace"].check(target_for("llamacpp:llama"), found.scenario)  # the unplanted target passes it


def test_a_shift_range_bug_planted_in_the_memory_wrapper_is_caught_and_shrunk(tmp_path):
    """Keep going past the triaged upstream bugs (as a campaign does) until the planted one shows:
    llama.cpp's known bugs claim their own findings on the way, never the planted one."""
    spec = "fuzzcache.targets.llamacpp.planted:shift_range_one_short"
    target, known, found, shown = resolve_target(spec), set(), [], None
    for _ in range(8):
        run = run_property(PROPERTIES["surgery.memory"], target, spec, FIND, tmp_path, known=known)
        known |= {sig for saved in run.found for sig in saved.signatures}
        found += run.found
        shown = next((saved for saved in run.found if [op.kind for op in saved.scenario.ops] == ["add"]), None)
        if shown is not None or not run.found:
            break
    assert shown is not None, "the planted seq_add range bug was not found"
    print(f"shift_range_one_short: repro {shown.scenario.short()}; on the way: {[(s.scenario.short(), s.known_bugs) for s in found]}")
    assert shown.untriaged and not shown.known_bugs, shown.known_bugs
    assert all(saved.known_bugs for saved in found if saved is not shown), [(s.message, s.known_bugs) for s in found]
    PROPERTIES["surgery.memory"].check(target_for("llamacpp:llama"), shown.scenario)  # llama.cpp itself passes it


MEMORY_CORPUS = sorted((CORPUS / "llamacpp:llama" / "surgery.memory").glob("*.json"))


def triaged_bugs(path) -> list[str]:
    """The bugs a triaged repro names: a claim's ``known_bugs``, else the write-up its hand triage
    names ("corpus/<id>.md" in triage.writeup)."""
    triage = load(path).triage
    return triage.get("known_bugs") or [re.search(r"corpus/([\w-]+)\.md", triage["writeup"]).group(1)]


def agrees_modelling(target, scenario, modeled) -> bool:
    try:
        PROPERTIES["surgery.memory"].check_modeling(target, scenario, frozenset(modeled))
    except Finding:
        return False
    return True


def test_each_memory_writeup_is_a_known_bug_the_oracle_models():
    bugs = target_for("llamacpp:llama").known_bugs  # read through the worker process, as a campaign does
    assert sorted(b.id for b in bugs) == sorted({bug for path in MEMORY_CORPUS for bug in triaged_bugs(path)}) == [
        "llamacpp-seq-div-shift-sign", "llamacpp-shared-cells-move", "llamacpp-state-restore-empty", "llamacpp-state-save-pending-shift"]
    for bug in bugs:
        assert (CORPUS / f"{bug.id}.md").exists() and bug.modeled in BUGS and bug.properties == ("surgery.memory",)


@pytest.mark.parametrize("path", MEMORY_CORPUS, ids=[p.stem[6:14] for p in MEMORY_CORPUS])
def test_each_triaged_memory_repro_is_claimed_by_the_bug_its_triage_names(path):
    """Replayed, a triaged repro (28 by hand, the rest claimed in campaigns) still fails and
    ``known_bugs.claim`` names the bugs of its triage; the oracle passes it modelling that bug and
    fails it modelling any other one alone (the write-ups' shapes do not overlap); a repro two bugs
    explain together passes modelling both and neither alone."""
    target, case, named = target_for("llamacpp:llama"), load(path), triaged_bugs(path)
    finding = replay(case, target)
    assert finding is not None and finding.kind == "mismatch", finding
    found_by = claim(PROPERTIES["surgery.memory"], target, case.scenario, finding)
    assert found_by is not None and found_by.ids == named, found_by
    alone = [b.id for b in target.known_bugs if agrees_modelling(target, case.scenario, {b.modeled})]
    assert alone == (named if len(named) == 1 else [])
    assert agrees_modelling(target, case.scenario, {b.modeled for b in target.known_bugs if b.id in named})


def test_a_new_shape_of_the_seq_div_bug_is_claimed():
    """Issue 24's nightly finding: saved as new and untriaged before the bugs could claim their shapes."""
    target = target_for("llamacpp:llama")
    shape = MemoryScenario(((5, 9),), (MemoryOp("div", 0, p0=0, p1=6, value=2),), (7,))
    with pytest.raises(Finding) as found:
        PROPERTIES["surgery.memory"].check(target, shape)
    assert claim(PROPERTIES["surgery.memory"], target, shape, found.value).ids == ["llamacpp-seq-div-shift-sign"]


DRAWN = 300


def test_modelling_the_known_bugs_explains_llamacpp_on_drawn_scripts():
    """On drawn scripts, the oracle modelling all four bugs agrees with llama.cpp every time, the
    correct one only where no bug shows (some do: the draws reach them)."""
    target, agreed = target_for("llamacpp:llama"), []

    @settings(max_examples=DRAWN, deadline=None, database=None, derandomize=True)
    @given(memory_scenarios(target.vocab_size, target.memory_seqs))
    def explained(scenario):
        assert agrees_modelling(target, scenario, BUGS), scenario.short()
        agreed.append(agrees_modelling(target, scenario, ()))

    explained()
    print(f"{len(agreed)} drawn scripts: {agreed.count(False)} fail the correct oracle, all agree modelling the four bugs")
    assert len(agreed) == DRAWN and 0 < agreed.count(False) < len(agreed)


def test_modelling_the_known_bugs_does_not_hide_a_planted_bug():
    """An engine built on the oracle with seq_add's range one short (tests/planted.py), given
    llama.cpp's known bugs: its finding fails the oracle modelling all four, and none claims it."""
    engine = planted.PLANTED["surgery.memory"]()
    engine.known_bugs = target_for("llamacpp:llama").known_bugs
    shape = MemoryScenario(((3, 4, 5),), (MemoryOp("add", 0, p0=0, p1=2, value=1),), (6,))
    with pytest.raises(Finding) as found:
        PROPERTIES["surgery.memory"].check(engine, shape)
    assert not agrees_modelling(engine, shape, BUGS)
    assert claim(PROPERTIES["surgery.memory"], engine, shape, found.value) is None


@pytest.mark.parametrize("config", [EngineConfig(), EngineConfig(spec_k=3), EngineConfig(prefix_cache=True, chunk_size=2, max_batch_tokens=4),
                                    EngineConfig(max_num_seqs=2), EngineConfig(num_blocks=6, block_size=4)])
def test_the_lifecycle_maps_onto_sequences(llamacpp_target, config):
    """Stop tokens end a request in the server loop, aborts ``seq_rm`` its sequence at the step
    (before, during and after prefill), forks are sequences sharing the prompt's cells
    (``seq_cp``); every request sequence but the prefix-reuse ones ends holding no cell."""
    full = greedy_continuation(llamacpp_target.reference_logits, SHARED, 6)[0]
    trace = (
        Request(0, SHARED, 6, stop=(full[2],)),  # ends early at its first occurrence of full[2]
        Request(1, SHARED + (7,), 6, n=3),
        Request(2, (16,) * 9, 5, arrival=1, abort_at=2),  # aborted while its prompt is being computed, or after it
        Request(3, (4, 5), 6, arrival=2, abort_at=2),  # aborted at its arrival: before prefill
    )
    out = llamacpp_target.generate(trace, config)
    assert out[0].tokens == full[: full.index(full[2]) + 1]
    want = greedy_continuation(llamacpp_target.reference_logits, SHARED + (7,), 6)[0]
    assert [out[1].tokens] + [f.tokens for f in out[1].forks] == [want] * 3
    assert llamacpp_target.last_stats["forks"] == 2
    partial = greedy_continuation(llamacpp_target.reference_logits, (16,) * 9, 5)[0]
    assert out[2].tokens == partial[: len(out[2].tokens)] and out[2].stats["abort_phase"] in (1, 2, 3)
    assert out[3].tokens == [] and out[3].stats["abort_phase"] == 1
    assert llamacpp_target.last_pool.leaked == 0, llamacpp_target.last_pool
    during = llamacpp_target.generate([Request(0, (16,) * 9, 5, abort_at=1)], EngineConfig(max_batch_tokens=4))[0]
    assert during.tokens == [] and during.stats["abort_phase"] == 2 and llamacpp_target.last_pool.leaked == 0


WINDOW_PROMPT = tuple((7 * i + 3) % 61 for i in range(45))  # over two of gemma3's windows of 20


@pytest.mark.parametrize("config", [EngineConfig(), EngineConfig(max_batch_tokens=7, chunk_size=3), EngineConfig(num_blocks=10, block_size=8, max_num_seqs=3),
                                    EngineConfig(prefix_cache=True)], ids=["plain", "chunked", "pool", "prefix"])
def test_gemma3s_interleaved_cache_equals_the_oracle_across_its_window(config):
    """llama.cpp's iswa cache (an SWA cache beside the full one) on prompts crossing the window:
    a later request extending a finished one's whole sequence reuses it; one sharing only part
    of it recomputes (the SWA cells before that part's window may have gone to other tokens)."""
    target = target_for("llamacpp:gemma3")
    first = greedy_continuation(target.reference_logits, WINDOW_PROMPT, 6)[0]
    trace = (
        Request(0, WINDOW_PROMPT, 6),
        Request(1, WINDOW_PROMPT + tuple(first) + (9,), 4, arrival=12),  # extends request 0's whole sequence
        Request(2, WINDOW_PROMPT[:30] + (1, 2, 3), 5, arrival=12),  # shares 30 of its 45 prompt tokens
    )
    out = assert_equals_oracle(target, trace, config)
    assert target.last_pool.leaked == 0, target.last_pool
    if config.prefix_cache:
        assert out[1].stats["cached_prefix_tokens"] >= len(WINDOW_PROMPT) and out[2].stats["cached_prefix_tokens"] == 0
    if config.num_blocks:
        assert target.last_stats["preemptions"] > 0, target.last_stats


def test_prefix_hit_holds_gemma3_to_the_whole_sequences_it_reuses(monkeypatch):
    """prefix.hit on a windowed llama.cpp target: a prompt sharing only blocks of an earlier one
    owes no hit (a 10-minute campaign called that a miss: a false alarm); one extending an earlier
    request's whole sequence owes its prompt, and a server loop that never reuses is caught."""
    from fuzzcache.properties.prefix_hit import PrefixScenario, check_prefix_hit
    from fuzzcache.targets.llamacpp.engine import Server

    target = target_for("llamacpp:gemma3")
    assert target.prefix_reuse == "whole sequence"
    partial = PrefixScenario(4, (WINDOW_PROMPT, WINDOW_PROMPT[:30] + (1, 2, 3)), 2)
    assert partial.expected_hit(1, 4) == 28  # what the block rule would owe
    check_prefix_hit(target, partial)
    first = greedy_continuation(target.reference_logits, WINDOW_PROMPT, 2)[0]
    whole = PrefixScenario(4, (WINDOW_PROMPT, WINDOW_PROMPT + tuple(first) + (9,)), 2)
    check_prefix_hit(target, whole)
    monkeypatch.setattr(Server, "_reuse_prefix", lambda self, s, cached: None)  # planted: no reuse at all
    in_process = build_target("llamacpp:gemma3")  # the planted method is this process's, not the worker's
    with pytest.raises(Finding, match=f"cached_prefix_tokens=0, but an earlier request's whole sequence \\({len(WINDOW_PROMPT)} prompt tokens"):
        check_prefix_hit(in_process, whole)


def test_gemma3_refuses_drafts_and_the_memory_property():
    target = target_for("llamacpp:gemma3")
    assert target.window == 20 and "speculative" not in target.features
    with pytest.raises((ValueError, Unsupported), match="EngineConfig.spec_k=2: llamacpp:gemma3 drafts nothing"):  # Unsupported: from its worker
        target.generate(TRACE, EngineConfig(spec_k=2))
    assert "full-attention family" in PROPERTIES["surgery.memory"].unmet(target)


SWA_ROLLBACK = CORPUS / "llamacpp-swa-rollback-loses-cell"
# the shrunk trace of corpus/llamacpp-swa-rollback-loses-cell.md: request 2's third token follows a rejected draft
SWA_TRACE = (Request(0, (0,) * 19, 1), Request(1, (0,) * 20, 2), Request(2, (0,) * 18 + (1, 0, 1), 3), Request(3, (0,) * 19, 1))
SWA_CONFIG = EngineConfig(block_size=5, chunk_size=1, max_batch_tokens=4, spec_k=1, draft="trigram")


@pytest.mark.parametrize("flags,fails", [((), True), (("--no-unified",), False), (("--ubatch", "4"), False)])
def test_the_swa_rollback_repro_shows_the_lost_cell_only_where_the_writeup_says(flags, fails, tmp_path):
    """The standalone script of the write-up, run without fuzzcache: the rolled-back draft loses
    sequence 2's cell of position 3 with unified micro-batches of 1 token, and nothing without
    kv_unified or with micro-batches of 4 (exit 1 while llama.cpp has the bug)."""
    from exported import run_standalone

    done = run_standalone(SWA_ROLLBACK / "repro.py", tmp_path, before=f"sys.argv[1:] = {list(flags)!r}\n")
    assert done.returncode == (1 if fails else 0), done.stdout + done.stderr
    if fails:
        assert "starts at position 4 after the rolled-back draft, at 3 without it" in done.stdout, done.stdout
        assert re.search(r"logits without\| = 0\.01\d", done.stdout), done.stdout


def test_gemma3_with_drafts_turned_on_diverges_on_the_writeups_trace_and_not_without_them():
    """Why llamacpp:gemma3 drafts nothing: on the shrunk trace, the token after the rejected draft
    is more than 10x further from the HF forward (0.018 measured) than any token of the same trace
    without drafts (0.0009), which stay within the target's tolerance."""
    import dataclasses

    from fuzzcache.contract import FEATURES

    target = build_target("llamacpp:gemma3")  # in this process: its features are changed by hand
    target.features = FEATURES

    def worst(config) -> list[float]:
        out = target.generate(SWA_TRACE, config)
        return [float((c.logits - target.reference_logits(list(r.prompt) + c.tokens)[len(r.prompt) - 1 : -1]).abs().max())
                for r, c in zip(SWA_TRACE, out)]

    drafted, plain = worst(SWA_CONFIG), worst(dataclasses.replace(SWA_CONFIG, spec_k=0))
    assert drafted[2] > 10 * max(plain) and max(plain) < target.tolerance.logits, (drafted, plain)


def test_an_abort_that_leaves_its_cells_is_a_leak(tmp_path):
    spec = "fuzzcache.targets.llamacpp.planted:abort_leaks"
    run = run_property(PROPERTIES["engine.trace"], resolve_target(spec), spec, FIND, tmp_path)
    assert len(run.found) == 1 and run.found[0].kind == "leak", run.found
    found = run.found[0]
    print(f"abort_leaks: found after {run.examples_to_find} examples; repro {found.scenario.short()}")
    # minimal (3 tokens): one request aborted once it holds a cell, i.e. after its one-token prompt
    # ([prompt=1 new=2 abort=1]) or its first prompt token of two ([prompt=2 new=1 abort=1] max_batch_tokens=1)
    assert found.scenario.short().strip() in ("[prompt=1 new=2 abort=1]", "[prompt=2 new=1 abort=1] max_batch_tokens=1"), found.scenario.short()
    PROPERTIES["engine.trace"].check(target_for("llamacpp:llama"), found.scenario)  # the unplanted target passes it


def test_llamacpp_still_aborts_when_n_batch_is_below_n_seq_max():
    """The upstream abort the target avoids (corpus/llamacpp-outputs-below-seq-max.md): a context of
    n_batch=1, n_seq_max=2 and llama.cpp's default n_outputs_max aborts on its first decode."""
    code = (
        "from fuzzcache.targets.llamacpp.library import ContextShape, Model\n"
        "from fuzzcache.targets.llamacpp.gguf_model import write_gguf\n"
        "from fuzzcache.targets.tiny_models import SHAPES, tiny_model\n"
        "import sys, tempfile, os\n"
        "path = os.path.join(tempfile.mkdtemp(), 'm.gguf')\n"
        "write_gguf(tiny_model('llama', **SHAPES['tiny']), 'llama', path)\n"
        "model = Model(path, 64)\n"
        "lib = model.lib\n"
        "params = lib.llama_context_default_params()\n"
        "params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 256, 1, 1, 2\n"
        "ctx = lib.llama_init_from_model(model.handle, params)\n"
        "batch = lib.llama_batch_init(1, 0, 1)\n"
        "batch.n_tokens = 1; batch.token[0] = 5; batch.pos[0] = 0; batch.n_seq_id[0] = 1; batch.seq_id[0][0] = 0; batch.logits[0] = 1\n"
        "print('decode returned', lib.llama_decode(ctx, batch))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGABRT, (done.returncode, done.stdout, done.stderr[-2000:])
    assert "GGML_ASSERT(n_outputs_max <= cparams.n_outputs_max) failed" in done.stderr
