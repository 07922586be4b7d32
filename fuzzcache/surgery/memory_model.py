"""An oracle of an engine's KV memory that holds several sequences and edits them in place
(llama.cpp's memory API), computed with the HF model alone.

Each sequence is a list of entries, one per cached token: its position, and per layer the key
(rotated at that position) and the value the model computed when the token was decoded. The
operations follow llama.h's documentation, sequence by sequence:

    rm(s, p0, p1)         entries of s with p0 <= pos < p1 go
    cp(src, dst, p0, p1)  entries of src in [p0, p1) are added to dst (once: an entry it holds already stays one)
    keep(s)               every other sequence is emptied
    add(s, p0, p1, Δ)     entries of s in [p0, p1) move to pos + Δ: keys rotated by Δ (the model's own
                          frequencies, fuzzcache.surgery.rotary); an entry moved below 0 goes
    div(s, p0, p1, d)     entries of s in [p0, p1) move to pos // d, keys rotated likewise
    copy_state(src, dst)  dst's entries replaced by a saved copy of src's (new entries, not shared)

(p0 < 0 means 0, p1 < 0 means no end.) ``decode(s, tokens)`` (``decode_batch({s: tokens})``) runs the model on ``tokens`` at
positions pos_max(s) + 1 ... with s's entries as its cache, and appends their entries: the
logits a correct engine returns whatever the edits before.
Known engine bugs it can behave as, to claim their findings: fuzzcache.surgery.memory_model_bugs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch

from fuzzcache.surgery.rotary import RopeInfo, rope_info, rope_shift


@dataclass
class Entry:
    pos: int
    cell: int  # which decode made it: cp keeps it (the copy shares the computation), restore makes a new one
    keys: list[torch.Tensor]  # per layer (1, H_kv, 1, D), rotated at ``pos``
    values: list[torch.Tensor]  # per layer (1, H_kv, 1, D)


def span(p0: int, p1: int) -> tuple[int, float]:
    """llama.h's [p0, p1): p0 < 0 is 0, p1 < 0 is no end."""
    return max(p0, 0), float("inf") if p1 < 0 else p1


class MemoryModel:
    """The KV memory of ``model`` (an HF causal LM with RoPE), sequence by sequence."""

    def __init__(self, model):
        self.model = model
        self.info: RopeInfo = rope_info(model)
        self.seqs: dict[int, list[Entry]] = {}
        self.cells = 0  # entries made so far
        self.moved = self.moved_shared = False  # the last add / div moved an entry / one another sequence also holds

    def entries(self, seq: int) -> list[Entry]:
        return self.seqs.setdefault(seq, [])

    def pos_min(self, seq: int) -> int:
        return min((e.pos for e in self.entries(seq)), default=-1)

    def pos_max(self, seq: int) -> int:
        return max((e.pos for e in self.entries(seq)), default=-1)

    @torch.no_grad()
    def decode(self, seq: int, tokens: Sequence[int]) -> torch.Tensor:
        """(n, V) float32 logits of ``tokens`` decoded after ``seq``'s entries; their entries are appended."""
        from fuzzcache.surgery.cache_ops import from_layers

        from transformers import DynamicCache

        entries, n = self.entries(seq), len(tokens)
        layers = len(self.model.model.layers)
        cache = (from_layers([(torch.cat([e.keys[i] for e in entries], dim=2),  # (1, H_kv, T, D)
                               torch.cat([e.values[i] for e in entries], dim=2)) for i in range(layers)])
                 if entries else DynamicCache())
        start = self.pos_max(seq) + 1
        positions = torch.arange(start, start + n)[None]  # (1, n)
        out = self.model(input_ids=torch.tensor([list(tokens)]), position_ids=positions, past_key_values=cache, use_cache=True)
        new = out.past_key_values.layers  # per layer keys and values (1, H_kv, T + n, D)
        first = len(entries)
        for j in range(first, first + n):
            self.cells += 1
            entries.append(Entry(start + j - first, self.cells, [layer.keys[:, :, j : j + 1].clone() for layer in new],
                                 [layer.values[:, :, j : j + 1].clone() for layer in new]))
        return out.logits[0].float()  # (n, V)

    def decode_batch(self, tokens_by_seq: dict[int, Sequence[int]]) -> dict[int, torch.Tensor]:
        """``decode`` of each sequence's tokens: (n, V) logits per sequence."""
        return {seq: self.decode(seq, tokens) for seq, tokens in tokens_by_seq.items()}

    def rm(self, seq: int, p0: int, p1: int) -> bool:
        lo, hi = span(p0, p1)
        self.seqs[seq] = [e for e in self.entries(seq) if not lo <= e.pos < hi]
        return True

    def cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        if src == dst:
            return
        lo, hi = span(p0, p1)
        held = {e.cell for e in self.entries(dst)}  # an entry dst already holds is not copied twice
        self.entries(dst).extend(copy.deepcopy([e for e in self.entries(src) if lo <= e.pos < hi and e.cell not in held]))

    def keep(self, seq: int) -> None:
        self.seqs = {seq: self.entries(seq)}

    def add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        lo, hi = span(p0, p1)
        self._move(seq, lambda pos: pos + delta if lo <= pos < hi else pos)

    def div(self, seq: int, p0: int, p1: int, d: int) -> None:
        lo, hi = span(p0, p1)
        self._move(seq, lambda pos: pos // d if lo <= pos < hi else pos)

    def copy_state(self, src: int, dst: int) -> None:
        """``dst``'s entries replaced by a saved copy of ``src``'s."""
        saved = copy.deepcopy(self.entries(src))
        self.seqs[dst] = []
        for e in saved:
            self.cells += 1
            self.seqs[dst].append(Entry(e.pos, self.cells, e.keys, e.values))

    def _move(self, seq: int, where, turn=lambda old, new: new - old) -> None:
        """``seq``'s entries moved to ``where(pos)``, their keys turned by ``turn(pos, where(pos))``
        positions (to the new position: an engine bug may turn them elsewhere, memory_model_bugs)."""
        elsewhere = {e.cell for other, entries in self.seqs.items() if other != seq for e in entries}
        kept, self.moved, self.moved_shared = [], False, False
        for e in self.entries(seq):
            new = where(e.pos)
            if new != e.pos:
                self.moved = True
                self.moved_shared |= e.cell in elsewhere
            if new < 0:
                continue  # moved below position 0: the entry goes
            kept.append(self._moved(e, new, turn(e.pos, new)) if new != e.pos else e)
        self.seqs[seq] = kept

    def _moved(self, e: Entry, new: int, turn: int) -> Entry:
        """``e`` at position ``new``, its keys turned by ``turn`` positions now."""
        return Entry(new, e.cell, [rope_shift(k, turn, self.info, e.pos) for k in e.keys], e.values)
