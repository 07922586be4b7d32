"""Scalar strategies: prompt lengths biased to block boundaries, block and chunk sizes, counts."""

from __future__ import annotations

from hypothesis import strategies as st


def block_sizes(max_size: int = 16, min_size: int = 1) -> st.SearchStrategy[int]:
    """Block sizes 1..16 (the default), non-powers of two included; one integer choice, so a
    failure found at any size shrinks toward the smallest (Hypothesis draws the bounds often).
    ``min_size`` is the target's smallest block (transformers' pages are >= 4 tokens)."""
    return st.integers(min_size, max_size)


def target_block_sizes(declared: tuple[int, ...] | None = None, min_size: int = 1) -> st.SearchStrategy[int]:
    """The block sizes a target runs: its ``declared`` ones (smallest first, so failures shrink
    toward it), else block_sizes from ``min_size``."""
    return st.sampled_from(sorted(declared)) if declared else block_sizes(min_size=min_size)


def prompt_lengths(block_size: int, max_len: int, window: int | None = None) -> st.SearchStrategy[int]:
    """Lengths >= 1, half the time at k*B-1, k*B or k*B+1 for block size B (where bugs live);
    with a sliding ``window`` W, a third of the time at k*W-1, k*W or k*W+1 as well (where a
    sliding group drops blocks and a prefix hit starts or ends inside the window)."""
    boundary = edges(block_size, max_len)
    if window:
        boundary = st.one_of(boundary, edges(window, max_len))
    return st.one_of(st.integers(1, max_len), boundary).map(lambda n: min(n, max_len))


def edges(step: int, max_len: int) -> st.SearchStrategy[int]:
    """k*step-1, k*step or k*step+1 for k >= 1 (at least 1)."""
    return st.builds(lambda k, d: max(1, k * step + d), st.integers(1, max(1, max_len // step)), st.sampled_from([0, -1, 1]))


def chunk_sizes(max_size: int = 8) -> st.SearchStrategy[int | None]:
    """None (whole prompt) or any chunk size >= 1, most of which do not divide the prompt."""
    return st.one_of(st.none(), st.integers(1, max_size))


def max_new_tokens(max_new: int = 8) -> st.SearchStrategy[int]:
    """1..max_new, and about one time in eight 0 (a request that must return no token).
    Shrinks toward 1, the smallest request that computes anything."""
    return st.tuples(st.integers(0, 7), st.integers(1, max_new)).map(lambda t: 0 if t[0] == 7 else t[1])


def accept_counts(k: int) -> st.SearchStrategy[int]:
    """0..k drafts accepted; k is all accepted (the bonus token)."""
    return st.integers(0, k)


def power_of_two_lengths(lo: int, hi: int) -> st.SearchStrategy[int]:
    """Lengths lo..hi, half the time at 2^k - 1, 2^k or 2^k + 1 (where caches, windows and
    buffers are sized: a sliding window of 16 nobody asked for shows past 16). Shrinks toward lo."""
    near = sorted({n for k in range(1, max(2, hi).bit_length() + 1) for n in (2**k - 1, 2**k, 2**k + 1) if lo <= n <= hi})
    return st.one_of(st.integers(lo, hi), *([st.sampled_from(near)] if near else []))
