"""surgery.memory -- KV-cache surgery done by the engine itself (seed 004's shifts, cuts and copies,
on the engine's own memory): a few sequences are decoded, then a generated composition of the
engine's memory operations (remove, copy, keep, shift by any Δ, divide positions, context shift,
save a sequence's state and restore it into another id) edits them, and every decode after
(and a final probe of every sequence, in one shared batch) must give the logits the model gives
with the cache those operations describe (``MemoryModel``: the model's own forward and its own
rotary at the new positions, computed without the engine). Positions reported by the engine
(pos_min / pos_max per sequence) must match too."""

from __future__ import annotations

from fuzzcache.compare import target_tolerance
from fuzzcache.coverage import reached
from fuzzcache.findings import mismatch
from fuzzcache.guard import call_target
from fuzzcache.properties.registry import Property, register
from fuzzcache.surgery.memory_ops import MemoryOp, MemoryScenario
from strategies.memory import memory_scenarios


def lowest_in_range(oracle, seq: int, p0: int, p1: int) -> int | None:
    from fuzzcache.surgery.memory_model import span

    lo, hi = span(p0, p1)
    return min((e.pos for e in oracle.entries(seq) if lo <= e.pos < hi), default=None)


def effect_of(oracle, op: MemoryOp) -> str:
    """'moved shared', 'moved' or 'edited': what ``op`` (just applied) did to the oracle's entries."""
    if op.kind in MOVES and oracle.moved_shared:
        reached("memory: moved entries shared through seq_cp")
        return "moved shared"
    return "moved" if op.kind in MOVES and oracle.moved else "edited"


def apply(session, oracle, op: MemoryOp) -> dict | None:
    """Run ``op`` on the engine and the oracle; a decode's tokens by sequence (compared by the caller)."""
    if op.kind == "decode":
        reached("memory op decode")
        return {op.seq: op.tokens}
    if op.kind == "rm":
        if not session.rm(op.seq, op.p0, op.p1):
            raise mismatch(f"{op.short()}: seq_rm returned false (a KV cache removes any range)")
        oracle.rm(op.seq, op.p0, op.p1)
    elif op.kind == "cp":
        session.cp(op.seq, op.other, op.p0, op.p1)
        oracle.cp(op.seq, op.other, op.p0, op.p1)
    elif op.kind == "keep":
        session.keep(op.seq)
        oracle.keep(op.seq)
    elif op.kind == "add":
        session.add(op.seq, op.p0, op.p1, op.value)
        oracle.add(op.seq, op.p0, op.p1, op.value)
        lowest = lowest_in_range(oracle, op.seq, op.p0, op.p1)
        if lowest is not None and lowest < 0:
            reached("memory: entries shifted below position 0")
    elif op.kind == "div":
        session.div(op.seq, op.p0, op.p1, op.value)
        oracle.div(op.seq, op.p0, op.p1, op.value)
    elif op.kind == "save_restore":
        session.restore(session.save(op.seq), op.other)
        oracle.restore(oracle.save(op.seq), op.other)
    elif op.kind == "context_shift":
        keep, discard = max(op.p0, 0), op.value
        for side in (session, oracle):
            side.rm(op.seq, keep, keep + discard)
            side.add(op.seq, keep + discard, -1, -discard)
    reached(f"memory op {op.kind}")
    return None


MOVES = ("add", "div", "context_shift")  # ops that move cached keys to new positions


SHARED_MOVE = "a move of entries another sequence shares through seq_cp"


def suspects(ops: list[tuple[MemoryOp, str]]) -> str:
    """What a logits divergence is filed under (its signature): a move of shared entries since
    the start if any (its effects last), else the kinds of the ops that moved entries since the last
    decode that agreed, else the other edits since then."""
    if any(effect == "moved shared" for _, effect in ops):
        return f"logits after {SHARED_MOVE}"
    kinds = sorted({op.kind for op, effect in ops if effect == "moved"}) or sorted({op.kind for op, _ in ops if op.kind != "decode"})
    return "logits after " + ("+".join(kinds) or "decode")


def compare(target, session, oracle, tokens_by_seq: dict, after: str, since: dict) -> None:
    """One engine decode of every sequence's tokens vs the oracle's; ``since[seq]``: the edits to
    ``seq`` since its last decode that agreed (what a divergence is filed under)."""
    tol = target_tolerance(target).logits
    got = call_target(f"{target.name}.memory decode", session.decode, tokens_by_seq)
    for seq, tokens in tokens_by_seq.items():
        want = oracle.decode(seq, tokens)  # (n, V)
        diff = (got[seq].float() - want).abs().amax(-1)  # (n,)
        worst = int(diff.argmax())
        if not float(diff[worst]) <= tol:
            raise mismatch(f"sequence {seq}, token {worst} of {len(tokens)} decoded after {after or 'the prompts'}: logits differ from "
                           f"the model's over the cache the operations describe by {float(diff[worst]):.3g} (> {tol:g})",
                           seq=seq, step=worst, max_abs_diff=float(diff[worst]), what=suspects(since.get(seq, [])))


def touched(op: MemoryOp, n_seqs: int) -> list[int]:
    """The sequences whose entries ``op`` edits (a move of shared entries is tracked apart)."""
    if op.kind in ("cp", "save_restore"):
        return [op.other]
    if op.kind == "keep":
        return [s for s in range(n_seqs) if s != op.seq]
    return [op.seq]


def check_positions(session, oracle, n_seqs: int, after: str, op: MemoryOp, effect: str) -> None:
    for seq in range(n_seqs):
        got, want = (session.pos_min(seq), session.pos_max(seq)), (oracle.pos_min(seq), oracle.pos_max(seq))
        if got != want:
            raise mismatch(f"after {after}: sequence {seq} holds positions {got[0]}..{got[1]} (pos_min, pos_max), expected {want[0]}..{want[1]}",
                           seq=seq, what=f"positions after {SHARED_MOVE if effect == 'moved shared' else op.kind}")


def check_memory(target, s: MemoryScenario) -> None:
    from fuzzcache.surgery.memory_model import MemoryModel

    session, oracle = target.memory_session(), MemoryModel(target.model)
    n_seqs = target.memory_seqs
    compare(target, session, oracle, dict(enumerate(s.prompts)), "", {})
    done: list[str] = []
    shared_moved: list[tuple[MemoryOp, str]] = []  # moves of shared entries: they may affect any sequence from then on
    since: dict[int, list[tuple[MemoryOp, str]]] = {}  # per sequence: its edits since its last decode that agreed
    for op in s.ops:
        if op.seq >= n_seqs or op.other >= n_seqs:
            continue
        decode = apply(session, oracle, op)
        effect = effect_of(oracle, op)
        done.append(op.short())
        if effect == "moved shared":
            shared_moved.append((op, effect))
        for seq in touched(op, n_seqs):
            since.setdefault(seq, []).append((op, effect))
        if decode:
            compare(target, session, oracle, decode, " ".join(done[:-1]), {op.seq: since.get(op.seq, []) + shared_moved})
            since[op.seq] = []
        check_positions(session, oracle, n_seqs, " ".join(done), op, "moved shared" if shared_moved else effect)
    live = {seq: s.probe for seq in range(n_seqs) if oracle.entries(seq)}
    if live:
        compare(target, session, oracle, live, " ".join(done), {seq: since.get(seq, []) + shared_moved for seq in live})
        reached(f"memory probe of {len(live)} sequence(s)")


register(Property(
    id="surgery.memory", level="memory",
    description="the engine's own KV-memory ops (rm, cp, keep, shift, div, context shift, state restore), composed, == the model over the cache they describe",
    scenario_type=MemoryScenario, strategy=lambda t: memory_scenarios(t.vocab_size, t.memory_seqs), check=check_memory,
))
