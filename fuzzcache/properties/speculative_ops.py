"""Op-level properties of speculative decoding.

spec.greedy      -- seed test 5 generalised: k drafts verified in one forward, any accept
                    count per step (planted drafts) or the real n-gram / lookup drafts
draft.normalized -- seed test 8 generalised: draft distributions are the Laplace-smoothed
                    n-gram estimates, normalised, for any corpus and context
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from fuzzcache.compare import compare_request, tolerance_for
from fuzzcache.coverage import reached
from fuzzcache.engine.kv_cache import cache_len
from fuzzcache.findings import mismatch
from fuzzcache.model import ModelConfig
from fuzzcache.oracle import greedy_continuation
from fuzzcache.properties.op_support import SEED_MODEL, model_for, oracle_logits, ops_of, tokens_of
from fuzzcache.properties.registry import Property, register
from fuzzcache.strategies.lengths import accept_counts
from fuzzcache.strategies.model import model_configs

VOCAB = SEED_MODEL.vocab_size


@dataclass(frozen=True)
class SpecScenario:
    model: ModelConfig
    prompt: tuple[int, ...]
    max_new_tokens: int
    k: int
    draft: str  # "planted" (drafts built to hit `accepts`), or bigram / trigram / prompt_lookup
    accepts: tuple[int, ...] = ()  # planted: how many drafts are right at each step

    def short(self) -> str:
        return f"prompt={len(self.prompt)} new={self.max_new_tokens} k={self.k} draft={self.draft} accepts={list(self.accepts)}"


def planted_drafts(greedy: list[int], done: int, k: int, right: int, vocab: int) -> list[int]:
    """k drafts whose first ``right`` equal the greedy continuation and the next is wrong."""
    drafts = greedy[done : done + right]
    if len(drafts) < k:
        drafts.append((greedy[done + len(drafts)] + 1) % vocab)
    return (drafts + [0] * k)[:k]


def check_spec_greedy(target, s: SpecScenario) -> None:
    """Speculative greedy decoding emits exactly the autoregressive greedy tokens, accepting
    exactly the right drafts; the cache holds exactly the kept sequence."""
    model, ops = model_for(target, s.model), ops_of(target)
    vocab = model.config.vocab_size
    # the autoregressive greedy continuation, to plant drafts that are right exactly `accepts` times
    greedy = greedy_continuation(lambda seq: oracle_logits(model, seq), s.prompt, s.max_new_tokens)[0] if s.draft == "planted" else []
    cache = ops.prefill(model, list(s.prompt[:-1]))[1] if len(s.prompt) > 1 else None
    out: list[int] = []
    rows: list[torch.Tensor] = []
    step = 0
    while len(out) < s.max_new_tokens:
        seq = list(s.prompt) + out
        k = min(s.k, s.max_new_tokens - len(out) - 1)
        if s.draft == "planted":
            right = min(s.accepts[step % len(s.accepts)] if s.accepts else 0, k)
            drafts = planted_drafts(greedy, len(out), k, right, vocab)
        else:
            right = None
            drafts = ops.make_draft(s.draft, vocab, seq).propose(seq, k) if k else []
        before = cache_len(cache)
        logits, cache = ops.prefill(model, [seq[-1], *drafts], cache)
        emitted, accepted = ops.greedy_verify(logits, drafts)
        cache = ops.trim(cache, before + 1 + accepted)
        reached(f"spec.greedy accepted {accepted}/{len(drafts)}" + (" (bonus token)" if drafts and accepted == len(drafts) else ""))
        if right is not None and accepted != right and compare_request(0, out + emitted, oracle_logits(model, seq + emitted)[len(s.prompt) - 1 :], None, tolerance_for(model.dtype)).near_tie_step is None:
            raise mismatch(f"step {step}: {right} of {len(drafts)} drafts were right, {accepted} accepted", step=step, expected=right, got=accepted)
        out += emitted
        rows += list(logits[: len(emitted)])
        step += 1
    if len(out) != s.max_new_tokens:
        raise mismatch(f"{len(out)} tokens emitted for max_new_tokens={s.max_new_tokens}")
    p = len(s.prompt)
    full = oracle_logits(model, list(s.prompt) + out)[p - 1 : p - 1 + len(out)]
    result = compare_request(0, out, full, torch.stack(rows), tolerance_for(model.dtype))
    if result.divergence:
        d = result.divergence
        raise mismatch(f"token {d.step}: speculative gave {d.got}, greedy gives {d.expected} (margin {d.margin:.3g}, {d.what})", step=d.step, expected=d.expected, got=d.got, margin=d.margin)
    if cache_len(cache) != p + len(out) - 1:
        raise mismatch(f"cache holds {cache_len(cache)} positions, expected {p + len(out) - 1}")


@st.composite
def spec_scenarios(draw):
    model = draw(model_configs())
    prompt = draw(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=16).map(tuple))
    new, k = draw(st.integers(1, 10)), draw(st.integers(1, 4))
    draft = draw(st.sampled_from(["planted", "bigram", "trigram", "prompt_lookup"]))
    accepts = tuple(draw(st.lists(accept_counts(k), min_size=1, max_size=4)))  # always drawn: the shrinker can switch drafts
    return SpecScenario(model, prompt, new, k, draft, accepts if draft == "planted" else ())


register(Property(
    id="spec.greedy", level="op", description="speculative greedy == autoregressive greedy, every accept count (seed 5)",
    scenario_type=SpecScenario, strategy=lambda t: spec_scenarios(), check=check_spec_greedy,
    examples=tuple(SpecScenario(SEED_MODEL, tuple(tokens_of(VOCAB, 8, 30 + i)), 8, 4, d) for d in ("bigram", "trigram") for i in range(3))
    + (SpecScenario(SEED_MODEL, tuple(tokens_of(VOCAB, 8, 33)), 10, 3, "planted", (3, 0, 1, 2)),),
))


@dataclass(frozen=True)
class DraftScenario:
    draft: str  # "bigram" | "trigram"
    vocab_size: int
    corpus: tuple[int, ...]
    context: tuple[int, ...]

    def short(self) -> str:
        return f"{self.draft} vocab={self.vocab_size} corpus={list(self.corpus)} context={list(self.context)}"


def check_draft(target, s: DraftScenario) -> None:
    """get_probs is the add-one n-gram estimate: (count + 1) / (total + V), summing to 1."""
    n = 2 if s.draft == "bigram" else 3
    probs = ops_of(target).make_draft(s.draft, s.vocab_size, list(s.corpus)).get_probs(*s.context)
    ctx = tuple(s.context[-(n - 1) :])
    follows = Counter(s.corpus[i + n - 1] for i in range(len(s.corpus) - n + 1) if tuple(s.corpus[i : i + n - 1]) == ctx)
    total = sum(follows.values())
    want = torch.tensor([(follows[t] + 1) / (total + s.vocab_size) for t in range(s.vocab_size)])
    if total:
        reached("draft: context seen in corpus")
    if probs.shape != (s.vocab_size,):
        raise mismatch(f"get_probs shape {tuple(probs.shape)}, expected ({s.vocab_size},)")
    if abs(float(probs.sum()) - 1) > 1e-5 or bool((probs < 0).any()):
        raise mismatch(f"draft probabilities sum to {float(probs.sum()):.6f} (min {float(probs.min()):.3g})")
    worst = float((probs.double() - want.double()).abs().max())
    if worst > 1e-6:
        t = int((probs.double() - want.double()).abs().argmax())
        raise mismatch(f"P({t} | {list(ctx)}) = {float(probs[t]):.6f}, add-one estimate {float(want[t]):.6f}", token=t, expected=float(want[t]), got=float(probs[t]))


@st.composite
def draft_scenarios(draw):
    vocab = draw(st.integers(2, 20))
    draft = draw(st.sampled_from(["bigram", "trigram"]))
    n = 2 if draft == "bigram" else 3
    tok = st.integers(0, vocab - 1)
    corpus = draw(st.lists(tok, max_size=30).map(tuple))
    context = draw(st.one_of(st.lists(tok, min_size=n - 1, max_size=n - 1).map(tuple), st.just(corpus[-(n - 1) :]) if len(corpus) >= n - 1 else st.nothing()))
    return DraftScenario(draft, vocab, corpus, context)


register(Property(
    id="draft.normalized", level="op", description="draft distributions are normalised add-one n-gram estimates (seed 8)",
    scenario_type=DraftScenario, strategy=lambda t: draft_scenarios(), check=check_draft,
    examples=(DraftScenario("trigram", 3, (0, 1, 2) * 3, (0, 1)), DraftScenario("trigram", 20, (0, 1, 2) * 3, (0, 1)),
              DraftScenario("bigram", 20, (0, 1, 2) * 3, (5,))),
))
