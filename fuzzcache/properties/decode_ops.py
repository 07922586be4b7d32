"""Op-level properties of the contiguous cache: incremental decode, ragged batches, KV trim.

kv.recompute  -- seed test 1, any model, prompt and length
batch.ragged  -- seed test 2, with ragged prompts (the seed batches equal lengths only)
kv.trim       -- seed test 7, for every accept count 0..k
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

from fuzzcache.coverage import reached
from fuzzcache.engine.batching import Row
from fuzzcache.engine.kv_cache import cache_len
from fuzzcache.findings import mismatch
from fuzzcache.model import ModelConfig
from fuzzcache.properties.op_support import SEED_MODEL, assert_caches_close, assert_logits_close, model_for, oracle_logits, ops_of, token_lists, tokens_of
from fuzzcache.reductions import field_reductions, rows_reductions
from fuzzcache.properties.registry import Property, register
from fuzzcache.strategies.model import model_configs

VOCAB = SEED_MODEL.vocab_size


@dataclass(frozen=True)
class DecodeScenario:
    model: ModelConfig
    prompt: tuple[int, ...]
    max_new_tokens: int

    def short(self) -> str:
        return f"prompt={len(self.prompt)} new={self.max_new_tokens} model={self.model.positions}/h{self.model.n_head}kv{self.model.n_kv_head}"

    def reductions(self, target):
        return field_reductions(self, {"prompt": 1}, {"max_new_tokens": 1})


def check_recompute(target, s: DecodeScenario) -> None:
    """Greedy decode with the cache; every step's logits equal the full recompute's."""
    model, ops = model_for(target, s.model), ops_of(target)
    logits, cache = ops.prefill(model, list(s.prompt))
    rows, tokens = [logits[-1]], [int(logits[-1].argmax())]
    while len(tokens) < s.max_new_tokens:
        row, cache = ops.decode_one_token(model, tokens[-1], cache)
        rows.append(row)
        tokens.append(int(row.argmax()))
    if cache_len(cache) != len(s.prompt) + len(tokens) - 1:
        raise mismatch(f"cache holds {cache_len(cache)} positions after {len(tokens)} steps, expected {len(s.prompt) + len(tokens) - 1}")
    full = oracle_logits(model, list(s.prompt) + tokens)
    p = len(s.prompt)
    assert_logits_close("cached decode vs full recompute", torch.stack(rows), full[p - 1 : p - 1 + len(tokens)], target)


register(Property(
    id="kv.recompute", level="op", description="KV-cached incremental decode == full recompute (seed 1)",
    scenario_type=DecodeScenario,
    strategy=lambda t: st.builds(DecodeScenario, model_configs(), token_lists(1, 24), st.integers(1, 10)),
    check=check_recompute,
    examples=(DecodeScenario(SEED_MODEL, tuple(tokens_of(VOCAB, 10, 1)), 10),),
))


@dataclass(frozen=True)
class RaggedScenario:
    model: ModelConfig
    prompts: tuple[tuple[int, ...], ...]
    max_new_tokens: int

    def short(self) -> str:
        return f"prompts={[len(p) for p in self.prompts]} new={self.max_new_tokens}"

    def reductions(self, target):
        return rows_reductions(self, "prompts", 1, 1, {"max_new_tokens": 1})


def check_ragged(target, s: RaggedScenario) -> None:
    """Ragged prompts prefilled in one left-padded forward, then decoded together with
    different cache lengths and positions; each row equals its own full recompute."""
    model, ops = model_for(target, s.model), ops_of(target)
    rows = [Row(list(p), None) for p in s.prompts]
    outputs = [[] for _ in s.prompts]
    logit_rows = [[] for _ in s.prompts]
    caches = [None] * len(s.prompts)
    if len({len(p) for p in s.prompts}) > 1:
        reached("ragged batch")
    for _ in range(s.max_new_tokens):
        results = ops.ragged_forward(model, rows)
        for i, (logits, new) in enumerate(results):
            caches[i] = ops.append(caches[i], new)
            logit_rows[i].append(logits[-1])
            outputs[i].append(int(logits[-1].argmax()))
        rows = [Row([out[-1]], cache) for out, cache in zip(outputs, caches)]
    for i, prompt in enumerate(s.prompts):
        p = len(prompt)
        full = oracle_logits(model, list(prompt) + outputs[i])
        assert_logits_close(f"row {i} of the ragged batch vs its full recompute", torch.stack(logit_rows[i]), full[p - 1 : p - 1 + s.max_new_tokens], target, row=i)


register(Property(
    id="batch.ragged", level="op", description="ragged continuous batch == each request alone (seed 2, ragged)",
    scenario_type=RaggedScenario,
    strategy=lambda t: st.builds(RaggedScenario, model_configs(), st.lists(token_lists(1, 16), min_size=1, max_size=4).map(tuple), st.integers(1, 6)),
    check=check_ragged,
    examples=(RaggedScenario(SEED_MODEL, tuple(tuple(tokens_of(VOCAB, 8, 20 + i)) for i in range(3)), 8),),
))


@dataclass(frozen=True)
class TrimScenario:
    model: ModelConfig
    prompt: tuple[int, ...]
    decoded: int  # greedy tokens decoded before the verify pass
    drafts: tuple[int, ...]  # k draft tokens verified in one forward
    accepted: int  # 0..k, how many are kept

    def short(self) -> str:
        return f"prompt={len(self.prompt)} decoded={self.decoded} k={len(self.drafts)} accepted={self.accepted}"


def check_trim(target, s: TrimScenario) -> None:
    """Verify k drafts, trim to the accepted ones, decode one more: the trimmed cache and the
    next logits equal a full recompute over the kept sequence."""
    model, ops = model_for(target, s.model), ops_of(target)
    logits, cache = ops.prefill(model, list(s.prompt))
    seq = list(s.prompt) + [int(logits[-1].argmax())]
    for _ in range(s.decoded):
        row, cache = ops.decode_one_token(model, seq[-1], cache)
        seq.append(int(row.argmax()))
    before = cache_len(cache)  # seq[-1] is the verify token, not yet cached
    verify_logits, cache = ops.prefill(model, [seq[-1], *s.drafts], cache)
    keep = before + 1 + s.accepted
    cache = ops.trim(cache, keep)
    reached(f"kv.trim accepted {s.accepted}/{len(s.drafts)}")
    if cache_len(cache) != keep:
        raise mismatch(f"trimmed cache holds {cache_len(cache)} positions, expected {keep}", accepted=s.accepted)
    kept = seq + list(s.drafts[: s.accepted])
    nxt = int(verify_logits[s.accepted].argmax())
    row, _ = ops.decode_one_token(model, nxt, cache)
    _, full_cache = model(torch.tensor([kept], device=model.device), torch.arange(len(kept), device=model.device)[None])
    assert_caches_close("cache after trim vs recompute", cache, full_cache, target)
    assert_logits_close("next-token logits from the trimmed cache vs full recompute", row, oracle_logits(model, kept + [nxt])[-1], target)


@st.composite
def trim_scenarios(draw):
    drafts = draw(token_lists(1, 6))
    return TrimScenario(draw(model_configs()), draw(token_lists(1, 16)), draw(st.integers(0, 3)), drafts, draw(st.integers(0, len(drafts))))


register(Property(
    id="kv.trim", level="op", description="KV trim after verify == recompute, every accept count (seed 7)",
    scenario_type=TrimScenario, strategy=lambda t: trim_scenarios(), check=check_trim,
    examples=(TrimScenario(SEED_MODEL, tuple(tokens_of(VOCAB, 10, 3)), 2, tuple(tokens_of(VOCAB, 4, 4)), 2),),
))
