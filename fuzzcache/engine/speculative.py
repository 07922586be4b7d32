"""Speculative decoding: greedy verification of k drafts in one forward, the sampling
accept/reject rule with residual resampling, and KV trim after rejection."""

from __future__ import annotations

import torch

from fuzzcache.engine.kv_cache import trim
from fuzzcache.model import KVCache


def greedy_verify(target_logits: torch.Tensor, drafts: list[int]) -> tuple[list[int], int]:
    """Accept drafts while they equal the target's argmax, then emit the target's own token.

    ``target_logits`` (k+1, V): row i scores the position after the first i drafts.
    Returns (emitted tokens, number of drafts accepted); all k accepted gives the bonus
    token from row k, so 1 <= len(emitted) <= k + 1.
    """
    emitted: list[int] = []
    for i, draft in enumerate(drafts):
        best = int(target_logits[i].argmax())
        if draft != best:
            return emitted + [best], i
        emitted.append(draft)
    return emitted + [int(target_logits[len(drafts)].argmax())], len(drafts)


def speculative_sample(
    target_probs: torch.Tensor, draft_probs: torch.Tensor, drafts: list[int], generator: torch.Generator
) -> list[int]:
    """The sampling rule over a full chain: accept draft i with probability min(1, p/q), on the
    first rejection resample from max(0, p - q) normalised, and if all k are accepted sample
    the bonus token from p at row k.

    ``target_probs`` (k+1, V), ``draft_probs`` (k, V): row i conditions on the first i drafts.
    """
    out: list[int] = []
    for i, tok in enumerate(drafts):
        p, q = target_probs[i], draft_probs[i]
        accept = (p[tok] / q[tok].clamp_min(1e-12)).clamp(max=1.0)
        if torch.rand((), generator=generator) < accept:
            out.append(tok)
            continue
        residual = (p - q).clamp_min(0)
        residual = residual / residual.sum() if residual.sum() > 0 else p
        out.append(int(torch.multinomial(residual, 1, generator=generator)))
        return out
    out.append(int(torch.multinomial(target_probs[len(drafts)], 1, generator=generator)))
    return out


def trim_after_verify(cache: KVCache, cache_len_before_verify: int, accepted: int) -> KVCache:
    """Keep the verify token's entry and the accepted drafts' entries, drop the rejected ones."""
    return trim(cache, cache_len_before_verify + 1 + accepted)
