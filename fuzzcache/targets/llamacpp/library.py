"""llama.cpp through llama-cpp-python's low-level API: one loaded model, and contexts whose KV
memory the target drives with llama.cpp's own calls (batches of several sequences, and the
memory functions ``seq_rm``, ``seq_cp``, ``seq_keep``, ``seq_add``, ``seq_div`` and
``llama_state_seq_get/set_data``).

llama.cpp pads a context to a multiple of 256 cells (llama-context.cpp: ``GGML_PAD(n_ctx, 256)``).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np
import torch

INSTALL_HINT = ("llamacpp:<arch> targets need llama-cpp-python and gguf: pip install 'fuzzcache[llamacpp]' "
                "(it compiles llama.cpp, 3.5-7 minutes on 2 cores; set "
                "CMAKE_ARGS='-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF' as the README does, and pip caches the wheel)")
CONTEXT_PAD = 256  # llama.cpp rounds n_ctx up to this
F32, F16 = 0, 1  # ggml_type of the K and V caches
FLASH_OFF, FLASH_ON = 0, 1  # llama_flash_attn_type
KV_UNIFIED = True  # every context: one KV cache for all sequences, so seq_cp shares cells (corpus/llamacpp-shared-cells-move.md)


def import_llama_cpp():
    """The ``llama_cpp`` module with its backend started and its log silenced; a clear error
    (``UnknownTarget``, a usage error on the command line) when the llamacpp extra is missing."""
    from fuzzcache.targets import UnknownTarget

    os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # a native assert aborts without attaching a debugger
    try:
        import gguf  # noqa: F401  (the target writes its model with it)
        import llama_cpp
    except ImportError as exc:
        raise UnknownTarget(f"{INSTALL_HINT} ({exc})") from exc
    if not getattr(llama_cpp, "_fuzzcache_quiet", False):
        llama_cpp.llama_backend_init()
        llama_cpp._fuzzcache_quiet = _silence(llama_cpp)
    return llama_cpp


def _silence(lib):
    """Route llama.cpp's and ggml's log to nothing (asserts still print to stderr); returns the callback kept alive."""
    @lib.llama_log_callback
    def discard(level, text, user_data):
        return None

    lib.llama_log_set(discard, ctypes.c_void_p(0))
    return discard


@dataclass(frozen=True)
class ContextShape:
    """What a llama.cpp context is created with (a context per shape is reused, its memory cleared)."""

    n_ctx: int  # cells, a multiple of CONTEXT_PAD
    n_batch: int  # max tokens per llama_decode
    n_ubatch: int  # tokens per physical micro-batch (llama.cpp splits a batch into these)
    n_seq_max: int
    kv_type: int = F32  # ggml type of the K and V caches
    flash_attn: int = FLASH_OFF


class Model:
    """A GGUF file loaded once; ``context(shape)`` gives a context with cleared memory."""

    def __init__(self, path: str, vocab_size: int):
        self.lib = import_llama_cpp()
        params = self.lib.llama_model_default_params()
        self.handle = self.lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.handle:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab_size = vocab_size
        self.window = int(self.lib.llama_model_n_swa(self.handle))  # the sliding window of its SWA layers; 0: none
        self.contexts: dict[ContextShape, Context] = {}

    def context(self, shape: ContextShape) -> Context:
        ctx = self.contexts.get(shape)
        if ctx is None:
            ctx = self.contexts[shape] = Context(self, shape)
        ctx.clear()
        return ctx


class Context:
    """One llama.cpp context: a unified KV cache shared by up to ``n_seq_max`` sequences."""

    def __init__(self, model: Model, shape: ContextShape):
        lib = self.lib = model.lib
        params = lib.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = shape.n_ctx, shape.n_batch, shape.n_ubatch, shape.n_seq_max
        # llama.cpp reserves max(outputs, n_seq_max) output rows per decode but caps them at n_outputs_max,
        # which defaults to n_batch: with n_batch < n_seq_max the first decode aborts (GGML_ASSERT in
        # llama-context.cpp output_reserve; corpus/llamacpp-outputs-below-seq-max.md). Set it explicitly.
        params.n_outputs_max = max(shape.n_batch, shape.n_seq_max)
        params.n_threads = params.n_threads_batch = 1  # fastest here for tiny models (and deterministic)
        params.kv_unified = KV_UNIFIED
        params.type_k = params.type_v = shape.kv_type
        params.flash_attn_type = shape.flash_attn
        params.no_perf = True
        self.shape, self.vocab_size, self.window = shape, model.vocab_size, model.window
        self.handle = lib.llama_init_from_model(model.handle, params)
        if not self.handle:
            raise RuntimeError(f"llama.cpp could not create a context of {shape}")
        self.memory = lib.llama_get_memory(self.handle)
        self.batch = lib.llama_batch_init(shape.n_batch, 0, 1)

    def clear(self) -> None:
        self.lib.llama_memory_clear(self.memory, True)

    def decode(self, rows: Sequence[tuple[int, int, int, bool]]) -> int:
        """One ``llama_decode`` of (token, position, sequence, wants logits) rows; llama.cpp's return
        code (0 ok, 1 no memory slot for the batch, 2 aborted, -1 invalid input)."""
        batch = self.batch
        if len(rows) > self.shape.n_batch:
            raise ValueError(f"{len(rows)} rows exceed n_batch={self.shape.n_batch}")
        batch.n_tokens = len(rows)
        for i, (token, pos, seq, logits) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, int(logits)
            batch.seq_id[i][0] = seq
        return self.lib.llama_decode(self.handle, batch)

    def logits(self, row: int) -> torch.Tensor:
        """(V,) float32: the logits of batch row ``row`` of the last decode (it must have asked for them)."""
        pointer = self.lib.llama_get_logits_ith(self.handle, row)
        if not pointer:
            raise RuntimeError(f"llama.cpp has no logits for batch row {row}")
        return torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(self.vocab_size,)).copy())

    # llama.cpp's memory functions (positions: p0 < 0 means 0, p1 < 0 means infinity)
    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        return bool(self.lib.llama_memory_seq_rm(self.memory, seq, p0, p1))

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        self.lib.llama_memory_seq_cp(self.memory, src, dst, p0, p1)

    def seq_keep(self, seq: int) -> None:
        self.lib.llama_memory_seq_keep(self.memory, seq)

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        self.lib.llama_memory_seq_add(self.memory, seq, p0, p1, delta)

    def seq_div(self, seq: int, p0: int, p1: int, d: int) -> None:
        self.lib.llama_memory_seq_div(self.memory, seq, p0, p1, d)

    def pos_min(self, seq: int) -> int:
        return int(self.lib.llama_memory_seq_pos_min(self.memory, seq))

    def pos_max(self, seq: int) -> int:
        return int(self.lib.llama_memory_seq_pos_max(self.memory, seq))

    def can_shift(self) -> bool:
        return bool(self.lib.llama_memory_can_shift(self.memory))

    def state_get(self, seq: int) -> bytes:
        """``llama_state_seq_get_data``: the sequence's cells (positions, K and V) as bytes."""
        size = self.lib.llama_state_seq_get_size(self.handle, seq)
        buffer = (ctypes.c_uint8 * size)()
        written = self.lib.llama_state_seq_get_data(self.handle, buffer, size, seq)
        return bytes(buffer[:written])

    def state_set(self, data: bytes, seq: int) -> int:
        """``llama_state_seq_set_data`` into ``seq`` (its cells are replaced); bytes read, 0 on failure."""
        buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        return int(self.lib.llama_state_seq_set_data(self.handle, buffer, len(data), seq))
