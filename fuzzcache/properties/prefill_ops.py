"""Op-level properties of prefill.

prefill.chunked -- seed test 9 generalised: any prompt and chunk size (short last chunk)
step.fused      -- seed test 10 generalised: several decode rows and prefill chunks in one forward
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
from fuzzcache.properties.op_support import SEED_MODEL, assert_caches_close, assert_logits_close, model_for, ops_of, token_lists, tokens_of
from fuzzcache.reductions import field_reductions
from fuzzcache.properties.registry import Property, register
from fuzzcache.strategies.model import model_configs

VOCAB = SEED_MODEL.vocab_size


@dataclass(frozen=True)
class ChunkedScenario:
    model: ModelConfig
    prompt: tuple[int, ...]
    chunk_size: int

    def short(self) -> str:
        return f"prompt={len(self.prompt)} chunk={self.chunk_size}"

    def reductions(self, target):
        return field_reductions(self, {"prompt": 1}, {"chunk_size": 1})


def check_chunked(target, s: ChunkedScenario) -> None:
    model, ops = model_for(target, s.model), ops_of(target)
    whole_logits, whole_cache = ops.prefill(model, list(s.prompt))
    chunk_logits, chunk_cache = ops.chunked_prefill(model, list(s.prompt), s.chunk_size)
    if len(s.prompt) % s.chunk_size and len(s.prompt) > s.chunk_size:
        reached("short last chunk")
    if cache_len(chunk_cache) != len(s.prompt):
        raise mismatch(f"chunked cache holds {cache_len(chunk_cache)} positions for a prompt of {len(s.prompt)}")
    assert_logits_close("chunked vs whole prefill logits", chunk_logits, whole_logits, target)
    assert_caches_close("chunked vs whole cache", chunk_cache, whole_cache, target)


register(Property(
    id="prefill.chunked", level="op", description="chunked prefill == whole prefill, any chunk size (seed 9)",
    scenario_type=ChunkedScenario,
    strategy=lambda t: st.builds(ChunkedScenario, model_configs(), token_lists(1, 24), st.integers(1, 9)),
    check=check_chunked,
    examples=(ChunkedScenario(SEED_MODEL, tuple(tokens_of(VOCAB, 14, 9)), 4),),
))


@dataclass(frozen=True)
class FusedScenario:
    model: ModelConfig
    decode_prompts: tuple[tuple[int, ...], ...]  # each fully cached; its row decodes one token
    prefill_prompts: tuple[tuple[int, ...], ...]  # each has `done` tokens cached; its row is the next chunk
    done: tuple[int, ...]  # per prefill row, tokens already cached
    chunk_size: int

    def short(self) -> str:
        return f"decode={[len(p) for p in self.decode_prompts]} prefill={[len(p) for p in self.prefill_prompts]} done={list(self.done)} chunk={self.chunk_size}"


def check_fused(target, s: FusedScenario) -> None:
    """One fused forward of decode rows and prefill chunks == each row on its own."""
    model, ops = model_for(target, s.model), ops_of(target)
    rows, is_decode = [], []
    for prompt in s.decode_prompts:
        logits, cache = ops.prefill(model, list(prompt))
        rows.append(Row([int(logits[-1].argmax())], cache))
        is_decode.append(True)
    for prompt, done in zip(s.prefill_prompts, s.done):
        cache = ops.prefill(model, list(prompt[:done]))[1] if done else None
        rows.append(Row(list(prompt[done : done + s.chunk_size]), cache))
        is_decode.append(False)
    fused, was_fused = ops.run_step(model, rows, is_decode, True, ops.ragged_forward)
    if was_fused:
        reached("fused step")
    for i, (row, (logits, new)) in enumerate(zip(rows, fused)):
        alone_logits, alone_cache = ops.prefill(model, row.tokens, row.cache)
        kind = "decode" if is_decode[i] else "prefill"
        assert_logits_close(f"{kind} row {i}: fused vs alone", logits, alone_logits, target, row=i)
        t = len(row.tokens)
        alone_new = [(k[:, :, -t:], v[:, :, -t:]) for k, v in alone_cache]  # (1, H_kv, t, D)
        assert_caches_close(f"{kind} row {i} new entries: fused vs alone", new, alone_new, target, row=i)


@st.composite
def prefill_rows(draw):
    """(prompt, tokens already cached) of one prefill row, drawn as a unit so it shrinks away whole."""
    prompt = draw(token_lists(1, 16))
    return prompt, draw(st.integers(0, len(prompt) - 1))


@st.composite
def fused_scenarios(draw):
    decode = draw(st.lists(token_lists(1, 12), min_size=1, max_size=3).map(tuple))
    rows = draw(st.lists(prefill_rows(), min_size=1, max_size=3))
    return FusedScenario(draw(model_configs()), decode, tuple(p for p, _ in rows), tuple(d for _, d in rows), draw(st.integers(1, 8)))


register(Property(
    id="step.fused", level="op", description="fused decode + prefill forward == each row alone (seed 10)",
    scenario_type=FusedScenario, strategy=lambda t: fused_scenarios(), check=check_fused,
    examples=(FusedScenario(SEED_MODEL, (tuple(tokens_of(VOCAB, 8, 10)),), (tuple(tokens_of(VOCAB, 8, 11)),), (0,), 4),),
))
