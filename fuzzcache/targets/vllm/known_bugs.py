"""vLLM 0.32.0's triaged, unfixed bugs that fuzzing keeps finding (``VLLMTarget.known_bugs``):
each predicate is the trigger its write-up (corpus/<id>.md) names, checked on the finding and
the scenario's config (module-level functions: an isolated target's bugs are pickled)."""

from __future__ import annotations

import re

from fuzzcache.findings import Finding, crash_site
from fuzzcache.known_bugs import KnownBug

SCHEDULER = "vllm/v1/core/sched/scheduler.py"
PAD_ASSERT = "assert num_new_tokens == 1 + self.num_spec_tokens"
# stuck_report's words for the starved request: the head of the waiting queue has one token to
# compute after its prefix-cache hit, and nothing runs
STARVED = re.compile(r"waiting: [^;(]*\([^)]*, 1 to compute\)[^;]*; running: none;")


def spec_pad_clipped_by_threshold(scenario, finding: Finding) -> bool:
    """The scheduler's assertion on a padded spec-decode request (scheduler.py, ``schedule``),
    with speculative decoding on and a prefill threshold (chunk_size) no wider than spec_k."""
    where, raised = (crash_site(finding) if finding.kind == "crash" else None) or ("", "")
    if raised != "AssertionError" or not where.startswith(f'File "{SCHEDULER}", line ') or not where.endswith(", in schedule"):
        return False
    lines = [line.strip() for line in finding.details["traceback"].strip().splitlines()]
    last_frame = max(i for i, line in enumerate(lines) if line.startswith('File "'))
    config = scenario.config
    return lines[last_frame + 1 : last_frame + 2] == [PAD_ASSERT] and config.spec_k > 0 and bool(config.chunk_size) and config.chunk_size <= config.spec_k


def spec_pad_starves_small_budget(scenario, finding: Finding) -> bool:
    """A hang with speculative decoding, a prefix cache and a token budget below 1 + spec_k,
    where the head of vLLM's waiting queue has one token left after its prefix-cache hit."""
    config = scenario.config
    return (finding.kind == "hang" and config.spec_k > 0 and config.prefix_cache and config.max_batch_tokens is not None
            and config.max_batch_tokens < 1 + config.spec_k and STARVED.search(finding.message) is not None)


KNOWN_BUGS = (
    KnownBug(
        id="vllm-spec-pad-clipped-by-threshold",
        summary="Scheduler.schedule: a waiting request padded to 1 + num_speculative_tokens is clipped by "
                "long_prefill_token_threshold <= num_speculative_tokens, and `assert num_new_tokens == 1 + self.num_spec_tokens` fails",
        kinds=("crash",), explains=spec_pad_clipped_by_threshold,
    ),
    KnownBug(
        id="vllm-spec-pad-starves-small-budget",
        summary="Scheduler.schedule: with max_num_batched_tokens < 1 + num_speculative_tokens, a waiting request with one token "
                "left after a prefix-cache hit is never scheduled (the padding breaks out of the waiting loop every step)",
        kinds=("hang",), explains=spec_pad_starves_small_budget,
    ),
)
