"""vLLM's engine steps as a timeline (``fuzzcache.timeline``), read off its own Request objects
and KV cache manager after each ``LLMEngine.step``: the tokens each continuation computed (a
prefill chunk, a decode, a verify of drafts), its preemptions, how it finished, and the KV blocks
it holds (shared: another request or the prefix cache holds a reference too)."""

from __future__ import annotations

from fuzzcache.timeline import StepEvent

ENDS = {"FINISHED_STOPPED": "stop", "FINISHED_LENGTH_CAPPED": "finished", "FINISHED_ABORTED": "abort"}


class StepRecorder:
    def __init__(self, scheduler, drafts):
        self.scheduler, self.drafts = scheduler, drafts  # drafts: the target's DraftCounter
        self.events: list[StepEvent] = []
        self.seen: dict[int, tuple] = {}  # id(vLLM Request) -> (computed, preemptions, drafts proposed, accepted, finished)

    def after_step(self, step: int, children: dict[int, list]) -> None:
        """Record what ``step`` did to each continuation (``children``: rid -> vLLM's Requests)."""
        for rid, continuations in children.items():
            for fork, r in enumerate(continuations):
                proposed, accepted = self.drafts.of(r.request_id)
                now = (r.num_computed_tokens, r.num_preemptions, proposed, accepted, r.is_finished())
                computed, preemptions, proposed_before, accepted_before, finished = self.seen.get(id(r), (0, 0, 0, 0, False))
                self.seen[id(r)] = now
                if finished:
                    continue
                blocks, shared = self.blocks_of(r)
                if now[1] > preemptions:
                    self.events.append(StepEvent(step, rid, "preempted", fork))
                elif now[0] > computed:
                    drafts = proposed - proposed_before
                    kind = "prefill" if computed < r.num_prompt_tokens else "verify" if drafts else "decode"
                    self.events.append(StepEvent(step, rid, kind, fork, now[0] - computed, drafts, accepted - accepted_before, blocks, shared))
                elif r.status.name.startswith("WAITING") or r.status.name == "PREEMPTED":
                    self.events.append(StepEvent(step, rid, "queued", fork))
                if now[4]:
                    self.events.append(StepEvent(step, rid, ENDS.get(r.status.name, "finished"), fork))

    def blocks_of(self, request) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(KV block ids the request holds in every KV cache group, those with more than one
        reference); () once freed."""
        manager = self.scheduler.kv_cache_manager
        try:
            groups = manager.get_block_ids(request.request_id)  # one list per KV cache group
        except (KeyError, AttributeError, AssertionError):
            return (), ()
        null = manager.block_pool.null_block.block_id  # a sliding group's blocks dropped behind its window
        blocks = tuple(b for group in groups for b in group if b != null)
        pool = manager.block_pool.blocks
        return blocks, tuple(b for b in blocks if pool[b].ref_cnt > 1)
