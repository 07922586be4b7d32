"""Path coverage: which fast paths a run actually reached, so nothing passes vacuously.

``reached(name)`` records a Hypothesis event (shown by ``--hypothesis-show-statistics``) and
counts it for fuzzcache's own end report.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import event

counts: Counter[str] = Counter()
muted = False  # set while a failing example is re-run, so reruns are not counted


def reached(name: str) -> None:
    if muted:
        return
    counts[name] += 1
    try:
        event(name)
    except Exception:  # outside a Hypothesis test (replay): count only
        pass


def take() -> Counter[str]:
    """Return and reset the counts gathered so far."""
    out = Counter(counts)
    counts.clear()
    return out
