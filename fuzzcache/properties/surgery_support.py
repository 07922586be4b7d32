"""Shared pieces of the KV-cache surgery properties: the target's SurgeryOps, per-dtype bounds, comparisons.

Bounds are relative to the largest magnitude of the expected tensor, set at about twice (or more)
the worst error of tests/test_surgery.py::test_bounds_hold_over_every_architecture_rope_type_and_dtype,
which sweeps every architecture x RoPE type x dtype and prints its maxima with
``pytest tests/test_surgery.py -k bounds_hold -s``.
"""

from __future__ import annotations

import torch

from fuzzcache.coverage import reached
from fuzzcache.findings import mismatch

# Shifted keys vs the model's own rotary at p + Δ (surgery.rope.model's key, every p, p + Δ in 0..40 below
# a stateful limit), and keep_document's layer-0 keys / values vs the bare document cache (BOS, prefixes
# of 1, 4, 9 tokens, a 6-token document). Measured worst, shift / document: fp32 1.8e-6 / 2.6e-7 (angles
# in float32), fp16 1.9e-3 / 1.4e-3 (~2 eps: the model rounds cos/sin and the products), bf16 1.7e-2 / 7.9e-3.
CACHE_REL_TOL = {"fp64": 1e-12, "fp32": 1e-5, "fp16": 4e-3, "bf16": 3.2e-2}
# A round trip (bound below) or a composition of two shifts (2x the bound) on keys of that dtype, one
# rounding per shift: surgery.rope.compose's keys, every a, b with positions spanning <= 40 (below a
# stateful limit). Measured worst, round trip / composition: fp64 2.8e-16 / 4.8e-16, fp32 7.6e-8 / 1e-7,
# fp16 6.2e-4 / 8.4e-4, bf16 5e-3 / 6.8e-3.
SHIFT_REL_TOL = {"fp64": 1e-12, "fp32": 2.4e-7, "fp16": 2e-3, "bf16": 1.6e-2}
# NLL with a cache vs one full forward, nats per token (absolute, times max(1, |nll|)).
NLL_TOL = {"fp32": 1e-4, "fp16": 2e-3, "bf16": 1.6e-2}
TORCH_DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def surgery_of(target):
    """The target's SurgeryOps; a clear error when transformers is missing."""
    from fuzzcache.surgery import INSTALL_HINT, available

    if not available():
        raise RuntimeError(INSTALL_HINT)
    return target.surgery


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (NaN counts as infinite)."""
    diff = (got.double() - want.double()).abs().nan_to_num(float("inf"))
    return float(diff.max() / want.double().abs().max().clamp_min(1e-30)) if diff.numel() else 0.0


def assert_rel_close(what: str, got: torch.Tensor, want: torch.Tensor, tol: float, **details) -> None:
    if got.shape != want.shape:
        raise mismatch(f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}", what="shape", **details)
    err = relative_error(got, want)
    if err > tol:
        raise mismatch(f"{what}: max abs diff {err:.3g} x max|expected| > bound {tol:g}", relative_error=err, **details)


def by_design(what: str) -> None:
    """A stateful RoPE past its original max length: expected divergence, counted, not compared."""
    reached(f"by design: {what}")


def reaches_limit(info, highest: int) -> bool:
    """Keys at position ``highest`` are at or past a stateful RoPE's cache-consistent limit."""
    return info.consistent_below is not None and highest >= info.consistent_below


def unless_refused(info, highest: int, what: str, call):
    """``call()``'s result, or None (counted) when it raises RopeShiftError for keys reaching position
    ``highest`` at or past a stateful RoPE's limit. A refusal below the limit, or on a RoPE type without
    one, is a finding; so is no refusal past it."""
    from fuzzcache.surgery.rotary import RopeShiftError

    limit = info.consistent_below
    reaches = reaches_limit(info, highest)
    try:
        result = call()
    except RopeShiftError as e:
        if not reaches:
            below = f"below {limit}" if limit is not None else "at every position"
            raise mismatch(f"{info.rope_type} RoPE: a shift of keys up to position {highest} was refused "
                           f"(cache-consistent {below}): {e}") from e
        by_design(what)
        return None
    if reaches:
        raise mismatch(f"{info.rope_type} RoPE: a shift reaching position {highest} >= {limit} was not flagged as cache-inconsistent")
    return result


def seeded(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def tokens_of(n: int, seed: int) -> tuple[int, ...]:
    from fuzzcache.surgery.models import VOCAB

    return tuple(torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist())
