"""KV-cache surgery on text: BPE boundary effects (seed 004, check 10).

surgery.bpe -- with a BPE tokenizer trained in-process on text fuzzcache ships, whenever
               tokenize(prefix + doc) != tokenize(prefix) + tokenize(doc) the text split used to cut
               a cache reports BoundarySplit; otherwise it returns exactly those two tokenizations.
               Hypothesis finds and shrinks such pairs (event "boundary split").
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from fuzzcache.coverage import reached
from fuzzcache.findings import mismatch
from fuzzcache.reductions import field_reductions
from fuzzcache.properties.registry import Property, register
from fuzzcache.properties.surgery_support import surgery_of
from fuzzcache.strategies.surgery import texts


@dataclass(frozen=True)
class BpeScenario:
    prefix: str
    doc: str

    def short(self) -> str:
        return f"prefix={self.prefix!r} doc={self.doc!r}"

    def reductions(self, target):
        return field_reductions(self, {"prefix": 0, "doc": 0})


def check_bpe(target, s: BpeScenario) -> None:
    from fuzzcache.surgery.bpe import BoundarySplit, encode, tokenizer

    ops, tok = surgery_of(target), tokenizer()
    joined, p, d = encode(tok, s.prefix + s.doc), encode(tok, s.prefix), encode(tok, s.doc)
    try:
        split = ops.split_text(tok, s.prefix, s.doc)
    except BoundarySplit:
        if joined == p + d:
            raise mismatch(f"BoundarySplit reported for {s.prefix!r} + {s.doc!r}, which tokenize to {p} + {d} either way") from None
        reached("boundary split reported")
        return
    if joined != p + d:
        raise mismatch(f"tokenize({s.prefix!r} + {s.doc!r}) = {joined} != {p} + {d}, but the split was not reported "
                       f"(returned {list(split.prefix)} | {list(split.doc)})", joined=joined, separate=p + d)
    if (list(split.prefix), list(split.doc)) != (p, d):
        raise mismatch(f"split of {s.prefix!r} + {s.doc!r} returned {list(split.prefix)} | {list(split.doc)}, expected {p} | {d}")
    reached("no boundary split")


register(Property(
    id="surgery.bpe", level="surgery", description="tokenize(prefix + doc) != tokenize(prefix) + tokenize(doc) is reported, never mis-cut (seed 004: 10)",
    scenario_type=BpeScenario, strategy=lambda t: st.builds(BpeScenario, texts(), texts()), check=check_bpe,
    examples=(BpeScenario("Some prefix text ", "Document:\nThe quick brown fox"), BpeScenario("an ", "Document:\nelectric")),
))
