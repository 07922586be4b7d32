"""Unit tests of fuzzcache.surgery: the seed-004 checks at the seed's fixed parameters, BOS
handling, error messages, and a behaviour of transformers' dynamic RoPE the library guards against."""

from __future__ import annotations

import subprocess
import sys

import dataclasses

import pytest
import torch
import transformers  # noqa: F401  (the test extra installs it; a missing one fails here rather than skipping)
from hypothesis import find, settings

from fuzzcache.properties import PROPERTIES
from fuzzcache.properties.surgery_support import CACHE_REL_TOL, SHIFT_REL_TOL, TORCH_DTYPES, relative_error, seeded
from fuzzcache.runner import run_property
from fuzzcache.surgery import bpe, cache_ops, rotary
from fuzzcache.surgery.models import ARCHS, ROPE_TYPES, SurgeryModel, tiny_model
from fuzzcache.surgery.ops import DEFAULT_SURGERY
from fuzzcache.targets import resolve_target
from fuzzcache.targets.reference import ReferenceTarget
from fuzzcache.strategies.surgery import MAX_POSITION, texts

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
    for name, dtype in TORCH_DTYPES.items():
        keys = torch.randn(1, 8, 10, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
        back = rotary.rope_shift(rotary.rope_shift(keys, -15, info, 15), 15, info, 0)
        err = relative_error(back, keys)
        assert err <= SHIFT_REL_TOL[name]
        if name in ("fp16", "bf16"):
            assert err > 0  # one rounding per shift: low-precision round trips are not exact (seed 2)


def _row_error(got: torch.Tensor, want: torch.Tensor, dims: tuple[int, ...]) -> float:
    """The largest relative_error over the slices that ``dims`` (reduced) leave: each slice normalised by its own max."""
    diff = (got.double() - want.double()).abs().amax(dim=dims)
    return float((diff / want.double().abs().amax(dim=dims).clamp_min(1e-30)).max())


def _top(info: rotary.RopeInfo, rows: int) -> int:
    """The highest first position of ``rows`` keys the sweep uses: MAX_POSITION, or below a stateful limit."""
    return MAX_POSITION if info.consistent_below is None else info.consistent_below - rows


def _shift_vs_model_rotary(model) -> float:
    """Worst error of shift(key rotated at p, Δ) vs the model's rotary at p + Δ over every p, p + Δ in
    0..MAX_POSITION (below a stateful limit): surgery.rope.model's key and normalisation, so every scenario it can draw."""
    info = rotary.rope_info(model)
    top = _top(info, 1)
    groups = {d: range(max(0, -d), top + 1 - max(0, d)) for d in range(-top, top + 1)}  # Δ: every p with p, p + Δ in 0..top
    ps = [p for d, g in groups.items() for p in g]
    x = seeded((1, 2, 1, info.head_dim), model.dtype).expand(-1, -1, len(ps), -1)  # (B, H, T, D): the property's key at each (p, Δ)
    rotary.reset_rotary(model)
    at_p = rotary.model_rotary(model, x, ps)  # (1, 2, T, D), one call: every position <= top
    at_q = rotary.model_rotary(model, x, [p + d for d, g in groups.items() for p in g])
    starts = torch.tensor([0] + [len(g) for g in groups.values()]).cumsum(0).tolist()
    got = torch.cat([rotary.rope_shift(at_p[:, :, i : i + len(g)], d, info, g[0]) for i, (d, g) in zip(starts, groups.items())], dim=2)
    return _row_error(got, at_q, dims=(0, 1, 3))


def _document_layer0(model) -> float:
    """Worst error of keep_document's layer-0 keys and values vs the bare document cache: BOS, prefixes of
    1, 4, 9 tokens, a 6-token document (16 tokens at most: below every stateful limit)."""
    doc, worst = seeded((6,), torch.float64, 1).abs().mul(50).long().add(3).tolist(), 0.0
    _, bare = cache_ops.build_cache(model, [1] + doc)
    for n in (1, 4, 9):
        _, cache = cache_ops.build_cache(model, [1] + list(range(3, 3 + n)) + doc)
        (k, v), (wk, wv) = cache_ops.layers_of(cache_ops.keep_document(model, cache, 1 + n)[0])[0], cache_ops.layers_of(bare)[0]
        worst = max(worst, relative_error(k, wk), relative_error(v, wv))
    return worst


def _round_trip_and_composition(info: rotary.RopeInfo, dtype: torch.dtype) -> tuple[float, float]:
    """Worst round-trip (shift(a) then shift(-a) vs the keys) and composition (shift(a) then shift(b) vs
    shift(a + b)) errors over every a, b whose positions span at most MAX_POSITION (a stateful type: stay below
    its limit): surgery.rope.compose's keys and normalisation, so every scenario it can draw."""
    top = _top(info, 3)
    keys = seeded((1, 2, 3, info.head_dim), dtype)  # (B, H, T, D), the property's keys
    moved = {a: rotary.rope_shift(keys, a, info, max(0, -a)) for a in range(-top, top + 1)}  # shift(a); the result is position-free
    round_trip = max(relative_error(rotary.rope_shift(m, -a, info, max(0, a)), keys) for a, m in moved.items())
    composition = 0.0
    for b in range(-top, top + 1):
        a_s = [a for a in moved if a + b in moved and max(0, a, a + b) - min(0, a, a + b) <= top]  # the span fits
        got = rotary.rope_shift(torch.cat([moved[a] for a in a_s]), b, info, max(0, -b))  # (len(a_s), H, T, D)
        want = torch.cat([moved[a + b] for a in a_s])
        composition = max(composition, _row_error(got, want, dims=(1, 2, 3)))
    return round_trip, composition


def test_bounds_hold_over_every_architecture_rope_type_and_dtype():
    """The measurement behind surgery_support's bounds and the table in docs/surgery.md (``-s`` prints it)."""
    model_err, doc_err, shift, seen = {}, {}, {}, set()
    for arch in ARCHS:
        for rope in ROPE_TYPES:
            for name in ("fp32", "fp16", "bf16"):
                model = tiny_model(arch, rope, name)
                model_err[name] = max(model_err.get(name, 0.0), _shift_vs_model_rotary(model))
                doc_err[name] = max(doc_err.get(name, 0.0), _document_layer0(model))
            info = rotary.rope_info(tiny_model(arch, rope))
            key = (rope, tuple(info.inv_freq.tolist()), info.consistent_below)  # the shift sees only these
            if key in seen:
                continue  # llama, mistral and qwen2 share one
            seen.add(key)
            for name, dtype in TORCH_DTYPES.items():
                shift[name] = tuple(map(max, shift.get(name, (0.0, 0.0)), _round_trip_and_composition(info, dtype)))
    for name in TORCH_DTYPES:
        if name in model_err:
            print(f"{name}: shift vs the model's rotary {model_err[name]:.2g}, layer-0 document {doc_err[name]:.2g} "
                  f"(bound {CACHE_REL_TOL[name]:g})")
        print(f"{name}: round trip {shift[name][0]:.2g} (bound {SHIFT_REL_TOL[name]:g}), composition {shift[name][1]:.2g} "
              f"(bound 2 x {SHIFT_REL_TOL[name]:g})")
    cache = {name: max(model_err[name], doc_err[name]) for name in model_err}
    assert all(cache[name] <= CACHE_REL_TOL[name] for name in cache), cache
    assert all(rt <= SHIFT_REL_TOL[name] and comp <= 2 * SHIFT_REL_TOL[name] for name, (rt, comp) in shift.items()), shift


def test_shift_refuses_stateful_rope_past_its_limit_and_negative_positions():
    info = rotary.rope_info(tiny_model("llama", "dynamic"))
    keys = torch.zeros(1, 1, 4, 16)
    with pytest.raises(rotary.RopeShiftError, match="cache-inconsistent by design"):
        rotary.rope_shift(keys, 40, info, 0)
    with pytest.raises(rotary.RopeShiftError, match="< 0"):
        rotary.rope_shift(keys, -3, info, 1)


def _shift_refusing_past_16(keys, delta, info, first_position=0):
    """Planted: refuses any shift reaching position 16, as if every RoPE type were this zoo's longrope."""
    if keys.shape[-2] and max(first_position, first_position + delta) + keys.shape[-2] - 1 >= 16:
        raise rotary.RopeShiftError("planted: refuses keys reaching position 16 whatever the RoPE type")
    return rotary.rope_shift(keys, delta, info, first_position)


@pytest.mark.parametrize("property_id", ["surgery.rope.model", "surgery.rope.compose", "surgery.rope.bos", "surgery.document"])
def test_a_shift_refused_below_the_limit_is_a_finding(property_id, tmp_path):
    """A refusal is by design only for a stateful RoPE at or past its limit; anywhere else it is a finding."""
    buggy = ReferenceTarget(name="planted:refuses_past_16", surgery=dataclasses.replace(DEFAULT_SURGERY, rope_shift=_shift_refusing_past_16))
    run = run_property(PROPERTIES[property_id], buggy, buggy.name, settings(max_examples=300, deadline=None, database=None, derandomize=True), tmp_path)
    assert run.error is None and len(run.found) == 1, (run.error, run.examples)
    assert "was refused" in run.found[0].message and "planted: refuses" in run.found[0].message, run.found[0].message
    print(f"{property_id}: {run.found[0].message} ({run.found[0].scenario.short()})")


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
