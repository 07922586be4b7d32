"""Measure how far a managed server's streamed log-probs are from both oracles, over drawn
server traces (concurrency, shared prefixes, aborts, forks) on each server config:

    python -m fuzzcache.targets.serve.measure [vllm|llama] [TRACES_PER_CONFIG]

prints, per config, the largest |log-prob difference| against the server's own uncached recompute
and against the HF forward over the same weights, and the requests it took. The docs'
tolerances for vllm-server:<arch> and llama-server:<arch> (per KV type) come from this.
"""

from __future__ import annotations

import sys
import time

from hypothesis import HealthCheck, given, settings

from fuzzcache.strategies.server import server_trace_scenarios


def measure(target, traces: int) -> dict:
    worst = {"server": 0.0, "hf": 0.0}
    count = {"requests": 0, "tokens": 0}

    @settings(max_examples=traces, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(server_trace_scenarios(target))
    def one(scenario):
        for request, completion in zip(scenario.requests, target.generate(scenario.requests, scenario.config)):
            for each in [completion, *completion.forks]:
                if not each.tokens or each.logits is None:  # llama-server: a speculative step's tokens come without rows
                    continue
                count["requests"] += 1
                count["tokens"] += len(each.tokens)
                for oracle in worst:
                    target.oracle = oracle
                    rows = target.reference_rows(request.prompt, each.tokens)
                    worst[oracle] = max(worst[oracle], float((each.logits - rows).abs().max()))
                target.oracle = "server"

    one()
    return worst | count


def main() -> None:
    family = sys.argv[1] if len(sys.argv) > 1 else "vllm"
    traces = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    if family == "llama":
        from fuzzcache.targets.serve.llama_target import MEASURED_CONFIGS, ManagedLlamaServer

        target = ManagedLlamaServer("llama", configs=MEASURED_CONFIGS)
    else:
        from fuzzcache.targets.serve.target import ManagedVLLMServer

        target = ManagedVLLMServer("llama")
    try:
        for name, config in target.config_shards.items():
            began = time.monotonic()
            target.use_config(config)
            started = time.monotonic() - began
            result = measure(target, traces)
            print(f"{name}: started in {started:.0f}s; {traces} traces, {result['requests']} requests, {result['tokens']} tokens; "
                  f"max |dlogprob| vs the server's recompute {result['server']:.3g}, vs HF {result['hf']:.3g}", flush=True)
    finally:
        target.stop()


if __name__ == "__main__":
    main()
