"""Shared pieces of the op-level properties: models by config, the ops of a target, checks."""

from __future__ import annotations

from functools import lru_cache

import torch
from hypothesis import strategies as st

from fuzzcache.compare import tolerance_for
from fuzzcache.engine.ops import DEFAULT_OPS, EngineOps
from fuzzcache.findings import mismatch
from fuzzcache.model import ModelConfig, TinyGPT
from fuzzcache.oracle import full_logits
from fuzzcache.strategies.lengths import power_of_two_lengths

SEED_MODEL = ModelConfig()


@lru_cache(maxsize=32)
def _model(config: ModelConfig, dtype: torch.dtype, device: str) -> TinyGPT:
    return TinyGPT(config, dtype=dtype, device=device)


def model_for(target, config: ModelConfig) -> TinyGPT:
    """A TinyGPT of ``config`` in the target's dtype and device (cached)."""
    return _model(config, getattr(target, "dtype", torch.float32), str(getattr(target, "device", "cpu")))


def ops_of(target) -> EngineOps:
    return getattr(target, "ops", DEFAULT_OPS)


def assert_logits_close(what: str, got: torch.Tensor, want: torch.Tensor, target, **details) -> None:
    """A ``mismatch`` finding when ``got`` and ``want`` differ by more than the dtype's logit tolerance."""
    tol = tolerance_for(getattr(target, "dtype", torch.float32)).logits
    if got.shape != want.shape:
        raise mismatch(f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}", what="shape", **details)
    diff = (got.float().cpu() - want.float().cpu()).abs()
    worst = float(diff.nan_to_num(float("inf")).max()) if diff.numel() else 0.0
    if worst > tol:
        index = tuple(int(i) for i in (diff.nan_to_num(float("inf")) == worst).nonzero()[0])
        raise mismatch(f"{what}: max abs logit diff {worst:.3g} > {tol:g} at {index}", max_abs_diff=worst, at=list(index), **details)


def assert_caches_close(what: str, got, want, target, **details) -> None:
    """Keys and values of every layer of two caches, per layer (1, H_kv, T, D), within tolerance."""
    for layer, ((k, v), (wk, wv)) in enumerate(zip(got, want)):
        assert_logits_close(f"{what}: layer {layer} keys", k, wk, target, layer=layer, **details)
        assert_logits_close(f"{what}: layer {layer} values", v, wv, target, layer=layer, **details)


def oracle_logits(model: TinyGPT, tokens: list[int]) -> torch.Tensor:
    return full_logits(model, tokens)


def token_lists(lo: int, hi: int, vocab: int = SEED_MODEL.vocab_size):
    """Strategy: token tuples of length lo..hi, half the time a power of two or one off it
    (shrinking toward short, all zeros)."""
    return power_of_two_lengths(lo, hi).flatmap(lambda n: st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n)).map(tuple)


def tokens_of(vocab: int, n: int, seed: int) -> list[int]:
    """``n`` deterministic pseudo-random tokens."""
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
