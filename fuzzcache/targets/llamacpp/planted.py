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
