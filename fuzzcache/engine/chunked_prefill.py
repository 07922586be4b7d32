"""Chunked prefill: a prompt computed in pieces of at most ``chunk_size`` tokens."""

from __future__ import annotations

import torch

from fuzzcache.engine.kv_cache import cache_len, prefill
from fuzzcache.model import KVCache, TinyGPT


def chunk_spans(start: int, end: int, chunk_size: int) -> list[tuple[int, int]]:
    """[start, end) cut into spans of ``chunk_size``; the last one may be shorter."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [(s, min(s + chunk_size, end)) for s in range(start, end, chunk_size)]


def chunked_prefill(model: TinyGPT, tokens: list[int], chunk_size: int, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache | None]:
    """Prefill ``tokens`` chunk by chunk after ``cache``, each chunk at its absolute positions.
    Returns the logits of every token (T, V) and the final cache."""
    start = cache_len(cache)
    rows = []
    for s, e in chunk_spans(start, start + len(tokens), chunk_size):
        logits, cache = prefill(model, tokens[s - start : e - start], cache)
        rows.append(logits)
    return torch.cat(rows), cache
