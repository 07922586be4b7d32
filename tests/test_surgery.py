"""Unit tests of fuzzcache.surgery: the seed-004 checks at the seed's fixed parameters, BOS
handling, error messages, and a behaviour of transformers' dynamic RoPE the library guards against."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import find, settings

pytest.importorskip("transformers")

from fuzzcache.properties import PROPERTIES  # noqa: E402
from fuzzcache.properties.surgery_support import SHIFT_REL_TOL, relative_error  # noqa: E402
from fuzzcache.surgery import bpe, cache_ops, rotary  # noqa: E402
from fuzzcache.surgery.models import ARCHS, ROPE_TYPES, SurgeryModel, tiny_model  # noqa: E402
from fuzzcache.targets import resolve_target  # noqa: E402
from strategies.surgery import texts  # noqa: E402

SURGERY = [p for p in PROPERTIES.values() if p.level == "surgery"]


def test_without_transformers_fuzzcache_imports_and_surgery_properties_refuse_clearly():
    """transformers and tokenizers made unimportable: fuzzcache, the zoo and the reference target
    still load, and every surgery property says what to install instead of crashing."""
    code = ("import sys; sys.modules['transformers'] = sys.modules['tokenizers'] = None\n"
            "import fuzzcache.cli, fuzzcache.mutants\n"
            "from fuzzcache.properties import PROPERTIES\n"
            "from fuzzcache.targets import resolve_target\n"
            "t = resolve_target('mutant:surgery_rotates_bos'); t.surgery\n"
            "reasons = {p.unmet(t) for p in PROPERTIES.values() if p.level == 'surgery'}\n"
            "assert reasons == {'the surgery properties need transformers and tokenizers: install fuzzcache[hf]'}, reasons\n"
            "assert all(p.applies_to(t) for p in PROPERTIES.values() if p.level in ('engine', 'op'))\n"
            "try: resolve_target('hf:llama')\n"
            "except ValueError as e: assert \"hf:<arch> targets need transformers: pip install 'fuzzcache[hf]'\" in str(e), e\n"
            "else: raise AssertionError('hf:llama resolved without transformers')\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("prop", SURGERY, ids=lambda p: p.id)
def test_seed_004_fixed_parameters_pass(prop):
    """The seed notebook's eleven checks at its own parameters (the properties' explicit examples)."""
    target = resolve_target("reference")
    assert prop.examples
    for example in prop.examples:
        prop.check(target, example)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("rope", ROPE_TYPES)
def test_rope_info_reads_the_model(arch, rope):
    info = rotary.rope_info(tiny_model(arch, rope))
    assert info.rotary_dim == {"phi": 8, "gpt_neox": 4}.get(arch, 16)
    assert info.cache_consistent == (rope not in rotary.STATEFUL)
    assert (info.attention_scaling != 1.0) == (rope in ("yarn", "longrope"))


def test_round_trip_bounds_per_dtype():
    info = rotary.rope_info(tiny_model())
    for name, dtype in (("fp64", torch.float64), ("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        keys = torch.randn(1, 8, 10, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
        back = rotary.rope_shift(rotary.rope_shift(keys, -15, info, 15), 15, info, 0)
        err = relative_error(back, keys)
        print(f"{name}: round trip by 15 relative error {err:.3g} (bound {SHIFT_REL_TOL[name]:g})")
        assert err <= SHIFT_REL_TOL[name]
        assert (err > 0) == (name != "fp64" or err > 0)  # fp16/bf16 round trips are not exact (seed 2)


def test_shift_refuses_stateful_rope_past_its_limit_and_negative_positions():
    info = rotary.rope_info(tiny_model("llama", "dynamic"))
    keys = torch.zeros(1, 1, 4, 16)
    with pytest.raises(rotary.RopeShiftError, match="cache-inconsistent by design"):
        rotary.rope_shift(keys, 40, info, 0)
    with pytest.raises(rotary.RopeShiftError, match="< 0"):
        rotary.rope_shift(keys, -3, info, 1)


def test_correct_positions_keeps_bos_bit_for_bit_and_rotates_it_without():
    info = rotary.rope_info(tiny_model(dtype="fp16"))
    k, v = torch.randn(1, 8, 10, 16).half(), torch.randn(1, 8, 10, 16).half()
    cache = cache_ops.from_layers([(k, v)])
    kept = cache_ops.layers_of(cache_ops.correct_positions(cache, 10, info, keep_bos=True))[0][0]
    assert kept[:, :, :1].equal(k[:, :, :1]) and not kept[:, :, 1:].equal(k[:, :, 1:])
    moved = cache_ops.layers_of(cache_ops.correct_positions(cache, 10, info, keep_bos=False))[0][0]
    assert not moved[:, :, :1].equal(k[:, :, :1])
    assert cache_ops.layers_of(cache_ops.correct_positions(cache, 0, info))[0][0].equal(k)


def test_document_cache_has_the_bare_length_and_different_prefixes_prime_differently():
    model = tiny_model()
    doc = list(range(10, 22))
    a, n = cache_ops.document_cache(model, [5, 6, 7], doc, bos=1)
    b, m = cache_ops.document_cache(model, [40, 41, 42, 43, 44, 45], doc, bos=1)
    assert n == m == 1 + len(doc)  # seed 8, 9: keep length is BOS + document whatever the prefix
    va, vb = cache_ops.layers_of(a)[-1][1], cache_ops.layers_of(b)[-1][1]
    assert (va - vb).abs().mean() > 1e-3


def test_truncating_a_sliding_window_cache_that_dropped_positions_is_refused():
    from transformers import DynamicCache

    model = tiny_model("mistral")
    out = model(input_ids=torch.arange(3, 20)[None], past_key_values=DynamicCache(config=model.config), use_cache=True)
    with pytest.raises(cache_ops.CacheSurgeryError, match="sliding-window layer"):
        cache_ops.truncate(out.past_key_values, 5, 10)
    _, full = cache_ops.build_cache(model, list(range(3, 20)))  # full layers: every position kept
    assert cache_ops.truncate(full, 5, 10).get_seq_length() == 6


def test_score_nll_needs_a_prompt_and_leaves_the_cache_alone():
    model = tiny_model()
    _, cache = cache_ops.build_cache(model, [1, 5, 6])
    with pytest.raises(cache_ops.CacheSurgeryError, match="non-empty prompt"):
        cache_ops.score_nll(model, cache, [], [7])
    cache_ops.score_nll(model, cache, [8], [7, 9])
    assert cache.get_seq_length() == 3


def test_bpe_boundary_split_is_found_shrunk_and_reported():
    tok = bpe.tokenizer()
    assert tok.get_vocab_size() == 320
    prefix, doc = find(texts().flatmap(lambda p: texts().map(lambda d: (p, d))), lambda pd: bpe.has_boundary_split(tok, *pd),
                       settings=settings(database=None, derandomize=True, max_examples=2000))
    assert len(prefix) == len(doc) == 1, (prefix, doc)  # shrunk to one character each
    with pytest.raises(bpe.BoundarySplit, match="boundary split"):
        bpe.split_text(tok, prefix, doc)
    with pytest.raises(bpe.BoundarySplit):
        cache_ops.document_cache_text(tiny_model(), tok, prefix, doc, bos=0)
    cache, n = cache_ops.document_cache_text(tiny_model(), tok, "Some prefix text", " Document", bos=0)
    assert n == 1 + len(bpe.encode(tok, " Document"))
    split = bpe.split_text(tok, "Some prefix text", " Document")
    assert list(split.prefix + split.doc) == bpe.encode(tok, "Some prefix text Document")


def test_transformers_dynamic_rope_keeps_grown_frequencies_for_a_forward_of_exactly_max_length():
    """transformers 5.x: dynamic RoPE resets its frequencies only for a forward *shorter* than
    max_position_embeddings, so a forward of exactly that length after a longer one is rotated
    with the grown frequencies (corpus/transformers-dynamic-rope-reset.md). RopeInfo treats the
    last position below the limit as inconsistent for that reason."""
    model = tiny_model("llama", "dynamic")
    limit = model.config.max_position_embeddings
    x = torch.randn(1, 1, 1, 16, generator=torch.Generator().manual_seed(0))
    rotary.reset_rotary(model)
    fresh = rotary.model_rotary(model, x, [limit - 1])
    rotary.model_rotary(model, x, [limit + 8])  # a longer forward grows inv_freq
    after = rotary.model_rotary(model, x, [limit - 1])  # seq_len == limit: not reset
    rotary.reset_rotary(model)
    assert not torch.allclose(fresh, after), "transformers now resets at seq_len == max_position_embeddings; RopeInfo's limit can grow by one"
    assert rotary.rope_info(model).consistent_below == limit - 1


def test_surgery_model_scenarios_round_trip_through_json():
    from fuzzcache.scenario import from_jsonable, to_jsonable

    for prop in SURGERY:
        for example in prop.examples:
            assert from_jsonable(prop.scenario_type, to_jsonable(example)) == example
    assert SurgeryModel().short() == "llama/default/fp32"
