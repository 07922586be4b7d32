"""What an engine did at each step of a trace: the optional ``target.last_timeline``.

A target that can say how it scheduled the latest ``generate`` sets ``last_timeline`` to a list
of StepEvents (the reference engine does, and so does vLLM's stepped loop). The HTML report draws
them as a timeline: requests as rows, engine steps as columns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# queued: arrived, waiting for a slot; prefill: a chunk of the prompt (or of a recompute);
# decode: one token; verify: a token and its drafts; preempted: lost its KV; forked: a
# continuation split off its request; stop / abort / finished: how it left the engine
KINDS = ("queued", "prefill", "decode", "verify", "preempted", "forked", "stop", "abort", "finished")


@dataclass(frozen=True)
class StepEvent:
    step: int
    rid: int
    kind: str  # one of KINDS
    fork: int = 0  # which of the request's n continuations
    tokens: int = 0  # tokens computed this step (a prefill chunk, 1 + drafts)
    drafts: int = 0  # draft tokens verified this step
    accepted: int = 0  # of which accepted
    blocks: tuple[int, ...] = ()  # the KV blocks it holds after the step, where the target reports them
    shared: tuple[int, ...] = ()  # of those, the ones another sequence (a fork, the prefix cache) also holds

    def record(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def timeline_of(target) -> list[dict] | None:
    """The latest ``generate``'s timeline as JSON records, or None when the target keeps none."""
    events = getattr(target, "last_timeline", None)
    if events is None:
        return None
    return [e.record() if isinstance(e, StepEvent) else dict(e) for e in events]
