"""TinyGPT: a small decoder-only transformer with explicit positions and a per-layer KV cache.

The model is deliberately plain: every fast path of the engine feeds it explicit
positions, an optional cache and masks, so that the same weights serve the
full-recompute oracle, incremental decode, ragged batches and fused steps.

KV cache layout, used everywhere in fuzzcache:
    a list with one ``(k, v)`` pair per layer, each tensor ``(B, H_kv, T, D)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ModelConfig:
    """Shape and seed of a TinyGPT. ``n_kv_head`` < ``n_head`` gives GQA, 1 gives MQA."""

    vocab_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_kv_head: int = 2
    head_dim: int = 8
    max_seq_len: int = 256
    positions: str = "learned"  # "learned" (as the seed's NanoGPT) or "rope"
    rope_theta: float = 10000.0
    seed: int = 0
    # Std of the output head: large enough that greedy decisions are rarely near-ties.
    logit_scale: float = 4.0

    def __post_init__(self) -> None:
        if self.positions not in ("learned", "rope"):
            raise ValueError(f"ModelConfig.positions must be 'learned' or 'rope', got {self.positions!r}")
        if self.n_head % self.n_kv_head != 0:
            raise ValueError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"rope needs an even head_dim, got {self.head_dim}")
        for name in ("vocab_size", "n_layer", "n_head", "n_kv_head", "head_dim", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def d_model(self) -> int:
        return self.n_head * self.head_dim


def rope_rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate ``x`` (B, H, T, D) by ``positions`` (B, T) with rotary embedding (half-split layout)."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d))  # (D/2,)
    angles = positions.to(torch.float64)[..., None] * inv_freq  # (B, T, D/2)
    cos = torch.cos(angles).to(x.dtype)[:, None]  # (B, 1, T, D/2)
    sin = torch.sin(angles).to(x.dtype)[:, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class TinyGPT(torch.nn.Module):
    """Pre-norm transformer; weights drawn deterministically from ``config.seed``."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        super().__init__()
        self.config = config
        c = config
        gen = torch.Generator().manual_seed(c.seed)

        def param(*shape: int, std: float) -> torch.nn.Parameter:
            w = torch.randn(*shape, generator=gen) * std
            return torch.nn.Parameter(w.to(device=device, dtype=dtype), requires_grad=False)

        d, hd = c.d_model, c.head_dim
        self.wte = param(c.vocab_size, d, std=1.0)
        self.wpe = param(c.max_seq_len, d, std=1.0) if c.positions == "learned" else None
        self.layers = torch.nn.ModuleList()
        for _ in range(c.n_layer):
            layer = torch.nn.Module()
            layer.wq = param(d, c.n_head * hd, std=1 / math.sqrt(d))
            layer.wk = param(d, c.n_kv_head * hd, std=1 / math.sqrt(d))
            layer.wv = param(d, c.n_kv_head * hd, std=1 / math.sqrt(d))
            layer.wo = param(c.n_head * hd, d, std=1 / math.sqrt(d))
            layer.w1 = param(d, 4 * d, std=1 / math.sqrt(d))
            layer.w2 = param(4 * d, d, std=1 / math.sqrt(4 * d))
            self.layers.append(layer)
        self.head = param(d, c.vocab_size, std=c.logit_scale / math.sqrt(d))

    @property
    def dtype(self) -> torch.dtype:
        return self.wte.dtype

    @property
    def device(self) -> torch.device:
        return self.wte.device

    @torch.no_grad()
    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        past_kvs: KVCache | None = None,
        cache_mask: torch.Tensor | None = None,
        input_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KVCache]:
        """Run ``tokens`` (B, T) at absolute ``positions`` (B, T) on top of ``past_kvs``.

        ``cache_mask`` (B, C) marks real cached entries (False = padding a row must not see);
        ``input_mask`` (B, T) marks real input tokens (False = left padding).
        Returns logits (B, T, V) and the cache extended by the T new entries, (B, H_kv, C+T, D).
        """
        c = self.config
        B, T = tokens.shape
        if int(positions.max()) >= c.max_seq_len or int(positions.min()) < 0:
            raise ValueError(f"position out of range [0, {c.max_seq_len}): {positions.tolist()}")
        C = 0 if past_kvs is None else past_kvs[0][0].shape[2]
        dev = tokens.device
        if cache_mask is None:
            cache_mask = torch.ones(B, C, dtype=torch.bool, device=dev)
        if input_mask is None:
            input_mask = torch.ones(B, T, dtype=torch.bool, device=dev)
        causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()  # (T, T)
        sees_new = causal[None] & input_mask[:, None, :]  # (B, T, T): causal, never onto padding
        sees_new = sees_new | torch.eye(T, dtype=torch.bool, device=dev)  # padding rows see themselves: no NaN
        sees_cache = cache_mask[:, None, :].expand(B, T, C)  # (B, T, C)
        allowed = torch.cat([sees_cache, sees_new], dim=-1)[:, None]  # (B, 1, T, C+T)

        x = self.wte[tokens]  # (B, T, d)
        if self.wpe is not None:
            x = x + self.wpe[positions]
        present: KVCache = []
        for i, layer in enumerate(self.layers):
            h = F.rms_norm(x, (x.shape[-1],))
            q = (h @ layer.wq).view(B, T, c.n_head, c.head_dim).transpose(1, 2)  # (B, H, T, D)
            k = (h @ layer.wk).view(B, T, c.n_kv_head, c.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
            v = (h @ layer.wv).view(B, T, c.n_kv_head, c.head_dim).transpose(1, 2)
            if c.positions == "rope":
                q = rope_rotate(q, positions, c.rope_theta)
                k = rope_rotate(k, positions, c.rope_theta)
            if past_kvs is not None:
                k = torch.cat([past_kvs[i][0], k], dim=2)  # (B, H_kv, C+T, D)
                v = torch.cat([past_kvs[i][1], v], dim=2)
            present.append((k, v))
            rep = c.n_head // c.n_kv_head
            kk = k.repeat_interleave(rep, dim=1)  # (B, H, C+T, D)
            vv = v.repeat_interleave(rep, dim=1)
            att = (q @ kk.transpose(-1, -2)) / math.sqrt(c.head_dim)  # (B, H, T, C+T)
            att = att.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
            y = (att @ vv).transpose(1, 2).reshape(B, T, c.d_model)  # (B, T, d)
            x = x + y @ layer.wo
            h = F.rms_norm(x, (x.shape[-1],))
            x = x + F.gelu(h @ layer.w1) @ layer.w2
        x = F.rms_norm(x, (x.shape[-1],))
        logits = (x @ self.head).float()  # (B, T, V)
        return logits, present


def build_model(config: ModelConfig | None = None, dtype: torch.dtype = torch.float32, device: str = "cpu") -> TinyGPT:
    """The TinyGPT for ``config`` (default: ``ModelConfig()``), weights from its seed."""
    return TinyGPT(config or ModelConfig(), dtype=dtype, device=device)
