"""Metamorphic properties between a multi-path target's own paths (HF transformers: dynamic vs
static cache, batched vs single, continuous batching vs ``generate``), for targets with
``generate_via(path, requests, config)``. Each shows a bug in one path without the oracle,
which only judges the first difference (near-tie or not)."""

from __future__ import annotations

from fuzzcache.properties.engine_level import assert_same_outputs, run_generate
from fuzzcache.properties.registry import Property, register
from fuzzcache.scenario import TraceScenario
from fuzzcache.strategies.engine import target_trace_scenarios


def check_paths(path_a: str, path_b: str):
    def check(target, scenario: TraceScenario) -> None:
        a, b = run_generate(target, scenario, via=path_a), run_generate(target, scenario, via=path_b)
        assert_same_outputs(target, scenario.requests, a, b, path_a, path_b, f"paths {path_a} vs {path_b}, config {scenario.config}")

    return check


def _paths(pid: str, description: str, path_a: str, path_b: str, features: set[str], focus: str | None = None) -> None:
    register(Property(
        id=pid, level="paths", description=description, scenario_type=TraceScenario,
        strategy=lambda t: target_trace_scenarios(t, focus, frozenset(t.features) & features),
        check=check_paths(path_a, path_b),
    ))


_paths("paths.static", "StaticCache generate == DynamicCache generate, one request at a time", "single", "static", {"chunked_prefill"})
_paths("paths.batched", "left-padded batched generate == one request at a time", "single", "batched", {"batching", "chunked_prefill"})
_paths("paths.continuous", "continuous batching (paged, block sharing, small pools) == generate one at a time", "single", "continuous",
       {"batching", "paged", "prefix_cache", "preemption", "chunked_prefill"})
