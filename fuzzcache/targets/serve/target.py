"""A running server as a target: ``vllm-server:<arch>`` (managed: fuzzcache writes the tiny
``arch`` model, starts vLLM's OpenAI-compatible server on it and stops it) and
``vllm-server:http://HOST:PORT`` (attached: a server someone else started, any model, any
hardware). The contract is driven over HTTP (``fuzzcache.targets.serve.driver``):

========================  =========================================================================
contract                  server target
========================  =========================================================================
``arrival``               wall clock: the request is sent ``arrival`` x TICK_S after the trace starts
``abort_at``              the client closes the stream after ``abort_at - arrival`` tokens arrived
                          (0: before its first token); vLLM aborts the request on the disconnect
``n`` > 1                 n streamed requests of the same prompt, sent together (vLLM refuses
                          greedy ``n`` > 1)
EngineConfig              the server's own flags (``fixed_config``): a managed server is started
                          with a config's flags (``vllm.server_flags``) and restarted for another
                          config; a campaign walks ``config_shards``; an attached server runs
                          the config it was started with (read from its metrics)
oracle                    the server's own uncached recompute (``prompt_logprobs``); managed, with
                          ``+hf-oracle``: one HF forward over the same weights
``last_pool``             KV blocks in use once every request ended, from ``/metrics``
                          (``kv_cache_usage_perc`` x blocks): a leak when they do not return
========================  =========================================================================

Each trace starts on an empty prefix cache: a managed server's is reset (``/reset_prefix_cache``,
vLLM's dev-mode route); an attached server's requests carry a salt of their own per trace
(``cache_salt``), so neither another client's requests nor an earlier trace decide a hit.

A trace mixes concurrency and wall-clock timing, so it is not exactly repeatable
(``timing_dependent``): the runner re-runs a failing trace ``reruns`` times and records how often
it reproduced.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import random
import sys
import tempfile
import time
import uuid
from typing import Sequence
from urllib.parse import parse_qs, urlsplit

import httpx
import torch

from fuzzcache.compare import TOLERANCES, Tolerance
from fuzzcache.contract import Completion, EngineConfig, PoolAccount, Request, validate_requests, with_forks
from fuzzcache.coverage import reached
from fuzzcache.findings import Finding
from fuzzcache.guard import time_limit_paused
from fuzzcache.targets.serve import vllm as vllm_dialect
from fuzzcache.targets.serve.config_stats import ConfigStats
from fuzzcache.targets.serve.driver import Call, Deadline, run_trace
from fuzzcache.targets.serve.managed import ManagedServer, free_port

TICK_S = 0.02  # wall-clock seconds per contract step of arrival
DEADLINE_S = 45.0  # a trace's requests all end within this (the guard's hang limit is 60 s)
FIRST_REQUEST_S = 180.0  # attaching: the probe request, the first one a server started by hand may see
IDLE_WAIT_S = 5.0  # after a trace: how long the server may take to let go of its requests and free their blocks
MAX_MODEL_LEN = 256
FULL_LOGPROBS_MAX = 4096  # an attached server's log-probs are compared in full up to this vocabulary (and its --max-logprobs)
# Measured (docs/targets/vllm-server.md): the managed CPU server's streamed log-probs equal its
# own recompute's exactly (0.0) and the HF forward's within 1.2e-4, as for vllm:<arch>.
MANAGED_TOLERANCE = Tolerance(tie=1e-3, logits=1e-3)
# An attached server's dtype and kernels are unknown: the widest dtype tolerance fuzzcache uses (bf16's).
ATTACHED_TOLERANCE = TOLERANCES[torch.bfloat16]
# The server configs a managed campaign walks, one shard of the budget each.
SERVER_CONFIGS = {
    "prefix": EngineConfig(block_size=32, prefix_cache=True, max_num_seqs=8),
    "tight-pool": EngineConfig(block_size=32, prefix_cache=True, max_num_seqs=8, num_blocks=8, max_batch_tokens=64, chunk_size=32),
    "spec": EngineConfig(block_size=64, prefix_cache=True, max_num_seqs=4, spec_k=3, draft="prompt_lookup"),
}
SHARD_MIN_S = 180.0  # a longer campaign adds drawn configs, each served for at least this long (a start-up is ~40 s)


def drawn_config(rng: random.Random) -> EngineConfig:
    """A server config drawn from the space ``vllm serve`` offers here: block size 32 or 64,
    prefix caching on or off, 1-8 running requests, a token budget and a long-prefill threshold
    or none, a pool from the smallest vLLM starts with (one full-length request) up, n-gram
    speculation with 1-4 drafts. Combinations that hit vLLM's triaged scheduler bugs (a budget
    below 1 + k drafts: corpus/vllm-spec-pad-starves-small-budget.md; a threshold at most k:
    corpus/vllm-spec-pad-clipped-by-threshold.md) are not drawn: they would end the server."""
    block = rng.choice((32, 64))
    seqs = rng.randint(1, 8)
    spec_k = rng.choice((0, 0, 1, 2, 3, 4))
    budget = rng.choice((None, rng.randint(max(seqs, 1 + spec_k, 16), 256)))
    threshold = rng.choice((None, rng.randint(spec_k + 1, 64)))
    least = -(-MAX_MODEL_LEN // block)  # vLLM refuses to start with less than one request at full length
    pool = rng.choice((None, least + rng.randint(0, 8)))
    return EngineConfig(block_size=block, prefix_cache=rng.random() < 0.75, max_num_seqs=seqs, max_batch_tokens=budget, chunk_size=threshold,
                        num_blocks=pool, spec_k=spec_k, draft="prompt_lookup" if spec_k else EngineConfig().draft)


ENV = {"OMP_NUM_THREADS": "1", "TORCHDYNAMO_DISABLE": "1", "OMP_WAIT_POLICY": "PASSIVE", "NUMBA_NUM_THREADS": "1",
       "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_SERVER_DEV_MODE": "1",  # for /reset_prefix_cache
       "VLLM_CPU_KVCACHE_SPACE": None}  # unset: it would silently override --kv-cache-memory-bytes, which sizes the pool


class ServerTarget:
    """A server through the contract, in its dialect (vLLM's by default; see the module docstring)."""

    features = frozenset({"batching", "stop", "abort", "fork"})
    drafts = ("prompt_lookup",)
    timing_dependent = True
    reruns = 3

    def __init__(self, name: str, url: str, model: str, vocab_size: int, max_seq_len: int, config: EngineConfig,
                 tolerance: Tolerance, full_logprobs: bool, dialect=vllm_dialect):
        self.name, self.url, self.model = name, url, model
        self.dialect = dialect  # the server's request and response shapes (a module: fuzzcache.targets.serve.vllm)
        self.vocab_size, self.max_seq_len = vocab_size, max_seq_len
        self.fixed_config = config
        self.tolerance = tolerance
        self.full_logprobs = full_logprobs  # the server returns every token's log-prob (the vocabulary fits --max-logprobs)
        self.last_stats: dict[str, int] = {}
        self.last_pool: PoolAccount | None = None
        self.num_blocks: int | None = None
        self.requests_sent = 0
        self.trace_seconds = 0.0

    # -- the oracle ---------------------------------------------------------------------------

    def reference_logits(self, tokens: Sequence[int]) -> torch.Tensor:
        """[len(tokens), vocab] log-probs of the server's uncached recompute; row 0 (no
        prediction) is uniform. Entries the server did not return are -inf."""
        uniform = {v: -math.log(self.vocab_size) for v in range(self.vocab_size)}
        return self._dense([uniform, *self._recompute(tokens)])

    def reference_rows(self, prompt: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        """[len(tokens), vocab]: the oracle's rows that chose each generated token (one recompute)."""
        return self._dense(self._recompute(list(prompt) + list(tokens))[len(prompt) - 1 : len(prompt) - 1 + len(tokens)])

    def _dense(self, rows: list[dict[int, float]]) -> torch.Tensor:
        """[len(rows), vocab] from rows {token id: log-prob}; what a row leaves out is -inf."""
        out = torch.full((len(rows), self.vocab_size), -math.inf)
        for i, row in enumerate(rows):
            out[i, list(row)] = torch.tensor(list(row.values()))
        return out

    def _recompute(self, tokens: Sequence[int]) -> list[dict[int, float]]:
        logprobs = -1 if self.full_logprobs else 1  # all, or the top token (the actual token always comes with it)
        response = httpx.post(self.url + self.dialect.COMPLETIONS, json=self.dialect.recompute_body(self.model, tokens, logprobs), timeout=DEADLINE_S)
        if response.status_code != 200:
            raise RuntimeError(f"the server's recompute failed: HTTP {response.status_code}: {response.text[:500]}")
        return self.dialect.recompute_rows(response.json())

    def greedy_continuation(self, prompt: Sequence[int], n: int) -> list[int]:
        """The server's own greedy tokens on a cache of their own (stop tokens are drawn from them)."""
        if n == 0:
            return []
        response = httpx.post(self.url + self.dialect.COMPLETIONS, json=self.dialect.greedy_body(self.model, prompt, n, uuid.uuid4().hex), timeout=DEADLINE_S)
        response.raise_for_status()
        return list(response.json()["choices"][0]["token_ids"])

    # -- the contract -------------------------------------------------------------------------

    def ensure_config(self, config: EngineConfig) -> None:
        """An attached server runs its own config: any other is refused, naming the first field
        that differs (``Unsupported``, not a finding)."""
        for field in dataclasses.fields(EngineConfig):
            asked, runs = getattr(config, field.name), getattr(self.fixed_config, field.name)
            if asked != runs:
                raise ValueError(f"EngineConfig.{field.name}={asked!r}: the attached server at {self.url} runs {field.name}={runs!r}")

    def generate(self, requests: Sequence[Request], config: EngineConfig) -> list[Completion]:
        self.last_pool = None
        validate_requests(requests, config, self.vocab_size, self.max_seq_len)
        self.check_alive()  # a server that died since the last trace: a finding, not a silent restart
        self.ensure_config(config)
        salt = self.fresh_cache()
        calls = [Call((r.rid, i), self.dialect.COMPLETIONS, self.dialect.completion_body(self.model, r, self._logprobs(), salt), r.arrival * TICK_S,
                      None if r.abort_at is None else r.abort_at - r.arrival)
                 for r in requests if r.max_new_tokens for i in range(r.n)]
        before = self.metrics()
        run = self.send(calls)
        results = {s.key: s for s in run.results}
        after = self.idle_metrics(before)
        self.last_stats = {"preemptions": int(after.get("preemptions", 0) - before.get("preemptions", 0)),
                           "requests": len(calls), "max_in_flight": run.max_in_flight}
        self.note_paths(requests, results, run.max_in_flight)
        return [self.completion(r, results) for r in requests]

    def send(self, calls: list[Call], is_final=None):
        """The trace's calls sent and read (``driver.run_trace``), counted, and checked: a
        deadline passed is a TimeoutError saying what the server still holds, an error response
        a finding, and the server must still be healthy."""
        try:
            run = run_trace(self.url, calls, self.dialect.tokens_in, trace_deadline(), is_final=is_final)
        except Deadline as exc:
            self.check_alive()
            tail = self.log_tail()
            raise TimeoutError(f"{exc}; {self.describe_state()}" + (f"\nserver log (tail):\n{tail}" if tail else "")) from None
        self.requests_sent += len(calls)
        self.trace_seconds += run.seconds
        self.count_trace(len(calls), run.seconds)
        for s in run.results:
            self.check_response(s)
        self.check_healthy()
        return run

    def fresh_cache(self) -> str | None:
        """A prefix cache of the trace's own: the salt its requests carry."""
        return uuid.uuid4().hex

    def count_trace(self, requests: int, seconds: float) -> None:
        """Per-config accounting: a managed server keeps it per config (``server_report``)."""

    def _logprobs(self) -> int:
        return self.vocab_size if self.full_logprobs else 0

    def completion(self, request: Request, results: dict) -> Completion:
        continuations = []
        for i in range(request.n):
            s = results.get((request.rid, i))
            if s is None:  # max_new_tokens == 0: nothing to ask for
                continuations.append(Completion(request.rid, [], torch.zeros(0, self.vocab_size)))
                continue
            tokens, rows, cached, _ = self.dialect.read_stream(s.events)
            logits = None
            if self.full_logprobs:
                logits = torch.tensor([[row.get(v, -math.inf) for v in range(self.vocab_size)] for row in rows]).reshape(len(rows), self.vocab_size)  # (new, V)
            stats = {"cached_prefix_tokens": cached or 0}
            if s.closed and not (tokens and tokens[-1] in request.stop):  # closed right at its stop token: it had ended
                stats["abort_phase"] = 3 if tokens else 2  # mid-stream, or before its first token reached the client
            continuations.append(Completion(request.rid, tokens, logits, stats))
        first, *forks = continuations
        return with_forks(first, forks, request.n, self.vocab_size)

    def check_response(self, s) -> None:
        """An HTTP error or an error inside the stream, on a request the contract allows, is a finding."""
        where = f"request {s.key[0]}" + (f" continuation {s.key[1]}" if s.key[1] else "")
        if s.status is None:  # no response at all
            self.check_alive()
            raise Finding("crash", f"{where}: the server did not answer ({s.error}); {self.describe_state()}",
                          {"what": "no response", "server_log": self.log_tail()})
        stream_errors = [e for e in map(self.dialect.event_error, s.events) if e]
        if s.status >= 500 or stream_errors or (s.error and s.status == 200):
            raise Finding("crash", f"{where}: the server failed a valid request (HTTP {s.status}: {(stream_errors or [s.error])[0]}); "
                                   f"{self.describe_state()}", {"what": f"HTTP {s.status}", "server_log": self.log_tail()})
        if s.status != 200:
            raise Finding("contract", f"{where}: the server refused a valid request (HTTP {s.status}: {s.error})", {"what": f"HTTP {s.status}"})

    def note_paths(self, requests: Sequence[Request], results: dict, max_in_flight: int) -> None:
        """Server paths: the concurrency reached, aborts mid-stream, repeats of an earlier prompt
        cold (no prefix hit) or warm, preemptions."""
        reached(f"requests in flight at once: {max_in_flight if max_in_flight < 4 else '4-7' if max_in_flight < 8 else '8+'}")
        seen: set[tuple[int, ...]] = set()
        for r in sorted(requests, key=lambda r: r.arrival):
            s = results.get((r.rid, 0))
            if s is not None and r.prompt in seen and not s.closed:
                cached = self.dialect.read_stream(s.events)[2] or 0
                reached("repeat of an earlier prompt: warm (prefix hit)" if cached else "repeat of an earlier prompt: cold (no prefix hit)")
            seen.add(r.prompt)
        if any(s.closed and s.tokens for s in results.values()):
            reached("abort mid-stream")
        if self.last_stats.get("preemptions"):
            reached("preemption (server metrics)")

    # -- the server's health and metrics -------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        try:
            response = httpx.get(self.url + "/metrics", timeout=10.0)
        except httpx.HTTPError:
            return {}
        return self.dialect.parse_metrics(response.text) if response.status_code == 200 else {}

    def idle_metrics(self, before: dict[str, float]) -> dict[str, float]:
        """The metrics once the server holds no request (waits up to IDLE_WAIT_S); sets last_pool
        when the server reports its KV usage and was idle before the trace (another client's
        requests would read as a leak)."""
        end = time.monotonic() + IDLE_WAIT_S
        while True:
            now = self.metrics()
            busy = now.get("running", 0) + now.get("waiting", 0)
            if (not busy and not now.get("kv_usage", 0)) or time.monotonic() > end:
                break
            time.sleep(0.05)
        if busy and not before.get("running", 0) + before.get("waiting", 0):
            raise TimeoutError(f"every client has its response, yet {IDLE_WAIT_S:g}s later the server still holds requests; {self.describe_state()}")
        if self.num_blocks and "kv_usage" in now and before.get("kv_usage", 0) == 0:
            used = round(now["kv_usage"] * self.num_blocks)
            self.last_pool = PoolAccount(total=self.num_blocks, free=self.num_blocks - used)
        elif self.num_blocks:
            reached("leak check skipped: the server was busy before the trace")
        return now

    def check_alive(self) -> None:
        """Overridden by a managed server (which can tell whether its process died)."""

    def check_healthy(self) -> None:
        """The server still answers its health route after the trace."""
        try:
            status = httpx.get(self.url + "/health", timeout=10.0).status_code
        except httpx.HTTPError as exc:
            status = f"no answer ({type(exc).__name__})"
        if status != 200:
            self.check_alive()
            raise Finding("crash", f"the server is unhealthy after the trace (/health: {status}); {self.describe_state()}",
                          {"what": "unhealthy", "server_log": self.log_tail()})

    def describe_state(self) -> str:
        m = self.metrics()
        if not m:
            return "the server does not answer /metrics"
        return (f"server: {m.get('running', 0):g} running, {m.get('waiting', 0):g} waiting, "
                f"KV usage {m.get('kv_usage', 0):.3f}")

    def log_tail(self) -> str:
        return ""

    def server_report(self) -> dict:
        """What a campaign reports about the server (requests/s)."""
        return {"url": self.url, "requests": self.requests_sent, "trace_seconds": round(self.trace_seconds, 2),
                "requests_per_s": round(self.requests_sent / self.trace_seconds, 1) if self.trace_seconds else None}


class ManagedProcess:
    """What a managed server target adds to a ServerTarget: its process (``server``, a
    ManagedServer or None), a death that is a crash finding carrying the log, reported once."""

    server: ManagedServer | None = None
    process_name = "the server"

    def check_alive(self) -> None:
        if self.server is not None and not self.server.alive():
            raise Finding("crash", f"{self.process_name} died (exit status {self.server.process.returncode if self.server.process else '?'})",
                          {"what": "server died", "server_log": self.log_tail()})

    def generate(self, requests, config):
        try:
            return super().generate(requests, config)
        finally:
            if self.server is not None and not self.server.alive():  # reported once; the next call starts a new one
                self.stop()

    def log_tail(self) -> str:
        return self.server.log_tail() if self.server is not None else ""


class ManagedVLLMServer(ManagedProcess, ServerTarget):
    """vLLM's server started by fuzzcache on the shared factory's tiny ``arch`` model; restarted
    with the flags of each config it is asked to run."""

    config_shards = SERVER_CONFIGS
    process_name = "the vLLM server"

    def __init__(self, arch: str = "llama", oracle: str = "server", env: dict[str, str | None] | None = None, name: str | None = None,
                 python: str | None = None, configs: dict[str, EngineConfig] | None = None):
        from fuzzcache.targets.tiny_models import ARCHITECTURES, VOCAB_SIZE

        self.arch, self.oracle, self.extra_env = arch, oracle, dict(env or {})
        self.python = python or vllm_python()
        if configs is not None:
            self.config_shards = configs
        self._folder = tempfile.TemporaryDirectory(prefix=f"fuzzcache-vllm-server-{arch}-")
        self.hf_model = write_tiny_model(arch, self._folder.name)
        self.window = ARCHITECTURES[arch].window  # strategies draw lengths around a sliding window
        config = next(iter(self.config_shards.values()))
        super().__init__(name or f"vllm-server:{arch}" + ("+hf-oracle" if oracle == "hf" else ""), "", self._folder.name, VOCAB_SIZE,
                         MAX_MODEL_LEN, config, MANAGED_TOLERANCE, full_logprobs=True)
        self.kv_bytes_per_token = kv_bytes_per_token(self.hf_model.config)
        self.server: ManagedServer | None = None
        self.starts: list[tuple[str, float]] = []  # (config, seconds to healthy)
        self.config_stats = ConfigStats()

    def shards_for_budget(self, budget_s: float, seed: int | None = None) -> dict[str, EngineConfig]:
        """The configs a campaign of ``budget_s`` walks: the named ones, then configs drawn from
        the server-config space (``drawn_config``) while each can still be served SHARD_MIN_S."""
        shards = dict(self.config_shards)
        rng = random.Random(seed)
        while budget_s / (len(shards) + 1) >= SHARD_MIN_S:
            shards[f"drawn-{len(shards) - len(self.config_shards) + 1}"] = drawn_config(rng)
        self.config_shards = shards  # the report names each config
        return shards

    def use_config(self, config: EngineConfig) -> None:
        """Run ``config`` from now on: the server is (re)started with its flags."""
        if self.server is not None and self.server.alive() and config == self.fixed_config:
            return
        self.stop()
        self.fixed_config = config
        argv = [self.python, "-m", "fuzzcache.targets.serve.vllm_cli", "serve", self.model, "--port", str(free_port()), *managed_flags(),
                *self.dialect.server_flags(config, self.kv_bytes_per_token, MAX_MODEL_LEN)]
        port = int(argv[argv.index("--port") + 1])
        self.server = ManagedServer(argv, port, env={**ENV, **self.extra_env}, name="vllm-server")
        self.url = self.server.url
        with time_limit_paused():  # a start-up is not the engine making no progress
            self.server.start()
        self.starts.append((config_name(config, self.config_shards), self.server.start_seconds or 0.0))
        self.config_stats.serving_starts(config_name(config, self.config_shards))
        text = httpx.get(self.url + "/metrics", timeout=10.0).text
        self.num_blocks = self.dialect.server_config(text)[2]

    def ensure_config(self, config: EngineConfig) -> None:
        if config.block_size % 32:
            raise ValueError(f"EngineConfig.block_size={config.block_size}: vLLM's CPU attention runs multiples of 32")
        if config.spec_k and config.draft not in self.drafts:
            raise ValueError(f"EngineConfig.draft={config.draft!r}: vLLM's server drafts by n-gram prompt lookup only ('prompt_lookup')")
        if config.interleave:
            raise ValueError("EngineConfig.interleave=True: vLLM always fuses decode rows and prefill chunks")
        if self.server is None or not self.server.alive() or config != self.fixed_config:
            self.use_config(config)

    def fresh_cache(self) -> str | None:
        """The server's prefix cache reset (retried while it still holds blocks): no salt needed."""
        end = time.monotonic() + IDLE_WAIT_S
        while not httpx.post(self.url + "/reset_prefix_cache", timeout=10.0).json().get("success") and time.monotonic() < end:
            time.sleep(0.05)
        return None


    def reference_logits(self, tokens: Sequence[int]) -> torch.Tensor:
        if self.oracle != "hf":
            if self.server is None or not self.server.alive():
                self.use_config(self.fixed_config)
            return super().reference_logits(tokens)
        with torch.no_grad():
            logits = self.hf_model(torch.tensor([list(tokens)]), use_cache=False).logits[0].float()  # (T, V)
        return torch.log_softmax(logits, dim=-1)

    def reference_rows(self, prompt, tokens) -> torch.Tensor:
        if self.oracle == "hf":
            return self.reference_logits(list(prompt) + list(tokens))[len(prompt) - 1 : len(prompt) - 1 + len(tokens)]
        return super().reference_rows(prompt, tokens)

    def greedy_continuation(self, prompt, n):
        if self.server is None or not self.server.alive():
            self.use_config(self.fixed_config)
        return super().greedy_continuation(prompt, n)

    def count_trace(self, requests: int, seconds: float) -> None:
        self.config_stats.trace(config_name(self.fixed_config, self.config_shards), requests, seconds)

    def stop(self) -> None:
        self.config_stats.serving_ends()  # the time this config's server was up, for its traces/s
        if self.server is not None:
            self.server.stop()
            self.server = None

    def close(self) -> None:
        self.stop()

    def server_report(self) -> dict:
        """requests/s and start-ups, and per config: traces, requests, traces/s while it served,
        requests/s while traces ran."""
        return super().server_report() | {"starts": [{"config": name, "seconds": round(s, 1)} for name, s in self.starts],
                                          "per_config": self.config_stats.report()}


def write_tiny_model(arch: str, folder) -> torch.nn.Module:
    """The shared factory's tiny ``arch`` model in vLLM's shape (head_dim 32, MAX_MODEL_LEN
    positions), written to ``folder`` as an HF checkpoint without a tokenizer; returns it (the HF oracle)."""
    from fuzzcache.targets.tiny_models import SHAPES, save_checkpoint, tiny_model

    model = tiny_model(arch, **SHAPES["wide_heads"], max_position_embeddings=MAX_MODEL_LEN)
    save_checkpoint(model, folder)
    return model


def trace_deadline() -> float:
    """Seconds a trace's requests have to end: DEADLINE_S, within the guard's limit per call
    (``fuzz --example-timeout``) less what the cache reset, health and idle checks may take."""
    from fuzzcache import guard

    return max(5.0, min(DEADLINE_S, guard.TIME_LIMIT_S - 3 * IDLE_WAIT_S - 5.0))


def managed_flags() -> list[str]:
    """Flags every managed server gets: float32 on the CPU, token ids in and out, the log-probs
    of the whole vocabulary, cached tokens per request."""
    return ["--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN), "--skip-tokenizer-init", "--enforce-eager",
            "--max-logprobs", "256", "--enable-prompt-tokens-details", "--seed", "0"]


def kv_bytes_per_token(config) -> int:
    """KV bytes one token takes in float32: layers x (K and V) x KV heads x head dim x 4."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * 4


def config_name(config: EngineConfig, shards: dict[str, EngineConfig]) -> str:
    return next((name for name, c in shards.items() if c == config), "replayed config")


def vllm_python() -> str:
    """The interpreter that runs vLLM: this one if it has vLLM, else FUZZCACHE_VLLM_PYTHON."""
    from fuzzcache.targets import UnknownTarget
    from fuzzcache.targets.vllm.environment import INSTALL_HINT

    if os.environ.get("FUZZCACHE_VLLM_PYTHON"):
        return os.environ["FUZZCACHE_VLLM_PYTHON"]
    if importlib.util.find_spec("vllm") is None:
        raise UnknownTarget(f"vllm-server:<arch> starts vLLM's server, which is not installed here; {INSTALL_HINT}, "
                            "or set FUZZCACHE_VLLM_PYTHON to the python of an environment that has it")
    return sys.executable


def attach(url: str, name: str | None = None) -> ServerTarget:
    """A target over the vLLM server at ``url`` (``http://HOST:PORT``, optional query: ``vocab=N``
    when the server has no tokenizer, ``tie=X`` and ``logprobs=X`` tolerances). Learns the model
    and its max length from ``/v1/models`` and the config (block size, prefix caching, pool) from
    ``/metrics``."""
    from fuzzcache.targets import UnknownTarget

    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    try:
        models = httpx.get(base + "/v1/models", timeout=10.0)
        models.raise_for_status()
        metrics = httpx.get(base + "/metrics", timeout=10.0).text
    except httpx.HTTPError as exc:
        raise UnknownTarget(f"vllm-server:{url}: no vLLM server answers at {base} ({type(exc).__name__}: {exc})") from exc
    card = models.json()["data"][0]
    vocab = int(options["vocab"]) if "vocab" in options else learn_vocab(base, card["id"])
    if vocab is None:
        raise UnknownTarget(f"vllm-server:{url}: the server has no tokenizer (--skip-tokenizer-init), so its vocabulary size cannot be asked "
                            f"without risking its engine (an out-of-vocabulary token id kills it: corpus/vllm-skip-tokenizer-oov-kills-engine.md); "
                            f"give it: vllm-server:{base}?vocab=N")
    block, prefix, blocks = vllm_dialect.server_config(metrics)
    config = EngineConfig(block_size=block or 16, prefix_cache=prefix)
    tol = Tolerance(tie=float(options.get("tie", ATTACHED_TOLERANCE.tie)), logits=float(options.get("logprobs", ATTACHED_TOLERANCE.logits)))
    # the first request a server gets: a cold CPU build warms up on it (over 30 s seen on a loaded 2-core machine)
    full = vocab <= FULL_LOGPROBS_MAX and httpx.post(base + vllm_dialect.COMPLETIONS, timeout=FIRST_REQUEST_S, json={
        "model": card["id"], "prompt": [0], "max_tokens": 1, "logprobs": vocab, "prompt_logprobs": -1}).status_code == 200  # --max-logprobs allows them
    target = ServerTarget(name or f"vllm-server:{base}", base, card["id"], vocab, int(card.get("max_model_len") or MAX_MODEL_LEN), config,
                          tol, full_logprobs=full)
    target.num_blocks = blocks
    return target


def learn_vocab(base: str, model: str) -> int | None:
    """The vocabulary size of a server that has a tokenizer, by bisection on the 400 its input
    validation gives an out-of-vocabulary token id (``renderers/base.py validate_token_ids``);
    None for a server without a tokenizer, which does not validate them."""
    if httpx.post(base + "/tokenize", json={"model": model, "prompt": "a"}, timeout=10.0).status_code != 200:
        return None
    low, high = 1, 1 << 22  # low is in the vocabulary, high is not
    while high - low > 1:
        mid = (low + high) // 2
        status = httpx.post(base + vllm_dialect.COMPLETIONS, json={"model": model, "prompt": [mid], "max_tokens": 1}, timeout=30.0).status_code
        low, high = (mid, high) if status == 200 else (low, mid)
    return high


_MANAGED: dict[tuple[str, str], ServerTarget] = {}  # one per family, name and process: a vLLM server takes about a minute to start


def managed_or_attached(family: str, name: str, options: dict, attach_to, managed, attach_hint: str, runs: str):
    """``<family>:<arch>[+hf-oracle]`` (``managed(arch, oracle)``, one per process and name, shared
    by every caller) or ``<family>:http://HOST:PORT[?...]`` (``attach_to(url)``)."""
    from fuzzcache.targets import UnknownTarget

    if name.startswith(("http://", "https://")):
        return attach_to(name)
    from fuzzcache.targets.registry import FAMILY_ENGINES  # vllm-server serves vLLM's families, llama-server llama.cpp's
    from fuzzcache.targets.tiny_models import families_for

    arch, _, suffix = name.partition("+")
    archs = families_for(FAMILY_ENGINES[family])
    if arch not in archs or suffix not in ("", "hf-oracle"):
        raise UnknownTarget(f"unknown target '{family}:{name}'; managed: {', '.join(f'{family}:{a}' for a in archs)} "
                            f"(optionally +hf-oracle), attached: {family}:{attach_hint}")
    if options.get("dtype", torch.float32) != torch.float32 or str(options.get("device", "cpu")) != "cpu":
        raise UnknownTarget(f"{family}:{name} {runs}")
    if (family, name) not in _MANAGED:
        _MANAGED[(family, name)] = managed(arch, oracle="hf" if suffix else "server")
    return _MANAGED[(family, name)]


def VLLMServerTarget(name: str = "llama", **options):
    """``vllm-server:<arch>[+hf-oracle]`` (managed) or ``vllm-server:http://HOST:PORT[?...]`` (attached)."""
    return managed_or_attached("vllm-server", name, options, attach, ManagedVLLMServer, "http://HOST:PORT", "runs vLLM's CPU build in float32 only")
