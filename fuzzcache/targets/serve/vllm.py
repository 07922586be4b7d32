"""vLLM's OpenAI-compatible server as a dialect of the server targets: the request and response
shapes of ``/v1/completions`` with token ids, the uncached recompute that serves as the oracle,
the Prometheus metrics read for leaks and preemptions, and the command that starts the server.

========================  =========================================================================
contract                  vLLM server (``/v1/completions``, ``stream: true``)
========================  =========================================================================
``prompt``                ``prompt``: the token ids
``max_new_tokens``        ``max_tokens``, ``ignore_eos``, ``temperature`` 0
``stop``                  ``stop_token_ids`` (the stop token is kept in ``token_ids``)
``n`` > 1                 n requests (vLLM refuses greedy ``n`` > 1 with a 400)
tokens                    ``choices[0].token_ids`` of each event (``return_token_ids``)
log-probs                 ``choices[0].logprobs.top_logprobs`` (``logprobs`` = the vocabulary when
                          the server allows as many, keys ``token_id:<id>`` with
                          ``return_tokens_as_token_ids``)
cached prefix tokens      ``usage.prompt_tokens_details.cached_tokens`` of the last event
                          (``--enable-prompt-tokens-details``; ``stream_options.include_usage``)
oracle                    ``prompt_logprobs`` over prompt + tokens, ``max_tokens`` 1: vLLM never
                          reads the prefix cache for a request that asks for prompt log-probs
                          (``Request.skip_reading_prefix_cache``), so it is a full recompute
========================  =========================================================================
"""

from __future__ import annotations

import re
from typing import Sequence

from fuzzcache.contract import EngineConfig, Request

COMPLETIONS = "/v1/completions"
METRIC = re.compile(r"^(vllm:[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+|NaN)$")


def completion_body(model: str, request: Request, logprobs: int, salt: str | None = None) -> dict:
    """A streamed greedy completion of ``request``'s prompt (one continuation)."""
    body = {
        "model": model, "prompt": list(request.prompt), "max_tokens": request.max_new_tokens, "temperature": 0.0,
        "ignore_eos": True, "stop_token_ids": list(request.stop), "return_token_ids": True, "return_tokens_as_token_ids": True,
        "stream": True, "stream_options": {"include_usage": True},
    }
    if logprobs:
        body["logprobs"] = logprobs
    if salt is not None:
        body["cache_salt"] = salt  # no prefix shared with any other request
    return body


def tokens_in(event: dict) -> int:
    """Tokens one streamed event carries."""
    return sum(len(choice.get("token_ids") or []) for choice in event.get("choices", []))


def event_error(event: dict) -> str | None:
    """An error the server reported inside the stream (after the 200 status)."""
    error = event.get("error")
    return None if error is None else str(error.get("message", error) if isinstance(error, dict) else error)


def read_stream(events: Sequence[dict]) -> tuple[list[int], list[dict[int, float]], int | None, str | None]:
    """(tokens, each token's log-prob row {token id: log-prob}, cached prompt tokens, finish reason)."""
    tokens: list[int] = []
    rows: list[dict[int, float]] = []
    cached, finish = None, None
    for event in events:
        for choice in event.get("choices", []):
            tokens += choice.get("token_ids") or []
            for row in (choice.get("logprobs") or {}).get("top_logprobs") or []:
                rows.append({int(k.removeprefix("token_id:")): v for k, v in row.items()})
            finish = choice.get("finish_reason") or finish
        details = (event.get("usage") or {}).get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens", cached)
    return tokens, rows, cached, finish


def recompute_body(model: str, tokens: Sequence[int], logprobs: int) -> dict:
    """The oracle: prompt log-probs of ``tokens``, one token generated (and ignored)."""
    return {"model": model, "prompt": list(tokens), "max_tokens": 1, "temperature": 0.0, "ignore_eos": True,
            "prompt_logprobs": logprobs, "return_tokens_as_token_ids": True}


def recompute_rows(response: dict) -> list[dict[int, float]]:
    """Rows {token id: log-prob} for positions 1..T-1 of a recompute (row i: the distribution
    that predicts token i + 1; position 0 has none)."""
    rows = response["choices"][0]["prompt_logprobs"][1:]
    return [{int(k): v["logprob"] for k, v in row.items()} for row in rows]


def greedy_body(model: str, prompt: Sequence[int], n: int, salt: str) -> dict:
    """A plain greedy completion on a cache of its own (``cache_salt``): stop tokens are drawn from it."""
    return {"model": model, "prompt": list(prompt), "max_tokens": n, "temperature": 0.0, "ignore_eos": True,
            "return_token_ids": True, "cache_salt": salt}


# vLLM's metric -> the name every dialect reports it under
SIGNALS = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
           "vllm:kv_cache_usage_perc": "kv_usage", "vllm:num_preemptions_total": "preemptions"}


def parse_metrics(text: str) -> dict[str, float]:
    """vLLM's Prometheus metrics, summed over labels (one engine): name -> value; the signals a
    server target reads also under their dialect-neutral names (``SIGNALS``)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = METRIC.match(line.strip())
        if m and m.group(3) != "NaN":
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out | {common: out[name] for name, common in SIGNALS.items() if name in out}


def server_config(text: str) -> tuple[int | None, bool, int | None]:
    """(block size, prefix caching, blocks in the pool) from the metrics' ``cache_config_info``."""
    block = metric_label(text, "vllm:cache_config_info", "block_size")
    blocks = metric_label(text, "vllm:cache_config_info", "num_gpu_blocks")
    prefix = metric_label(text, "vllm:cache_config_info", "enable_prefix_caching") == "True"
    return (int(block) if block else None), prefix, (int(blocks) if blocks and blocks != "None" else None)


def metric_label(text: str, name: str, label: str) -> str | None:
    """One label of a metric (e.g. ``cache_config_info``'s ``num_gpu_blocks``)."""
    m = re.search(rf'^{re.escape(name)}\{{[^}}]*\b{label}="([^"]*)"', text, re.M)
    return m.group(1) if m else None


def server_flags(config: EngineConfig, kv_bytes_per_token: int, max_model_len: int) -> list[str]:
    """``vllm serve`` flags for one EngineConfig (see ``fuzzcache.targets.serve`` for the mapping),
    then the config's own ``server_flags``."""
    flags = ["--block-size", str(config.block_size), "--max-num-seqs", str(config.max_num_seqs),
             "--enable-prefix-caching" if config.prefix_cache else "--no-enable-prefix-caching"]
    if config.max_batch_tokens is not None:
        flags += ["--max-num-batched-tokens", str(config.max_batch_tokens)]
    if config.chunk_size is not None:
        flags += ["--long-prefill-token-threshold", str(config.chunk_size)]
    if config.num_blocks is not None:  # vLLM's pool holds one more: its null block
        flags += ["--kv-cache-memory-bytes", str((config.num_blocks + 1) * config.block_size * kv_bytes_per_token)]
    else:  # every running request at full length
        flags += ["--kv-cache-memory-bytes", str((config.max_num_seqs * max_model_len // config.block_size + 2) * config.block_size * kv_bytes_per_token)]
    if config.spec_k:
        flags += ["--speculative-config", '{"method": "ngram", "num_speculative_tokens": %d, "prompt_lookup_min": 1, "prompt_lookup_max": 3}' % config.spec_k]
    return flags + list(config.server_flags)
