"""Tiny HF causal LMs built from configs with seeded weights, one per (arch, RoPE type, dtype).

No hub downloads: every model is ``AutoModelForCausalLM.from_config`` of a small config
(hidden 32, 2 layers, head_dim 16, vocab 320) with ``torch.manual_seed`` weights, memoised.
The RoPE types are the ones a config can select through ``rope_parameters``; the original
max length is small (16) so the stateful types cross it with short sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

ARCHS = ("llama", "mistral", "qwen2", "phi", "gpt_neox")
ROPE_TYPES = ("default", "linear", "yarn", "llama3", "dynamic", "longrope")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

VOCAB = 320  # the in-process BPE tokenizer's vocabulary (fuzzcache.surgery.bpe)
HIDDEN = 32
HEADS = 2
KV_HEADS = 1  # grouped-query attention where the architecture has it
LAYERS = 2
MAX_POSITIONS = 32  # config.max_position_embeddings
ORIGINAL_MAX = 16  # the pretraining length the scaled RoPE types extend from
SLIDING_WINDOW = 6  # Mistral's window, small enough to matter in short sequences
PARTIAL_ROTARY = {"phi": 0.5, "gpt_neox": 0.25}  # share of head_dim that rotates
INIT_STD = 0.2  # large enough that attention mixes noticeably (prefix priming is visible)
SEED = 0


def rope_parameters(rope_type: str, rotary_dim: int) -> dict:
    """The ``rope_parameters`` dict that selects ``rope_type`` (rope_theta 10000)."""
    base = {"rope_type": rope_type, "rope_theta": 10000.0}
    half = rotary_dim // 2
    extra = {
        "default": {},
        "linear": {"factor": 2.0},
        "dynamic": {"factor": 2.0},
        "yarn": {"factor": MAX_POSITIONS / ORIGINAL_MAX, "original_max_position_embeddings": ORIGINAL_MAX},
        "llama3": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": ORIGINAL_MAX},
        "longrope": {"short_factor": [1.0 + 0.1 * i for i in range(half)], "long_factor": [1.0 + 0.5 * i for i in range(half)],
                     "factor": MAX_POSITIONS / ORIGINAL_MAX, "original_max_position_embeddings": ORIGINAL_MAX},
    }
    if rope_type not in extra:
        raise ValueError(f"unknown RoPE type {rope_type!r}; known: {', '.join(ROPE_TYPES)}")
    return base | extra[rope_type]


def make_config(arch: str, rope_type: str = "default", attn_implementation: str = "eager"):
    """A tiny config of ``arch`` selecting ``rope_type``."""
    import transformers

    head_dim = HIDDEN // HEADS
    partial = PARTIAL_ROTARY.get(arch, 1.0)
    rope = rope_parameters(rope_type, int(head_dim * partial))
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, max_position_embeddings=MAX_POSITIONS, initializer_range=INIT_STD,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    if partial != 1.0:
        rope["partial_rotary_factor"] = partial
    if arch in ("llama", "mistral", "qwen2"):
        classes = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig, "qwen2": transformers.Qwen2Config}
        extra = {"num_key_value_heads": KV_HEADS}
        if arch == "mistral":
            extra["sliding_window"] = SLIDING_WINDOW
        config = classes[arch](**common, **extra, rope_parameters=rope)
    elif arch == "phi":
        config = transformers.PhiConfig(**common, num_key_value_heads=HEADS, rope_parameters=rope,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)
    elif arch == "gpt_neox":
        config = transformers.GPTNeoXConfig(**common, rope_parameters=rope, use_parallel_residual=True,
                                            attention_dropout=0.0, hidden_dropout=0.0)
    else:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    config._attn_implementation = attn_implementation
    return config


@lru_cache(maxsize=64)
def tiny_model(arch: str = "llama", rope_type: str = "default", dtype: str = "fp32"):
    """The memoised tiny model of ``arch`` with ``rope_type`` in ``dtype`` ("fp32" | "fp16" | "bf16"), eval mode."""
    from transformers import AutoModelForCausalLM

    config = make_config(arch, rope_type)
    with torch.random.fork_rng(devices=[]):  # CPU generator only: the models are built on CPU
        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return model.to(DTYPES[dtype]).eval()


@dataclass(frozen=True)
class SurgeryModel:
    """Which tiny model a surgery scenario runs on."""

    arch: str = "llama"
    rope: str = "default"
    dtype: str = "fp32"

    def short(self) -> str:
        return f"{self.arch}/{self.rope}/{self.dtype}"

    def load(self):
        return tiny_model(self.arch, self.rope, self.dtype)
