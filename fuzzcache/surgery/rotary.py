"""Moving cached keys by Δ positions with the model's own rotary embedding.

A cached key is ``s · R(p) k`` where ``R(p)`` rotates each pair (i, i + rotary_dim/2) of the
first ``rotary_dim`` dims by ``p · inv_freq[i]`` and ``s`` is the rotary's attention scaling
(yarn, longrope; 1 otherwise). Moving it to ``p + Δ`` is ``R(Δ)`` alone: rotations compose and
the scaling is already in the key, so the shift uses unscaled cos/sin of ``Δ · inv_freq``
(the model's own, RoPE type applied) and never touches the dims past ``rotary_dim``.

The stateful types (dynamic, longrope) change ``inv_freq`` once a forward reaches the
original max length: keys cached below it and keys computed past it use different
frequencies, so the cache is inconsistent there by design. A shift whose positions reach that
length raises ``RopeShiftError`` rather than produce keys no forward would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STATEFUL = ("dynamic", "longrope")


class RopeShiftError(ValueError):
    """A shift the rotary cannot express consistently (stateful RoPE past its original max length, or a negative position)."""


@dataclass(frozen=True)
class RopeInfo:
    rope_type: str
    head_dim: int
    rotary_dim: int  # the first rotary_dim dims rotate (partial rotary: Phi, GPT-NeoX)
    inv_freq: torch.Tensor  # (rotary_dim // 2,) float64, the model's own frequencies at short lengths
    attention_scaling: float  # s in the cached s · R(p) k; a shift leaves it alone
    consistent_below: int | None = None  # stateful types: positions >= this are inconsistent by design

    @property
    def cache_consistent(self) -> bool:
        return self.consistent_below is None


def rotary_of(model) -> torch.nn.Module:
    """The model's rotary embedding module (``model.model.rotary_emb``, ``model.gpt_neox.rotary_emb``, ...)."""
    rotary = getattr(model.base_model, "rotary_emb", None)
    if rotary is None:
        raise RopeShiftError(f"{type(model).__name__} has no rotary embedding (base_model.rotary_emb)")
    return rotary


def rope_info(model) -> RopeInfo:
    """The rotation a shift needs, read from the model's own rotary embedding."""
    rotary = rotary_of(model)
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    inv_freq = rotary.original_inv_freq.detach().to("cpu", torch.float64)  # the short-length frequencies
    rope_type = rotary.rope_type
    limit = None
    if rope_type == "dynamic":
        # grows inv_freq once a forward's length exceeds original_max_seq_len, and resets only when a later
        # forward is strictly shorter than it: a forward of exactly that length after a longer one keeps
        # the grown frequencies (transformers 5.x, corpus/transformers-dynamic-rope-reset.md), so the last
        # position below the limit is not reliably consistent either.
        limit = int(rotary.original_max_seq_len) - 1
    elif rope_type == "longrope":
        # switches to long_factor once a forward's length exceeds the config's original_max_position_embeddings
        # (transformers' longrope_frequency_update reads it there; rotary.original_max_seq_len is
        # max_position_embeddings, a different number)
        limit = int(config.rope_parameters["original_max_position_embeddings"])
    return RopeInfo(rope_type, head_dim, 2 * inv_freq.numel(), inv_freq, float(rotary.attention_scaling), limit)


def check_positions(info: RopeInfo, first: int, length: int, delta: int) -> None:
    """Raise RopeShiftError if keys at ``first .. first+length-1`` cannot move by ``delta`` consistently."""
    if length == 0:
        return
    lowest, highest = min(first, first + delta), max(first, first + delta) + length - 1
    if lowest < 0:
        raise RopeShiftError(f"shift by {delta} moves position {first} to {first + delta} < 0")
    if info.consistent_below is not None and highest >= info.consistent_below:
        raise RopeShiftError(f"{info.rope_type} RoPE is cache-inconsistent by design at position {highest} "
                             f">= its original max length {info.consistent_below}; a shifted cache would not match any forward")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def shift_angles(info: RopeInfo, delta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of ``delta · inv_freq`` in float64, laid out like HF's (cat(f, f)): (rotary_dim,) each."""
    freqs = delta * info.inv_freq  # (rotary_dim // 2,)
    angles = torch.cat((freqs, freqs))  # (rotary_dim,)
    return angles.cos(), angles.sin()


def rope_shift(keys: torch.Tensor, delta: int, info: RopeInfo, first_position: int = 0) -> torch.Tensor:
    """Keys cached at positions ``first_position ..`` moved to ``first_position + delta ..``.

    ``keys``: (B, H, T, D) in any float dtype. The rotation is done in float64 and rounded once
    to ``keys.dtype``; ``delta == 0`` returns the keys unchanged bit for bit."""
    check_positions(info, first_position, keys.shape[-2], delta)
    return rotate(keys, delta, info)


def rotate(keys: torch.Tensor, delta: int, info: RopeInfo) -> torch.Tensor:
    """``rope_shift`` without its position check: an engine's K-shift turns whatever a cell holds,
    wherever that leaves it (``fuzzcache.surgery.memory_model_bugs`` models wrong turns)."""
    cos, sin = (t.to(keys.device) for t in shift_angles(info, delta))  # (R,)
    rot, rest = keys[..., : info.rotary_dim], keys[..., info.rotary_dim :]  # (B, H, T, R), (B, H, T, D - R)
    moved = rot.double() * cos + rotate_half(rot.double()) * sin  # (B, H, T, R)
    return torch.cat((moved.to(keys.dtype), rest), dim=-1)  # (B, H, T, D)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's ``apply_rotary_pos_emb`` for one tensor, partial rotary included (the first cos.shape[-1] dims rotate).
    ``x``: (B, H, T, D); ``cos``, ``sin``: (B, T, R) as the rotary module returns them."""
    r = cos.shape[-1]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, R)
    rot, rest = x[..., :r], x[..., r:]
    return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)


def reset_rotary(model) -> None:
    """Put a stateful rotary (dynamic, longrope) back to its short-length frequencies (one call at position 0)."""
    rotary = rotary_of(model)
    inv_freq = rotary.inv_freq
    x = torch.zeros(1, 1, 1, 2 * inv_freq.numel(), dtype=inv_freq.dtype, device=inv_freq.device)  # (B, H, T, R)
    rotary(x, torch.zeros(1, 1, dtype=torch.long, device=inv_freq.device))  # position 0


def model_rotary(model, x: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """``x`` (B, H, T, D) rotated by the model's own rotary embedding at ``positions`` (one call)."""
    cos, sin = rotary_of(model)(x, torch.tensor([positions], device=x.device))  # (1, T, R), in x.dtype
    return apply_rotary(x, cos, sin)
