"""spec.distribution -- seed test 6 generalised to full K-token chains with the bonus token.

Target p and draft q are Markov chains over a small vocabulary (next-token tables given the
last token). One speculative step (``speculative_sample``) emits 1..K+1 tokens; the chain is
then continued from p to exactly K+1 tokens. If the rule is right, these (K+1)-token
sequences are distributed exactly as K+1 autoregressive draws from p, which is computed
exactly and compared with a chi-squared test.

False-alarm rate: the test rejects at p-value < ALPHA = 1e-6 per example. Sampling is
seeded by the scenario, so an example passes or fails the same way every run (never flaky);
over a campaign of M examples the chance of any false alarm is at most M * ALPHA (Bonferroni):
1e-5 for the ci profile's 10 (50 x example_scale 0.2), 4e-4 for nightly's 400.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from fuzzcache.coverage import reached
from fuzzcache.findings import mismatch
from fuzzcache.properties.op_support import ops_of
from fuzzcache.properties.registry import Property, register

ALPHA = 1e-6
SAMPLES = 4000
MIN_EXPECTED = 5.0


@dataclass(frozen=True)
class DistributionScenario:
    target_weights: tuple[tuple[int, ...], ...]  # V x V: unnormalised p(next | last)
    draft_weights: tuple[tuple[int, ...], ...]  # V x V: unnormalised q(next | last)
    k: int
    start: int  # the last context token
    seed: int

    def short(self) -> str:
        return f"vocab={len(self.target_weights)} k={self.k} start={self.start}"


def _table(weights) -> torch.Tensor:
    w = torch.tensor(weights, dtype=torch.float64)
    return w / w.sum(-1, keepdim=True)  # (V, V), rows sum to 1


def chi_squared_pvalue(observed: list[float], expected: list[float]) -> float:
    """Upper tail of chi-squared with len-1 degrees of freedom (Wilson-Hilferty; no scipy)."""
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected))
    df = len(observed) - 1
    if df < 1:
        return 1.0
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def check_distribution(target, s: DistributionScenario) -> None:
    p, q = _table(s.target_weights), _table(s.draft_weights)
    vocab, k = p.shape[0], s.k
    gen = torch.Generator().manual_seed(s.seed)
    sample = ops_of(target).speculative_sample
    drafts = torch.empty(SAMPLES, k, dtype=torch.long)  # (N, k): draft chains from q, all at once
    last = torch.full((SAMPLES,), s.start)
    for j in range(k):
        last = torch.multinomial(q[last], 1, generator=gen)[:, 0]
        drafts[:, j] = last
    context = torch.cat([torch.full((SAMPLES, 1), s.start), drafts], 1)  # (N, k+1)
    target_rows, draft_rows = p[context], q[context[:, :-1]]  # (N, k+1, V), (N, k, V)
    cdf = p.cumsum(-1).tolist()  # to continue chains from p without a torch call per token
    uniforms = torch.rand(SAMPLES, k + 1, generator=gen).tolist()
    counts: Counter[tuple[int, ...]] = Counter()
    accepted_all = 0
    for i in range(SAMPLES):
        out = sample(target_rows[i], draft_rows[i], drafts[i].tolist(), gen)
        accepted_all += len(out) == k + 1
        while len(out) < k + 1:  # continue autoregressively from p
            row = cdf[out[-1]]
            out.append(min(bisect.bisect_right(row, uniforms[i][len(out)]), vocab - 1))
        counts[tuple(out[: k + 1])] += 1
    if accepted_all:
        reached("spec.distribution: all drafts accepted (bonus token)")
    if accepted_all < SAMPLES:
        reached("spec.distribution: residual resampling")
    observed, expected, rest_o, rest_e = [], [], 0.0, 0.0
    for seq in itertools.product(range(vocab), repeat=k + 1):
        prob, last = 1.0, s.start
        for t in seq:
            prob *= float(p[last, t])
            last = t
        e = prob * SAMPLES
        if e >= MIN_EXPECTED:
            observed.append(counts[seq])
            expected.append(e)
        else:
            rest_o += counts[seq]
            rest_e += e
    if rest_e > 0:
        observed.append(rest_o)
        expected.append(rest_e)
    pvalue = chi_squared_pvalue(observed, expected)
    if pvalue < ALPHA:
        worst = max(range(len(observed)), key=lambda i: abs(observed[i] - expected[i]) / math.sqrt(expected[i]))
        raise mismatch(
            f"speculative chains of {k + 1} tokens are not distributed as the target's: chi-squared p={pvalue:.2g} < {ALPHA:g} "
            f"over {SAMPLES} samples (worst cell: observed {observed[worst]}, expected {expected[worst]:.1f})",
            pvalue=pvalue,
        )


@st.composite
def distribution_scenarios(draw):
    vocab = draw(st.integers(2, 4))
    k = draw(st.integers(1, 3 if vocab <= 3 else 2))
    # 4 x 4 tables, cut to vocab x vocab: the same choices whatever vocab is, so it shrinks freely
    table = st.lists(st.lists(st.integers(1, 9), min_size=4, max_size=4), min_size=4, max_size=4)
    p, q = draw(table), draw(table)
    cut = lambda t: tuple(tuple(row[:vocab]) for row in t[:vocab])  # noqa: E731
    return DistributionScenario(cut(p), cut(q), k, draw(st.integers(0, 3)) % vocab, draw(st.integers(0, 2**16)))


SEED_EXAMPLE = DistributionScenario(((1, 6, 3), (5, 1, 4), (2, 2, 6)), ((6, 1, 3), (1, 8, 1), (7, 2, 1)), 1, 0, 6)

register(Property(
    id="spec.distribution", level="op", description="speculative sampling preserves the target distribution over K-token chains (seed 6)",
    scenario_type=DistributionScenario, strategy=lambda t: distribution_scenarios(), check=check_distribution,
    examples=(SEED_EXAMPLE, DistributionScenario(SEED_EXAMPLE.target_weights, SEED_EXAMPLE.draft_weights, 3, 2, 7)),
    example_scale=0.2,  # 4,000 sampled chains per example
))
