"""prefix.hit -- seed test 4 generalised, on any target with a prefix cache: requests whose
prompts share leading blocks (whole and partial) run one after another; outputs equal the
oracle and every request reports at least the cached prefix tokens it must have reused
(asserted, not printed). A target whose windowed cache reuses only whole cached sequences
(llama.cpp's SWA cache) declares ``prefix_reuse = "whole sequence"`` and is held to that rule;
one whose windowed reuse is not measured declares ``"not asserted"``: only its outputs are checked."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from fuzzcache.contract import EngineConfig, Request
from fuzzcache.coverage import reached
from fuzzcache.findings import mismatch
from fuzzcache.properties.engine_level import check_trace
from fuzzcache.properties.op_support import tokens_of
from fuzzcache.reductions import rows_reductions
from fuzzcache.properties.registry import Property, register
from fuzzcache.scenario import TraceScenario
from fuzzcache.strategies.engine import Traits, traits_of
from fuzzcache.strategies.lengths import target_block_sizes


@dataclass(frozen=True)
class PrefixScenario:
    block_size: int
    prompts: tuple[tuple[int, ...], ...]  # run in order, one at a time
    max_new_tokens: int

    def trace(self, features: frozenset[str]) -> TraceScenario:
        fields = {"prefix_cache": True}
        if "paged" in features:
            fields["block_size"] = self.block_size
        if "batching" in features:
            fields["max_num_seqs"] = 1  # one at a time: earlier requests commit before later ones look up
        requests = tuple(Request(i, p, self.max_new_tokens) for i, p in enumerate(self.prompts))
        return TraceScenario(requests, EngineConfig(**fields))

    def expected_whole_sequence_hit(self, i: int, generated: list[list[int]]) -> int:
        """Tokens request i must reuse on a target that reuses only whole cached sequences: at
        least an earlier prompt, when that prompt and all the tokens generated after it
        (``generated``, each earlier request's) lead request i's prompt, never its last token."""
        mine = self.prompts[i]
        sequences = [(earlier, tuple(earlier) + tuple(tokens)) for earlier, tokens in zip(self.prompts[:i], generated)]
        return max((len(earlier) for earlier, seq in sequences if len(seq) <= len(mine) - 1 and mine[: len(seq)] == seq), default=0)

    def expected_hit(self, i: int, block_size: int) -> int:
        """Tokens request i must reuse: the leading full blocks it shares with an earlier prompt
        (committed, since each earlier request computed its whole prompt), never its last token."""
        best = 0
        mine = self.prompts[i]
        for earlier in self.prompts[:i]:
            n = 0
            while (n + 1) * block_size <= min(len(mine) - 1, len(earlier)) and mine[n * block_size : (n + 1) * block_size] == earlier[n * block_size : (n + 1) * block_size]:
                n += 1
            best = max(best, n * block_size)
        return best

    def short(self) -> str:
        return f"prompts={[len(p) for p in self.prompts]} block={self.block_size} new={self.max_new_tokens}"

    def request_ids(self) -> list[int]:
        return list(range(len(self.prompts)))

    def reductions(self, target):
        smallest = min(getattr(target, "block_sizes", None) or (getattr(target, "min_block_size", 1),))
        return rows_reductions(self, "prompts", 1, 1, {"max_new_tokens": 1, "block_size": smallest})


def check_prefix_hit(target, s: PrefixScenario) -> None:
    trace = s.trace(frozenset(target.features))
    completions = check_trace(target, trace)  # outputs equal the oracle
    block = trace.config.block_size
    rule = getattr(target, "prefix_reuse", "blocks")
    if rule == "not asserted":
        return  # the target's windowed reuse is its own (e.g. llama-server's SWA checkpoints): outputs only
    for i, comp in enumerate(completions):
        if rule == "whole sequence":
            want = s.expected_whole_sequence_hit(i, [list(c.tokens) for c in completions[:i]])
            owed = f"an earlier request's whole sequence ({want} prompt tokens and its generated ones) leads its prompt"
        else:
            want = s.expected_hit(i, block)
            owed = f"it shares {want} tokens of committed full blocks"
        got = (getattr(comp, "stats", None) or {}).get("cached_prefix_tokens")
        if got is None:
            raise mismatch("the target declares prefix_cache but reports no stats['cached_prefix_tokens']")
        if got < want:
            raise mismatch(f"request {i}: cached_prefix_tokens={got}, but {owed}", rid=i, expected=want, got=got)
        if want:
            reached("prefix hit")
            if want == len(s.prompts[i]) - 1:
                reached("prompt covered by cached blocks but its last token")


MAX_NEW = 4


@st.composite
def prefix_scenarios(draw, traits: Traits = Traits(), max_seq_len: int | None = None):
    """Prompts from a small alphabet (so they share leading blocks) or with a copied prefix, each
    short enough that prompt + new tokens fit ``max_seq_len``."""
    block = draw(target_block_sizes(traits.block_sizes, traits.min_block_size))
    alphabet = draw(st.one_of(st.integers(1, 2), st.just(64)))
    prompt = st.lists(st.integers(0, alphabet - 1), min_size=1, max_size=3 * block + 1).map(tuple)
    prompts = draw(st.lists(prompt, min_size=2, max_size=3))
    if alphabet > 2 and draw(st.booleans()):  # with a large alphabet, share explicitly
        cut = draw(st.integers(1, len(prompts[0])))
        prompts = [prompts[0]] + [prompts[0][:cut] + p for p in prompts[1:]]
    if max_seq_len is not None:
        prompts = [p[: max_seq_len - MAX_NEW] for p in prompts]
    return PrefixScenario(block, tuple(prompts), draw(st.integers(1, MAX_NEW)))  # 0 new tokens computes (and commits) nothing


SEED_SHARED = tuple(tokens_of(64, 12, 5))

register(Property(
    id="prefix.hit", level="engine", description="shared prefixes hit the prefix cache and still match the oracle (seed 4)",
    scenario_type=PrefixScenario, strategy=lambda t: prefix_scenarios(traits_of(t), t.max_seq_len), check=check_prefix_hit,
    requires=frozenset({"prefix_cache"}),
    examples=(PrefixScenario(4, tuple(SEED_SHARED + tuple(tokens_of(64, 4, 6 + i)) for i in range(3)), 8),),
))
