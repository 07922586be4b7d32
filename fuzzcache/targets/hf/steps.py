"""transformers' continuous-batching steps as a timeline (``fuzzcache.timeline``), read off its
RequestStates after each step of ``continuous.stepped_generate``: the KV positions each
continuation computed (a prefill chunk, a decode), its preemptions (offloads and soft resets),
how it ended. transformers' block tables are not read: the events carry no block ids."""

from __future__ import annotations

from typing import Sequence

from fuzzcache.contract import Request
from fuzzcache.timeline import StepEvent


class StepRecorder:
    def __init__(self, requests: Sequence[Request]):
        self.requests = {r.rid: r for r in requests}
        self.events: list[StepEvent] = []
        self.seen: dict = {}  # (rid, k) -> (computed positions, preemptions, ended)

    def after_step(self, step: int, manager, processor, run, unfinished: set) -> None:
        """Record what ``step`` did to each continuation (``run.results``: (rid, k) -> SteppedResult)."""
        from fuzzcache.targets.hf.continuous import engine_id, find_state

        for key, result in run.results.items():
            rid, fork = key
            computed, preemptions, ended = self.seen.get(key, (0, 0, False))
            if ended:
                continue
            prompt = len(self.requests[rid].prompt)
            state = find_state(manager, processor, engine_id(key)) if key in unfinished else None
            if state is None and key in unfinished:
                continue  # not arrived yet (or a fork not created yet)
            if state is not None:
                now = state.position_offset
            else:  # delivered this step (its last token computed now) or aborted (nothing computed)
                now = computed if result.abort_phase else prompt + len(result.tokens) - 1
            self.seen[key] = (now, result.preemptions, key not in unfinished)
            if result.preemptions > preemptions:
                self.events.append(StepEvent(step, rid, "preempted", fork))
            elif now > computed:
                self.events.append(StepEvent(step, rid, "prefill" if computed < prompt else "decode", fork, now - computed))
            elif state is not None and state.status.name == "PENDING":
                self.events.append(StepEvent(step, rid, "queued", fork))
            if key not in unfinished:
                stop = self.requests[rid].stop
                kind = "abort" if result.abort_phase else "stop" if result.tokens and result.tokens[-1] in stop else "finished"
                self.events.append(StepEvent(step, rid, kind, fork))
