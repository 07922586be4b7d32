"""Shared pieces of the KV-cache surgery properties: the target's SurgeryOps, per-dtype bounds, comparisons.

Bounds are relative to the largest magnitude of the expected tensor, measured on the tiny
models over every (arch, RoPE type) and set at about twice the worst error seen
(`python -m pytest tests/test_surgery.py -k bounds -s` prints the measurement).
"""

from __future__ import annotations

import torch

from fuzzcache.coverage import reached
from fuzzcache.findings import mismatch

# Shifted keys vs the model's own rotary at p + Δ, and corrected layer-0 keys / values vs the bare
# cache. Measured worst (relative to max |k|): fp32 2.4e-6 (angles of positions <= 40 in float32),
# fp16 1.9e-3 (~2 eps: the model rounds cos/sin and the products to fp16), bf16 1.5e-2 (~2 eps).
CACHE_REL_TOL = {"fp64": 1e-12, "fp32": 1e-5, "fp16": 4e-3, "bf16": 3.2e-2}
# A shift, round trip or composition of shifts on keys of that dtype: one rounding per shift.
# Measured worst: fp64 3.9e-16, fp32 1.1e-7, fp16 9.2e-4, bf16 7.4e-3 (each <= 1 eps of the dtype).
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


def seeded(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def tokens_of(n: int, seed: int) -> tuple[int, ...]:
    from fuzzcache.surgery.models import VOCAB

    return tuple(torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist())
