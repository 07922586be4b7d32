"""The shared factory's tiny HF models written as GGUF files, the format llama.cpp loads.

Tensor names come from gguf's own HF-to-GGUF name map (``gguf.get_tensor_name_map``, the table
llama.cpp's ``convert_hf_to_gguf.py`` uses), and the converter's per-architecture rewrites are
applied: llama.cpp's "llama" graph rotates interleaved pairs (NORM RoPE), so HF's rotate-half rows
of q and k are permuted into pairs ("qwen2" and "gemma3" use NEOX RoPE and keep them); Gemma's
RMSNorm scales by 1 + weight, llama.cpp's by weight, so Gemma norms are written as 1 + weight. A
model with per-layer ``layer_types`` gets its sliding window and the per-layer pattern
(``sliding_window_pattern``, one flag per layer). All tensors are f32. The vocabulary is a
placeholder SPM list (``<unk>``, ``<s>``, ``</s>``, then ``t03``...): fuzzcache feeds token ids,
and reads text only where a server can stop on nothing else (llama-server's stop strings): every
token's text has one width, so it never occurs inside another's or across two.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

# factory family -> (llama.cpp architecture, added to every norm weight)
GGUF_ARCHITECTURES = {"llama": ("llama", 0.0), "qwen2": ("qwen2", 0.0), "gemma3": ("gemma3", 1.0)}
PERMUTED_QK = {"llama"}  # llama.cpp architectures whose q/k rows the converter permutes
# the order tensors are written in (llama.cpp reads them by name; a fixed order keeps a family's file
# byte-identical across releases of the writer, so committed exports stay what `fuzzcache export` writes)
GLOBAL_ORDER = ("token_embd", "output_norm", "output")
BLOCK_ORDER = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")


def permute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half row order -> llama.cpp's interleaved pairs, per head (convert_hf_to_gguf's ``permute``).
    ``weight``: (n_head * head_dim, hidden) -> same shape."""
    head_dim = weight.shape[0] // n_head
    return weight.reshape(n_head, 2, head_dim // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model, arch: str, path: str | Path) -> Path:
    """Write the HF ``model`` (of the factory family ``arch``) to ``path`` as an f32 GGUF file."""
    import gguf

    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(f"no GGUF writer for {arch!r}; known: {', '.join(GGUF_ARCHITECTURES)}")
    gguf_arch, norm_shift = GGUF_ARCHITECTURES[arch]
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), gguf_arch)
    write_hparams(writer, cfg)
    write_vocabulary(writer, cfg.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[gguf_arch.upper()], cfg.num_hidden_layers)
    heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
    tensors = []  # (GGUF name, f32 array)
    for hf_name, tensor in model.state_dict().items():
        array = tensor.detach().float().cpu().numpy()
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for {arch}'s tensor {hf_name!r}")
        kind = hf_name.split(".")[-2]  # q_proj, input_layernorm, ...
        if gguf_arch in PERMUTED_QK and kind in heads:
            array = permute_rows(array, heads[kind])
        if norm_shift and kind.endswith("norm"):
            array = array + norm_shift
        tensors.append((name, np.ascontiguousarray(array, dtype=np.float32)))
    for name, array in sorted(tensors, key=lambda named: write_order(named[0])):  # stable: a weight before its bias
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def write_order(name: str) -> tuple[int, int, int]:
    """Sort key of a GGUF tensor name: globals first, then blocks by index, each in ``BLOCK_ORDER`` (others after)."""
    stem = name.rsplit(".", 1)[0]  # blk.3.attn_q, token_embd, ...
    block = re.fullmatch(r"blk\.(\d+)\.(\w+)", stem)
    if block is None:
        return (0, 0, GLOBAL_ORDER.index(stem) if stem in GLOBAL_ORDER else len(GLOBAL_ORDER))
    kind = block.group(2)
    return (1, int(block.group(1)), BLOCK_ORDER.index(kind) if kind in BLOCK_ORDER else len(BLOCK_ORDER))


def write_hparams(writer, cfg) -> None:
    import gguf

    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = cfg.rope_parameters
    rope = rope.get("full_attention", rope)  # Gemma 3 keeps one per layer kind (the factory gives both one base)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    layer_types = getattr(cfg, "layer_types", None)
    if getattr(cfg, "sliding_window", None) and layer_types:
        writer.add_sliding_window(cfg.sliding_window)
        writer.add_sliding_window_pattern([t == "sliding_attention" for t in layer_types])
        writer.add_rope_freq_base_swa(float(cfg.rope_parameters.get("sliding_attention", rope)["rope_theta"]))


def write_vocabulary(writer, vocab_size: int) -> None:
    import gguf

    width = len(str(vocab_size - 1))  # one width: a token's text is never part of another's, so a stop string names one token
    tokens = ["<unk>", "<s>", "</s>"] + [f"t{i:0{width}d}" for i in range(3, vocab_size)]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (len(tokens) - 3))
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
