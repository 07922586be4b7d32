#!/usr/bin/env python3
"""llama.cpp (llama-cpp-python 0.3.36): in a unified KV cache, `seq_add` / `seq_div` on one sequence
move another sequence's copy

A standalone repro of a fuzzcache finding: property surgery.memory on llamacpp:llama, kind mismatch,
case 21a67fdda0ef. fuzzcache reported:

    after cp(0->1,[0,1)) add(0,[0,1),+1): sequence 1 holds positions 1..1 (pos_min, pos_max),
    expected 0..0

Write-up: corpus/llamacpp-shared-cells-move.md in the fuzzcache repository.

It builds the tiny seeded model (model.gguf for llama.cpp, CONFIG and model.safetensors for the
oracle: the same weights), decodes PROMPTS into sequences 0.. of one llama.cpp context, applies OPS
with llama.cpp's own memory functions, and decodes PROBE into every sequence that holds tokens.
After every operation it compares the positions llama.cpp reports and every decode's logits with the
oracle: the model's own forward over the cache the operations describe (llama.h's documented
meaning, each cached token's key turned by the model's RoPE when it moves).

    python repro.py    # needs llama-cpp-python (0.3.36 here), numpy, transformers and torch

Exit status: 0 when the engine agrees with the full-recompute forward; 1 while the bug is there
(logits or positions that differ from the oracle's, or a memory call that fails); 2 when the script
cannot run here (a missing package or model file).
"""


import ctypes
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


PACKAGES = ("llama_cpp", "transformers", "torch")  # the modules this script needs, printed with their versions
CONFIG_CLASS, MODEL_CLASS = "LlamaConfig", "LlamaForCausalLM"
# the tiny llama (llama.cpp loads model.gguf, the same weights): LlamaConfig fields (the others are transformers' defaults);
# its seeded random weights are model.safetensors beside this script
CONFIG = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, hidden_act="silu", max_position_embeddings=64, initializer_range=0.4,
    rms_norm_eps=1e-06, use_cache=True, pad_token_id=None, bos_token_id=None, eos_token_id=None,
    pretraining_tp=1, tie_word_embeddings=False,
    rope_parameters=dict(rope_theta=10000.0, rope_type="default"), attention_bias=False,
    attention_dropout=0.0, mlp_bias=False, head_dim=8,
)
# llama_context_params as fuzzcache's llamacpp target sets them (type 0: an f32 KV cache; kv_unified: one cache for every sequence)
CONTEXT = dict(
    n_ctx=1024, n_batch=512, n_ubatch=512, n_seq_max=16, n_outputs_max=512, n_threads=1, n_threads_batch=1,
    kv_unified=True, type_k=0, type_v=0, flash_attn_type=0, no_perf=True,
)
N_SEQS = 4  # the sequences the operations edit
# PROMPTS[i] is decoded into sequence i, all in one batch
PROMPTS = [[0]]
# then each operation in order: (label, calls); positions as in llama.h: p0 < 0 is 0, p1 < 0 is no end.
# decode: tokens at pos_max + 1 ...; rm / cp / keep / add / div: llama_memory_seq_*; copy_state: a sequence's
# llama_state_seq_get_data restored into another with llama_state_seq_set_data
OPS = [("cp(0->1,[0,1))", [("cp", 0, 1, 0, 1)]), ("add(0,[0,1),+1)", [("add", 0, 0, 1, 1)])]
PROBE = [0]  # decoded last into every sequence that holds tokens, in one batch
TOLERANCE = 0.001  # max |delta logit| (llama.cpp's CPU kernels against transformers')
TIMEOUT_S = 600


def versions():
    """The engine's packages and their versions (an ImportError when one is missing)."""
    import importlib

    return ", ".join(f"{name} {importlib.import_module(name).__version__}" for name in PACKAGES)


def tiny_model(**overrides):
    """The tiny model in float32: CONFIG, then every weight from model.safetensors (strict)."""
    import transformers
    from safetensors.torch import load_file

    config = getattr(transformers, CONFIG_CLASS)(**{**CONFIG, **overrides}, attn_implementation="sdpa")
    model = getattr(transformers, MODEL_CLASS)(config)
    state = load_file(HERE / "model.safetensors")
    model.load_state_dict(state, strict=not overrides)  # a draft model of fewer layers takes the ones it has
    return model.eval()


class LlamaCpp:
    """llama.cpp through llama-cpp-python's bindings of llama.h: model.gguf and one context whose
    unified KV cache holds the sequences (CONTEXT), decoded in shared batches."""

    def __init__(self):
        import llama_cpp as lib

        os.environ.setdefault("GGML_NO_BACKTRACE", "1")
        self.lib = lib
        lib.llama_backend_init()
        self.quiet = lib.llama_log_callback(lambda level, text, user_data: None)
        lib.llama_log_set(self.quiet, ctypes.c_void_p(0))
        self.model = lib.llama_model_load_from_file(str(HERE / "model.gguf").encode(), lib.llama_model_default_params())
        if not self.model:
            raise OSError("llama.cpp could not load model.gguf")
        params = lib.llama_context_default_params()
        for name, value in CONTEXT.items():
            setattr(params, name, value)
        self.ctx = lib.llama_init_from_model(self.model, params)
        self.mem = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(CONTEXT["n_batch"], 0, 1)

    def decode(self, tokens_by_seq):
        """One llama_decode of each sequence's tokens at positions pos_max + 1 ...; (n, V) logits per sequence."""
        rows, where = [], {}
        for seq, tokens in tokens_by_seq.items():
            start = self.pos_max(seq) + 1
            where[seq] = range(len(rows), len(rows) + len(tokens))
            rows += [(t, start + i, seq) for i, t in enumerate(tokens)]
        b = self.batch
        b.n_tokens = len(rows)
        for i, (token, pos, seq) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, 1
            b.seq_id[i][0] = seq
        rc = self.lib.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        vocab = CONFIG["vocab_size"]
        row = lambda i: torch.from_numpy(np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx, i), shape=(vocab,)).copy())
        return {seq: torch.stack([row(i) for i in index]) for seq, index in where.items()}

    def rm(self, seq, p0, p1):
        return bool(self.lib.llama_memory_seq_rm(self.mem, seq, p0, p1))

    def cp(self, src, dst, p0, p1):
        self.lib.llama_memory_seq_cp(self.mem, src, dst, p0, p1)

    def keep(self, seq):
        self.lib.llama_memory_seq_keep(self.mem, seq)

    def add(self, seq, p0, p1, delta):
        self.lib.llama_memory_seq_add(self.mem, seq, p0, p1, delta)

    def div(self, seq, p0, p1, d):
        self.lib.llama_memory_seq_div(self.mem, seq, p0, p1, d)

    def copy_state(self, src, dst):
        """llama_state_seq_get_data of src, restored into dst with llama_state_seq_set_data."""
        size = self.lib.llama_state_seq_get_size(self.ctx, src)
        buffer = (ctypes.c_uint8 * max(size, 1))()
        written = self.lib.llama_state_seq_get_data(self.ctx, buffer, size, src)
        if self.lib.llama_state_seq_set_data(self.ctx, buffer, written, dst) == 0:
            raise RuntimeError(f"llama_state_seq_set_data into sequence {dst} read nothing ({written} bytes of sequence {src})")

    def pos_min(self, seq):
        return int(self.lib.llama_memory_seq_pos_min(self.mem, seq))

    def pos_max(self, seq):
        return int(self.lib.llama_memory_seq_pos_max(self.mem, seq))


class Memory:
    """The oracle: the KV memory as llama.h documents its operations, computed with the HF model.
    A sequence is a list of entries, one per cached token: its position, the decode that made it
    (a cell id: seq_cp shares it, a restore makes a new one), and per layer its key (rotated at the
    position) and value. A move (seq_add, seq_div) turns the key by the model's own RoPE to the new
    position; an entry moved below 0 goes. A decode is one forward of the model over the sequence's
    entries as its cache, at positions pos_max + 1 ...: the logits a correct engine returns."""

    def __init__(self, model):
        self.model, self.seqs, self.cells = model, {}, 0
        self.inv_freq = model.model.rotary_emb.original_inv_freq.double()  # (D / 2,)

    def entries(self, seq):
        return self.seqs.setdefault(seq, [])

    def pos_min(self, seq):
        return min((e["pos"] for e in self.entries(seq)), default=-1)

    def pos_max(self, seq):
        return max((e["pos"] for e in self.entries(seq)), default=-1)

    @torch.no_grad()
    def decode(self, tokens_by_seq):
        from transformers import DynamicCache

        out = {}
        for seq, tokens in tokens_by_seq.items():
            entries, cache = self.entries(seq), DynamicCache()
            for layer in range(CONFIG["num_hidden_layers"]) if entries else []:
                cache.update(torch.cat([e["keys"][layer] for e in entries], dim=2), torch.cat([e["values"][layer] for e in entries], dim=2), layer)
            start = self.pos_max(seq) + 1
            result = self.model(input_ids=torch.tensor([tokens]), position_ids=torch.arange(start, start + len(tokens))[None],
                                past_key_values=cache, use_cache=True)
            layers = result.past_key_values.layers  # keys and values (1, H_kv, T, D) per layer
            for j in range(len(tokens)):
                self.cells += 1
                at = len(entries)
                entries.append(dict(pos=start + j, cell=self.cells, keys=[l.keys[:, :, at : at + 1].clone() for l in layers],
                                    values=[l.values[:, :, at : at + 1].clone() for l in layers]))
            out[seq] = result.logits[0].float()
        return out

    def rm(self, seq, p0, p1):
        lo, hi = span(p0, p1)
        self.seqs[seq] = [e for e in self.entries(seq) if not lo <= e["pos"] < hi]
        return True

    def cp(self, src, dst, p0, p1):
        if src != dst:
            lo, hi = span(p0, p1)
            held = {e["cell"] for e in self.entries(dst)}
            self.entries(dst).extend(dict(e) for e in self.entries(src) if lo <= e["pos"] < hi and e["cell"] not in held)

    def keep(self, seq):
        self.seqs = {seq: self.entries(seq)}

    def add(self, seq, p0, p1, delta):
        lo, hi = span(p0, p1)
        self.move(seq, lambda pos: pos + delta if lo <= pos < hi else pos)

    def div(self, seq, p0, p1, d):
        lo, hi = span(p0, p1)
        self.move(seq, lambda pos: pos // d if lo <= pos < hi else pos)

    def copy_state(self, src, dst):
        saved = [dict(e) for e in self.entries(src)]
        self.seqs[dst] = []
        for e in saved:
            self.cells += 1
            self.seqs[dst].append({**e, "cell": self.cells})

    def move(self, seq, where):
        kept = []
        for e in self.entries(seq):
            new = where(e["pos"])
            if new >= 0:
                kept.append({**e, "pos": new, "keys": [self.turn(k, new - e["pos"]) for k in e["keys"]]} if new != e["pos"] else e)
        self.seqs[seq] = kept

    def turn(self, keys, delta):
        """Keys rotated at p, rotated to p + delta (RoPE, rotate-half layout), in float64."""
        angles = torch.cat([delta * self.inv_freq] * 2)
        rot, rest = keys[..., : angles.numel()].double(), keys[..., angles.numel() :]
        half = rot.shape[-1] // 2
        turned = rot * angles.cos() + torch.cat((-rot[..., half:], rot[..., :half]), dim=-1) * angles.sin()
        return torch.cat((turned.to(keys.dtype), rest), dim=-1)


def span(p0, p1):
    """llama.h's [p0, p1): p0 < 0 means 0, p1 < 0 means no end."""
    return max(p0, 0), float("inf") if p1 < 0 else p1


def watchdog(seconds):
    """A hang inside one engine call ends the script (exit 1) after ``seconds``."""
    def expired(signum, frame):
        raise TimeoutError(f"no answer from the engine within {seconds} s")

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)


def compare(after, got, want):
    """Each sequence's decoded logits against the oracle's; True when within TOLERANCE."""
    for seq, rows in want.items():
        diff = (got[seq] - rows).abs().amax(-1)  # (n,)
        worst = int(diff.argmax())
        if not float(diff[worst]) <= TOLERANCE:
            print(f"FAIL sequence {seq}, token {worst} of {len(rows)} decoded after {after}: logits differ from the model's over the cache "
                  f"the operations describe by {float(diff[worst]):.3g} (> {TOLERANCE:g}); expected argmax {int(rows[worst].argmax())}, "
                  f"got {int(got[seq][worst].argmax())}")
            return False
        print(f"ok   sequence {seq}: {len(rows)} token(s) decoded after {after} (max |delta logit| {float(diff[worst]):.2g})")
    return True


def main():
    sys.stdout.reconfigure(line_buffering=True)
    try:
        print(versions())
        engine = LlamaCpp()
        oracle = Memory(tiny_model())
    except (ImportError, OSError) as exc:
        print(f"cannot run here: {exc}")
        return 2
    watchdog(TIMEOUT_S)
    prompts = dict(enumerate(PROMPTS))
    if not compare("the prompts", engine.decode(prompts), oracle.decode(prompts)):
        return 1
    done = []  # the operations so far
    for label, calls in OPS:
        for name, *args in calls:
            if name == "decode":
                if not compare(" ".join(done) or "the prompts", engine.decode({args[0]: args[1]}), oracle.decode({args[0]: args[1]})):
                    return 1
                continue
            removed = getattr(engine, name)(*args)
            getattr(oracle, name)(*args)
            if name == "rm" and not removed:
                print(f"FAIL {label}: llama_memory_seq_rm returned false (a KV cache removes any range)")
                return 1
        done.append(label)
        got = [(engine.pos_min(s), engine.pos_max(s)) for s in range(N_SEQS)]
        want = [(oracle.pos_min(s), oracle.pos_max(s)) for s in range(N_SEQS)]
        if got != want:
            seq = next(s for s in range(N_SEQS) if got[s] != want[s])
            print(f"FAIL after {' '.join(done)}: sequence {seq} holds positions {got[seq][0]}..{got[seq][1]} (pos_min, pos_max), "
                  f"expected {want[seq][0]}..{want[seq][1]}")
            return 1
        print(f"ok   {label}: positions (pos_min, pos_max) of sequences 0..{N_SEQS - 1}: {got}")
    probe = {seq: PROBE for seq in range(N_SEQS) if oracle.entries(seq)}  # every sequence holding entries, in one batch
    if probe and not compare(" ".join(done) or "the prompts", engine.decode(probe), oracle.decode(probe)):
        return 1
    print("PASS: llama.cpp agrees with the model over the cache the operations describe")
    return 0


if __name__ == "__main__":
    sys.exit(main())
