"""Known engine bugs ``MemoryModel`` can behave as, so a finding can be claimed by the bug that
explains it (``fuzzcache.known_bugs``: ``surgery.memory``'s ``check_modeling``). One class per
bug, each a ``MemoryModel`` that changes only what the bug changes; ``memory_model(model,
modeled)`` combines the named ones (cooperative subclasses: each calls ``super()``).

All four are llama.cpp's (llama-cpp-python 0.3.36; lines of its vendor/llama.cpp/src), with a
write-up each in corpus/. Their names are what ``LlamaCppTarget.known_bugs`` give as ``modeled``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from fuzzcache.surgery.memory_model import Entry, MemoryModel, span
from fuzzcache.surgery.rotary import rotate


class SeqDivShiftSign(MemoryModel):
    """``seq_div`` turns a key it moves from p to p / d by p - p / d, the wrong way:
    ``llama_kv_cells::pos_div`` (llama-kv-cells.h:486) records ``shift[i] += p_old - pos[i]``
    where ``pos_add`` (line 455) records new - old, and the K-shift turns each key by its shift.
    corpus/llamacpp-seq-div-shift-sign.md."""

    def div(self, seq: int, p0: int, p1: int, d: int) -> None:
        lo, hi = span(p0, p1)
        self._move(seq, lambda pos: pos // d if lo <= pos < hi else pos, turn=lambda old, new: old - new)


@dataclass
class Shifting(Entry):
    """An entry whose keys are stored unturned, with a K-shift pending (``llama_kv_cells::shift``)."""

    shift: int = 0  # positions the next decode turns the keys by


class StateSavePendingShift(MemoryModel):
    """``seq_add`` / ``seq_div`` only record a per-cell shift (llama-kv-cells.h:455, 486); the keys
    are turned at the next ``llama_decode`` of any sequence (``memory_update``, llama-context.cpp:1809,
    for every cell). A state saved before it (``state_seq_write_data``, llama-context.cpp:3445 ->
    ``llama_kv_cache::state_write``, llama-kv-cache.cpp:2065) holds the new positions and the keys
    as stored: restored, they stay unturned for good. Here a move leaves the keys as stored and adds
    its turn to the entry's ``shift``; ``decode_batch`` turns every entry first; ``copy_state``
    (``MemoryModel``'s: new entries from the positions, keys and values) drops the shift.
    corpus/llamacpp-state-save-pending-shift.md."""

    def _moved(self, e: Entry, new: int, turn: int) -> Entry:
        return Shifting(new, e.cell, e.keys, e.values, getattr(e, "shift", 0) + turn)

    def decode_batch(self, tokens_by_seq):
        for seq, entries in self.seqs.items():
            self.seqs[seq] = [Entry(e.pos, e.cell, [rotate(k, e.shift, self.info) for k in e.keys], e.values)
                              if getattr(e, "shift", 0) else e for e in entries]
        return super().decode_batch(tokens_by_seq)


class UnifiedCpSharesCells(MemoryModel):
    """With ``kv_unified`` (one stream), ``seq_cp`` copies nothing: the cell gains the destination
    (llama-kv-cache.cpp:487, ``cells.seq_add(i, seq_id_dst)``), so ``seq_add`` / ``seq_div`` of one
    sequence (lines 607, 654) move the cell for every sequence holding it, and a move below
    position 0 removes it from all. Entries that share a cell keep ``MemoryModel``'s ``cell`` id (cp
    keeps it, decode and restore make new ones): a move is applied to every sequence's copy.
    corpus/llamacpp-shared-cells-move.md."""

    def _move(self, seq: int, where, **how) -> None:
        held = {e.cell for e in self.entries(seq)}
        super()._move(seq, where, **how)
        now = {e.cell: e for e in self.entries(seq)}
        for other, entries in self.seqs.items():
            if other != seq:
                self.seqs[other] = [now.get(e.cell, e) for e in entries if e.cell not in held or e.cell in now]


class RestoreEmptyKeepsCells(MemoryModel):
    """Restoring the state of an empty sequence leaves the destination's cells:
    ``llama_kv_cache::state_read_sinfo`` (llama-kv-cache.cpp:2179) skips a stream of 0 saved cells,
    and with it ``state_read_meta``'s ``seq_rm(dest_seq_id, -1, -1)`` (line 2354).
    corpus/llamacpp-state-restore-empty.md."""

    def copy_state(self, src: int, dst: int) -> None:
        if self.entries(src):
            super().copy_state(src, dst)


BUGS: dict[str, type[MemoryModel]] = {
    "seq_div_shift_sign": SeqDivShiftSign,
    "state_save_pending_shift": StateSavePendingShift,
    "unified_cp_shares_cells": UnifiedCpSharesCells,
    "restore_empty_keeps_cells": RestoreEmptyKeepsCells,
}


def memory_model(model, modeled: frozenset[str] = frozenset()) -> MemoryModel:
    """A ``MemoryModel`` of ``model`` that behaves as the engine bugs named in ``modeled`` (``BUGS``)."""
    unknown = sorted(set(modeled) - set(BUGS))
    if unknown:
        raise ValueError(f"MemoryModel models no engine bug {unknown}; it models {sorted(BUGS)}")
    return _with_bugs(tuple(sorted(modeled)))(model)


@cache
def _with_bugs(names: tuple[str, ...]) -> type[MemoryModel]:
    return type("MemoryModel+" + "+".join(names), tuple(BUGS[n] for n in names), {}) if names else MemoryModel
