"""The seed document's ten fixed equivalence checks (``fuzzcache.seed_suite``), run against
fuzzcache's reference engine; each check also fails on a planted bug of its kind.

Source: the NanoGPT inference-engine correctness post (shared/seeds/000_bbc0a7bab8f3f640.txt).
The checks themselves, their fixed parameters and seeds live in ``fuzzcache/seed_suite.py``;
this module only runs them, plus a few assertions that are about the reference engine's
helpers and the suite's own baselines rather than about a target.
"""

from __future__ import annotations

import pytest
import torch

from fuzzcache import resolve_target
from fuzzcache.engine import batching, speculative
from fuzzcache.engine.chunked_prefill import chunk_spans
from fuzzcache.engine.kv_cache import greedy_decode
from fuzzcache.engine.paged import blocks_needed, slot_of
from fuzzcache.engine.scheduler import Scheduler
from fuzzcache.oracle import full_logits, greedy_continuation
from fuzzcache.seed_suite import ATOL, SEED_CHECKS, chi2_pvalue, run_seed_checks
from fuzzcache.targets.reference import ReferenceTarget

import planted


@pytest.fixture(scope="module")
def target():
    return resolve_target("reference")


@pytest.mark.parametrize("name", list(SEED_CHECKS))
def test_seed_check_passes_on_reference(target, name):
    SEED_CHECKS[name](target)


def test_run_seed_checks_reports_failures_and_crashes():
    def fails(target):
        raise AssertionError("rows mixed")

    def crashes(target):
        raise KeyError("missing")

    results = run_seed_checks(object(), {"a": lambda t: None, "b": fails, "c": crashes})
    assert results == [("a", True, ""), ("b", False, "rows mixed"), ("c", False, "KeyError: 'missing'")]


# ---------------------------------------------------------------------------------------
# Each check fails on one planted bug of its kind
# ---------------------------------------------------------------------------------------


def rejected_draft_kept(target_probs, draft_probs, drafts, generator):
    """Accept/reject as usual, but a rejected draft is emitted anyway instead of a residual
    sample: the output follows the draft, not the target (the seed's power check, with the
    rejection path still exercised)."""
    out = speculative.speculative_sample(target_probs, draft_probs, drafts, generator)
    return out if len(out) == len(drafts) + 1 else [*drafts[: len(out)]]


class NeverHitTarget(ReferenceTarget):
    """The engine-level prefix cache never hits (the ops' PrefixCache is the right one)."""

    class scheduler_class(Scheduler):
        def reuse_cached_prefix(self, seq):
            pass


def unstack_swaps_rows(stacked, lengths):
    """Rows 0 and 1 come back swapped: requests trade caches after a batched step."""
    caches = batching.unstack_kvs(stacked, lengths)
    return [caches[1], caches[0], *caches[2:]]


def ops_mutant(check: str, bug: str, **ops):
    """One planted bug with one op replaced, and the seed check that must catch it."""
    return pytest.param(check, lambda: planted.with_ops(bug, **ops), id=f"{check}: {bug}")


MUTANTS = [
    ops_mutant("1 kv cache", "decode_off_by_one_after_12", decode_one_token=planted.decode_off_by_one_after(12)),
    ops_mutant("2 batching", "unstack_swaps_rows", unstack_kvs=unstack_swaps_rows),
    ops_mutant("3 paged", "gather_floor_blocks", gather=planted.gather_floor_blocks),
    ops_mutant("4 prefix cache", "prefix_never_hits", prefix_cache_class=planted.PrefixCacheThatNeverHits),
    pytest.param("4 prefix cache", lambda: NeverHitTarget(name="scheduler_never_reuses_prefix"), id="4 prefix cache: scheduler_never_reuses_prefix"),
    ops_mutant("5 spec greedy", "verify_one_too_many", greedy_verify=planted.verify_one_too_many),
    ops_mutant("6 spec distribution", "residual_from_target", speculative_sample=planted.residual_from_target),
    ops_mutant("6 spec distribution", "rejected_draft_kept", speculative_sample=rejected_draft_kept),
    ops_mutant("7 kv trim", "trim_keeps_one_more", trim=planted.trim_keeps_one_more),
    ops_mutant("8 draft distributions", "unnormalised_drafts", make_draft=planted.unnormalised_drafts),
    ops_mutant("9 chunked prefill", "chunked_prefill_relative", chunked_prefill=planted.chunked_prefill_relative),
    ops_mutant("9 chunked prefill", "chunk_relative_positions", ragged_forward=planted.chunk_relative_forward),
    ops_mutant("10 fused", "fused_mask_leak", ragged_forward=planted.forward_seeing_padding),
    ops_mutant("10 fused", "fused_mask_leak_when_interleaved", run_step=planted.run_step_leaky_when_fused),
]


def test_every_check_has_a_mutant():
    assert {p.values[0] for p in MUTANTS} == set(SEED_CHECKS)


@pytest.mark.parametrize("name, make", MUTANTS)
def test_seed_check_fails_on_planted_bug(name, make):
    buggy = make()
    with pytest.raises(AssertionError) as info:
        SEED_CHECKS[name](buggy)
    print(f"{name} on {buggy.name}: {info.value}")


# ---------------------------------------------------------------------------------------
# Not part of the seed: the reference helpers and the suite's own baselines
# ---------------------------------------------------------------------------------------


def test_reference_helpers_do_the_seeds_arithmetic():
    # Test 3's block / slot arithmetic, at block size 4 around the boundaries it sweeps.
    for pos in range(17):
        assert slot_of(pos, 4) == (pos // 4, pos % 4)
    assert [blocks_needed(n, 4) for n in (3, 4, 5, 7, 8, 9)] == [1, 1, 2, 2, 2, 3]
    # Test 9's chunk boundaries: prompt 14 in chunks of 4.
    assert chunk_spans(0, 14, 4) == [(0, 4), (4, 8), (8, 12), (12, 14)]


def test_greedy_decode_baseline_equals_full_recompute(target):
    """The suite's cached baseline (``greedy_decode``) agrees with the slow oracle."""
    prompt = torch.randint(0, 64, (10,), generator=torch.Generator().manual_seed(101)).tolist()
    tokens, rows = greedy_decode(target.model, prompt, 10)
    want_tokens, want_rows = greedy_continuation(lambda s: full_logits(target.model, s), prompt, 10)
    assert tokens == want_tokens
    assert torch.allclose(rows, want_rows, atol=ATOL, rtol=0)


def test_chi_squared_fits_the_right_sampler_and_rejects_a_wrong_one():
    """Power of check 6's test on its own: 2000 samples from a peaked target pass, 2000 from
    a uniform draft do not."""
    target_dist = torch.softmax(torch.randn(64, generator=torch.Generator().manual_seed(0)) * 2, -1)
    gen = torch.Generator().manual_seed(6100)
    right = torch.bincount(torch.multinomial(target_dist, 2000, replacement=True, generator=gen), minlength=64)
    wrong = torch.bincount(torch.multinomial(torch.ones(64), 2000, replacement=True, generator=gen), minlength=64)
    assert chi2_pvalue(right, target_dist, 2000) > 0.01
    assert chi2_pvalue(wrong, target_dist, 2000) < 0.01


def test_run_seed_checks_on_reference_all_pass(target):
    results = run_seed_checks(target)
    assert [name for name, _, _ in results] == list(SEED_CHECKS)
    assert all(ok for _, ok, _ in results), [r for r in results if not r[1]]
