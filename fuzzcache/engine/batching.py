"""Continuous batching of ragged rows: different lengths and positions in one forward.

Each row brings its own cache (possibly empty) and new tokens. Caches and inputs are
left-padded to a common length; ``cache_mask`` and ``input_mask`` keep every row
blind to the padding and to the other rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fuzzcache.engine.kv_cache import cache_len
from fuzzcache.model import KVCache, TinyGPT

PAD_TOKEN = 0


@dataclass
class Row:
    """One request's slice of a batched forward: ``tokens`` at positions start.. after ``cache``."""

    tokens: list[int]
    cache: KVCache | None  # per layer (1, H_kv, start, D)

    @property
    def start(self) -> int:
        return cache_len(self.cache)


def stack_kvs(caches: list[KVCache | None], n_layer: int, like: torch.Tensor) -> tuple[KVCache, torch.Tensor]:
    """Left-pad per-row caches to a common length and stack them.

    Returns the stacked cache, per layer (B, H_kv, C_max, D), and ``cache_mask`` (B, C_max)
    that is True on real entries. Padding is zeros, never NaN (0 * NaN would leak).
    """
    lengths = [cache_len(c) for c in caches]
    c_max = max(lengths)
    _, h_kv, _, d = like.shape
    mask = torch.zeros(len(caches), c_max, dtype=torch.bool, device=like.device)
    stacked: KVCache = []
    for layer in range(n_layer):
        ks, vs = [], []
        for b, (cache, n) in enumerate(zip(caches, lengths)):
            pad = like.new_zeros(1, h_kv, c_max - n, d)
            k, v = (cache[layer] if cache is not None else (pad[:, :, :0], pad[:, :, :0]))
            ks.append(torch.cat([pad, k], dim=2))
            vs.append(torch.cat([pad, v], dim=2))
            mask[b, c_max - n :] = True
        stacked.append((torch.cat(ks), torch.cat(vs)))
    return stacked, mask


def unstack_kvs(stacked: KVCache, lengths: list[int]) -> list[KVCache]:
    """Split a left-padded stacked cache (B, H_kv, T_max, D) back into per-row caches of ``lengths``."""
    t_max = stacked[0][0].shape[2]
    return [[(k[b : b + 1, :, t_max - n :], v[b : b + 1, :, t_max - n :]) for k, v in stacked] for b, n in enumerate(lengths)]


def ragged_forward(model: TinyGPT, rows: list[Row]) -> list[tuple[torch.Tensor, KVCache]]:
    """One forward over ragged rows. Returns, per row, logits (T_i, V) and its new entries only,
    per layer (1, H_kv, T_i, D), for the caller to append or scatter."""
    dev = model.device
    c = model.config
    like = torch.zeros(1, c.n_kv_head, 0, c.head_dim, dtype=model.dtype, device=dev)
    stacked, cache_mask = stack_kvs([r.cache for r in rows], c.n_layer, like)
    t_max = max(len(r.tokens) for r in rows)
    ids = torch.full((len(rows), t_max), PAD_TOKEN, dtype=torch.long, device=dev)  # (B, T_max)
    pos = torch.zeros(len(rows), t_max, dtype=torch.long, device=dev)  # (B, T_max)
    input_mask = torch.zeros(len(rows), t_max, dtype=torch.bool, device=dev)  # (B, T_max)
    for b, r in enumerate(rows):
        t = len(r.tokens)
        ids[b, t_max - t :] = torch.tensor(r.tokens, device=dev)
        pos[b, t_max - t :] = torch.arange(r.start, r.start + t, device=dev)
        input_mask[b, t_max - t :] = True
    logits, present = model(ids, pos, past_kvs=stacked, cache_mask=cache_mask, input_mask=input_mask)
    new_entries = [(k[:, :, -t_max:], v[:, :, -t_max:]) for k, v in present]  # (B, H_kv, T_max, D)
    lengths = [len(r.tokens) for r in rows]
    return [(logits[b, t_max - n :], kv) for b, (n, kv) in enumerate(zip(lengths, unstack_kvs(new_entries, lengths)))]
