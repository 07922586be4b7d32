"""prefix.hit -- seed test 4 generalised, on any target with a prefix cache: requests sharing
a prefix (whole and partial blocks) run one after another; outputs equal the oracle and every
later request reports the cached prefix tokens it must have reused (asserted, not printed)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from fuzzcache.contract import EngineConfig, Request
from fuzzcache.coverage import reached
from fuzzcache.findings import mismatch
from fuzzcache.properties.engine_level import check_trace
from fuzzcache.properties.op_support import tokens_of
from fuzzcache.properties.registry import Property, register
from fuzzcache.scenario import TraceScenario
from strategies.lengths import block_sizes, prompt_lengths


@dataclass(frozen=True)
class PrefixScenario:
    block_size: int
    shared: tuple[int, ...]
    suffixes: tuple[tuple[int, ...], ...]  # one request per suffix, in order
    max_new_tokens: int

    def trace(self, features: frozenset[str]) -> TraceScenario:
        fields = {"prefix_cache": True}
        if "paged" in features:
            fields["block_size"] = self.block_size
        if "batching" in features:
            fields["max_num_seqs"] = 1  # one at a time: earlier requests commit before later ones look up
        requests = tuple(Request(i, self.shared + s, self.max_new_tokens) for i, s in enumerate(self.suffixes))
        return TraceScenario(requests, EngineConfig(**fields))

    def expected_hit(self, i: int, block_size: int) -> int:
        """Tokens request i must reuse: full shared blocks, never covering its last token."""
        if i == 0:
            return 0
        usable = min(len(self.shared), len(self.shared) + len(self.suffixes[i]) - 1)
        return usable // block_size * block_size

    def short(self) -> str:
        return f"shared={len(self.shared)} suffixes={[len(s) for s in self.suffixes]} block={self.block_size} new={self.max_new_tokens}"


def check_prefix_hit(target, s: PrefixScenario) -> None:
    trace = s.trace(frozenset(target.features))
    completions = check_trace(target, trace)  # outputs equal the oracle
    block = trace.config.block_size
    for i, comp in enumerate(completions):
        want = s.expected_hit(i, block)
        got = (getattr(comp, "stats", None) or {}).get("cached_prefix_tokens")
        if got is None:
            raise mismatch("the target declares prefix_cache but reports no stats['cached_prefix_tokens']")
        if got < want:
            raise mismatch(f"request {i}: cached_prefix_tokens={got}, but {want} tokens of full shared blocks were committed", rid=i, expected=want, got=got)
        if want:
            reached("prefix hit")
        if len(s.shared) + len(s.suffixes[i]) == want + 1 and i:
            reached("prompt covered by cached blocks but its last token")


@st.composite
def prefix_scenarios(draw):
    block = draw(block_sizes())
    shared = draw(st.lists(st.integers(0, 63), min_size=1, max_size=3 * block + 1).map(tuple))
    if draw(st.booleans()):
        shared = (shared * (3 * block + 1))[: draw(prompt_lengths(block, 3 * block + 1))]
    suffixes = draw(st.lists(st.lists(st.integers(0, 63), max_size=6).map(tuple), min_size=2, max_size=3).map(tuple))
    return PrefixScenario(block, tuple(shared), suffixes, draw(st.integers(1, 4)))  # 0 new tokens computes (and commits) nothing


register(Property(
    id="prefix.hit", level="engine", description="shared prefixes hit the prefix cache and still match the oracle (seed 4)",
    scenario_type=PrefixScenario, strategy=lambda t: prefix_scenarios(), check=check_prefix_hit,
    requires=frozenset({"prefix_cache"}),
    examples=(PrefixScenario(4, tuple(tokens_of(64, 12, 5)), tuple(tuple(tokens_of(64, 4, 6 + i)) for i in range(3)), 8),),
))
