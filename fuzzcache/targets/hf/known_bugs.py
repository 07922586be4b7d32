"""transformers 5.23's triaged, unfixed continuous-batching bugs that fuzzing keeps finding
(``HFTarget.known_bugs``): each predicate is the trigger its write-up (corpus/<id>.md) names,
checked on the finding and the scenario (module-level functions: an isolated target's bugs are
pickled)."""

from __future__ import annotations

import re

from fuzzcache.findings import Finding
from fuzzcache.known_bugs import KnownBug

ZERO_TOKEN_QUERY = "cannot reshape tensor of 0 elements"  # the attention's view of an empty query
MISSED_HIT = re.compile(r"cached_prefix_tokens=0, but it shares \d+ tokens of committed full blocks")  # prefix.hit's words


def fork_of_one_token_prompt(scenario, finding: Finding) -> bool:
    """A failed step on the empty query of a one-token prompt with ``n`` > 1: the scheduler
    prefills a request with children up to its last prompt token (none here)."""
    return ZERO_TOKEN_QUERY in finding.message and any(r.n > 1 and len(r.prompt) == 1 for r in scenario.requests)


def cancel_after_soft_reset(scenario, finding: Finding) -> bool:
    """No progress in a bounded pool (where a full pool soft-resets a request and sets
    ``block_new_requests``) after a client abort (a cancellation never clears the flag)."""
    return (scenario.config.num_blocks is not None and any(r.abort_at is not None for r in scenario.requests)
            and "made no progress" in finding.message)


def finished_before_blocks_registered(scenario, finding: Finding) -> bool:
    """A complete prefix-cache miss where full blocks were shared, with one new token per request:
    each request finishes in its prefill forward, before its blocks are registered for sharing."""
    return scenario.max_new_tokens == 1 and MISSED_HIT.search(finding.message) is not None


KNOWN_BUGS = (
    KnownBug(
        id="hf-fork-one-token-prompt",
        summary="Scheduler._schedule_request prefills a request with children up to len(prompt) - 1 tokens: "
                "none for a one-token prompt, and the empty query fails the whole batch",
        kinds=("engine_error",), explains=fork_of_one_token_prompt,
    ),
    KnownBug(
        id="hf-cancel-after-soft-reset-hang",
        summary="a cancelled request never clears scheduler.block_new_requests, set by a soft reset: "
                "if it was the last active one, nothing is scheduled again",
        kinds=("hang",), explains=cancel_after_soft_reset,
    ),
    KnownBug(
        id="hf-prefix-blocks-unregistered-on-finish",
        summary="ContinuousBatchProcessor.update_batch marks a request FINISHED before mark_complete_blocks, which skips "
                "FINISHED requests: blocks completed by a request's last forward are never shared (performance)",
        properties=("prefix.hit",), kinds=("mismatch",), explains=finished_before_blocks_registered,
    ),
)
