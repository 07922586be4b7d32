"""Tie-aware token comparison and dtype-aware logit tolerance (ARCHITECTURE.md section 4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    """``tie``: an oracle margin at or below this is a near-tie, not a mismatch.
    ``logits``: max abs difference allowed between returned and oracle logits."""

    tie: float
    logits: float

    def at_least(self, floor: float) -> Tolerance:
        """Both bounds raised to ``floor`` (a model family's own measured gap), never lowered."""
        return Tolerance(tie=max(self.tie, floor), logits=max(self.logits, floor))


# fp32 differences on the tiny models are ~1e-5; fp16 and bf16 keep ~3 and ~2 significant
# digits of logits of magnitude ~10, accumulated over a few layers.
TOLERANCES = {
    torch.float32: Tolerance(tie=1e-3, logits=1e-4),
    torch.float16: Tolerance(tie=5e-2, logits=5e-2),
    torch.bfloat16: Tolerance(tie=2.5e-1, logits=2.5e-1),
}


def tolerance_for(dtype: torch.dtype) -> Tolerance:
    return TOLERANCES.get(dtype, TOLERANCES[torch.float32])


def target_tolerance(target) -> Tolerance:
    """The target's own measured ``tolerance`` where it declares one (an engine whose kernels
    differ from the oracle's, e.g. vLLM's CPU attention), else its dtype's."""
    return getattr(target, "tolerance", None) or tolerance_for(getattr(target, "dtype", torch.float32))


@dataclass(frozen=True)
class Divergence:
    """The first place a request's output left the oracle's."""

    rid: int
    step: int  # index into the generated tokens
    expected: int  # the oracle's greedy token
    got: int  # the target's token
    margin: float  # oracle logit of its own top token minus its logit of the target's token
    max_abs_diff: float  # between returned and oracle logits up to this step (0.0 if none returned)
    what: str  # "token" or "logits"


@dataclass(frozen=True)
class RequestComparison:
    divergence: Divergence | None
    near_tie_step: int | None  # where a legitimate near-tie stopped the walk
    compared: int  # tokens checked


def compare_request(rid: int, tokens: list[int], oracle_logits: torch.Tensor, logits: torch.Tensor | None, tol: Tolerance) -> RequestComparison:
    """Walk ``tokens`` against the oracle's logits (n, V) for the same positions.

    At the first token that is not the oracle's argmax, it is a mismatch only if the oracle
    prefers its own token by more than ``tol.tie``; otherwise a near-tie ends the walk (the
    sequences have legitimately diverged). Returned ``logits`` (n, V) are checked up to there.
    """
    max_diff = 0.0
    for step, got in enumerate(tokens):
        row = oracle_logits[step]
        expected = int(row.argmax())
        if logits is not None:
            diff = float((logits[step].float() - row).abs().max())
            max_diff = max(max_diff, diff)
            if diff > tol.logits:
                return RequestComparison(Divergence(rid, step, expected, got, float(row[expected] - row[got]), max_diff, "logits"), None, step + 1)
        if got != expected:
            margin = float(row[expected] - row[got])
            if margin > tol.tie:
                return RequestComparison(Divergence(rid, step, expected, got, margin, max_diff, "token"), None, step + 1)
            return RequestComparison(None, step, step + 1)
    return RequestComparison(None, None, len(tokens))
