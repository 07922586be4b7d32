"""The scheduler through the reference target: completions equal the greedy full recompute,
and the engine keeps its books (limits per step, arrivals, blocks all returned, prefix
reuse, preemption) whatever the config. A recording subclass checks the block accounting
after every ``schedule()``."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest
import torch

from fuzzcache.contract import DRAFTS, Completion, EngineConfig, Request, min_blocks_for
from fuzzcache.engine.paged import blocks_needed
from fuzzcache.engine.scheduler import STAT_KEYS, Scheduler
from fuzzcache.model import ModelConfig
from fuzzcache.oracle import greedy_continuation
from fuzzcache.targets.reference import ReferenceTarget

MODEL = ModelConfig(vocab_size=32, n_layer=2, n_head=2, n_kv_head=1, head_dim=8, max_seq_len=48)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The model is tiny: intra-op threads only add synchronisation (several times slower on 2 busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def target() -> ReferenceTarget:
    return ReferenceTarget(MODEL)


ROPE_MQA = ModelConfig(vocab_size=32, n_layer=2, n_head=4, n_kv_head=1, head_dim=8, max_seq_len=48, positions="rope", seed=3)


@pytest.fixture(scope="module")
def rope_target() -> ReferenceTarget:
    return ReferenceTarget(ROPE_MQA)


_ORACLE: dict[tuple[int, tuple[int, ...], int], tuple[list[int], torch.Tensor]] = {}


def oracle(target: ReferenceTarget, prompt: tuple[int, ...], n: int) -> tuple[list[int], torch.Tensor]:
    key = (id(target), prompt, n)
    if key not in _ORACLE:
        _ORACLE[key] = greedy_continuation(target.reference_logits, prompt, n)
    return _ORACLE[key]


# ---- a scheduler that records and audits every step ---------------------------------------


@dataclass
class StepRecord:
    step: int
    works: list[tuple[int, int, int, int]]  # (rid, num_computed before, n, number of drafts)
    running: int  # running sequences after scheduling

    @property
    def tokens(self) -> int:
        return sum(n for _, _, n, _ in self.works)


class RecordingScheduler(Scheduler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records: list[StepRecord] = []

    def schedule(self):
        plan = super().schedule()
        self.records.append(
            StepRecord(self.step, [(w.seq.request.rid, w.seq.num_computed, w.n, len(w.drafts)) for w in plan], len(self.running))
        )
        self.audit(plan)
        return plan

    def audit(self, plan) -> None:
        """Every block is held by exactly its ref_count running sequences, or is free or evictable."""
        alloc, b = self.allocator, self.config.block_size
        held = Counter(block for seq in self.running for block in seq.block_table)
        for seq in self.running:
            assert len(set(seq.block_table)) == len(seq.block_table), "a block twice in one table"
        for block in range(self.pool.num_blocks):
            assert alloc.ref_count[block] == held[block], f"step {self.step}: block {block} ref_count {alloc.ref_count[block]} held by {held[block]}"
        idle = alloc.free + list(alloc.evictable)
        assert len(idle) == len(set(idle)), f"step {self.step}: a block is both free and evictable, or free twice"
        assert sorted(idle) == [x for x in range(self.pool.num_blocks) if held[x] == 0]
        for seq in self.sequences:
            if seq not in self.running:
                assert seq.block_table == [], f"step {self.step}: rid {seq.request.rid} holds blocks while not running"
        for w in plan:
            assert w.n >= 1
            assert len(w.seq.block_table) * b >= w.seq.num_computed + w.n, "work without room in the pool"
        # The pool holds exactly the computed KV of each running sequence: finite below
        # num_computed, NaN from there to the end of its blocks (rejected drafts are poisoned).
        for seq in self.running:
            if not seq.block_table:
                continue
            idx = torch.tensor(seq.block_table)
            for k, v in zip(self.pool.k, self.pool.v):
                for t in (k, v):
                    slots = t[idx].transpose(0, 1).reshape(t.shape[1], -1, t.shape[3])  # (H_kv, blocks*b, D)
                    assert bool(slots[:, : seq.num_computed].isfinite().all()), f"step {self.step}: rid {seq.request.rid} has holes in its KV"
                    assert bool(slots[:, seq.num_computed :].isnan().all()), f"step {self.step}: rid {seq.request.rid} has stale KV past num_computed"
        # First come, first served: the waiting queue stays in arrival order, so a preempted
        # sequence goes back in front of the ones that arrived after it.
        arrivals = [seq.request.arrival for seq in self.waiting]
        assert arrivals == sorted(arrivals), f"step {self.step}: waiting queue out of arrival order {arrivals}"


def run_recorded(target: ReferenceTarget, requests: list[Request], config: EngineConfig) -> tuple[list[Completion], RecordingScheduler]:
    """``target.generate`` (validation included) with a RecordingScheduler; returns it too."""
    made: list[RecordingScheduler] = []

    class Rec(RecordingScheduler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    target.scheduler_class = Rec
    try:
        completions = target.generate(requests, config)
    finally:
        del target.scheduler_class  # back to the class attribute
    assert len(made) == 1
    return completions, made[0]


def check_completions(target: ReferenceTarget, requests: list[Request], completions: list[Completion]) -> None:
    assert [c.rid for c in completions] == [r.rid for r in requests], "completions out of request order"
    for req, comp in zip(requests, completions):
        assert len(comp.tokens) == req.max_new_tokens, f"rid {req.rid}"
        assert all(isinstance(t, int) for t in comp.tokens)
        assert comp.logits.shape == (len(comp.tokens), target.vocab_size)
        assert comp.logits.dtype == torch.float32
        assert comp.logits.argmax(-1).tolist() == comp.tokens, f"rid {req.rid}: tokens are not the argmax of their logits"
        assert set(STAT_KEYS) <= set(comp.stats)
        assert 0 <= comp.stats["draft_accepted"] <= comp.stats["draft_proposed"]
        want_tokens, want_logits = oracle(target, req.prompt, req.max_new_tokens)
        assert comp.tokens == want_tokens, f"rid {req.rid}: differs from the full recompute"
        torch.testing.assert_close(comp.logits, want_logits, atol=1e-4, rtol=1e-4)


def check_blocks_back(scheduler: Scheduler) -> None:
    alloc, pool = scheduler.allocator, scheduler.pool
    assert not scheduler.running and not scheduler.waiting
    assert alloc.ref_count == [0] * pool.num_blocks
    idle = alloc.free + list(alloc.evictable)
    assert sorted(idle) == list(range(pool.num_blocks)), "a block leaked or is listed twice"
    assert all(seq.block_table == [] for seq in scheduler.sequences)
    cached = set(scheduler.prefix.hash_of_block) if scheduler.prefix is not None else set()
    assert set(alloc.evictable) == cached, "evictable blocks must be exactly the cached ones"
    for block in alloc.free:  # freed blocks are poisoned: nothing stale survives a release or trim
        assert all(bool(k[block].isnan().all()) and bool(v[block].isnan().all()) for k, v in zip(pool.k, pool.v)), f"free block {block} not NaN"
    for block in alloc.evictable:  # cached blocks keep their (full) KV
        assert all(bool(k[block].isfinite().all()) and bool(v[block].isfinite().all()) for k, v in zip(pool.k, pool.v)), f"cached block {block} has holes"


def prompt(seed: int, n: int) -> tuple[int, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(0, MODEL.vocab_size, (n,), generator=g).tolist())


# ---- completions ---------------------------------------------------------------------------

ORDER_REQUESTS = [
    Request(7, prompt(1, 5), 3, arrival=2),
    Request(3, prompt(2, 3), 0, arrival=0),
    Request(5, prompt(3, 1), 1, arrival=1),
    Request(11, prompt(4, 6), 5, arrival=0),
    Request(2, prompt(5, 2), 0, arrival=3),
]


@pytest.mark.parametrize(
    "config",
    [
        EngineConfig(),
        EngineConfig(block_size=1, max_num_seqs=1),
        EngineConfig(block_size=3, chunk_size=2, max_batch_tokens=4, interleave=True),
        EngineConfig(block_size=2, spec_k=2, draft="bigram", prefix_cache=True),
    ],
    ids=["defaults", "serial", "chunked-fused", "spec-prefix"],
)
def test_completions_in_request_order_with_exact_lengths(target, config):
    completions, scheduler = run_recorded(target, ORDER_REQUESTS, config)
    check_completions(target, ORDER_REQUESTS, completions)
    assert [len(c.tokens) for c in completions] == [3, 0, 1, 5, 0]
    check_blocks_back(scheduler)
    # Requests with max_new_tokens = 0 are never computed at all.
    computed = {rid for rec in scheduler.records for rid, *_ in rec.works}
    assert computed == {7, 5, 11}


def test_no_requests_gives_no_completions(target):
    assert target.generate([], EngineConfig()) == []
    assert target.generate([Request(0, (1, 2), 0)], EngineConfig(num_blocks=1))[0].tokens == []


# ---- blocks --------------------------------------------------------------------------------

SHARED = prompt(9, 6)
BLOCK_REQUESTS = [
    Request(0, SHARED + (1, 2), 6, 0),
    Request(1, SHARED + (1, 2, 3), 4, 1),
    Request(2, prompt(10, 5), 7, 0),
    Request(3, SHARED, 3, 4),
]


def min_pool(requests: list[Request], block_size: int, spec_k: int = 0) -> int:
    cfg = EngineConfig(block_size=block_size, spec_k=spec_k)
    return max(min_blocks_for(r, cfg) for r in requests)


@pytest.mark.parametrize(
    "config",
    [
        EngineConfig(block_size=4),
        EngineConfig(block_size=2, prefix_cache=True),
        EngineConfig(block_size=2, num_blocks=min_pool(BLOCK_REQUESTS, 2), prefix_cache=True, chunk_size=3),
        EngineConfig(block_size=3, num_blocks=min_pool(BLOCK_REQUESTS, 3, 3), spec_k=3, draft="prompt_lookup", prefix_cache=True),
        EngineConfig(block_size=1, num_blocks=min_pool(BLOCK_REQUESTS, 1, 2) + 2, spec_k=2, interleave=True, chunk_size=2),
    ],
    ids=["plain", "prefix", "prefix-minpool", "spec-lookup-minpool", "block1-spec"],
)
def test_every_block_comes_back(target, config):
    completions, scheduler = run_recorded(target, BLOCK_REQUESTS, config)
    check_completions(target, BLOCK_REQUESTS, completions)
    check_blocks_back(scheduler)
    if config.num_blocks is not None:
        assert scheduler.pool.num_blocks == config.num_blocks


def test_scheduler_run_directly_returns_every_block(target):
    config = EngineConfig(block_size=2, num_blocks=min_pool(BLOCK_REQUESTS, 2), prefix_cache=True)
    scheduler = Scheduler(target.model, config, list(BLOCK_REQUESTS))
    completions = scheduler.run()
    check_completions(target, BLOCK_REQUESTS, completions)
    alloc = scheduler.allocator
    assert len(alloc.free) + len(alloc.evictable) == config.num_blocks
    assert all(c == 0 for c in alloc.ref_count)
    assert scheduler.engine_stats["evictions"] == alloc.evictions


# ---- per-step limits -----------------------------------------------------------------------

LIMIT_REQUESTS = [Request(i, prompt(20 + i, 3 + 2 * i), 4 + i % 3, arrival=i % 2) for i in range(5)]


@pytest.mark.parametrize(
    "config",
    [
        EngineConfig(block_size=2, max_num_seqs=2, max_batch_tokens=5, chunk_size=3),
        EngineConfig(block_size=4, max_num_seqs=3, max_batch_tokens=4),
        EngineConfig(block_size=2, max_num_seqs=2, max_batch_tokens=6, spec_k=3, draft="trigram"),
        EngineConfig(block_size=2, max_num_seqs=2, max_batch_tokens=3, spec_k=4, draft="prompt_lookup", prefix_cache=True, interleave=True),
    ],
    ids=["chunked", "unchunked", "spec", "spec-tight"],
)
def test_running_set_and_step_tokens_stay_within_limits(target, config):
    completions, scheduler = run_recorded(target, LIMIT_REQUESTS, config)
    check_completions(target, LIMIT_REQUESTS, completions)
    check_blocks_back(scheduler)
    for rec in scheduler.records:
        assert rec.running <= config.max_num_seqs, f"step {rec.step}: {rec.running} running"
        assert len(rec.works) <= config.max_num_seqs
        assert len({rid for rid, *_ in rec.works}) == len(rec.works), "a sequence twice in one step"
        assert rec.tokens <= config.max_batch_tokens, f"step {rec.step}: {rec.tokens} tokens"
        if config.chunk_size is not None:
            assert all(n <= config.chunk_size for _, _, n, d in rec.works if not d)
        if config.spec_k:
            assert all(d <= config.spec_k for *_, d in rec.works)
    # The limits were actually reached, so the assertions above were not vacuous.
    assert max(rec.running for rec in scheduler.records) == config.max_num_seqs
    assert max(rec.tokens for rec in scheduler.records) == config.max_batch_tokens


def test_max_num_seqs_one_runs_requests_one_at_a_time(target):
    requests = LIMIT_REQUESTS[:3]
    completions, scheduler = run_recorded(target, requests, EngineConfig(block_size=2, max_num_seqs=1))
    check_completions(target, requests, completions)
    order = [rec.works[0][0] for rec in scheduler.records if rec.works]
    assert all(len(rec.works) <= 1 for rec in scheduler.records)
    # Each request runs to completion before the next starts (arrival order, then request order).
    assert order == sorted(order, key=lambda rid: (requests[rid].arrival, rid))


# ---- arrivals --------------------------------------------------------------------------------


@pytest.mark.parametrize("first_max_new", [1, 9], ids=["engine-idle-before", "engine-busy"])
def test_request_is_not_computed_before_its_arrival(target, first_max_new):
    requests = [Request(0, prompt(30, 4), first_max_new, arrival=0), Request(1, prompt(31, 3), 2, arrival=5)]
    completions, scheduler = run_recorded(target, requests, EngineConfig(block_size=2))
    check_completions(target, requests, completions)
    steps_of = {rid: [rec.step for rec in scheduler.records if any(w[0] == rid for w in rec.works)] for rid in (0, 1)}
    assert steps_of[0][0] == 0
    assert min(steps_of[1]) == 5  # not before step 5, and admitted at once with room to spare
    assert [rec.step for rec in scheduler.records] == list(range(len(scheduler.records)))  # steps tick while idle


def test_arrival_order_not_list_order_decides_who_runs_first(target):
    requests = [Request(0, prompt(32, 3), 2, arrival=3), Request(1, prompt(33, 3), 2, arrival=0)]
    completions, scheduler = run_recorded(target, requests, EngineConfig(block_size=2))
    check_completions(target, requests, completions)
    assert scheduler.records[0].works[0][0] == 1
    assert min(rec.step for rec in scheduler.records if any(w[0] == 0 for w in rec.works)) == 3


# ---- prefix reuse ----------------------------------------------------------------------------


@pytest.mark.parametrize("length, cached", [(8, 4), (9, 8), (7, 4), (4, 0), (12, 8)])
@pytest.mark.parametrize("second_arrival", [2, 8], ids=["first-running", "first-finished"])
def test_fully_cached_prompt_still_computes_its_last_token(target, length, cached, second_arrival):
    p = prompt(40, length)
    requests = [Request(0, p, 3, arrival=0), Request(1, p, 3, arrival=second_arrival)]
    completions, scheduler = run_recorded(target, requests, EngineConfig(block_size=4, prefix_cache=True))
    check_completions(target, requests, completions)
    check_blocks_back(scheduler)
    assert completions[0].stats["cached_prefix_tokens"] == 0
    assert completions[1].stats["cached_prefix_tokens"] == cached
    assert target.last_stats["prefix_hit_blocks"] == cached // 4
    first = next(w for rec in scheduler.records for w in rec.works if w[0] == 1)
    assert first[1] == cached  # starts after the reused blocks...
    assert first[2] == length - cached >= 1  # ...and computes the rest of the prompt, last token included


def test_prefix_reuse_is_off_without_prefix_cache(target):
    p = prompt(41, 9)
    requests = [Request(0, p, 2, arrival=0), Request(1, p, 2, arrival=3)]
    completions, scheduler = run_recorded(target, requests, EngineConfig(block_size=4))
    check_completions(target, requests, completions)
    assert all(c.stats["cached_prefix_tokens"] == 0 for c in completions)
    assert scheduler.prefix is None and target.last_stats["prefix_hit_blocks"] == 0


def test_same_step_arrivals_do_not_share_uncommitted_blocks(target):
    p = prompt(42, 9)
    requests = [Request(0, p, 2), Request(1, p, 2)]
    completions, scheduler = run_recorded(target, requests, EngineConfig(block_size=4, prefix_cache=True))
    check_completions(target, requests, completions)
    check_blocks_back(scheduler)
    assert all(c.stats["cached_prefix_tokens"] == 0 for c in completions)


# ---- preemption ------------------------------------------------------------------------------

PREEMPT_REQUESTS = [Request(i, prompt(50 + i, 4), 6) for i in range(3)]


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"prefix_cache": True},
        {"chunk_size": 1},
        {"spec_k": 2, "draft": "bigram"},
        {"spec_k": 1, "prefix_cache": True, "interleave": True, "chunk_size": 3},
    ],
    ids=["plain", "prefix", "chunk1", "spec", "all"],
)
def test_minimum_pool_preempts_and_still_equals_the_oracle(target, extra):
    config = EngineConfig(block_size=2, **extra)
    config = EngineConfig(block_size=2, num_blocks=min_pool(PREEMPT_REQUESTS, 2, config.spec_k), **extra)
    completions, scheduler = run_recorded(target, PREEMPT_REQUESTS, config)
    check_completions(target, PREEMPT_REQUESTS, completions)
    check_blocks_back(scheduler)
    assert target.last_stats["preemptions"] > 0
    assert sum(c.stats["preemptions"] for c in completions) == target.last_stats["preemptions"]


@pytest.mark.parametrize("same_token", [True, False], ids=["same-token", "different-tokens"])
@pytest.mark.parametrize(
    "extra, max_new",
    [({}, 3), ({"prefix_cache": True}, 3), ({"spec_k": 1}, 2), ({"spec_k": 2, "prefix_cache": True, "draft": "prompt_lookup"}, 1)],
    ids=["plain", "prefix", "spec", "spec-prefix"],
)
def test_two_one_token_prompts_share_a_four_block_pool(target, same_token, extra, max_new):
    requests = [Request(0, (5,), max_new), Request(1, (5,) if same_token else (6,), max_new)]
    config = EngineConfig(block_size=1, num_blocks=4, **extra)
    assert min_pool(requests, 1, config.spec_k) == 4
    completions, scheduler = run_recorded(target, requests, config)
    check_completions(target, requests, completions)
    check_blocks_back(scheduler)


# ---- validation ------------------------------------------------------------------------------

OK = [Request(0, (1, 2, 3), 2)]


@pytest.mark.parametrize(
    "requests, config, field",
    [
        (OK, EngineConfig(block_size=0), "block_size"),
        (OK, EngineConfig(chunk_size=0), "chunk_size"),
        (OK, EngineConfig(num_blocks=0), "num_blocks"),
        (OK, EngineConfig(block_size=2, num_blocks=2), "num_blocks"),  # needs ceil(5 / 2) = 3
        (OK, EngineConfig(block_size=2, num_blocks=3, spec_k=2), "num_blocks"),  # spec slack: ceil(7 / 2) = 4
        (OK, EngineConfig(max_num_seqs=0), "max_num_seqs"),
        (OK, EngineConfig(max_batch_tokens=0), "max_batch_tokens"),
        (OK, EngineConfig(spec_k=-1), "spec_k"),
        (OK, EngineConfig(draft="unigram"), "draft"),
        ([Request(0, (1, MODEL.vocab_size), 1)], EngineConfig(), "vocab"),
        ([Request(0, (-1,), 1)], EngineConfig(), "vocab"),
        ([Request(0, (1,) * 40, 9)], EngineConfig(), "max_seq_len"),
        ([Request(0, (), 1)], EngineConfig(), "empty prompt"),
        ([Request(0, (1,), -1)], EngineConfig(), "max_new_tokens"),
        ([Request(0, (1,), 1, arrival=-1)], EngineConfig(), "arrival"),
        ([Request(4, (1,), 1), Request(4, (2,), 1)], EngineConfig(), "duplicate rid"),
    ],
)
def test_invalid_input_raises_value_error_naming_the_field(target, requests, config, field):
    with pytest.raises(ValueError, match=field):
        target.generate(requests, config)


def test_limits_at_the_boundary_are_accepted(target):
    exact = [Request(0, (1,) * 40, MODEL.max_seq_len - 40)]  # prompt + max_new == max_seq_len
    config = EngineConfig(block_size=4, num_blocks=blocks_needed(MODEL.max_seq_len, 4))
    completions = target.generate(exact, config)
    assert len(completions[0].tokens) == MODEL.max_seq_len - 40
    check_completions(target, exact, completions)


# ---- a seeded sweep: every invariant at once over random configs ---------------------------


def random_case(seed: int) -> tuple[list[Request], EngineConfig]:
    """Up to 5 requests, often sharing prefixes or whole prompts over a small alphabet (so the
    drafts have repeats to find), with every knob random and pools often at the minimum."""
    rng = random.Random(seed)
    base = tuple(rng.randrange(4) for _ in range(12))
    requests: list[Request] = []
    for rid in range(rng.randint(1, 5)):
        r = rng.random()
        if r < 0.3:
            p = base[: rng.randint(1, 12)]
        elif r < 0.45 and requests:
            p = rng.choice(requests).prompt
        else:
            alphabet = MODEL.vocab_size if rng.random() < 0.5 else 4
            p = tuple(rng.randrange(alphabet) for _ in range(rng.randint(1, 12)))
        requests.append(Request(rid, p, rng.choice([0, 1, 2, 5, 9, 14]), arrival=rng.choice([0, 0, 1, 3, 6])))
    block_size = rng.choice([1, 2, 3, 4, 16])
    spec_k = rng.choice([0, 0, 1, 3])
    tight = min_pool(requests, block_size, spec_k)
    config = EngineConfig(
        block_size=block_size,
        num_blocks=rng.choice([None, tight, tight, tight, tight + 1, tight + 4]),
        chunk_size=rng.choice([None, 1, 2, 5]),
        max_num_seqs=rng.randint(1, 5),
        max_batch_tokens=rng.choice([None, 1, 3, 8]),
        prefix_cache=rng.random() < 0.6,
        spec_k=spec_k,
        draft=rng.choice(DRAFTS),
        interleave=rng.random() < 0.5,
    )
    return requests, config


SWEEP_SEEDS = range(40)
_SWEEP: dict[int, tuple[list[Completion], RecordingScheduler, dict[str, int]]] = {}


def sweep_run(target: ReferenceTarget, seed: int):
    if seed not in _SWEEP:
        requests, config = random_case(seed)
        completions, scheduler = run_recorded(target, requests, config)
        _SWEEP[seed] = completions, scheduler, dict(target.last_stats)
    return _SWEEP[seed]


@pytest.mark.parametrize("seed", SWEEP_SEEDS)
def test_seeded_sweep_keeps_every_invariant(target, seed):
    requests, config = random_case(seed)
    completions, scheduler, stats = sweep_run(target, seed)
    check_completions(target, requests, completions)
    check_blocks_back(scheduler)
    budget = config.max_batch_tokens or float("inf")
    for rec in scheduler.records:
        assert rec.running <= config.max_num_seqs and rec.tokens <= budget
        for rid, *_ in rec.works:
            assert rec.step >= requests[rid].arrival
    assert stats["steps"] == scheduler.step == len(scheduler.records)
    assert stats["evictions"] == scheduler.allocator.evictions


def test_seeded_sweep_reaches_every_path(target):
    """The sweep is only evidence if it exercises eviction, preemption, prefix hits, drafts
    (accepted and rejected) and fused steps somewhere."""
    totals: Counter = Counter()
    for seed in SWEEP_SEEDS:
        completions, _, stats = sweep_run(target, seed)
        totals.update({k: v for k, v in stats.items() if k != "steps"})
        for c in completions:
            totals["draft_proposed"] += c.stats["draft_proposed"]
            totals["draft_accepted"] += c.stats["draft_accepted"]
    for key in ("evictions", "preemptions", "prefix_hit_blocks", "fused_steps", "draft_accepted"):
        assert totals[key] > 0, f"the sweep never reached {key}: {dict(totals)}"
    assert totals["draft_accepted"] < totals["draft_proposed"], "no draft was ever rejected"


@pytest.mark.parametrize("seed", range(100, 110))
def test_seeded_sweep_on_a_rope_mqa_model(rope_target, seed):
    """Same invariants with rotary positions and one KV head: a position slip in gather or
    scatter shows up differently from learned positions."""
    requests, config = random_case(seed)
    completions, scheduler = run_recorded(rope_target, requests, config)
    check_completions(rope_target, requests, completions)
    check_blocks_back(scheduler)
