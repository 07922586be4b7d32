"""Model configs and KV tensors for op-level properties."""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from hypothesis_torch import tensor_strategy

from fuzzcache.model import ModelConfig


@st.composite
def model_configs(draw, vocab_size: int = 64) -> ModelConfig:
    """TinyGPT shapes: layers, heads, MHA / GQA / MQA, learned or RoPE positions."""
    n_kv = draw(st.sampled_from([1, 2, 4]))
    n_head = n_kv * draw(st.sampled_from([1, 2]))
    return ModelConfig(
        vocab_size=vocab_size,
        n_layer=draw(st.integers(1, 2)),
        n_head=n_head,
        n_kv_head=n_kv,
        head_dim=draw(st.sampled_from([8, 4, 6])),
        positions=draw(st.sampled_from(["learned", "rope"])),
        seed=draw(st.integers(0, 3)),
    )


def kv_tensors(n_kv_head: int, length: int, head_dim: int) -> st.SearchStrategy[torch.Tensor]:
    """A finite float32 KV tensor (1, H_kv, T, D), strided layout, pinned to the CPU."""
    return tensor_strategy(
        dtype=torch.float32,
        shape=(1, n_kv_head, length, head_dim),
        elements=st.floats(-4, 4, allow_nan=False, allow_infinity=False, width=32),
        layout=torch.strided,
        device=torch.device("cpu"),
        requires_grad=False,
        pin_memory=False,
    )
