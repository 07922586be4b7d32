"""llama.cpp as a target: ``llamacpp:<arch>`` (the shared factory's families with a GGUF writer:
``fuzzcache list``) runs llama.cpp (llama-cpp-python's
low-level API) over the shared factory's tiny seeded model written as GGUF, one HF forward over
the same weights as the oracle. Variants: ``llamacpp:<arch>+f16kv`` (an f16 KV cache),
``+flash`` (flash attention), both (``+f16kv+flash``); the default is an f32 cache, flash off.

======================  ===========================================================================
EngineConfig            llama.cpp
======================  ===========================================================================
requests, arrivals      sequences of one unified KV cache (``kv_unified``), decoded in shared
                        batches by a server loop (engine.py); a request joins at step ``arrival``
``max_num_seqs``        running sequences per step
``max_batch_tokens``    ``n_batch``: tokens per ``llama_decode`` (a prompt spans several steps)
``chunk_size``          ``n_ubatch``: llama.cpp splits each batch into micro-batches of this size
``prefix_cache``        a new request ``seq_cp``-s the longest prefix it shares with a cached
                        sequence (finished requests' cells are kept until room is needed)
``spec_k``, ``draft``   drafts (fuzzcache's bigram / trigram / prompt lookup) verified in one
                        batch with the last token; rejected ones removed with ``seq_rm``
``num_blocks``          a cache of ``num_blocks * block_size`` cells: llama.cpp pads a context
                        to 256 cells, so the rest is filled by a ballast sequence that is never
                        read. When a batch finds no room (``llama_decode`` returns 1), finished
                        requests' cells go first, then the request admitted last is preempted
                        (``seq_rm``) and recomputed later
``block_size``          cells are one token each: ``block_size`` only sizes the pool above
======================  ===========================================================================

Not expressible: ``interleave`` (a llama.cpp batch always mixes decode rows and prompt tokens).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from collections.abc import Sequence

import torch

from fuzzcache.compare import Tolerance
from fuzzcache.contract import Completion, EngineConfig, Request, validate_requests
from fuzzcache.known_bugs import KnownBug
from fuzzcache.targets.llamacpp.engine import Server
from fuzzcache.targets.llamacpp.gguf_model import write_gguf
from fuzzcache.surgery.memory_ops import MemoryScenario, Observation, run_script
from fuzzcache.targets.llamacpp.memory import MemorySession
from fuzzcache.targets.llamacpp.library import CONTEXT_PAD, F16, F32, FLASH_OFF, FLASH_ON, KV_UNIFIED, ContextShape, Model
from fuzzcache.targets.tiny_models import ARCHITECTURES as FAMILIES, SHAPES, VOCAB_SIZE, families_for, tiny_model

ARCHITECTURES = families_for("llamacpp")  # the shared factory's families llama.cpp runs (each has a GGUF writer)
MAX_SEQ_LEN = 64
N_SEQ_MAX = 16  # requests and their forks, surgery's sequences, and the ballast (the last id)
BALLAST_SEQ = N_SEQ_MAX - 1
UNBOUNDED_BATCH = 512  # n_batch when max_batch_tokens is None: every step fits
FEATURES = frozenset({"batching", "paged", "prefix_cache", "chunked_prefill", "speculative", "preemption", "stop", "abort", "fork"})
VARIANTS = {  # name suffix -> (KV cache type, flash attention)
    "": (F32, FLASH_OFF), "+f16kv": (F16, FLASH_OFF), "+flash": (F32, FLASH_ON), "+f16kv+flash": (F16, FLASH_ON),
}
# Measured (docs/targets/llamacpp.md; 300 drawn traces each): max |Δlogit| to the oracle 3.6e-5 (llama), 4.2e-5
# (qwen2) with an f32 cache and flash attention off (two builds differ by ~8e-5); 0.056 (+f16kv), 0.057
# (+flash: ggml's CPU flash attention rounds K and V to f16), 0.057 (+f16kv+flash; qwen2 0.043).
TOLERANCES = {"": Tolerance(tie=1e-3, logits=1e-3), "+f16kv": Tolerance(tie=0.15, logits=0.15),
              "+flash": Tolerance(tie=0.15, logits=0.15), "+f16kv+flash": Tolerance(tie=0.15, logits=0.15)}

# llama.cpp's triaged bugs in its memory ops (corpus/<id>.md), each modelled by surgery.memory's oracle
# (fuzzcache.surgery.memory_model_bugs), so a new shape of one is claimed as known (fuzzcache.known_bugs)
MEMORY = dict(properties=("surgery.memory",), kinds=("mismatch",))
SEQ_DIV_SHIFT_SIGN = KnownBug("llamacpp-seq-div-shift-sign", "seq_div turns the keys it moves the wrong way (llama-kv-cells.h pos_div)",
                              modeled="seq_div_shift_sign", **MEMORY)
STATE_SAVE_PENDING_SHIFT = KnownBug("llamacpp-state-save-pending-shift", "a state saved before the next decode holds keys "
                                    "without the pending seq_add / seq_div K-shift", modeled="state_save_pending_shift", **MEMORY)
SHARED_CELLS_MOVE = KnownBug("llamacpp-shared-cells-move", "in a unified KV cache, seq_add / seq_div of one sequence move the "
                             "cells seq_cp shared with another", modeled="unified_cp_shares_cells", **MEMORY)
STATE_RESTORE_EMPTY = KnownBug("llamacpp-state-restore-empty", "restoring an empty sequence's state leaves the destination's "
                               "cells (state_read_sinfo skips its seq_rm)", modeled="restore_empty_keeps_cells", **MEMORY)
KNOWN_BUGS = (SEQ_DIV_SHIFT_SIGN, STATE_SAVE_PENDING_SHIFT, STATE_RESTORE_EMPTY) + ((SHARED_CELLS_MOVE,) if KV_UNIFIED else ())


def split_name(name: str) -> tuple[str, str]:
    """'llama+f16kv' -> ('llama', '+f16kv')."""
    arch, plus, rest = name.partition("+")
    return arch, plus + rest


class LlamaCppTarget:
    """llama.cpp over the tiny ``arch`` model (see the module docstring for the mapping)."""

    features = FEATURES
    min_block_size = 4  # cells are single tokens; a block only sizes the pool
    vocab_size = VOCAB_SIZE
    max_seq_len = MAX_SEQ_LEN
    memory_seqs = 4  # sequences the surgery.memory property edits
    memory_unmodelled: str | None = None  # why surgery.memory cannot run on this family (None: it can)
    isolate = True  # a native assert aborts the process: run in a worker (fuzzcache.isolation)
    known_bugs = KNOWN_BUGS  # its triaged upstream bugs, claiming their findings (shared cells: with a unified cache only)

    def __init__(self, arch: str = "llama", dtype: torch.dtype = torch.float32, device: str = "cpu", name: str | None = None):
        from fuzzcache.targets import UnknownTarget

        base, variant = split_name(arch)
        if base not in ARCHITECTURES or variant not in VARIANTS:
            known = [f"llamacpp:{a}{v}" for a in ARCHITECTURES for v in VARIANTS]
            raise UnknownTarget(f"unknown target 'llamacpp:{arch}'; llama.cpp targets: {', '.join(known)}")
        if dtype != torch.float32 or str(device) != "cpu":
            raise UnknownTarget(f"llamacpp:{arch} runs f32 weights on the CPU (the KV cache type is a variant: +f16kv); asked for {dtype} on {device}")
        self.arch, self.variant = base, variant
        self.name = name or f"llamacpp:{arch}"
        self.dtype, self.device = dtype, device
        self.kv_type, self.flash_attn = VARIANTS[variant]
        family = FAMILIES[base]
        self.window = family.window  # strategies draw lengths around a sliding window
        self.tolerance = TOLERANCES[variant].at_least(family.tolerance_floor.get("llamacpp", 0.0))
        if family.attention != "full":
            # surgery.memory's oracle models cells of full attention only
            self.memory_unmodelled = f"a full-attention family (surgery.memory's oracle models no {family.attention} attention)"
        if family.window:
            # Rolling back a rejected draft (seq_rm) on an SWA cache loses a cell find_slot handed to another
            # sequence while the draft was in, with swa_full too: an upstream bug
            # (corpus/llamacpp-swa-rollback-loses-cell.md); until llama.cpp fixes it, no drafts here
            self.features = FEATURES - {"speculative"}
            self.prefix_reuse = "whole sequence"  # engine.py _reuse_prefix: an SWA cache hands on a shorter prefix's cells
        self.model = tiny_model(base, **SHAPES["tiny"])
        self._folder = tempfile.TemporaryDirectory(prefix=f"fuzzcache-llamacpp-{base}-")
        path = write_gguf(self.model, base, Path(self._folder.name) / f"{base}.gguf")
        self.engine = Model(path, VOCAB_SIZE)
        self.trim_extra = 0  # planted bugs only
        self.abort_frees = True  # planted bugs only
        self.last_stats: dict[str, int] = {}
        self.last_pool = None  # a PoolAccount after each generate (cells each request sequence holds)

    @torch.no_grad()
    def reference_logits(self, tokens: Sequence[int]) -> torch.Tensor:
        """[len(tokens), vocab] float32 logits of one HF forward over the same weights."""
        return self.model(torch.tensor([list(tokens)]), use_cache=False).logits[0].float()

    def context_shape(self, n_ctx: int, config: EngineConfig | None = None) -> ContextShape:
        n_batch = (config.max_batch_tokens if config else None) or UNBOUNDED_BATCH
        n_ubatch = min(n_batch, (config.chunk_size if config else None) or n_batch)
        return ContextShape(n_ctx, n_batch, n_ubatch, N_SEQ_MAX, self.kv_type, self.flash_attn)

    def generate(self, requests: Sequence[Request], config: EngineConfig) -> list[Completion]:
        validate_requests(requests, config, self.vocab_size, self.max_seq_len)
        if config.spec_k and "speculative" not in self.features:
            raise ValueError(f"EngineConfig.spec_k={config.spec_k}: {self.name} drafts nothing (rolling drafts back on an SWA cache loses cells)")
        need = sum(len(r.prompt) + r.n * (r.max_new_tokens + config.spec_k) for r in requests)
        pool = need if config.num_blocks is None else config.num_blocks * config.block_size
        n_ctx = -(-max(pool, 1) // CONTEXT_PAD) * CONTEXT_PAD
        ctx = self.engine.context(self.context_shape(n_ctx, config))
        self._fill_ballast(ctx, n_ctx - pool if config.num_blocks is not None else 0)
        server = Server(ctx, config, self.vocab_size, self.trim_extra, self.abort_frees, max_seqs=BALLAST_SEQ)
        try:
            return server.run(requests)
        finally:
            self.last_stats, self.last_pool = dict(server.stats), server.pool

    def memory_session(self) -> MemorySession:
        """A cleared context whose sequences 0 .. memory_seqs - 1 the caller edits: 1,024 cells, room for
        any script strategies.memory draws (restores copy cells; seq_cp shares them)."""
        return MemorySession(self.engine.context(self.context_shape(4 * CONTEXT_PAD)))

    def run_memory_script(self, scenario: MemoryScenario, probe_seqs: tuple[int, ...]) -> list[Observation]:
        """``surgery.memory``'s script on llama.cpp's own memory ops, in one call (so it runs in a worker process)."""
        return run_script(self.memory_session(), scenario, self.memory_seqs, probe_seqs)

    @staticmethod
    def _fill_ballast(ctx, cells: int) -> None:
        """Occupy ``cells`` cells with a sequence no request reads, so the pool is what is left."""
        for start in range(0, cells, ctx.shape.n_batch):
            n = min(ctx.shape.n_batch, cells - start)
            rc = ctx.decode([(3, start + i, BALLAST_SEQ, False) for i in range(n)])
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} filling the ballast")
