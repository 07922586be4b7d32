"""The shared factory's tiny HF models written as GGUF files, the format llama.cpp loads.

Tensor names and the q/k row permutation follow llama.cpp's own ``convert_hf_to_gguf.py``:
llama.cpp's "llama" graph rotates interleaved pairs (NORM RoPE), so HF's rotate-half rows of
q and k are permuted into pairs; "qwen2" uses NEOX RoPE (rotate-half) and keeps them. All
tensors are f32. The vocabulary is a placeholder SPM list (``<unk>``, ``<s>``, ``</s>``, then
``t03``...): fuzzcache feeds token ids, and reads text only where a server can stop on nothing
else (llama-server's stop strings): every token's text has one width, so it never occurs inside
another's or across two.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}  # HF architecture -> llama.cpp's
PERMUTED_QK = {"llama"}  # architectures whose q/k rows the converter permutes


def permute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half row order -> llama.cpp's interleaved pairs, per head (convert_hf_to_gguf's ``permute``).
    ``weight``: (n_head * head_dim, hidden) -> same shape."""
    head_dim = weight.shape[0] // n_head
    return weight.reshape(n_head, 2, head_dim // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model, arch: str, path: str | Path) -> Path:
    """Write the HF ``model`` (of architecture ``arch``) to ``path`` as an f32 GGUF file."""
    import gguf

    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(f"no GGUF writer for {arch!r}; known: {', '.join(GGUF_ARCHITECTURES)}")
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer = gguf.GGUFWriter(str(path), GGUF_ARCHITECTURES[arch])
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    width = len(str(cfg.vocab_size - 1))  # one width: a token's text is never part of another's, so a stop string names one token
    tokens = ["<unk>", "<s>", "</s>"] + [f"t{i:0{width}d}" for i in range(3, cfg.vocab_size)]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.NORMAL] * (len(tokens) - 3))
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)

    weights = {name: t.detach().float().cpu().numpy() for name, t in model.state_dict().items()}

    def add(name: str, array: np.ndarray) -> None:
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))

    add("token_embd.weight", weights["model.embed_tokens.weight"])
    add("output_norm.weight", weights["model.norm.weight"])
    add("output.weight", weights["lm_head.weight"])
    for i in range(cfg.num_hidden_layers):
        hf, blk = f"model.layers.{i}.", f"blk.{i}."
        add(blk + "attn_norm.weight", weights[hf + "input_layernorm.weight"])
        for n, heads in (("q", cfg.num_attention_heads), ("k", cfg.num_key_value_heads), ("v", None)):
            for part in ("weight", "bias"):  # a bias: qwen2's QKV bias
                tensor = weights.get(hf + f"self_attn.{n}_proj.{part}")
                if tensor is not None:
                    add(blk + f"attn_{n}.{part}", permute_rows(tensor, heads) if heads and arch in PERMUTED_QK else tensor)
        add(blk + "attn_output.weight", weights[hf + "self_attn.o_proj.weight"])
        add(blk + "ffn_norm.weight", weights[hf + "post_attention_layernorm.weight"])
        add(blk + "ffn_gate.weight", weights[hf + "mlp.gate_proj.weight"])
        add(blk + "ffn_up.weight", weights[hf + "mlp.up_proj.weight"])
        add(blk + "ffn_down.weight", weights[hf + "mlp.down_proj.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
