"""The seed document's ten fixed equivalence checks, as a library that runs against a target.

Source: the NanoGPT inference-engine correctness post (shared/seeds/000_bbc0a7bab8f3f640.txt).
Each ``check_NN_*`` function is one of the post's ten tests, at the post's own fixed
parameters where it gives them (block size 4 and prompt lengths 3, 4, 5, 7, 8 for paging; a
12-token shared prefix with 4-token suffixes; 3 prompts x 8 tokens for speculative greedy;
2000 trials x 3 seeds for the chi-squared check; 4 drafts with 2 accepted for the trim;
prompt 14 in chunks of 4; vocab 20 for the draft grid) and small fixed values where it does
not. They are plain, hand-picked examples with no search at all: the baseline that the
property-based fuzzer has to beat. Every random input comes from a seeded
``torch.Generator``, so every check is deterministic.

A target here is one built on the reference engine (``fuzzcache.targets.reference``): it has
``.model`` (a TinyGPT), ``.ops`` (an ``EngineOps``) and ``.generate``. Every place where the
seed calls an engine function goes through ``target.ops`` or ``target.generate``, so a mutant
with one op replaced (or a Scheduler subclass) is checked exactly as the seed would check it.
Baselines never go through ``target.ops``: they are direct model forwards, the full-recompute
oracle, or the reference module's own ``greedy_decode``.

Each check raises AssertionError with a message saying what differed; ``run_seed_checks``
runs all ten and reports (name, passed, message) per check.

Tolerance: the seed's atol=1e-5 (rtol=0) in float32. TinyGPT's logits have std ~4
(``ModelConfig.logit_scale``); the float32 reordering noise between a cached and a one-shot
forward measured ~3e-6 on CPU, so 1e-5 holds, while real mixing of positions or rows moves
logits by O(1). Lower-precision targets use ``fuzzcache.compare.tolerance_for``.
"""

from __future__ import annotations

from typing import Callable

import torch

from fuzzcache.compare import tolerance_for
from fuzzcache.contract import EngineConfig, Request
from fuzzcache.engine.batching import Row
from fuzzcache.engine.kv_cache import cache_len, greedy_decode
from fuzzcache.engine.paged import BlockPool, blocks_needed
from fuzzcache.oracle import full_logits, greedy_continuation

ATOL = 1e-5  # the seed's tolerance (float32); see the module docstring

__all__ = [
    "ATOL",
    "SEED_CHECKS",
    "chi2_pvalue",
    "check_01_recompute_vs_kv_cache",
    "check_02_unbatched_vs_batched",
    "check_03_contiguous_vs_paged_kv",
    "check_04_prefix_cached_vs_normal",
    "check_05_speculative_greedy",
    "check_06_spec_distribution",
    "check_07_kv_cache_trim",
    "check_08_draft_distributions",
    "check_09_chunked_vs_full_prefill",
    "check_10_fused_interleaved",
    "run_seed_checks",
]


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _require(condition: bool, message: str) -> None:
    """``assert`` that survives ``python -O``."""
    if not condition:
        raise AssertionError(message)


def _atol(model) -> float:
    return ATOL if model.dtype == torch.float32 else tolerance_for(model.dtype).logits


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference (inf on a shape mismatch or NaN)."""
    a, b = a.float().cpu(), b.float().cpu()
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    return float((a - b).abs().nan_to_num(float("inf")).max())


def _close(model, a: torch.Tensor, b: torch.Tensor) -> bool:
    return _diff(a, b) <= _atol(model)


def _require_close(model, what: str, got: torch.Tensor, want: torch.Tensor) -> None:
    """AssertionError naming ``what`` when ``got`` and ``want`` differ beyond the tolerance."""
    if tuple(got.shape) != tuple(want.shape):
        raise AssertionError(f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}")
    d = _diff(got, want)
    _require(d <= _atol(model), f"{what}: max abs diff {d:.3g} > atol {_atol(model):g}")


def _require_cache_close(model, what: str, got, want) -> None:
    """Two caches (per layer (1, H_kv, T, D)) hold the same entries."""
    _require(len(got) == len(want), f"{what}: {len(got)} layers != {len(want)}")
    for layer, ((k, v), (wk, wv)) in enumerate(zip(got, want)):
        _require_close(model, f"{what}: layer {layer} keys", k, wk)
        _require_close(model, f"{what}: layer {layer} values", v, wv)


def _rand_tokens(n: int, seed: int, vocab: int = 64) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n,), generator=gen).tolist()


def _forward(model, tokens: list[int]):
    """Baseline: one forward over ``tokens`` from position 0, no cache, straight through the
    model. Returns logits (T, V) and the cache, per layer (1, H_kv, T, D)."""
    ids = torch.tensor([tokens], device=model.device)  # (1, T)
    pos = torch.arange(len(tokens), device=model.device)[None]  # (1, T)
    logits, kv = model(ids, pos)  # (1, T, V)
    return logits[0], kv


def _new_entries(cache, n: int):
    """The last ``n`` positions of a cache, per layer (1, H_kv, n, D)."""
    return [(k[:, :, -n:], v[:, :, -n:]) for k, v in cache]


def _has_nan(cache) -> bool:
    return any(bool(k.isnan().any() or v.isnan().any()) for k, v in cache)


def chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor, n: int) -> float:
    """Chi-squared goodness of fit of ``counts`` (V,) to ``n * probs`` on bins with expected
    > 5, the remaining bins lumped into one (so observed and expected totals agree).

    Uses ``spec_distribution.chi_squared_pvalue`` (Wilson-Hilferty), so no scipy."""
    from fuzzcache.properties.spec_distribution import chi_squared_pvalue

    expected = probs.double().cpu() / probs.double().sum() * n  # float32 probs sum to 1 only to ~1e-7
    counts = counts.double().cpu()
    keep = expected > 5
    obs = counts[keep].tolist()
    exp = expected[keep].tolist()
    rest_exp = float(expected[~keep].sum())
    rest_obs = float(counts[~keep].sum())
    if rest_exp > 5:
        obs.append(rest_obs)
        exp.append(rest_exp)
    else:  # too little mass to test: fold it into the largest bin
        i = max(range(len(exp)), key=exp.__getitem__)
        obs[i] += rest_obs
        exp[i] += rest_exp
    _require(len(obs) >= 3, "too few bins for a meaningful chi-squared test")
    return chi_squared_pvalue(obs, exp)


# ---------------------------------------------------------------------------------------
# Check 1: full recompute == KV-cached incremental decode
# ---------------------------------------------------------------------------------------


def check_01_recompute_vs_kv_cache(target) -> None:
    """Prefill 10 tokens, decode 10 with the cache; every step's logits equal the full
    recompute's row at the same position (the seed's ``prompt_len - 1 + i``)."""
    model, ops = target.model, target.ops
    prompt_len, num_decode_steps = 10, 10
    prompt = _rand_tokens(prompt_len, seed=101, vocab=model.config.vocab_size)

    # Cached path, as the seed: prefill, then one token per forward at position cache_len.
    logits, cache = ops.prefill(model, prompt)  # (T, V)
    cached_logits = [logits[-1].clone()]
    generated = [int(cached_logits[-1].argmax())]
    for step in range(num_decode_steps - 1):
        before = cache_len(cache)
        row, cache = ops.decode_one_token(model, generated[-1], cache)  # (V,)
        _require(cache_len(cache) == before + 1, f"decode step {step}: cache grew from {before} to {cache_len(cache)}")
        cached_logits.append(row.clone())
        generated.append(int(row.argmax()))
    _require(cache_len(cache) == prompt_len + num_decode_steps - 1, f"final cache length {cache_len(cache)} != {prompt_len + num_decode_steps - 1}")

    # Recompute path: one forward over prompt + generated, no cache.
    full = full_logits(model, prompt + generated)  # (T + n, V)
    for i, row in enumerate(cached_logits):
        # Row prompt_len - 1 + i predicts generated[i] (the seed's off-by-one trap).
        _require_close(model, f"decode step {i} (cache length {prompt_len + i}) vs full recompute", row, full[prompt_len - 1 + i])

    # The reference engine's greedy loop agrees with the target's cached one.
    tokens, rows = greedy_decode(model, prompt, num_decode_steps)
    _require(tokens == generated, f"cached greedy tokens {generated} != reference greedy_decode {tokens}")
    _require_close(model, "cached logits vs reference greedy_decode", torch.stack(cached_logits), rows)


# ---------------------------------------------------------------------------------------
# Check 2: unbatched == continuously batched (stacked KV caches)
# ---------------------------------------------------------------------------------------


def check_02_unbatched_vs_batched(target) -> None:
    """3 requests x (8-token prompt, 8 decode steps): decoding them in one batched forward per
    step (stack_kvs / unstack_kvs, then ragged_forward) gives each one's unbatched output."""
    model, ops = target.model, target.ops
    dev = model.device
    num_requests, prompt_len, decode_steps = 3, 8, 8
    prompts = [_rand_tokens(prompt_len, seed=200 + i, vocab=model.config.vocab_size) for i in range(num_requests)]
    n_layer = model.config.n_layer

    # Baseline: each request decoded alone.
    single = [greedy_decode(model, p, decode_steps) for p in prompts]

    # Batched: prefill individually, then decode all rows in one forward per step.
    all_kvs, last_tokens, batched_tokens, batched_logits = [], [], [], []
    for p in prompts:
        logits, kv = ops.prefill(model, p)
        all_kvs.append(kv)
        last_tokens.append(int(logits[-1].argmax()))
        batched_tokens.append([last_tokens[-1]])
        batched_logits.append([logits[-1]])
    for step in range(decode_steps - 1):
        lengths = [cache_len(kv) for kv in all_kvs]
        _require(len(set(lengths)) == 1, f"step {step}: equal-length requests have cache lengths {lengths}")
        stacked, cache_mask = ops.stack_kvs(all_kvs, n_layer, all_kvs[0][0][0])  # (B, H_kv, C, D), (B, C)
        _require(stacked[0][0].shape[0] == num_requests, f"stack_kvs gave batch {stacked[0][0].shape[0]}, not {num_requests}")
        _require(bool(cache_mask.all()), "stack_kvs masked out entries of equal-length caches")
        inp = torch.tensor([[t] for t in last_tokens], device=dev)  # (B, 1)
        pos = torch.full((num_requests, 1), lengths[0], dtype=torch.long, device=dev)  # (B, 1)
        logits, new_stacked = model(inp, pos, past_kvs=stacked, cache_mask=cache_mask)  # (B, 1, V)
        all_kvs = ops.unstack_kvs(new_stacked, [n + 1 for n in lengths])
        last_tokens = []
        for i in range(num_requests):
            row = logits[i, -1]  # (V,)
            token = int(row.argmax())
            batched_tokens[i].append(token)
            batched_logits[i].append(row)
            last_tokens.append(token)

    for i, (tokens, rows) in enumerate(single):
        _require(batched_tokens[i] == tokens, f"stacked batch, request {i}: tokens {batched_tokens[i]} != unbatched {tokens}")
        _require_close(model, f"stacked batch, request {i}", torch.stack(batched_logits[i]), rows)

    # The same decode through the target's ragged_forward (rows bring their own caches).
    firsts = [ops.prefill(model, p) for p in prompts]
    caches = [kv for _, kv in firsts]
    last = [int(lg[-1].argmax()) for lg, _ in firsts]
    ragged_tokens = [[t] for t in last]
    for _ in range(decode_steps - 1):
        out = ops.ragged_forward(model, [Row([t], c) for t, c in zip(last, caches)])  # per row (1, V), new entries
        caches = [ops.append(c, new) for c, (_, new) in zip(caches, out)]
        last = [int(lg[-1].argmax()) for lg, _ in out]
        for i, t in enumerate(last):
            ragged_tokens[i].append(t)
    for i, (tokens, _) in enumerate(single):
        _require(ragged_tokens[i] == tokens, f"ragged_forward, request {i}: tokens {ragged_tokens[i]} != unbatched {tokens}")


# ---------------------------------------------------------------------------------------
# Check 3: contiguous KV == paged KV (block size 4, prompts 3, 4, 5, 7, 8)
# ---------------------------------------------------------------------------------------


def check_03_contiguous_vs_paged_kv(target) -> None:
    """Block size 4, prompt lengths 3, 4, 5, 7, 8, 8 decode steps: gather -> forward -> scatter
    the new entry gives the contiguous cache's tokens and logits."""
    model, ops = target.model, target.ops
    dev = model.device
    page_block_size, decode_steps = 4, 8
    # One pool shared by every prompt length: freed blocks are poisoned (NaN) and reused,
    # so a read of a stale or unwritten slot poisons the logits.
    pool = BlockPool(model.config, num_blocks=8, block_size=page_block_size, dtype=model.dtype, device=dev)
    allocator = ops.allocator_class(pool)

    for prompt_len in (3, 4, 5, 7, 8):
        prompt = _rand_tokens(prompt_len, seed=300 + prompt_len, vocab=model.config.vocab_size)
        contiguous_tokens, contiguous_rows = greedy_decode(model, prompt, decode_steps)

        # Paged prefill: allocate the prompt's blocks, compute, scatter into the pool.
        block_table = [allocator.allocate() for _ in range(blocks_needed(prompt_len, page_block_size))]
        logits, kv = ops.prefill(model, prompt)
        ops.scatter(pool, block_table, 0, kv)
        num_filled = prompt_len
        paged_tokens, paged_rows = [int(logits[-1].argmax())], [logits[-1]]

        # Paged decode: allocate when the last block is full, gather, forward, write back.
        for _ in range(decode_steps - 1):
            if num_filled % page_block_size == 0:
                block_table.append(allocator.allocate())
            gathered = ops.gather(pool, block_table, num_filled)  # per layer (1, H_kv, num_filled, D)
            _require(cache_len(gathered) == num_filled, f"prompt_len={prompt_len}: gather of {num_filled} positions returned {cache_len(gathered)}")
            _require(not _has_nan(gathered), f"prompt_len={prompt_len}: gather of {num_filled} positions read a poisoned (NaN) slot")
            inp = torch.tensor([[paged_tokens[-1]]], device=dev)  # (1, 1)
            pos = torch.tensor([[num_filled]], device=dev)  # (1, 1)
            logits_p, new_kvs = model(inp, pos, past_kvs=gathered)  # (1, 1, V)
            ops.scatter(pool, block_table, num_filled, _new_entries(new_kvs, 1))  # only the new token
            num_filled += 1
            paged_rows.append(logits_p[0, -1])
            paged_tokens.append(int(logits_p[0, -1].argmax()))

        _require(paged_tokens == contiguous_tokens, f"prompt_len={prompt_len}: paged tokens {paged_tokens} != contiguous {contiguous_tokens}")
        _require_close(model, f"prompt_len={prompt_len}: paged vs contiguous logits", torch.stack(paged_rows), contiguous_rows)
        _require(len(block_table) == blocks_needed(num_filled, page_block_size), f"prompt_len={prompt_len}: {len(block_table)} blocks for {num_filled} positions")
        for b in block_table:
            allocator.deallocate(b)
    _require(allocator.num_available() == pool.num_blocks, f"{pool.num_blocks - allocator.num_available()} blocks leaked after freeing every table")


# ---------------------------------------------------------------------------------------
# Check 4: prefix-cached == normal prefill (12-token shared prefix, 4-token suffixes)
# ---------------------------------------------------------------------------------------


def check_04_prefix_cached_vs_normal(target) -> None:
    """Three prompts share a 12-token prefix, 4-token suffixes, block size 4: requests 1 and 2
    hit the prefix cache (cached_prefix_tokens > 0) and still give the uncached output."""
    model, ops = target.model, target.ops
    vocab = model.config.vocab_size
    shared_prefix_len, unique_suffix_len, block, decode_steps = 12, 4, 4, 8
    gen = torch.Generator().manual_seed(400)
    prefix = torch.randint(0, vocab, (shared_prefix_len,), generator=gen).tolist()
    suffixes = [torch.randint(0, vocab, (unique_suffix_len,), generator=gen).tolist() for _ in range(3)]
    _require(len({tuple(s) for s in suffixes}) == 3, "the three suffixes are not distinct")
    prompts = [prefix + s for s in suffixes]
    baseline = [greedy_decode(model, p, decode_steps) for p in prompts]

    # (a) The engine: one request at a time, so request 0 populates and 1, 2 hit.
    requests = [Request(rid=i, prompt=tuple(p), max_new_tokens=decode_steps) for i, p in enumerate(prompts)]
    completions = target.generate(requests, EngineConfig(block_size=block, prefix_cache=True, max_num_seqs=1))
    for c, (tokens, rows) in zip(completions, baseline):
        _require(c.tokens == tokens, f"generate, request {c.rid}: tokens {c.tokens} != uncached {tokens}")
        if c.logits is not None:
            _require_close(model, f"generate, request {c.rid}: logits vs uncached", c.logits, rows)
    _require(completions[0].stats["cached_prefix_tokens"] == 0, f"request 0 hit an empty prefix cache ({completions[0].stats['cached_prefix_tokens']} tokens)")
    for c in completions[1:]:
        hit = c.stats["cached_prefix_tokens"]
        _require(hit > 0, f"generate, request {c.rid} missed the prefix cache (cached_prefix_tokens == 0)")
        # The whole shared prefix is block-aligned, so all of it is reused.
        _require(hit == shared_prefix_len, f"generate, request {c.rid}: cached_prefix_tokens {hit} != {shared_prefix_len}")
    hit_blocks = getattr(target, "last_stats", {}).get("prefix_hit_blocks")
    if hit_blocks is not None:
        _require(hit_blocks == 2 * (shared_prefix_len // block), f"prefix_hit_blocks {hit_blocks} != {2 * (shared_prefix_len // block)}")

    # (b) The same through the prefix cache API directly, in the seed's shape:
    # load cached prefix -> prefill from the cursor at absolute positions -> commit.
    pool = BlockPool(model.config, num_blocks=16, block_size=block, dtype=model.dtype, device=model.device)
    allocator = ops.allocator_class(pool)
    prefix_cache = ops.prefix_cache_class(allocator, block)
    for i, prompt in enumerate(prompts):
        block_table = prefix_cache.match(prompt, (len(prompt) - 1) // block)
        cursor = len(block_table) * block  # the seed's req.prefill_cursor
        want_cursor = 0 if i == 0 else shared_prefix_len
        _require(cursor == want_cursor, f"PrefixCache.match, request {i}: {cursor} cached tokens, expected {want_cursor}")
        past = ops.gather(pool, block_table, cursor) if cursor else None  # per layer (1, H_kv, cursor, D)
        block_table += [allocator.allocate() for _ in range(blocks_needed(len(prompt), block) - len(block_table))]
        logits, kv = ops.prefill(model, prompt[cursor:], past)  # (T - cursor, V)
        _require(cache_len(kv) == len(prompt), f"request {i}: cache length {cache_len(kv)} after prefill != {len(prompt)}")
        ops.scatter(pool, block_table, cursor, _new_entries(kv, len(prompt) - cursor))
        prefix_cache.commit(prompt, block_table, cursor // block, len(prompt) // block)
        # Suffix logits equal the full prefill's rows at the same absolute positions.
        _require_close(model, f"request {i}: prefill from cached prefix vs full prefill", logits, full_logits(model, prompt)[cursor:])
        tokens, _ = baseline[i]
        rest = [int(logits[-1].argmax())]
        for _ in range(decode_steps - 1):
            row, kv = ops.decode_one_token(model, rest[-1], kv)
            rest.append(int(row.argmax()))
        _require(rest == tokens, f"request {i}: tokens after a cached prefix {rest} != uncached {tokens}")
        for b in block_table:
            allocator.deallocate(b)
    # (PrefixCache.hits is not checked: it is a counter of the reference class, and the
    # cursor assertion above already shows requests 1 and 2 hit.)


# ---------------------------------------------------------------------------------------
# Check 5: speculative greedy == autoregressive greedy (bigram and trigram drafts)
# ---------------------------------------------------------------------------------------


def _speculative_greedy(target, prompt: list[int], n: int, draft_name: str, k: int, trained=None) -> tuple[list[int], int]:
    """The seed's inline verify loop: score the current token plus k drafts in one forward,
    accept while drafts equal the target argmax, then trim the rejected KV. The draft is
    ``trained`` if given (the seed's drafts are fitted on training data), else the target's
    ``make_draft`` refitted on the request's own tokens every step (the engine's way).
    Returns tokens and the number of drafts accepted."""
    model, ops = target.model, target.ops
    vocab = model.config.vocab_size
    logits, cache = ops.prefill(model, prompt)
    out = [int(logits[-1].argmax())]
    accepted_total = 0
    while len(out) < n:
        seq = prompt + out
        kk = min(k, n - len(out) - 1)
        draft = trained if trained is not None else ops.make_draft(draft_name, vocab, seq)
        candidates = draft.propose(seq, kk) if kk > 0 else []
        before = cache_len(cache)
        v_logits, new_cache = ops.prefill(model, [out[-1]] + candidates, cache)  # (kk+1, V)
        accepted = []
        for i, draft_tok in enumerate(candidates):
            target_argmax = int(v_logits[i].argmax())
            if draft_tok == target_argmax:
                accepted.append(draft_tok)
            else:
                accepted.append(target_argmax)
                break
        else:
            accepted.append(int(v_logits[len(candidates)].argmax()))  # bonus token
        n_acc = len(accepted) - 1
        # The target's verifier agrees with the inline loop.
        verified = ops.greedy_verify(v_logits, candidates)
        _require(tuple(verified) == (accepted, n_acc), f"greedy_verify{tuple(verified)} != inline verify ({accepted}, {n_acc}) for drafts {candidates} after {seq}")
        cache = ops.trim(new_cache, before + 1 + n_acc)  # the verify token plus the accepted drafts
        _require(cache_len(cache) == before + 1 + n_acc, f"trim to {before + 1 + n_acc} kept {cache_len(cache)} positions")
        accepted_total += n_acc
        out.extend(accepted)
    return out[:n], accepted_total


def check_05_speculative_greedy(target) -> None:
    """Bigram and trigram drafts, k=4, 3 prompts x 8 tokens: speculative greedy (inline verify
    loop, and ``generate`` with spec_k=4) emits the autoregressive greedy tokens."""
    model, ops = target.model, target.ops
    vocab = model.config.vocab_size
    num_prompts, decode_tokens, spec_k = 3, 8, 4
    prompts = [_rand_tokens(8, seed=500 + i, vocab=vocab) for i in range(num_prompts)]
    for draft_name in ("bigram", "trigram"):
        accepted_by_trained = 0
        for prompt in prompts:
            ar_tokens, _ = greedy_continuation(lambda s: full_logits(model, s), prompt, decode_tokens)
            # A poor draft (fitted on the request's own tokens: almost every draft rejected)...
            spec_tokens, _ = _speculative_greedy(target, prompt, decode_tokens, draft_name, spec_k)
            _require(spec_tokens == ar_tokens, f"{draft_name}, own-token draft, prompt {prompt}: {spec_tokens} != autoregressive {ar_tokens}")
            # ...and a good one (fitted on the target's own greedy text, as a draft trained on the
            # target's data would be: drafts accepted, bonus tokens emitted) give the same tokens.
            corpus = prompt + greedy_decode(model, prompt, decode_tokens + spec_k)[0]
            trained = ops.make_draft(draft_name, vocab, corpus)
            spec_tokens, accepted = _speculative_greedy(target, prompt, decode_tokens, draft_name, spec_k, trained)
            _require(spec_tokens == ar_tokens, f"{draft_name}, trained draft, prompt {prompt}: {spec_tokens} != autoregressive {ar_tokens}")
            accepted_by_trained += accepted
        _require(accepted_by_trained > 0, f"{draft_name}: the accept path never ran (no trained draft accepted)")

        # The engine's speculative path gives the same tokens.
        requests = [Request(rid=i, prompt=tuple(p), max_new_tokens=decode_tokens) for i, p in enumerate(prompts)]
        completions = target.generate(requests, EngineConfig(spec_k=spec_k, draft=draft_name))
        for c, prompt in zip(completions, prompts):
            tokens, rows = greedy_decode(model, prompt, decode_tokens)
            _require(c.tokens == tokens, f"generate spec_k={spec_k} draft={draft_name}, request {c.rid}: {c.tokens} != greedy {tokens}")
            if c.logits is not None:
                _require_close(model, f"generate spec_k={spec_k} draft={draft_name}, request {c.rid}: logits", c.logits, rows)
            _require(c.stats.get("draft_proposed", 0) > 0, f"generate spec_k={spec_k} draft={draft_name}, request {c.rid}: no draft proposed")


# ---------------------------------------------------------------------------------------
# Check 6: speculative sampling distribution ~ target distribution (chi-squared)
# ---------------------------------------------------------------------------------------


def check_06_spec_distribution(target) -> None:
    """2000 one-token trials x 3 seeds, trigram draft: the speculative sampler's histogram
    fits the target distribution (chi-squared p > 0.01) for at least 2 of 3 seeds."""
    model, ops = target.model, target.ops
    trials, temperature, vocab = 2000, 1.0, model.config.vocab_size
    prompt = _rand_tokens(10, seed=601, vocab=vocab)  # a target with ~20 bins of expected count > 5
    target_logits = full_logits(model, prompt)[-1]  # (V,)
    target_dist = (target_logits / temperature).softmax(-1)  # (V,)
    # Trigram draft fitted on the prompt: nearly uniform after smoothing, so low acceptance
    # and many rejections (the seed's harder case for the resampling path).
    draft_probs = ops.make_draft("trigram", vocab, prompt).get_probs(*prompt[-2:]).float().cpu()  # (V,)
    # Row 1 of target_probs (the bonus row after an accepted draft) is never read for the
    # first token; speculative_sample needs k+1 rows, so pass the same row.
    target_probs = torch.stack([target_dist, target_dist])  # (2, V)

    passes, report = 0, []
    for seed in (0, 1, 2):
        gen = torch.Generator().manual_seed(6000 + seed)
        ar = torch.multinomial(target_dist, trials, replacement=True, generator=gen)  # (trials,)
        ar_counts = torch.bincount(ar, minlength=vocab)  # (V,)
        spec_counts = torch.zeros(vocab, dtype=torch.long)  # (V,)
        rejections = 0
        for _ in range(trials):
            draft_tok = int(torch.multinomial(draft_probs, 1, generator=gen))
            out = ops.speculative_sample(target_probs, draft_probs[None], [draft_tok], gen)
            _require(1 <= len(out) <= 2, f"speculative_sample of one draft emitted {len(out)} tokens")
            rejections += len(out) == 1
            spec_counts[out[0]] += 1
        _require(rejections > trials // 4, f"seed {seed}: only {rejections} of {trials} drafts rejected; the resampling path was hardly exercised")
        # Baseline sampler fits the target (sanity), and so must the speculative one.
        p_ar = chi2_pvalue(ar_counts, target_dist, trials)
        p_spec = chi2_pvalue(spec_counts, target_dist, trials)
        report.append(f"seed {seed}: p_spec={p_spec:.3g} p_ar={p_ar:.3g}")
        passes += p_spec > 0.01 and p_ar > 0.01
    _require(passes >= 2, f"only {passes} of 3 seeds fit the target distribution at p > 0.01 ({'; '.join(report)})")


# ---------------------------------------------------------------------------------------
# Check 7: KV cache trim consistency (4 random drafts, 2 accepted)
# ---------------------------------------------------------------------------------------


def check_07_kv_cache_trim(target) -> None:
    """Prefill 8, decode 2, verify 4 random drafts, keep 2: the trimmed cache equals a fresh
    prefill of the kept tokens, and one more decode from it equals a full recompute."""
    model, ops = target.model, target.ops
    prompt_len, num_drafts, accept_count = 8, 4, 2
    vocab = model.config.vocab_size
    prompt = _rand_tokens(prompt_len, seed=700, vocab=vocab)

    logits, cache = ops.prefill(model, prompt)
    decoded = [int(logits[-1].argmax())]
    for _ in range(2):  # decode 2: both decoded tokens get KV entries
        row, cache = ops.decode_one_token(model, decoded[-1], cache)
        decoded.append(int(row.argmax()))
    verify_token = decoded.pop()  # the token the verify pass feeds first
    _require(cache_len(cache) == prompt_len + 2, f"cache length {cache_len(cache)} after prefill + 2 decodes != {prompt_len + 2}")
    cache_len_before = cache_len(cache)

    candidates = _rand_tokens(num_drafts, seed=701, vocab=vocab)
    v_logits, new_kvs = ops.prefill(model, [verify_token] + candidates, cache)  # (1 + num_drafts, V)
    _require(cache_len(new_kvs) == cache_len_before + 1 + num_drafts, f"verify pass left {cache_len(new_kvs)} positions, expected {cache_len_before + 1 + num_drafts}")

    keep = cache_len_before + 1 + accept_count  # the seed's keep_new_tokens = 1 + accept_count
    trimmed = ops.trim(new_kvs, keep)
    _require(cache_len(trimmed) == keep, f"trim to {keep} kept {cache_len(trimmed)} positions")
    kept_tokens = prompt + decoded + [verify_token] + candidates[:accept_count]

    # Shape is not enough: the kept entries equal a fresh prefill of the kept tokens...
    _, fresh = _forward(model, kept_tokens)
    _require_cache_close(model, "trimmed cache vs fresh prefill of the kept tokens", trimmed, fresh)

    # ...and one more decode from the trimmed cache equals a full recompute.
    nxt = int(v_logits[accept_count].argmax())  # the target's token after the accepted drafts
    logits_a, after = ops.decode_one_token(model, nxt, trimmed)
    logits_b = full_logits(model, kept_tokens + [nxt])[-1]
    _require(cache_len(after) == keep + 1, f"decode after trim: cache length {cache_len(after)} != {keep + 1}")
    _require_close(model, "decode after trim vs full recompute", logits_a, logits_b)


# ---------------------------------------------------------------------------------------
# Check 8: draft model distribution sanity
# ---------------------------------------------------------------------------------------


def check_08_draft_distributions(target) -> None:
    """The target's bigram/trigram drafts: a known peaked distribution on [0, 1, 2] x 3, and
    normalised, positive, unmutated distributions over a grid of contexts for vocab 20."""
    make_draft = target.ops.make_draft
    # Known distribution: after (0, 1) the corpus always continues with 2. With add-one
    # smoothing P(2 | 0, 1) = (3 + 1) / (3 + V), above 0.5 only for V < 5, so this check
    # uses the corpus's own vocabulary, V = 3.
    corpus = [0, 1, 2] * 3
    tri = make_draft("trigram", 3, corpus)
    p = tri.get_probs(0, 1)  # (3,)
    _require(tuple(p.shape) == (3,), f"trigram get_probs shape {tuple(p.shape)} != (3,)")
    _require(float(p[2]) > 0.5, f"trigram P(2 | 0, 1) = {float(p[2]):.3f}, expected > 0.5")
    _require(int(p.argmax()) == 2, f"trigram argmax after (0, 1) is {int(p.argmax())}, expected 2")
    proposed = tri.propose([0, 1], 4)
    _require(proposed == [2, 0, 1, 2], f"trigram propose([0, 1], 4) = {proposed}, expected [2, 0, 1, 2]")
    bi = make_draft("bigram", 3, corpus)
    _require(float(bi.get_probs(1)[2]) > 0.5, f"bigram P(2 | 1) = {float(bi.get_probs(1)[2]):.3f}, expected > 0.5")

    # Normalisation over a grid of contexts for a 20-token vocabulary.
    vocab = 20
    data = _rand_tokens(200, seed=800, vocab=vocab)
    drafts = {name: make_draft(name, vocab, data) for name in ("trigram", "bigram")}
    snapshots = {name: {ctx: c.clone() for ctx, c in d.counts.items()} for name, d in drafts.items() if hasattr(d, "counts")}
    for name, draft in drafts.items():
        for prev in range(0, 20, 5):
            for cur in range(0, 20, 5):
                probs = draft.get_probs(prev, cur)  # (V,)
                _require(tuple(probs.shape) == (vocab,), f"{name} ({prev}, {cur}): shape {tuple(probs.shape)} != ({vocab},)")
                _require(bool((probs > 0).all()), f"{name} ({prev}, {cur}): a zero or negative probability")
                s = probs.sum().item()
                _require(abs(s - 1.0) < 1e-5, f"{name} ({prev}, {cur}): probabilities sum to {s:.6g}, not 1")
    # Querying did not mutate the tables.
    for name, snapshot in snapshots.items():
        counts = drafts[name].counts
        _require(counts.keys() == snapshot.keys(), f"{name}: get_probs added or removed contexts")
        _require(all(torch.equal(counts[ctx], c) for ctx, c in snapshot.items()), f"{name}: get_probs changed the counts")


# ---------------------------------------------------------------------------------------
# Check 9: chunked prefill == full prefill (prompt 14, chunks of 4)
# ---------------------------------------------------------------------------------------


def check_09_chunked_vs_full_prefill(target) -> None:
    """Prompt 14 in chunks of 4 (spans 0-4, 4-8, 8-12, 12-14): the last logits, every row,
    the cache and the first decoded token equal one full prefill's; so does ``generate``."""
    model, ops = target.model, target.ops
    dev = model.device
    prompt_len, chunk_size = 14, 4
    prompt = _rand_tokens(prompt_len, seed=900, vocab=model.config.vocab_size)

    logits_full, kvs_full = _forward(model, prompt)  # (T, V), per layer (1, H_kv, T, D)

    # Inline, as the seed: each chunk at its absolute positions on top of the cache so far.
    kvs_chunked = None
    for start in range(0, prompt_len, chunk_size):
        end = min(start + chunk_size, prompt_len)
        chunk = torch.tensor([prompt[start:end]], device=dev)  # (1, <=4)
        pos = torch.arange(start, end, device=dev).unsqueeze(0)  # (1, <=4)
        logits_chunked, kvs_chunked = model(chunk, pos, past_kvs=kvs_chunked)  # (1, <=4, V)
    _require_close(model, "inline chunked prefill, last logits vs full prefill", logits_chunked[0, -1], logits_full[-1])

    # The target's chunked_prefill.
    rows, kvs_engine = ops.chunked_prefill(model, prompt, chunk_size)  # (T, V)
    _require(tuple(rows.shape) == tuple(logits_full.shape), f"chunked_prefill logits shape {tuple(rows.shape)} != {tuple(logits_full.shape)}")
    _require_close(model, "chunked_prefill, last logits vs full prefill", rows[-1], logits_full[-1])
    _require_close(model, "chunked_prefill, every row vs full prefill", rows, logits_full)
    for what, kvs in (("inline chunked", kvs_chunked), ("chunked_prefill", kvs_engine)):
        _require(cache_len(kvs) == cache_len(kvs_full) == prompt_len, f"{what}: cache length {cache_len(kvs)} != {prompt_len}")
        _require_cache_close(model, f"{what} cache vs full prefill", kvs, kvs_full)
    _require(int(rows[-1].argmax()) == int(logits_full[-1].argmax()), f"first decoded token {int(rows[-1].argmax())} != {int(logits_full[-1].argmax())}")

    # Through the scheduler: chunk_size=4 gives the same greedy output as whole prompts.
    req = [Request(rid=0, prompt=tuple(prompt), max_new_tokens=4)]
    chunked = target.generate(req, EngineConfig(chunk_size=chunk_size))[0]
    whole = target.generate(req, EngineConfig())[0]
    _require(chunked.tokens == whole.tokens, f"generate chunk_size={chunk_size}: tokens {chunked.tokens} != whole-prompt {whole.tokens}")
    _require(chunked.tokens[0] == int(logits_full[-1].argmax()), f"generate chunk_size={chunk_size}: first token {chunked.tokens[0]} != full prefill's {int(logits_full[-1].argmax())}")
    if chunked.logits is not None and whole.logits is not None:
        _require_close(model, f"generate chunk_size={chunk_size} vs whole-prompt logits", chunked.logits, whole.logits)


# ---------------------------------------------------------------------------------------
# Check 10: fused interleaved (decode + prefill chunk in one forward) == sequential
# ---------------------------------------------------------------------------------------


def check_10_fused_interleaved(target) -> None:
    """Request A (prompt 6, one decode) decodes while request B (prompt 10) prefills its first
    chunk of 4: one fused, left-padded, masked forward equals the two sequential forwards,
    inline (as the seed) and through the target's ``run_step``."""
    model, ops = target.model, target.ops
    dev = model.device
    vocab = model.config.vocab_size
    chunk_size = 4
    prompt_a = _rand_tokens(6, seed=1000, vocab=vocab)
    prompt_b = _rand_tokens(10, seed=1001, vocab=vocab)

    # Request A: prefilled and decoded one step; wants to decode its next token.
    logits_a0, cache_a = ops.prefill(model, prompt_a)
    first_a = int(logits_a0[-1].argmax())
    row_a1, cache_a = ops.decode_one_token(model, first_a, cache_a)
    second_a = int(row_a1.argmax())
    cache_len_a = cache_len(cache_a)
    # Request B: a new arrival prefilling its first chunk.
    b_chunk = prompt_b[:chunk_size]

    # Sequential baseline: two separate forwards, straight through the model.
    seq_a = full_logits(model, prompt_a + [first_a, second_a])[-1]  # (V,)
    seq_b, _ = _forward(model, b_chunk)  # (chunk, V)

    # Fused, as the seed: one forward, A's decode row left-padded to the chunk length.
    t_max = chunk_size
    fused_ids = torch.zeros((2, t_max), dtype=torch.long, device=dev)  # (2, T_max)
    fused_ids[0, -1] = second_a
    fused_ids[1, :chunk_size] = torch.tensor(b_chunk, device=dev)
    positions = torch.zeros((2, t_max), dtype=torch.long, device=dev)  # (2, T_max)
    positions[0, -1] = cache_len_a
    positions[1, :chunk_size] = torch.arange(chunk_size, device=dev)
    cache_mask = torch.zeros((2, cache_len_a), dtype=torch.bool, device=dev)  # (2, C)
    cache_mask[0, :] = True  # A sees its whole cache; B has no cached positions
    input_mask = torch.zeros((2, t_max), dtype=torch.bool, device=dev)  # (2, T_max)
    input_mask[0, -1] = True
    input_mask[1, :chunk_size] = True
    stacked = [(torch.cat([k, torch.zeros_like(k)]), torch.cat([v, torch.zeros_like(v)])) for k, v in cache_a]  # (2, H_kv, C, D)
    fused_logits, _ = model(fused_ids, positions, past_kvs=stacked, cache_mask=cache_mask, input_mask=input_mask)  # (2, T_max, V)
    _require_close(model, "inline fused forward, A's decode row vs sequential", fused_logits[0, t_max - 1], seq_a)
    _require_close(model, "inline fused forward, B's prefill chunk vs sequential", fused_logits[1, :chunk_size], seq_b)

    # The target's fused step, interleaved and not.
    rows = [Row([second_a], cache_a), Row(b_chunk, None)]
    fused, mixed = ops.run_step(model, rows, [True, False], True, ops.ragged_forward)
    _require(bool(mixed), "run_step(interleave=True) did not report a mixed decode + prefill forward")
    separate, mixed_sep = ops.run_step(model, rows, [True, False], False, ops.ragged_forward)
    _require(not mixed_sep, "run_step(interleave=False) reported a mixed forward")
    for what, results in (("fused run_step", fused), ("separate run_step", separate)):
        (la, kva), (lb, kvb) = results
        _require(tuple(la.shape) == (1, vocab), f"{what}: A's logits shape {tuple(la.shape)} != (1, {vocab})")
        _require(tuple(lb.shape) == (chunk_size, vocab), f"{what}: B's logits shape {tuple(lb.shape)} != ({chunk_size}, {vocab})")
        _require_close(model, f"{what}, A's decode row vs sequential", la[-1], seq_a)
        _require_close(model, f"{what}, B's prefill chunk vs sequential", lb, seq_b)
        _require(cache_len(kva) == 1 and cache_len(kvb) == chunk_size, f"{what}: new entries of lengths {cache_len(kva)}, {cache_len(kvb)}, expected 1, {chunk_size}")
    # New entries agree between fused and separate runs, so either may be scattered.
    for i, who in enumerate("AB"):
        _require_cache_close(model, f"{who}'s new entries, fused vs separate run_step", fused[i][1], separate[i][1])


# ---------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------

SEED_CHECKS: dict[str, Callable[[object], None]] = {
    "1 kv cache": check_01_recompute_vs_kv_cache,
    "2 batching": check_02_unbatched_vs_batched,
    "3 paged": check_03_contiguous_vs_paged_kv,
    "4 prefix cache": check_04_prefix_cached_vs_normal,
    "5 spec greedy": check_05_speculative_greedy,
    "6 spec distribution": check_06_spec_distribution,
    "7 kv trim": check_07_kv_cache_trim,
    "8 draft distributions": check_08_draft_distributions,
    "9 chunked prefill": check_09_chunked_vs_full_prefill,
    "10 fused": check_10_fused_interleaved,
}
"""The seed's ten checks in its order, by short name."""


def run_seed_checks(target, checks: dict[str, Callable[[object], None]] | None = None) -> list[tuple[str, bool, str]]:
    """Run every seed check (or ``checks``) on ``target``: (name, passed, message) per check.
    An assertion failure gives its message; any other exception counts as a failure, shown
    with its type."""
    results = []
    for name, check in (SEED_CHECKS if checks is None else checks).items():
        try:
            check(target)
        except AssertionError as exc:
            results.append((name, False, str(exc) or "assertion failed"))
        except Exception as exc:  # a crash of the target is a failure too
            results.append((name, False, f"{type(exc).__name__}: {exc}"))
        else:
            results.append((name, True, ""))
    return results
