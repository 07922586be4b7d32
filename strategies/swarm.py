"""Swarm testing (Groce et al., "Swarm Testing", ISSTA 2012): each example first draws which
features it switches on, then draws every switched-on feature at full strength and leaves the
others out entirely. Some examples are plain traces, others combine two or three rare
features, instead of every feature at a low rate in every trace (which dilutes the search
as features are added). Each flag is one boolean: it shrinks to off.
"""

from __future__ import annotations

from hypothesis import strategies as st

# swarm feature -> the target feature it needs (None: any target that batches)
SWARM_FEATURES: dict[str, str | None] = {
    "several requests": None,
    "arrivals": None,
    "stop": "stop",
    "abort": "abort",
    "fork": "fork",
    "prefix cache": "prefix_cache",
    "chunking": "chunked_prefill",
    "budget": "chunked_prefill",
    "bounded pool": "preemption",
    "drafts": "speculative",
    "fused step": "interleave",
}


def available(features: frozenset[str]) -> tuple[str, ...]:
    """The swarm features a target with ``features`` can switch on."""
    return tuple(name for name, needs in SWARM_FEATURES.items() if needs is None or needs in features)


@st.composite
def swarms(draw, features: frozenset[str], forced: frozenset[str] = frozenset()) -> frozenset[str]:
    """The swarm features one example switches on: each available one with probability 1/2,
    and always the ``forced`` ones (a property's focus)."""
    return frozenset(name for name in available(features) if name in forced or draw(st.booleans()))


def full_strength(on: bool) -> st.SearchStrategy[bool]:
    """Whether one request gets a switched-on per-request feature: three times in four (so a
    feature that is on is in most requests), and never when it is off; shrinks to False."""
    return st.integers(0, 3).map(bool) if on else st.just(False)
