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
from dataclasses import dataclass, field
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


ENGINES = ("hf", "vllm", "llamacpp")  # the in-process engines; vllm-server and llama-server serve vllm's and llamacpp's
RUNS = ""  # Architecture.engines value: the engine runs this family


@dataclass(frozen=True)
class Architecture:
    """One model family of the shared factory: its config (``build``), the KV-cache trait it
    brings, and per engine of ENGINES either RUNS or why the engine cannot run it (measured)."""

    name: str
    what: str  # the KV-cache-relevant trait this architecture brings
    build: Callable[[dict], "torch.nn.Module"]  # config overrides -> model
    engines: dict = field(default_factory=lambda: dict.fromkeys(ENGINES, RUNS))
    attention: str = "full"  # full | sliding | interleaved | chunked | recurrent: which KV-cache managers it reaches
    window: int | None = None  # the sliding window in tokens: strategies draw lengths around it
    # per engine, the least logit tolerance measured for this family (a target takes the larger of its own and this)
    tolerance_floor: dict = field(default_factory=dict)

    def runs_on(self, engine: str) -> bool:
        return self.engines.get(engine, "not supported") == RUNS


def families_for(engine: str) -> tuple[str, ...]:
    """The names of the families ``engine`` (one of ENGINES) runs, in the factory's order."""
    return tuple(name for name, a in ARCHITECTURES.items() if a.runs_on(engine))


def _llama(overrides: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**{**COMMON, **overrides}))


def _llama_dynamic(overrides: dict):
    """Dynamic NTK RoPE from 16 positions: cache-inconsistent by design past them (transformers
    rescales the frequencies for the longest forward so far, while cached keys keep the old)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    return LlamaForCausalLM(LlamaConfig(**{**COMMON, "max_position_embeddings": DYNAMIC_ORIGINAL_MAX, "rope_parameters": rope, **overrides}))


def _mistral(window: int):
    def build(overrides: dict):
        from transformers import MistralConfig, MistralForCausalLM

        return MistralForCausalLM(MistralConfig(**{**COMMON, "sliding_window": window, **overrides}))

    return build


def _gemma3(window: int):
    """Gemma 3 text: layer 0 sees the last ``window`` tokens, layer 1 all of them (two KV-cache
    groups in vLLM); queries scaled by 1/sqrt(head_dim), both layer kinds on one RoPE base."""

    def build(overrides: dict):
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        fields = {**COMMON, **overrides}
        head_dim = fields.get("head_dim") or fields["hidden_size"] // fields["num_attention_heads"]
        rope = {"rope_type": "default", "rope_theta": 10000.0}
        layers = ["sliding_attention", "full_attention"][: fields["num_hidden_layers"]]  # a draft keeps layer 0
        config = Gemma3TextConfig(**{
            **fields, "head_dim": head_dim, "query_pre_attn_scalar": head_dim, "sliding_window": window, "layer_types": layers,
            "rope_parameters": {"sliding_attention": dict(rope), "full_attention": dict(rope)},
        })
        return Gemma3ForCausalLM(config)

    return build


def _llama4(chunk: int):
    """Llama 4 text: layer 0 attends within chunks of ``chunk`` positions (RoPE), layer 1 to
    every position (no RoPE); each MLP is a one-expert MoE plus the shared expert."""

    def build(overrides: dict):
        from transformers import Llama4ForCausalLM, Llama4TextConfig

        fields = {**COMMON, **overrides}
        layers = fields["num_hidden_layers"]
        config = Llama4TextConfig(**{
            **fields, "attention_chunk_size": chunk, "no_rope_layers": [1, 0][:layers],
            "num_local_experts": 1, "interleave_moe_layer_step": 1, "intermediate_size_mlp": fields["intermediate_size"],
        })
        return Llama4ForCausalLM(config)

    return build


def _qwen2(overrides: dict):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**{**COMMON, **overrides}))


def _phi(overrides: dict):
    from transformers import PhiConfig, PhiForCausalLM

    return PhiForCausalLM(PhiConfig(**{**COMMON, "partial_rotary_factor": 0.5, **overrides}))


def _only(**engines: str) -> dict:
    """Architecture.engines: RUNS on the engines not named, the given reason on those named."""
    return {**dict.fromkeys(ENGINES, RUNS), **engines}


NO_SWA_GGUF = ("llama.cpp converts MistralForCausalLM to its 'llama' graph, which has no sliding window "
               "(conversion/__init__.py: \"MistralForCausalLM\": \"llama\"): it would attend to every position")
NOT_MEASURED = "not offered: not measured on this engine yet"
HF_NO_CHUNKED = ("refused: transformers 5.23.0's continuous batching raises ValueError: Invalid layer type: chunked_attention "
                 "(its static, batched and assisted paths equal the oracle)")
# Measured (docs/targets/families.md, tests/measure_family_gap.py): gemma3's logits on llama.cpp (f32 cache)
# within 2.8e-3 of the HF forward over 7,887 random requests (ggml's GELU reads an f16 table), against 5e-5
# for llama; two configs of the same engine (chunked and whole prompts in a 10-minute campaign) up to 5.9e-3
# apart, since a kernel's batch-size-dependent rounding can move a GELU input across an f16 step.
GEMMA3_LLAMACPP_TOLERANCE = 1.5e-2
ARCHITECTURES = {
    a.name: a
    for a in (
        Architecture("llama", "GQA (4 query heads, 2 KV heads), RoPE", _llama),
        Architecture("llama-dynamic", "dynamic NTK RoPE from 16 positions (cache-inconsistent past them by design)", _llama_dynamic,
                     _only(vllm=NOT_MEASURED, llamacpp=NOT_MEASURED)),
        Architecture("mistral", "sliding window of 8 tokens on every layer (prompts cross it many times)", _mistral(8),
                     _only(llamacpp=NO_SWA_GGUF), "sliding", 8),
        Architecture("mistral-w32", "sliding window of 32 tokens on every layer: a multiple of the block size", _mistral(32),
                     _only(llamacpp=NO_SWA_GGUF), "sliding", 32),
        Architecture("gemma3", "interleaved local (window of 20) and global layers: two KV-cache groups", _gemma3(20),
                     _only(), "interleaved", 20, {"llamacpp": GEMMA3_LLAMACPP_TOLERANCE}),
        Architecture("llama4", "chunked local attention (chunks of 32) interleaved with a global NoPE layer", _llama4(32),
                     _only(hf=HF_NO_CHUNKED, llamacpp=NOT_MEASURED), "chunked", 32),
        Architecture("qwen2", "QKV bias, GQA, RoPE", _qwen2),
        Architecture("phi", "partial rotary (half of each head rotates), parallel attention/MLP", _phi,
                     _only(vllm=NOT_MEASURED, llamacpp=NOT_MEASURED)),
    )
}


def tiny_model(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu", **overrides):
    """The tiny ``arch`` model with weights drawn from ``seed``, in eval mode; ``overrides`` are
    config fields (e.g. ``**SHAPES["wide_heads"]``, ``max_position_embeddings``)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown HF architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        family = ARCHITECTURES[arch]
        attention = "sdpa" if family.window is None else "eager"  # eager attention applies the window itself
        model = family.build({"attn_implementation": attention, **overrides})
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
