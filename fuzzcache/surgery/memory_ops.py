"""The scenario of ``surgery.memory``: generated compositions of an engine's own KV-memory
operations (llama.cpp's ``llama_memory_seq_*`` and per-sequence state save / restore), run on the
engine and on ``MemoryModel`` alike."""

from __future__ import annotations

from dataclasses import dataclass

from fuzzcache.reductions import fewer_items, field_reductions

# decode: append tokens; rm, cp, keep, add, div: llama.h's memory functions; save_restore: a
# sequence's saved state restored into another id; context_shift: rm [keep, keep + n) then add -n
# to what followed (llama.cpp's server, on a full context)
KINDS = ("decode", "rm", "cp", "keep", "add", "div", "save_restore", "context_shift")


@dataclass(frozen=True)
class MemoryOp:
    kind: str  # one of KINDS
    seq: int
    other: int = 0  # cp / save_restore: the destination sequence
    p0: int = -1  # range [p0, p1); -1: open (context_shift: p0 = tokens kept at the front)
    p1: int = -1
    value: int = 0  # add: Δ; div: d; context_shift: tokens discarded
    tokens: tuple[int, ...] = ()  # decode

    def short(self) -> str:
        span = f"[{self.p0},{self.p1})"
        return {
            "decode": f"decode({self.seq},{len(self.tokens)})", "rm": f"rm({self.seq},{span})",
            "cp": f"cp({self.seq}->{self.other},{span})", "keep": f"keep({self.seq})",
            "add": f"add({self.seq},{span},{self.value:+d})", "div": f"div({self.seq},{span},/{self.value})",
            "save_restore": f"save({self.seq})->restore({self.other})",
            "context_shift": f"context_shift({self.seq},keep={self.p0},discard={self.value})",
        }[self.kind]


@dataclass(frozen=True)
class MemoryScenario:
    prompts: tuple[tuple[int, ...], ...]  # sequence i starts with prompts[i]; all decoded in one batch
    ops: tuple[MemoryOp, ...]
    probe: tuple[int, ...]  # decoded after the ops into every non-empty sequence, in one batch

    def short(self) -> str:
        return f"prompts={[len(p) for p in self.prompts]} ops={' '.join(op.short() for op in self.ops)} probe={len(self.probe)}"

    def reductions(self, target):
        for ops in fewer_items(self.ops):
            yield MemoryScenario(self.prompts, ops, self.probe)
        for prompts in fewer_items(self.prompts, 1):
            yield MemoryScenario(prompts, self.ops, self.probe)
        yield from field_reductions(self, {"probe": 1})


@dataclass
class Observation:
    """What one step of a script showed: ``kind`` "decode" (``data``: {seq: (n, V) logits}),
    "positions" (``data``: ((pos_min, pos_max) per sequence)) or "rm" (``data``: seq_rm's result).
    ``op``: the index of the op in ``scenario.ops`` (None: the prompts or the probe)."""

    kind: str
    op: int | None
    data: object


def calls_of(op: MemoryOp) -> list[tuple]:
    """The memory-editing calls one op makes, in order (the composite ops spelled out; a decode makes none)."""
    if op.kind == "context_shift":
        keep = max(op.p0, 0)
        return [("rm", op.seq, keep, keep + op.value), ("add", op.seq, keep + op.value, -1, -op.value)]
    return {
        "decode": [],
        "rm": [("rm", op.seq, op.p0, op.p1)],
        "cp": [("cp", op.seq, op.other, op.p0, op.p1)],
        "keep": [("keep", op.seq)],
        "add": [("add", op.seq, op.p0, op.p1, op.value)],
        "div": [("div", op.seq, op.p0, op.p1, op.value)],
        "save_restore": [("copy_state", op.seq, op.other)],
    }[op.kind]


def run_script(memory, scenario: MemoryScenario, n_seqs: int, probe_seqs: tuple[int, ...], after_op=None) -> list[Observation]:
    """Run ``scenario`` on ``memory`` (an engine's session or ``MemoryModel``: ``decode_batch({seq: tokens})``,
    ``rm``, ``cp``, ``keep``, ``add``, ``div``, ``copy_state``, ``pos_min``, ``pos_max``) and return what
    each step showed. The prompts go in one batch, the probe into ``probe_seqs`` in one batch; an op
    naming a sequence past ``n_seqs`` is skipped. ``after_op(index, op)`` is called after each op."""
    out = [Observation("decode", None, memory.decode_batch(dict(enumerate(scenario.prompts))))]
    for i, op in enumerate(scenario.ops):
        if op.seq >= n_seqs or op.other >= n_seqs:
            continue
        if op.kind == "decode":
            out.append(Observation("decode", i, memory.decode_batch({op.seq: op.tokens})))
        for name, *args in calls_of(op):
            result = getattr(memory, name)(*args)
            if name == "rm":
                out.append(Observation("rm", i, bool(result)))
        if after_op is not None:
            after_op(i, op)
        out.append(Observation("positions", i, tuple((memory.pos_min(s), memory.pos_max(s)) for s in range(n_seqs))))
    if probe_seqs:
        out.append(Observation("decode", None, memory.decode_batch({s: scenario.probe for s in probe_seqs})))
    return out
