"""Reductions the minimizer tries (``fuzzcache.minimize``): small generators of smaller
scenarios. Each scenario type builds its own ``reductions(target)`` from these, next to its
definition (request traces: ``fuzzcache.scenario``)."""

from __future__ import annotations

import dataclasses
from typing import Iterator

from fuzzcache.minimize import Reduced


def fewer_items(items: tuple, min_len: int = 0) -> Iterator[tuple]:
    """``items`` with elements deleted: each half, then one element from the end, the start and
    each position between."""
    n = len(items)
    if n <= min_len:
        return
    half = n // 2
    halves = [items[half:], items[:half]] if min(half, n - half) >= max(1, min_len) else []
    singles = [without(items, i) for i in dict.fromkeys([n - 1, 0, *range(1, n - 1)])]
    yield from dict.fromkeys(halves + singles)


def smaller_ints(value: int, low: int = 0) -> Iterator[int]:
    """Smaller values down to ``low``: the lowest first, then halfway, then one less."""
    for v in dict.fromkeys((low, low + (value - low) // 2, value - 1)):
        if low <= v < value:
            yield v


def smaller_blocks(block_size: int, target) -> Iterator[int]:
    """Smaller block sizes the target runs: its declared ``block_sizes``, else down to its ``min_block_size``."""
    declared = getattr(target, "block_sizes", None)
    if declared:
        yield from sorted(b for b in declared if b < block_size)
    else:
        yield from smaller_ints(block_size, max(1, getattr(target, "min_block_size", 1)))


def smaller_tokens(tokens: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """Token values lowered: all to 0 at once, then each one, the smallest values first."""
    if any(tokens):
        yield (0,) * len(tokens)
    for i, t in enumerate(tokens):
        for v in smaller_ints(t):
            yield tokens[:i] + (v,) + tokens[i + 1 :]


def without(items: tuple, i: int) -> tuple:
    return items[:i] + items[i + 1 :]


def renamed_after_delete(n: int, deleted: int) -> dict[int, int]:
    """Index map of a list of ``n`` after deleting position ``deleted``."""
    return {i: i - (i > deleted) for i in range(n) if i != deleted}


def field_reductions(s, sequences: dict[str, int], counts: dict[str, int] | None = None) -> Iterator:
    """For a scenario dataclass: fewer items in each sequence field (tokens or characters, down to
    its minimum length), each count field lower (down to its minimum), token values lower."""
    for name, min_len in sequences.items():
        for value in fewer_items(getattr(s, name), min_len):
            yield dataclasses.replace(s, **{name: value})
    for name, low in (counts or {}).items():
        for value in smaller_ints(getattr(s, name), low):
            yield dataclasses.replace(s, **{name: value})
    for name in sequences:
        if isinstance(getattr(s, name), tuple):
            for value in smaller_tokens(getattr(s, name)):
                yield dataclasses.replace(s, **{name: value})


def rows_reductions(s, field: str, min_rows: int, min_len: int, counts: dict[str, int] | None = None) -> Iterator:
    """For a scenario with a tuple of token rows (ragged prompts, prefix-sharing prompts): a row
    deleted (ids renamed), then fewer tokens in a row, counts lower, token values lower."""
    rows = getattr(s, field)
    if len(rows) > min_rows:
        for i in range(len(rows) - 1, -1, -1):
            yield Reduced(dataclasses.replace(s, **{field: without(rows, i)}), renamed_after_delete(len(rows), i))
    for i, row in enumerate(rows):
        for fewer in fewer_items(row, min_len):
            yield dataclasses.replace(s, **{field: rows[:i] + (fewer,) + rows[i + 1 :]})
    yield from field_reductions(s, {}, counts)
    for i, row in enumerate(rows):
        for lower in smaller_tokens(row):
            yield dataclasses.replace(s, **{field: rows[:i] + (lower,) + rows[i + 1 :]})
