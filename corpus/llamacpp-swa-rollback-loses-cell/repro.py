"""llama.cpp: rolling back a rejected draft with llama_memory_seq_rm on a sliding-window (SWA) KV
cache, after another sequence's tokens were decoded in a later micro-batch of the same
llama_decode, changes the next token's logits: a cell the sequence still needs was handed to the
other sequence while the draft counted as the sequence's latest position.

Needs llama-cpp-python (0.3.36 tested) and numpy; model.gguf beside this script is a tiny random
Gemma 3 text model (vocabulary 64, 2 layers: one sliding window of 20, one global).

    python repro.py [--no-unified] [--swa-full 0|1] [--ubatch N]

Runs the same calls twice: as a speculative decoder makes them (sequence 2 decodes token 1 at
position 21 with a draft 0 at position 22, beside sequence 3's prompt, then removes the rejected
draft) and without the draft; both then decode token 1 at position 22 on sequence 2, with the same
history, so its logits must agree. Exits 1 when they differ by more than 1e-3.
"""

import argparse
import ctypes
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VOCAB = 64
MODEL = None  # the loaded model.gguf, set by main()


# The calls a speculative decoder made (fuzzcache's llamacpp target, shrunk): four requests' prompts of
# zeros in batches of 4 tokens, finished requests removed; sequence 2 decodes token 1 at position 21
# with a draft (0 at position 22) beside sequence 3's prompt, the draft is rejected and removed, and
# sequence 2 decodes token 1 at position 22 (the row compared).
CALLS = [
    ("decode", [(0, 0, 0, False), (0, 1, 0, False), (0, 2, 0, False), (0, 3, 0, False)]),
    ("decode", [(0, 4, 0, False), (0, 5, 0, False), (0, 6, 0, False), (0, 7, 0, False)]),
    ("decode", [(0, 8, 0, False), (0, 9, 0, False), (0, 10, 0, False), (0, 11, 0, False)]),
    ("decode", [(0, 12, 0, False), (0, 13, 0, False), (0, 14, 0, False), (0, 15, 0, False)]),
    ("decode", [(0, 16, 0, True), (0, 17, 0, True), (0, 18, 0, True), (0, 0, 1, False)]),
    ("seq_rm", 0, -1, -1),
    ("decode", [(0, 1, 1, False), (0, 2, 1, False), (0, 3, 1, False), (0, 4, 1, False)]),
    ("decode", [(0, 5, 1, False), (0, 6, 1, False), (0, 7, 1, False), (0, 8, 1, False)]),
    ("decode", [(0, 9, 1, False), (0, 10, 1, False), (0, 11, 1, False), (0, 12, 1, False)]),
    ("decode", [(0, 13, 1, False), (0, 14, 1, False), (0, 15, 1, False), (0, 16, 1, False)]),
    ("decode", [(0, 17, 1, True), (0, 18, 1, True), (0, 19, 1, True), (0, 0, 2, False)]),
    ("decode", [(0, 20, 1, True), (0, 1, 2, False), (0, 2, 2, False), (0, 3, 2, False)]),
    ("seq_rm", 1, -1, -1),
    ("decode", [(0, 4, 2, False), (0, 5, 2, False), (0, 6, 2, False), (0, 7, 2, False)]),
    ("decode", [(0, 8, 2, False), (0, 9, 2, False), (0, 10, 2, False), (0, 11, 2, False)]),
    ("decode", [(0, 12, 2, False), (0, 13, 2, False), (0, 14, 2, False), (0, 15, 2, False)]),
    ("decode", [(0, 16, 2, False), (0, 17, 2, False), (1, 18, 2, False), (0, 19, 2, False)]),
    ("decode", [(1, 20, 2, True), (0, 0, 3, False), (0, 1, 3, False), (0, 2, 3, False)]),
    ("decode", [(1, 21, 2, True), (0, 22, 2, True), (0, 3, 3, False), (0, 4, 3, False)]),
    ("seq_rm", 2, 22, -1),
    ("decode", [(1, 22, 2, True), (0, 5, 3, False), (0, 6, 3, False), (0, 7, 3, False)]),
    ("seq_rm", 2, -1, -1),
    ("decode", [(0, 8, 3, False), (0, 9, 3, False), (0, 10, 3, False), (0, 11, 3, False)]),
    ("decode", [(0, 12, 3, False), (0, 13, 3, False), (0, 14, 3, False), (0, 15, 3, False)]),
    ("decode", [(0, 16, 3, True), (0, 17, 3, True), (0, 18, 3, True)]),
    ("seq_rm", 3, -1, -1),
]
DRAFT, ROLLBACK = (0, 22, 2, True), ("seq_rm", 2, 22, -1)
COMPARED = (1, 22, 2, True)  # sequence 2's token after the draft's position, decoded once the draft is gone


def calls(with_draft: bool):
    """CALLS, or CALLS without the draft row and its rollback."""
    if with_draft:
        return CALLS
    return [("decode", [r for r in c[1] if r != DRAFT]) if c[0] == "decode" else c for c in CALLS if c != ROLLBACK]


def run(args, with_draft: bool) -> tuple[np.ndarray, int]:
    """The compared row's (V,) logits, and sequence 2's first position in the cache just before it."""
    import llama_cpp as lib

    params = lib.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 256, 4, args.ubatch, 16
    params.n_outputs_max = 16
    params.n_threads = params.n_threads_batch = 1
    params.kv_unified = not args.no_unified
    params.swa_full = bool(args.swa_full)
    ctx = lib.llama_init_from_model(MODEL, params)
    mem = lib.llama_get_memory(ctx)
    batch = lib.llama_batch_init(64, 0, 1)
    last, first = None, None
    for call in calls(with_draft):
        if call[0] == "seq_rm":
            assert lib.llama_memory_seq_rm(mem, *call[1:])
            continue
        rows = call[1]
        if COMPARED in rows:
            first = lib.llama_memory_seq_pos_min(mem, 2)
        batch.n_tokens = len(rows)
        for i, (token, pos, seq, logits) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, int(logits)
            batch.seq_id[i][0] = seq
        assert lib.llama_decode(ctx, batch) == 0
        if COMPARED in rows:
            last = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, rows.index(COMPARED)), shape=(VOCAB,)).copy()
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    return last, first


def main() -> int:
    global MODEL
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-unified", action="store_true", help="a KV stream per sequence (kv_unified = false)")
    parser.add_argument("--swa-full", type=int, default=1, help="full-size SWA cache (llama.cpp's default: 1)")
    parser.add_argument("--ubatch", type=int, default=1, help="n_ubatch: tokens per micro-batch")
    args = parser.parse_args()
    os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    import llama_cpp as lib

    lib.llama_backend_init()
    quiet = lib.llama_log_callback(lambda level, text, user_data: None)
    lib.llama_log_set(quiet, ctypes.c_void_p(0))
    MODEL = lib.llama_model_load_from_file(str(HERE / "model.gguf").encode(), lib.llama_model_default_params())
    assert MODEL, "llama.cpp could not load model.gguf"
    (drafted, first_drafted), (plain, first_plain) = run(args, True), run(args, False)
    diff = float(np.abs(drafted - plain).max())
    print(f"sequence 2 starts at position {first_drafted} after the rolled-back draft, at {first_plain} without it "
          f"(the token at position 22 attends to positions 3..22: a window of 20)")
    print(f"kv_unified={not args.no_unified} swa_full={args.swa_full} n_ubatch={args.ubatch}: "
          f"max |logits with a rolled-back draft - logits without| = {diff:.4g}")
    return 1 if diff > 1e-3 else 0


if __name__ == "__main__":
    sys.exit(main())
