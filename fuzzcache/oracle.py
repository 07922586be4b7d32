"""The oracle: full recompute, one forward over the whole sequence, no cache."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from fuzzcache.model import TinyGPT

LogitsFn = Callable[[Sequence[int]], torch.Tensor]


def full_logits(model: TinyGPT, tokens: Sequence[int]) -> torch.Tensor:
    """Logits (T, V) float32 on CPU of one causal forward over ``tokens``, no cache."""
    ids = torch.tensor([list(tokens)], device=model.device)  # (1, T)
    positions = torch.arange(len(tokens), device=model.device)[None]  # (1, T)
    logits, _ = model(ids, positions)
    return logits[0].float().cpu()


def greedy_continuation(logits_fn: LogitsFn, prompt: Sequence[int], n: int) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens by recomputing the whole sequence for each one; returns tokens and logits (n, V).

    Deliberately slow and obvious: token i is argmax of the last row of a full forward
    over prompt + tokens[:i].
    """
    if n == 0:
        return [], logits_fn(prompt)[:0]  # (0, V)
    seq = list(prompt)
    rows = []
    for _ in range(n):
        row = logits_fn(seq)[-1]
        rows.append(row)
        seq.append(int(row.argmax()))
    return seq[len(prompt) :], torch.stack(rows)
