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
