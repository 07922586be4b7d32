"""Strategies for ``surgery.memory``: a few sequences, then generated compositions of an engine's
own memory operations. Shrinks toward one short sequence, few ops, open position ranges and
small shifts."""

from __future__ import annotations

from hypothesis import strategies as st

from fuzzcache.surgery.memory_ops import KINDS, MemoryOp, MemoryScenario

MAX_PROMPT = 10
MAX_OPS = 6
MAX_POSITION = 16  # ranges reach past every sequence's end (an open end is -1)


def positions() -> st.SearchStrategy[int]:
    return st.integers(-1, MAX_POSITION)


@st.composite
def memory_ops(draw, vocab_size: int, n_seqs: int) -> MemoryOp:
    kind = draw(st.sampled_from(KINDS))
    seq, other = draw(st.integers(0, n_seqs - 1)), draw(st.integers(0, n_seqs - 1))
    p0, p1 = draw(positions()), draw(positions())
    value = {"add": st.integers(-12, 12).filter(bool), "div": st.integers(2, 4), "context_shift": st.integers(1, 6)}.get(kind, st.just(0))
    tokens = st.lists(st.integers(0, vocab_size - 1), min_size=1, max_size=3).map(tuple) if kind == "decode" else st.just(())
    return MemoryOp(kind, seq, other, p0, p1, draw(value), draw(tokens))


@st.composite
def memory_scenarios(draw, vocab_size: int, n_seqs: int) -> MemoryScenario:
    token = st.integers(0, vocab_size - 1)
    prompts = draw(st.lists(st.lists(token, min_size=1, max_size=MAX_PROMPT).map(tuple), min_size=1, max_size=n_seqs))
    ops = draw(st.lists(memory_ops(vocab_size, n_seqs), min_size=1, max_size=MAX_OPS))
    probe = draw(st.lists(token, min_size=1, max_size=3).map(tuple))
    return MemoryScenario(tuple(prompts), tuple(ops), probe)
