"""llama.cpp's memory API as the ``surgery.memory`` property drives it: one context, sequences
edited with llama.cpp's own calls, decoded in shared batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fuzzcache.contract import EngineError
from fuzzcache.targets.llamacpp.library import Context


class MemorySession:
    """A cleared llama.cpp context whose sequences the caller edits (positions as in llama.h)."""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def decode_batch(self, tokens_by_seq: dict[int, Sequence[int]]) -> dict[int, torch.Tensor]:
        """One ``llama_decode`` of every sequence's tokens at pos_max + 1 ...; (n, V) logits per sequence."""
        rows, where = [], {}
        for seq, tokens in tokens_by_seq.items():
            start = self.ctx.pos_max(seq) + 1
            where[seq] = range(len(rows), len(rows) + len(tokens))
            rows += [(t, start + i, seq, True) for i, t in enumerate(tokens)]
        rc = self.ctx.decode(rows)
        if rc != 0:
            raise EngineError(f"llama_decode returned {rc} for {len(rows)} tokens of sequences {sorted(tokens_by_seq)}")
        return {seq: torch.stack([self.ctx.logits(i) for i in index]) for seq, index in where.items()}

    def rm(self, seq: int, p0: int, p1: int) -> bool:
        return self.ctx.seq_rm(seq, p0, p1)

    def cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        self.ctx.seq_cp(src, dst, p0, p1)

    def keep(self, seq: int) -> None:
        self.ctx.seq_keep(seq)

    def add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        self.ctx.seq_add(seq, p0, p1, delta)

    def div(self, seq: int, p0: int, p1: int, d: int) -> None:
        self.ctx.seq_div(seq, p0, p1, d)

    def copy_state(self, src: int, dst: int) -> None:
        """``llama_state_seq_get_data`` of ``src`` restored with ``llama_state_seq_set_data`` into ``dst``."""
        saved = self.ctx.state_get(src)
        if self.ctx.state_set(saved, dst) == 0:
            raise EngineError(f"llama_state_seq_set_data into sequence {dst} read nothing ({len(saved)} bytes of sequence {src})")

    def pos_min(self, seq: int) -> int:
        return self.ctx.pos_min(seq)

    def pos_max(self, seq: int) -> int:
        return self.ctx.pos_max(seq)
