"""A planted bug in the llama.cpp target's own serving path, to show ``llamacpp:<arch>`` catches
bugs where a llama.cpp user's server code would have them:

    fuzzcache fuzz --target fuzzcache.targets.llamacpp.planted:trim_one_short
"""

from __future__ import annotations

from fuzzcache.targets.llamacpp.target import LlamaCppTarget


def trim_one_short(**options) -> LlamaCppTarget:
    """llamacpp:llama whose trim after draft verification removes one position too few
    (``seq_rm(seq, accepted_end + 1, -1)``): the first rejected draft's cell stays in the cache."""
    target = LlamaCppTarget("llama", name="llamacpp:llama+trim_one_short", **options)
    target.trim_extra = 1
    return target


def abort_leaks(**options) -> LlamaCppTarget:
    """llamacpp:llama whose server loop takes an aborted request out of its queues but never
    removes its sequence's cells (no ``seq_rm``)."""
    target = LlamaCppTarget("llama", name="llamacpp:llama+abort_leaks", **options)
    target.abort_frees = False
    return target


class ShiftRangeOneShort:
    """A memory session whose seq_add leaves the last position of its range where it was."""

    def __init__(self, session):
        self.session = session

    def __getattr__(self, name):
        return getattr(self.session, name)

    def add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        self.session.add(seq, p0, p1 - 1 if p1 > 0 else p1, delta)  # [p0, p1 - 1): the entry at p1 - 1 stays


class PlantedMemoryTarget(LlamaCppTarget):
    def memory_session(self):
        return ShiftRangeOneShort(super().memory_session())


def shift_range_one_short(**options) -> LlamaCppTarget:
    """llamacpp:llama whose wrapper passes seq_add a range one position short at a finite end."""
    return PlantedMemoryTarget("llama", name="llamacpp:llama+shift_range_one_short", **options)
