"""Strategies for the KV-cache surgery properties: tiny HF models (arch, RoPE type, dtype),
positions and shifts, token sequences, texts. All shrink toward llama / default RoPE / fp32,
small shifts and short sequences."""

from __future__ import annotations

from hypothesis import strategies as st

from fuzzcache.surgery.models import ARCHS, DTYPES, ROPE_TYPES, VOCAB, SurgeryModel

MAX_POSITION = 40  # past every stateful limit (longrope 16, dynamic 31) with short sequences
ALPHABET = "ab .,:\nthe"  # shrinks toward "a"; letters and separators that make BPE merges cross boundaries


def surgery_models(archs=ARCHS, dtypes=tuple(DTYPES)) -> st.SearchStrategy[SurgeryModel]:
    return st.builds(SurgeryModel, st.sampled_from(archs), st.sampled_from(ROPE_TYPES), st.sampled_from(dtypes))


def archs_of(target) -> tuple[str, ...]:
    """The architectures a target's surgery runs on (``target.surgery_architectures``, default all five)."""
    return tuple(getattr(target, "surgery_architectures", None) or ARCHS)


@st.composite
def position_and_shift(draw, max_position: int = MAX_POSITION) -> tuple[int, int]:
    """(p, Δ) with 0 <= p and 0 <= p + Δ <= max_position; Δ either sign."""
    p = draw(st.integers(0, max_position))
    return p, draw(st.integers(-p, max_position - p))


def token_seqs(lo: int, hi: int) -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(st.integers(0, VOCAB - 1), min_size=lo, max_size=hi).map(tuple)


def texts(max_size: int = 8) -> st.SearchStrategy[str]:
    return st.text(alphabet=ALPHABET, max_size=max_size)
