"""The shared factory's model families: what each engine runs, the oracle's own window semantics,
target patterns over them (``vllm:*``), and lengths drawn around a sliding window."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from hypothesis import Phase, find, given, settings

from fuzzcache.campaign import CampaignResult, PropertyTotals, merge_results
from fuzzcache.cli import main
from fuzzcache.strategies.engine import batch_mixes
from fuzzcache.strategies.lengths import prompt_lengths
from fuzzcache.targets import UnknownTarget, expand_target_pattern
from fuzzcache.targets.tiny_models import ARCHITECTURES, ENGINES, SHAPES, draft_model, families_for, tiny_model

FIND = settings(max_examples=2000, database=None, derandomize=True, phases=[Phase.generate])  # found is enough: no shrinking
WINDOWED = [name for name, family in ARCHITECTURES.items() if family.window]


def test_every_family_says_for_every_engine_whether_it_runs_there():
    for family in ARCHITECTURES.values():
        assert set(family.engines) == set(ENGINES), family.name
        for engine in ENGINES:
            assert family.runs_on(engine) or len(family.engines[engine]) > 20, (family.name, engine)  # a reason, not a blank
    assert {"mistral", "mistral-w32", "gemma3", "llama4"} <= set(families_for("vllm"))
    assert "gemma3" in families_for("llamacpp") and "mistral" not in families_for("llamacpp")  # llama.cpp's llama graph has no window
    assert set(families_for("hf")) == set(ARCHITECTURES) - {"llama4"}  # transformers' continuous batching has no chunked layers


def test_windows_cross_block_sizes_both_ways():
    """A window that is a multiple of vLLM's block of 32 and windows that are not."""
    windows = {ARCHITECTURES[name].window for name in WINDOWED}
    assert any(w % 32 == 0 for w in windows) and any(w % 32 for w in windows)


@pytest.mark.parametrize("name", WINDOWED)
@pytest.mark.parametrize("shape", ["tiny", "wide_heads"])
def test_the_oracle_applies_the_window_itself(name, shape):
    """Two windows past the first token, a sliding-only model's last logits ignore it (two
    layers reach back at most about 2W); a model with a global layer does not; a token inside
    the window (or the last chunk) always counts. The window is the model's own (eager attention), never ours."""
    family = ARCHITECTURES[name]
    model = tiny_model(name, **SHAPES[shape])
    window = getattr(model.config, "sliding_window", None) or model.config.attention_chunk_size  # Llama 4: its chunk
    assert model.config._attn_implementation == "eager" and window == family.window
    tokens = torch.randint(0, model.config.vocab_size, (1, 2 * family.window + 4), generator=torch.Generator().manual_seed(1))

    def reaches_last(position: int) -> bool:
        changed = tokens.clone()
        changed[0, position] = (changed[0, position] + 1) % model.config.vocab_size
        with torch.no_grad():
            last, last_changed = (model(t, use_cache=False).logits[0, -1] for t in (tokens, changed))
        return not torch.allclose(last, last_changed, atol=1e-6)

    assert reaches_last(0) == (family.attention in ("interleaved", "chunked")), name  # through a global layer
    assert reaches_last(tokens.shape[1] - 2), name


def test_a_draft_model_keeps_the_first_layer_of_an_interleaved_family():
    draft = draft_model("gemma3")
    assert draft.config.num_hidden_layers == 1 and draft.config.layer_types == ["sliding_attention"]


def test_target_patterns_expand_over_the_families_an_engine_runs():
    assert expand_target_pattern("vllm:*") == [f"vllm:{name}" for name in families_for("vllm")]
    assert expand_target_pattern("hf:mistral*") == ["hf:mistral", "hf:mistral-w32"]
    assert expand_target_pattern("llama-server:*") == [f"llama-server:{name}" for name in families_for("llamacpp")]
    assert expand_target_pattern("mutant:spec_bonus*") == ["mutant:spec_bonus_from_wrong_row"]
    assert expand_target_pattern("hf:llama") == ["hf:llama"]
    with pytest.raises(UnknownTarget, match="matches none of vllm:llama"):
        expand_target_pattern("vllm:mamba*")
    with pytest.raises(UnknownTarget, match="patterns name the model families"):
        expand_target_pattern("pkg.module:*")


def test_a_merged_campaign_keeps_each_targets_properties_apart():
    a = CampaignResult("vllm:llama", {"engine.trace": PropertyTotals("engine.trace", examples=3)}, 1.0, False)
    b = CampaignResult("vllm:gemma3", {"engine.trace": PropertyTotals("engine.trace", examples=5)}, 2.0, False)
    merged = merge_results("vllm:*", [a, b])
    assert list(merged.totals) == ["vllm:llama engine.trace", "vllm:gemma3 engine.trace"]
    assert [t.examples for t in merged.totals.values()] == [3, 5] and merged.seconds == 3.0
    assert all(t.property == "engine.trace" for t in merged.totals.values())  # lookups by property id still work


def test_an_interrupted_pattern_campaign_starts_no_further_target(tmp_path, monkeypatch):
    import fuzzcache.campaign

    ran = []

    def interrupted_campaign(target, spec, props, budget_s, *rest):
        ran.append(spec)
        return CampaignResult(spec, {p.id: PropertyTotals(p.id, examples=1) for p in props}, 0.1, True)

    monkeypatch.setattr(fuzzcache.campaign, "run_campaign", interrupted_campaign)
    result = CliRunner().invoke(main, ["fuzz", "--target", "mutant:spec_*", "--workers", "1", "--budget", "4s", "--corpus", str(tmp_path / "c"),
                                       "--database", str(tmp_path / "db"), "--report-dir", str(tmp_path / "report")])
    assert len(expand_target_pattern("mutant:spec_*")) > 1
    assert ran == ["mutant:spec_accepts_one_too_many"], (ran, result.output)  # Ctrl-C in the first: the rest never start
    assert (tmp_path / "report" / "report.json").exists()  # what it ran is reported


def test_prompt_lengths_crowd_the_edges_of_a_window_off_the_block_grid():
    edges = {k * 20 + d for k in (1, 2, 3, 4) for d in (-1, 0, 1)}  # window 20, blocks of 32: none at a block edge

    def share_at_edges(window) -> float:
        drawn = []

        @settings(max_examples=600, database=None, derandomize=True, phases=[Phase.generate])
        @given(prompt_lengths(32, 97, window=window))
        def draw(n):
            drawn.append(n)

        draw()
        return sum(n in edges for n in drawn) / len(drawn)

    assert share_at_edges(20) > 1.5 * share_at_edges(None) > 0  # measured: 20% against 11%


def test_a_shared_prefix_can_be_longer_than_the_window_or_end_inside_it():
    def shares(mix, lo, hi):
        return len(mix) > 1 and lo <= len(common_prefix(mix[0].prompt, mix[1].prompt)) <= hi

    find(batch_mixes(64, 256, 32, window=20), lambda mix: shares(mix, 21, 60), settings=FIND)
    find(batch_mixes(64, 256, 32, window=20), lambda mix: shares(mix, 8, 19), settings=FIND)


def common_prefix(a, b) -> tuple:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return tuple(a[:n])


def test_list_shows_each_family_and_why_an_engine_does_not_run_it():
    out = CliRunner().invoke(main, ["list"]).output
    assert "gemma3" in out and "[interleaved attention, window 20]" in out
    assert "'llama' graph, which has no sliding window" in out
