"""Draft proposers for speculative decoding: bigram and trigram models with Laplace smoothing,
fitted on the request's own tokens, and prompt lookup (copy what followed the last n-gram)."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch


class NGramDraft:
    """An n-gram model (n = 2 bigram, n = 3 trigram) with add-``alpha`` smoothing."""

    def __init__(self, n: int, vocab_size: int, alpha: float = 1.0):
        if n not in (2, 3):
            raise ValueError(f"NGramDraft supports n=2 or 3, got {n}")
        self.n, self.vocab_size, self.alpha = n, vocab_size, alpha
        self.counts: dict[tuple[int, ...], torch.Tensor] = defaultdict(lambda: torch.zeros(vocab_size))

    def fit(self, tokens: Sequence[int]) -> "NGramDraft":
        """Count every n-gram of ``tokens``."""
        for i in range(len(tokens) - self.n + 1):
            ctx, nxt = tuple(tokens[i : i + self.n - 1]), tokens[i + self.n - 1]
            self.counts[ctx][nxt] += 1
        return self

    def get_probs(self, *context: int) -> torch.Tensor:
        """P(next | last n-1 tokens of ``context``), shape (V,), sums to 1."""
        ctx = tuple(context[-(self.n - 1) :])
        counts = self.counts[ctx] if ctx in self.counts else torch.zeros(self.vocab_size)
        smoothed = counts + self.alpha
        return smoothed / smoothed.sum()

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        """``k`` greedy draft tokens continuing ``tokens``."""
        seq = list(tokens)
        for _ in range(k):
            seq.append(int(self.get_probs(*seq[-(self.n - 1) :]).argmax()))
        return seq[len(tokens) :]


class PromptLookupDraft:
    """Find the latest earlier occurrence of the trailing n-gram (longest n first) and propose
    the tokens that followed it; proposes nothing when there is no match."""

    def __init__(self, max_ngram: int = 3):
        self.max_ngram = max_ngram

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        seq = list(tokens)
        for n in range(min(self.max_ngram, len(seq) - 1), 0, -1):
            tail = seq[-n:]
            for start in range(len(seq) - n - 1, -1, -1):
                if seq[start : start + n] == tail:
                    return seq[start + n : start + n + k]
        return []


def make_draft(name: str, vocab_size: int, tokens: Sequence[int]):
    """The proposer called ``name`` ("bigram" | "trigram" | "prompt_lookup") for a request's tokens."""
    if name == "bigram":
        return NGramDraft(2, vocab_size).fit(tokens)
    if name == "trigram":
        return NGramDraft(3, vocab_size).fit(tokens)
    if name == "prompt_lookup":
        return PromptLookupDraft()
    raise ValueError(f"unknown draft {name!r}: expected 'bigram', 'trigram' or 'prompt_lookup'")
