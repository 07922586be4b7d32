"""The replaceable surgery operations, in one place (like ``fuzzcache.engine.ops.EngineOps``).

The surgery properties call the library only through a target's ``surgery`` (a ``SurgeryOps``),
so a planted bug is one ``dataclasses.replace(DEFAULT_SURGERY, ...)`` away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fuzzcache.surgery import bpe, cache_ops, rotary


@dataclass(frozen=True)
class SurgeryOps:
    rope_info: Callable = rotary.rope_info
    rope_shift: Callable = rotary.rope_shift
    correct_positions: Callable = cache_ops.correct_positions
    truncate: Callable = cache_ops.truncate
    keep_document: Callable = cache_ops.keep_document
    build_cache: Callable = cache_ops.build_cache
    suffix_cache: Callable = cache_ops.suffix_cache
    score_nll: Callable = cache_ops.score_nll
    split_text: Callable = bpe.split_text


DEFAULT_SURGERY = SurgeryOps()
