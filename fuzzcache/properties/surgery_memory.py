"""surgery.memory -- KV-cache surgery done by the engine itself (seed 004's shifts, cuts and copies,
on the engine's own memory): a few sequences are decoded, then a generated composition of the
engine's memory operations (remove, copy, keep, shift by any Δ, divide positions, context shift,
save a sequence's state and restore it into another id) edits them. Every decode after (and a
final probe of every sequence, in one shared batch) must give the logits the model gives over the
cache those operations describe (``MemoryModel``: the model's own forward and its own rotary at
the new positions, computed without the engine), and the positions the engine reports for each
sequence (pos_min, pos_max) must match after every op.

The engine runs the whole script in one call (``target.run_memory_script``), so a target in a
worker process runs it there; the comparison happens here, step by step."""

from __future__ import annotations

from fuzzcache.compare import target_tolerance
from fuzzcache.coverage import reached
from fuzzcache.findings import contract, mismatch
from fuzzcache.guard import call_target
from fuzzcache.properties.registry import Property, register
from fuzzcache.surgery.memory_ops import MemoryOp, MemoryScenario, Observation, run_script
from fuzzcache.strategies.memory import memory_scenarios

MOVES = ("add", "div", "context_shift")  # ops that move cached keys to new positions
SHARED_MOVE = "a move of entries another sequence shares through seq_cp"


def effect_of(oracle, op: MemoryOp) -> str:
    """'moved shared', 'moved' or 'edited': what ``op`` (just applied) did to the oracle's entries."""
    if op.kind in MOVES and oracle.moved_shared:
        return "moved shared"
    return "moved" if op.kind in MOVES and oracle.moved else "edited"


def touched(op: MemoryOp, n_seqs: int) -> list[int]:
    """The sequences whose entries ``op`` edits (a move of shared entries is tracked apart)."""
    if op.kind in ("cp", "save_restore"):
        return [op.other]
    if op.kind == "keep":
        return [s for s in range(n_seqs) if s != op.seq]
    return [op.seq]


def suspects(edits: list[tuple[MemoryOp, str]]) -> str:
    """What a logits divergence is filed under (its signature): a move of shared entries since the
    start if any (its effects last), else the kinds of the ops that moved entries of the sequence
    since its last decode that agreed, else its other edits since then."""
    if any(effect == "moved shared" for _, effect in edits):
        return f"logits after {SHARED_MOVE}"
    kinds = sorted({op.kind for op, effect in edits if effect == "moved"}) or sorted({op.kind for op, _ in edits if op.kind != "decode"})
    return "logits after " + ("+".join(kinds) or "decode")


class OracleRun:
    """The oracle's run of a script, with what each op did (for the signatures)."""

    def __init__(self, target, s: MemoryScenario, modeled: frozenset[str] = frozenset()):
        from fuzzcache.surgery.memory_model_bugs import memory_model

        self.oracle, self.effects = memory_model(target.model, modeled), {}
        n_seqs = target.memory_seqs
        self.observations = run_script(self.oracle, s, n_seqs, (), self._after)
        self.probe_seqs = tuple(seq for seq in range(n_seqs) if self.oracle.entries(seq))  # every sequence holding entries
        if self.probe_seqs:
            self.observations.append(Observation("decode", None, self.oracle.decode_batch({seq: s.probe for seq in self.probe_seqs})))

    def _after(self, index: int, op: MemoryOp) -> None:
        self.effects[index] = effect_of(self.oracle, op)
        reached(f"memory op {op.kind}")
        if self.effects[index] == "moved shared":
            reached("memory: moved entries shared through seq_cp")


def check_memory(target, s: MemoryScenario, modeled: frozenset[str] = frozenset()) -> None:
    """The check; ``modeled``: known engine bugs the oracle behaves as (``memory_model_bugs.BUGS``)."""
    want = OracleRun(target, s, modeled)
    got = call_target(f"{target.name}.run_memory_script", target.run_memory_script, s, want.probe_seqs)
    if [o.kind for o in got] != [o.kind for o in want.observations]:
        raise contract(f"run_memory_script returned steps {[o.kind for o in got]}, expected {[o.kind for o in want.observations]}")
    tol, n_seqs = target_tolerance(target).logits, target.memory_seqs
    done: list[str] = []
    shared: list[tuple[MemoryOp, str]] = []  # moves of shared entries: they may affect any sequence from then on
    since: dict[int, list[tuple[MemoryOp, str]]] = {}  # per sequence: its edits since its last decode that agreed
    counted: set[int] = set()
    for g, w in zip(got, want.observations):
        op = s.ops[w.op] if w.op is not None else None
        if op is not None and w.op not in counted:  # the op's edits, once
            counted.add(w.op)
            effect = want.effects.get(w.op, "edited")
            if op.kind != "decode":
                done.append(op.short())
            if effect == "moved shared":
                shared.append((op, effect))
            for seq in touched(op, n_seqs) if op.kind != "decode" else []:
                since.setdefault(seq, []).append((op, effect))
        after = " ".join(done) or "the prompts"
        if w.kind == "rm" and not g.data:
            raise mismatch(f"{op.short()}: seq_rm returned false (a KV cache removes any range)", what="rm refused")
        if w.kind == "positions" and g.data != w.data:
            seq = next(i for i, (a, b) in enumerate(zip(g.data, w.data)) if a != b)
            raise mismatch(f"after {after}: sequence {seq} holds positions {g.data[seq][0]}..{g.data[seq][1]} (pos_min, pos_max), "
                           f"expected {w.data[seq][0]}..{w.data[seq][1]}", seq=seq,
                           what=f"positions after {SHARED_MOVE if shared else op.kind}")
        if w.kind == "decode":
            for seq, rows in w.data.items():
                if seq not in g.data or tuple(g.data[seq].shape) != tuple(rows.shape):
                    raise contract(f"run_memory_script gave no ({tuple(rows.shape)}) logits for sequence {seq} after {after}")
                diff = (g.data[seq].float() - rows).abs().amax(-1)  # (n,)
                worst = int(diff.argmax())
                if not float(diff[worst]) <= tol:
                    raise mismatch(f"sequence {seq}, token {worst} of {len(rows)} decoded after {after}: logits differ from the model's "
                                   f"over the cache the operations describe by {float(diff[worst]):.3g} (> {tol:g})",
                                   seq=seq, step=worst, max_abs_diff=float(diff[worst]), what=suspects(since.get(seq, []) + shared))
                since[seq] = []
            if op is not None:
                done.append(op.short())
    if want.probe_seqs:
        reached(f"memory probe of {len(want.probe_seqs)} sequence(s)")


register(Property(
    id="surgery.memory", level="memory",
    description="the engine's own KV-memory ops (rm, cp, keep, shift, div, context shift, state restore), composed, == the model over the cache they describe",
    scenario_type=MemoryScenario, strategy=lambda t: memory_scenarios(t.vocab_size, t.memory_seqs), check=check_memory,
    check_modeling=check_memory,
))
