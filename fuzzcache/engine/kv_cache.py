"""Contiguous KV cache: length, append, trim, and the pure prefill / decode functions."""

from __future__ import annotations

import torch

from fuzzcache.model import KVCache, TinyGPT


def cache_len(cache: KVCache | None) -> int:
    """Number of cached positions (the T of layer 0's keys (B, H_kv, T, D))."""
    return 0 if cache is None else cache[0][0].shape[2]


def append(cache: KVCache | None, new: KVCache) -> KVCache:
    """Concatenate ``new`` entries after ``cache`` along the time axis."""
    if cache is None:
        return [(k, v) for k, v in new]
    return [(torch.cat([k, nk], dim=2), torch.cat([v, nv], dim=2)) for (k, v), (nk, nv) in zip(cache, new)]


def trim(cache: KVCache, n: int) -> KVCache:
    """Keep the first ``n`` positions (e.g. drop rejected draft tokens after a verify pass)."""
    if not 0 <= n <= cache_len(cache):
        raise ValueError(f"cannot trim a cache of length {cache_len(cache)} to {n}")
    return [(k[:, :, :n], v[:, :, :n]) for k, v in cache]


def positions_from(start: int, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Absolute positions start..start+count-1 as a (1, count) tensor."""
    return torch.arange(start, start + count, device=device)[None]


def prefill(model: TinyGPT, tokens: list[int], cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
    """Run ``tokens`` after ``cache``; returns logits (T, V) and the extended cache."""
    start = cache_len(cache)
    ids = torch.tensor([tokens], device=model.device)  # (1, T)
    logits, present = model(ids, positions_from(start, len(tokens), model.device), past_kvs=cache)
    return logits[0], present


def decode_one_token(model: TinyGPT, token: int, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
    """Feed one token at position ``cache_len(cache)``; returns its logits (V,) and the cache."""
    logits, present = prefill(model, [token], cache)
    return logits[-1], present


def greedy_decode(model: TinyGPT, prompt: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """Prefill then decode ``n`` tokens greedily with the cache; returns tokens and their logits (n, V)."""
    if n == 0:
        return [], torch.empty(0, model.config.vocab_size)
    logits, cache = prefill(model, prompt)
    rows = [logits[-1]]
    tokens = [int(rows[-1].argmax())]
    while len(tokens) < n:
        row, cache = decode_one_token(model, tokens[-1], cache)
        rows.append(row)
        tokens.append(int(row.argmax()))
    return tokens, torch.stack(rows)
