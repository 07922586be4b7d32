"""The one factory of tiny seeded-random models every target is built from: an HF transformers
model per architecture, built from a config (no hub). Engines that load checkpoints (vLLM, later
llama.cpp) get the same weights written in their format (``save_checkpoint``), and one HF forward
over them is their oracle. ``quiet_transformers`` silences transformers' notices around a call.

Weights are drawn with ``initializer_range`` 0.4 instead of HF's 0.02, so logits spread out: the
median top-1/top-2 margin is 0.66-0.70 over 320 positions of random tokens per architecture (at
0.02 it is about 0.03, and near-ties would hide real bugs).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

VOCAB_SIZE = 64
MAX_SEQ_LEN = 64
INIT_RANGE = 0.4
DYNAMIC_ORIGINAL_MAX = 16  # hf:llama-dynamic's original length; sequences run to MAX_SEQ_LEN past it
SHAPES = {
    # the hf:<arch> targets' shape: head_dim 8
    "tiny": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
    # for kernels that need head_dim >= 32 (vLLM's CPU attention): 2 query heads, 1 KV head of 32
    "wide_heads": dict(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=32),
}
COMMON = dict(
    **SHAPES["tiny"], vocab_size=VOCAB_SIZE, num_hidden_layers=2, max_position_embeddings=MAX_SEQ_LEN,
    initializer_range=INIT_RANGE, bos_token_id=None, eos_token_id=None, pad_token_id=None,
)


@dataclass(frozen=True)
class Architecture:
    name: str
    what: str  # the KV-cache-relevant trait this architecture brings
    build: Callable[[dict], "torch.nn.Module"]  # config overrides -> model


def _llama(overrides: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**{**COMMON, **overrides}))


def _llama_dynamic(overrides: dict):
    """Dynamic NTK RoPE from 16 positions: cache-inconsistent by design past them (transformers
    rescales the frequencies for the longest forward so far, while cached keys keep the old)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    return LlamaForCausalLM(LlamaConfig(**{**COMMON, "max_position_embeddings": DYNAMIC_ORIGINAL_MAX, "rope_parameters": rope, **overrides}))


def _mistral(overrides: dict):
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(**{**COMMON, "sliding_window": 8, **overrides}))


def _qwen2(overrides: dict):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**{**COMMON, **overrides}))


def _phi(overrides: dict):
    from transformers import PhiConfig, PhiForCausalLM

    return PhiForCausalLM(PhiConfig(**{**COMMON, "partial_rotary_factor": 0.5, **overrides}))


ARCHITECTURES = {
    a.name: a
    for a in (
        Architecture("llama", "GQA (4 query heads, 2 KV heads), RoPE", _llama),
        Architecture("llama-dynamic", "dynamic NTK RoPE from 16 positions (cache-inconsistent past them by design)", _llama_dynamic),
        Architecture("mistral", "sliding window of 8 tokens (prompts reach 40)", _mistral),
        Architecture("qwen2", "QKV bias, GQA, RoPE", _qwen2),
        Architecture("phi", "partial rotary (half of each head rotates), parallel attention/MLP", _phi),
    )
}


def tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu", **overrides):
    """The tiny ``arch`` model with weights drawn from ``seed``, in eval mode; ``overrides`` are
    config fields (e.g. ``**SHAPES["wide_heads"]``, ``max_position_embeddings``)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown HF architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ARCHITECTURES[arch].build({"attn_implementation": "sdpa", **overrides})
    return model.to(device=device, dtype=dtype).eval()


def draft_model(arch: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """A smaller model of the same vocabulary for ``assistant_model`` speculation: one layer of the
    target's own weights (so drafts are often right and every accept count shows up)."""
    target = tiny_model(arch, dtype=dtype, device=device)
    draft = tiny_model(arch, dtype=dtype, device=device, num_hidden_layers=1)
    result = draft.load_state_dict(target.state_dict(), strict=False)  # layer 1 of the target is left out
    assert not result.missing_keys, f"draft model lacks target weights for {result.missing_keys}"
    return draft


def save_checkpoint(model, folder) -> None:
    """``model`` as an HF checkpoint (config.json + safetensors) in ``folder``, no tokenizer: the
    format vLLM loads (``skip_tokenizer_init``) and llama.cpp's converter reads."""
    with quiet_transformers():
        model.save_pretrained(folder)


@contextmanager
def quiet_transformers():
    """transformers' deprecation, "no EOS" and continuous-batching notices (psutil, flash
    attention) silenced for one call, and the caller's logging levels restored after."""
    import transformers

    level = transformers.logging.get_verbosity()
    cb_logger = logging.getLogger("ContinuousBatchingLogger")
    cb_level = cb_logger.level
    transformers.logging.set_verbosity_error()
    cb_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)
        cb_logger.setLevel(cb_level)
