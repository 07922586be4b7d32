"""The pieces of the llama-server target that need no server: its dialect's reading of a stream
(events recorded from llama-server as the llama-cpp-python 0.3.36 sdist vendors it), the
mapping of stop tokens onto stop strings, its metrics and flags, the drawn configs, and the
corpus codec of ``EngineConfig.server_flags``. The real server's tests are tests/test_llama_server.py."""

from __future__ import annotations

import random

from fuzzcache.contract import EngineConfig, Request
from fuzzcache.jsonable import from_jsonable, to_jsonable
from fuzzcache.scenario import TraceScenario
from fuzzcache.targets.serve import llama_server as dialect
from fuzzcache.targets.serve.llama_target import drawn_config

# Recorded: /completion with prompt [5, 6, 7], n_predict 3, n_probs 2, n_cmpl 2, stream (the
# per-token "bytes" and "token" fields and most timings left out). Edited: the second-to-last
# event lost its probabilities, as a speculative step's token arrives, and its final event a
# cached count, as a repeat's does.
EVENTS = [
    {"index": 1, "tokens": [42], "stop": False, "id_slot": -1, "completion_probabilities": [{"id": 42, "token": "t42", "logprob": -0.2399, "top_logprobs": [{"id": 42, "logprob": -0.2399}, {"id": 43, "logprob": -2.7175}]}]},
    {"index": 0, "tokens": [42], "stop": False, "id_slot": -1, "completion_probabilities": [{"id": 42, "token": "t42", "logprob": -0.2399, "top_logprobs": [{"id": 42, "logprob": -0.2399}, {"id": 43, "logprob": -2.7175}]}]},
    {"index": 1, "tokens": [30], "stop": False, "id_slot": -1, "completion_probabilities": [{"id": 30, "token": "t30", "logprob": -0.3242, "top_logprobs": [{"id": 30, "logprob": -0.3242}, {"id": 25, "logprob": -2.7872}]}]},
    {"index": 0, "tokens": [30], "stop": False, "id_slot": -1, "completion_probabilities": [{"id": 30, "token": "t30", "logprob": -0.3242, "top_logprobs": [{"id": 30, "logprob": -0.3242}, {"id": 25, "logprob": -2.7872}]}]},
    {"index": 1, "tokens": [10], "stop": False, "id_slot": -1, "completion_probabilities": [{"id": 10, "token": "t10", "logprob": -1.0500, "top_logprobs": [{"id": 10, "logprob": -1.0500}, {"id": 35, "logprob": -1.2701}]}]},
    {"index": 1, "tokens": [], "stop": True, "id_slot": 0, "stop_type": "limit", "timings": {"cache_n": 0, "prompt_n": 3}},
    {"index": 0, "tokens": [10], "stop": False, "id_slot": -1},  # as a speculative step's token: no probabilities (server-context.cpp "TODO: set result.probs")
    {"index": 0, "tokens": [], "stop": True, "id_slot": 3, "stop_type": "limit", "timings": {"cache_n": 2, "prompt_n": 1}},
]
METRICS = """# HELP llamacpp:requests_processing Number of requests processing
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
llamacpp:requests_deferred 2
llamacpp:prompt_tokens_cached_total 7
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="0"} 3
"""


def test_an_n_cmpl_stream_reads_as_one_completion_per_index():
    completions = dialect.read_stream(EVENTS)
    assert sorted(completions) == [0, 1]
    tokens, rows, cached, stop = completions[1]
    assert tokens == [42, 30, 10] and rows[0] == {42: -0.2399, 43: -2.7175} and len(rows) == 3 and cached == 0 and stop == "limit"
    tokens, rows, cached, stop = completions[0]
    assert tokens == [42, 30, 10] and len(rows) == 2 and cached == 2  # the row of its last token never came
    assert [dialect.tokens_in(e) for e in EVENTS] == [1, 1, 1, 1, 1, 0, 1, 0]
    assert [dialect.is_final(e) for e in EVENTS].count(True) == 2
    assert dialect.event_error({"error": {"code": 500, "message": "failed to process speculative batch"}}) == "failed to process speculative batch"


def test_a_stop_token_is_a_stop_string_that_no_other_token_contains():
    texts = [dialect.token_text(t, 64) for t in range(3, 64)]
    assert texts[:2] == ["t03", "t04"] and len(set(map(len, texts))) == 1
    for stop in texts[::7]:  # a stop string as long as every token spans at most two: no pair of other tokens holds it
        assert not any(stop in a + b for a in texts for b in texts if stop not in (a, b)), stop
    body = dialect.completion_body(Request(0, (5, 6), 4, stop=(9, 12)), n_probs=64, vocab_size=64, n_cmpl=2)
    assert body["stop"] == ["t09", "t12"] and body["n_cmpl"] == 2 and body["ignore_eos"] and body["cache_prompt"] and body["n_probs"] == 64


def test_metrics_read_as_processing_and_deferred():
    metrics = dialect.parse_metrics(METRICS)
    assert metrics["running"] == 1 and metrics["waiting"] == 2 and metrics["prompt_tokens_cached_total"] == 7
    assert dialect.busy_slots([{"id": 0, "is_processing": False}, {"id": 1, "is_processing": True}]) == [1]


def test_a_config_maps_onto_server_flags_and_keeps_its_own():
    config = EngineConfig(max_num_seqs=3, max_batch_tokens=64, chunk_size=16, spec_k=2, draft="prompt_lookup", server_flags=("--cache-reuse", "4"))
    flags = dialect.server_flags(config, slot_ctx=256)
    assert flags[:4] == ["--parallel", "3", "--ctx-size", "768"] and flags[-2:] == ["--cache-reuse", "4"]
    assert flags[flags.index("--batch-size") + 1] == "64" and flags[flags.index("--ubatch-size") + 1] == "16"
    assert flags[flags.index("--spec-ngram-simple-size-m") + 1] == "2"


def test_drawn_configs_cover_the_space_and_never_split_a_speculative_batch():
    rng = random.Random(0)
    configs = [drawn_config(rng) for _ in range(300)]
    for c in configs:
        assert not (c.spec_k and c.max_batch_tokens is not None)  # llama-server refuses a speculative batch split in sub-batches
        assert c.chunk_size is None or c.chunk_size <= c.max_batch_tokens
    flags = [" ".join(c.server_flags) for c in configs]
    for wanted in ("-ctk f16", "-ctk f32", "-fa on", "-fa off", "--cache-reuse", "--cache-ram 0", "--cache-ram 64", "--kv-unified"):
        assert any(wanted in f for f in flags), wanted
    assert {c.max_num_seqs for c in configs} == set(range(1, 9)) and any(c.spec_k for c in configs)


def test_server_flags_round_trip_through_the_corpus_and_leave_older_files_as_they_were():
    scenario = TraceScenario((Request(0, (1, 2), 3),), EngineConfig(server_flags=("-ctk", "f16")))
    data = to_jsonable(scenario)
    assert data["config"]["server_flags"] == ["-ctk", "f16"] and from_jsonable(TraceScenario, data) == scenario
    plain = to_jsonable(TraceScenario((Request(0, (1, 2), 3),), EngineConfig()))
    assert "server_flags" not in plain["config"]  # an empty one is left out: every earlier corpus file and its hash stay as they were
    assert from_jsonable(TraceScenario, plain).config.server_flags == ()


def test_the_build_pins_the_llamacpp_extras_version():
    import tomllib
    from pathlib import Path

    from fuzzcache.targets.serve.llama_server_build import LLAMA_CPP_PYTHON_VERSION

    extras = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}" in extras["llamacpp"]
