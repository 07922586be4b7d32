"""The fused step: decode rows and prefill chunks of other requests in one forward.

With ``interleave`` off the same rows run as two forwards (all decode rows, then all
prefill chunks); both must give the same result.
"""

from __future__ import annotations

import torch

from typing import Callable

from fuzzcache.engine.batching import Row, ragged_forward
from fuzzcache.model import KVCache, TinyGPT


def run_step(
    model: TinyGPT, rows: list[Row], is_decode: list[bool], interleave: bool, forward: Callable = ragged_forward
) -> tuple[list[tuple[torch.Tensor, KVCache]], bool]:
    """Run one scheduler step's rows. Returns per-row (logits (T_i, V), new entries) in row
    order, and whether a fused forward mixed decode and prefill rows."""
    if interleave or all(is_decode) or not any(is_decode):
        mixed = interleave and any(is_decode) and not all(is_decode)
        return forward(model, rows), mixed
    results: list = [None] * len(rows)
    for want_decode in (True, False):
        idx = [i for i, d in enumerate(is_decode) if d == want_decode]
        for i, result in zip(idx, forward(model, [rows[i] for i in idx])):
            results[i] = result
    return results, False
