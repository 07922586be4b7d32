"""llama.cpp's own server as a target: ``llama-server:<arch>`` (managed: fuzzcache builds
llama-server from the pinned llama.cpp sources once per machine, writes the shared factory's tiny
``arch`` model as GGUF, and starts the server with each config's flags) and
``llama-server:http://HOST:PORT?vocab=N`` (attached: a server someone else started).

========================  =========================================================================
contract                  llama-server target (the dialect: ``fuzzcache.targets.serve.llama_server``)
========================  =========================================================================
``arrival``, ``abort_at`` as for every server target (wall-clock ticks; the client closes the stream)
``n`` > 1                 ``n_cmpl`` (the children copy the parent slot's KV); n requests when n
                          exceeds the slots
``stop``                  stop strings; a stop token without text (``<unk>``, ``<s>``) is refused
EngineConfig              ``max_num_seqs`` slots (``--parallel``), ``max_batch_tokens``
                          (``--batch-size``), ``chunk_size`` (``--ubatch-size``), ``spec_k`` n-gram
                          drafts, and ``server_flags``: the KV type (``-ctk``/``-ctv``), flash
                          attention, ``--cache-reuse``, ``--cache-ram``, ``--kv-unified``.
                          ``block_size`` is not a llama-server notion: it only
                          sets the granularity of the prompts drawn (shared prefixes, lengths)
oracle                    the server's own uncached recompute, one request per position; managed,
                          with ``+hf-oracle``: one HF forward over the same weights
``last_pool``             slots still processing once every request ended (unit "slots"): a leak
========================  =========================================================================

A managed server restarts before every trace (about 0.1 s), so each trace starts with empty slots
and an empty host-memory prompt cache (which no route clears), and a shrunk trace replays alone.
The end-of-generation token is never generated (``ignore_eos`` is a logit bias of -inf), so it
gets the same log-prob (NEVER) in both the server's rows and the oracle's.

Chunk reuse after a shift (``--cache-reuse``) is an approximation by design: a chunk's cached
keys were computed after other tokens than the ones now before it. A divergence in a trace that
reused chunks is re-run with ``n_cache_reuse: 0``; when that run matches the oracle, the
divergence is classified by design (``divergence_by_design``), never reported.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from pathlib import Path
from typing import Sequence
from urllib.parse import parse_qs, urlsplit

import httpx
import torch

from fuzzcache.compare import Tolerance, compare_request
from fuzzcache.contract import Completion, EngineConfig, PoolAccount, Request, validate_requests, with_forks
from fuzzcache.coverage import reached
from fuzzcache.guard import Unsupported, time_limit_paused
from fuzzcache.targets.serve import llama_server as dialect
from fuzzcache.targets.serve.config_stats import ConfigStats
from fuzzcache.targets.serve.driver import Call
from fuzzcache.targets.serve.llama_server_build import SourcePatch, llama_server_binary
from fuzzcache.targets.serve.managed import ManagedServer, free_port
from fuzzcache.targets.serve.target import (DEADLINE_S, IDLE_WAIT_S, MAX_MODEL_LEN, TICK_S, ManagedProcess, ServerTarget, config_name,
                                            managed_or_attached, write_tiny_model)

FULL_LOGPROBS_MAX = 4096  # a larger vocabulary: tokens compared tie-aware against the recompute's top rows
TOP_LOGPROBS = 20
NEVER = -1e9  # the log-prob both the server's rows and the oracle's give the end-of-generation tokens (ignore_eos)
SLOT_CTX = MAX_MODEL_LEN  # tokens per slot (llama-server caps a slot at the model's trained context anyway)
F32_KV = ("-ctk", "f32", "-ctv", "f32", "-fa", "off")  # exact: an f32 cache, no flash attention (its default "auto" may pick it)
# Measured (docs/targets/llama-server.md; python -m fuzzcache.targets.serve.measure llama 150: 150
# drawn traces per KV type and flash setting, 8,000-11,200 tokens each): max |Δ log-prob| of the
# streamed rows against the server's own uncached recompute 8.0e-5 (f32 KV, flash off), 7.9e-3
# (f16 KV), 0.052 and 0.102 (flash on with f32 and f16 KV: ggml's CPU flash attention rounds K and
# V to f16); against the HF forward 6.5e-4, 0.149, 0.143 and 0.161. Each tolerance is three to
# four times the largest measurement of its class.
TOLERANCES = {("server", "exact"): Tolerance(tie=1e-3, logits=1e-3), ("server", "f16"): Tolerance(tie=0.03, logits=0.03),
              ("server", "flash"): Tolerance(tie=0.3, logits=0.3),
              ("hf", "exact"): Tolerance(tie=2e-3, logits=2e-3), ("hf", "f16"): Tolerance(tie=0.5, logits=0.5),
              ("hf", "flash"): Tolerance(tie=0.5, logits=0.5)}
APPROXIMATE = {"f16": "f16 KV cache (keys and values rounded to f16)",
               "flash": "flash attention on the CPU (ggml rounds K and V to f16)"}
# The server configs a managed campaign walks, one shard of the budget each.
SERVER_CONFIGS = {
    "slots": EngineConfig(block_size=16, prefix_cache=True, max_num_seqs=4, server_flags=(*F32_KV, "--cache-ram", "0")),
    "host-cache": EngineConfig(block_size=16, prefix_cache=True, max_num_seqs=2, server_flags=(*F32_KV, "--cache-ram", "64")),
    "cache-reuse": EngineConfig(block_size=16, prefix_cache=True, max_num_seqs=2, max_batch_tokens=64, chunk_size=16,
                                server_flags=(*F32_KV, "--cache-reuse", "4", "--cache-ram", "0")),
    "spec-f16": EngineConfig(block_size=16, prefix_cache=True, max_num_seqs=4, spec_k=3, draft="prompt_lookup",
                             server_flags=("-ctk", "f16", "-ctv", "f16", "-fa", "on", "--kv-unified")),
}
# The configs the tolerances are measured on (fuzzcache.targets.serve.measure): each KV type with
# flash attention off and on, parallel slots, chunk reuse off.
MEASURED_CONFIGS = {f"{kv} kv, flash {fa}": EngineConfig(block_size=16, prefix_cache=True, max_num_seqs=4, server_flags=("-ctk", kv, "-ctv", kv, "-fa", fa))
                    for kv in ("f32", "f16") for fa in ("off", "on")}
SHARD_MIN_S = 60.0  # a longer campaign adds drawn configs, each served for at least this long


def precision(config: EngineConfig) -> str:
    """"exact" (f32 KV, flash attention off), "f16" (an f16 KV cache) or "flash" (flash attention on;
    llama-server's defaults are an f16 cache and "auto" flash attention, which may pick it)."""
    if flag_value(config, "-fa", "auto") != "off":
        return "flash"
    return "exact" if flag_value(config, "-ctk", "f16") == "f32" and flag_value(config, "-ctv", "f16") == "f32" else "f16"


def flag_value(config: EngineConfig, flag: str, default: str | None = None) -> str | None:
    flags = list(config.server_flags)
    return flags[flags.index(flag) + 1] if flag in flags else default


def drawn_config(rng: random.Random) -> EngineConfig:
    """A server config drawn from the space llama-server offers here: 1-8 slots, a unified KV
    cache or not, f32 or f16 KV, flash attention on or off, a batch and micro-batch size or the
    defaults, chunk reuse (``--cache-reuse``) and the host-memory cache on or off, n-gram drafts
    (only with the default batch: llama-server refuses a speculative batch split in sub-batches,
    ggml-org/llama.cpp#24840). Context shift is left out: it acts only past a slot's context,
    which no request the contract allows reaches."""
    slots = rng.randint(1, 8)
    spec_k = rng.choice((0, 0, 1, 2, 3))
    batch = None if spec_k else rng.choice((None, rng.randint(8, 128)))
    ubatch = None if batch is None else rng.choice((None, rng.randint(4, batch)))
    kv = rng.choice(("f32", "f16"))
    flags = ["-ctk", kv, "-ctv", kv, "-fa", rng.choice(("on", "off")), "--cache-ram", rng.choice(("0", "64"))]
    if rng.random() < 0.3:
        flags += ["--cache-reuse", str(rng.randint(1, 16))]
    if rng.random() < 0.5:
        flags.append("--kv-unified")
    return EngineConfig(block_size=16, prefix_cache=True, max_num_seqs=slots, max_batch_tokens=batch, chunk_size=ubatch, spec_k=spec_k,
                        draft="prompt_lookup" if spec_k else EngineConfig().draft, server_flags=tuple(flags))


class LlamaServerTarget(ServerTarget):
    """llama-server through the contract (see the module docstring)."""

    unstoppable = frozenset(dialect.NO_TEXT)  # stop tokens it cannot express: the strategies leave them out

    def __init__(self, name: str, url: str, vocab_size: int, max_seq_len: int, config: EngineConfig, tolerance: Tolerance | None = None,
                 end_of_generation: tuple[int, ...] = dialect.END_OF_GENERATION, stop_strings: bool = True):
        super().__init__(name, url, "", vocab_size, max_seq_len, config, tolerance, full_logprobs=vocab_size <= FULL_LOGPROBS_MAX, dialect=dialect)
        self.end_of_generation = list(end_of_generation)  # never generated (ignore_eos): left out on both sides
        if not stop_strings:  # a model whose token texts fuzzcache does not know: a stop token cannot be named
            self.features = self.features - {"stop"}
        self.chunk_reuse_off = False  # set while a divergence is re-run without chunk reuse
        self.last_requests: tuple[Request, ...] = ()
        self.last_reused: set[int] = set()  # requests of the last trace that reused a shifted chunk
        self.reuse_verdict: bool | None = None

    @property
    def tolerance(self) -> Tolerance:
        """The given tolerance, else the measured one of the oracle and the config's precision."""
        if self.fixed_tolerance:
            return self.fixed_tolerance
        oracle = getattr(self, "oracle", "server")
        measured = TOLERANCES[(oracle, precision(self.fixed_config))]
        # a family's own gap: to the HF forward, and between two batchings on llama.cpp (the server's recompute)
        return measured.at_least(getattr(self, "tolerance_floor", 0.0))

    @tolerance.setter
    def tolerance(self, value: Tolerance) -> None:
        self.fixed_tolerance = value

    @property
    def n_probs(self) -> int:
        """Log-probs asked per position: the whole vocabulary up to FULL_LOGPROBS_MAX, else the top few."""
        return self.vocab_size if self.full_logprobs else TOP_LOGPROBS

    @property
    def chunk_reuse(self) -> bool:
        """The server reuses shifted chunks (``--cache-reuse`` N > 0) and this trace lets it."""
        return int(flag_value(self.fixed_config, "--cache-reuse", "0")) > 0 and not self.chunk_reuse_off

    @property
    def slots(self) -> int:
        return self.fixed_config.max_num_seqs

    # -- the oracle ---------------------------------------------------------------------------

    def reference_logits(self, tokens: Sequence[int]) -> torch.Tensor:
        """[len(tokens), vocab] log-probs of the server's uncached recompute (one request per
        position); row 0 (no prediction) is uniform. End-of-generation tokens are NEVER."""
        uniform = {v: -math.log(self.vocab_size) for v in range(self.vocab_size)}
        return self._dense([uniform, *self._recompute([list(tokens[:i]) for i in range(1, len(tokens))])])

    def reference_rows(self, prompt: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        """[len(tokens), vocab]: the oracle's rows that chose each generated token."""
        return self._dense(self._recompute([list(prompt) + list(tokens[:i]) for i in range(len(tokens))]))

    def _dense(self, rows: list[dict[int, float]]) -> torch.Tensor:
        out = super()._dense(rows)  # (n, V)
        out[:, self.end_of_generation] = NEVER  # never generated: ignore_eos
        return out

    def _recompute(self, prefixes: list[list[int]]) -> list[dict[int, float]]:
        rows = []
        with httpx.Client(base_url=self.url, timeout=DEADLINE_S) as client:
            for prefix in prefixes:
                response = client.post(dialect.COMPLETIONS, json=dialect.recompute_body(prefix, self.n_probs))
                if response.status_code != 200:
                    raise RuntimeError(f"the server's recompute failed: HTTP {response.status_code}: {response.text[:500]}")
                rows.append(dialect.recompute_row(response.json()))
        return rows

    def greedy_continuation(self, prompt: Sequence[int], n: int) -> list[int]:
        """The server's own greedy tokens, computed with no cache (stop tokens are drawn from them)."""
        if n == 0:
            return []
        body = dialect.recompute_body(prompt, 0) | {"n_predict": n}
        response = httpx.post(self.url + dialect.COMPLETIONS, json=body, timeout=DEADLINE_S)
        response.raise_for_status()
        return list(response.json()["tokens"])

    # -- the contract -------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request], config: EngineConfig) -> list[Completion]:
        self.last_pool = None
        validate_requests(requests, config, self.vocab_size, self.max_seq_len)
        for r in requests:
            if set(r.stop) & self.unstoppable:
                raise Unsupported(f"request {r.rid}: stop token {min(set(r.stop) & self.unstoppable)} has no text, and llama-server stops on text only")
        self.check_alive()
        self.ensure_config(config)
        self.fresh_cache()
        busy_before = self.busy_before_trace()
        if precision(config) != "exact":
            reached(f"approximate by design: {APPROXIMATE[precision(config)]}, tolerance {self.tolerance.logits:g}")
        calls = []
        for r in requests:
            if not r.max_new_tokens:
                continue
            forked = 1 < r.n <= self.slots  # n_cmpl: one stream of n completions
            for i in range(1 if forked else r.n):
                body = dialect.completion_body(r, self.n_probs, self.vocab_size, n_cmpl=r.n if forked else 1, cache_prompt=config.prefix_cache)
                if self.chunk_reuse_off:
                    body["n_cache_reuse"] = 0
                calls.append(Call((r.rid, i), dialect.COMPLETIONS, body, r.arrival * TICK_S,
                                  None if r.abort_at is None else (r.abort_at - r.arrival) * (r.n if forked else 1),
                                  completions=r.n if forked else 1))
        run = self.send(calls, is_final=dialect.is_final)
        self.idle_slots(busy_before)
        self.last_stats = {"requests": len(calls), "max_in_flight": run.max_in_flight}
        completions = [self.completion(r, {s.key: s for s in run.results}) for r in requests]
        self.note_llama_paths(requests, completions, run)
        self.last_requests = tuple(requests)
        self.reuse_verdict = None  # divergence_by_design's re-run without chunk reuse, once per trace
        return completions

    def completion(self, request: Request, results: dict) -> Completion:
        continuations = []
        for key in sorted(k for k in results if k[0] == request.rid):
            s = results[key]
            for index, (tokens, rows, cached, _) in sorted(dialect.read_stream(s.events).items()):
                logits = None  # a token of a speculative step comes without its row: compared by tokens alone
                if self.full_logprobs and len(rows) == len(tokens):
                    logits = torch.tensor([[row.get(v, -math.inf) for v in range(self.vocab_size)] for row in rows]).reshape(len(rows), self.vocab_size)  # (new, V)
                    logits[:, self.end_of_generation] = NEVER
                elif len(rows) != len(tokens):
                    reached("speculative tokens without log-probs (compared by tokens)")
                stats = {"cached_prefix_tokens": cached or 0}
                if s.closed and not (tokens and tokens[-1] in request.stop):
                    stats["abort_phase"] = 3 if tokens else 2
                continuations.append(Completion(request.rid, tokens, logits, stats))
        if not continuations:  # max_new_tokens == 0, or closed before any event
            phase = {"abort_phase": 2} if any(results[k].closed for k in results if k[0] == request.rid) else {}
            continuations.append(Completion(request.rid, [], torch.zeros(0, self.vocab_size), phase))
        first, *forks = continuations
        return with_forks(first, forks[: request.n - 1], request.n, self.vocab_size)

    def note_llama_paths(self, requests: Sequence[Request], completions: list[Completion], run) -> None:
        """Server paths: concurrency and slots busy at once, aborts mid-stream, repeats cold and
        warm, and where each cached prefix came from: the request's slot (exact prefix), the
        host-memory cache (a prompt restored into the slot), or chunks reused after a shift."""
        reached(f"requests in flight at once: {run.max_in_flight if run.max_in_flight < 4 else '4-7' if run.max_in_flight < 8 else '8+'}")
        if any(s.closed and s.tokens for s in run.results):
            reached("abort mid-stream")
        by_rid = {r.rid: r for r in requests}
        order = sorted(run.results, key=lambda s: s.sent_s)
        self.last_reused = set()
        for s in order:
            r = by_rid[s.key[0]]
            final = next((e for e in s.events if dialect.is_final(e)), None)
            if not s.events:
                continue
            slot = final.get("id_slot") if final else None  # an aborted stream never names its slot
            cached = max((c[2] or 0 for c in dialect.read_stream(s.events).values()), default=0)
            earlier = [(by_rid[o.key[0]].prompt + tuple(dialect.read_stream(o.events).get(0, ([],))[0]), o) for o in order
                       if o.ended_s <= s.sent_s and o is not s]
            same_slot = [seq for seq, o in earlier if any(e.get("id_slot") == slot for e in o.events if dialect.is_final(e))]
            exact_slot = common_prefix(same_slot[-1], r.prompt) if same_slot else 0
            exact_any = max((common_prefix(seq, r.prompt) for seq, _ in earlier), default=0)
            if r.prompt in {by_rid[o.key[0]].prompt for _, o in earlier}:
                reached("repeat of an earlier prompt: warm (prefix hit)" if cached else "repeat of an earlier prompt: cold (no prefix hit)")
            if not cached:
                continue
            if self.chunk_reuse:  # which prefix a slot held is the client's guess: any cached request may have reused chunks
                self.last_reused.add(r.rid)
            host_cache = flag_value(self.fixed_config, "--cache-ram", "8192") != "0"  # llama-server's default: 8192 MiB
            if slot is None and cached <= exact_any:
                reached("prompt cache: prefix reused by a request aborted before it named its slot")
            elif cached <= exact_slot or (cached <= exact_any and not host_cache):
                reached("prompt cache: prefix kept in the request's slot")
            elif cached <= exact_any:
                reached("host-memory prompt cache: an earlier prompt restored into the slot")
            elif self.chunk_reuse:  # only chunks can make up more than any earlier sequence's exact prefix
                reached("chunk reuse after a shift (--cache-reuse)")
            else:  # the slot held tokens this client never saw (generated after it closed its stream)
                reached("prompt cache: more cached than any earlier sequence the client saw shares")
        busy = self.metrics().get("n_busy_slots_per_decode", 0.0)  # the server's own count, over this trace (a fresh server) when managed
        if busy > 1.0:
            reached(f"parallel slots busy at once (server metrics): {'2-3' if busy < 3.0 else '3+'} per decode on average")

    def divergence_by_design(self, requests: Sequence[Request], rid: int | None = None) -> str | None:
        """A divergence of request ``rid`` in a trace where it reused shifted chunks is by design
        when the same trace with ``n_cache_reuse: 0`` matches the oracle (module docstring). The
        re-run happens once per trace, whatever the number of continuations that diverged."""
        if rid not in self.last_reused or tuple(requests) != self.last_requests:
            return None
        if self.reuse_verdict is None:
            self.reuse_verdict = self._matches_without_chunk_reuse(requests)
        if not self.reuse_verdict:
            return None  # it diverges without chunk reuse too: not explained by it
        return (f"chunk reuse after a shift (--cache-reuse; requests {', '.join(map(str, sorted(self.last_reused)))}): the reused keys were "
                "computed after other tokens than the ones now before them, and the trace matches the oracle with n_cache_reuse 0")

    def _matches_without_chunk_reuse(self, requests: Sequence[Request]) -> bool:
        state = self.last_reused, self.last_requests, self.last_pool, self.last_stats  # the trace being judged, not the re-run
        self.chunk_reuse_off = True
        try:
            completions = self.generate(requests, self.fixed_config)
            return not any(each.tokens and compare_request(r.rid, list(each.tokens), self.reference_rows(r.prompt, each.tokens), each.logits,
                                                           self.tolerance).divergence
                           for r, c in zip(requests, completions) for each in [c, *c.forks])
        finally:
            self.chunk_reuse_off = False
            self.last_reused, self.last_requests, self.last_pool, self.last_stats = state

    # -- liveness and the leak check -----------------------------------------------------------

    def slot_states(self, timeout_s: float = 10.0) -> list[dict]:
        response = httpx.get(self.url + "/slots", timeout=timeout_s)
        response.raise_for_status()
        return response.json()

    def busy_before_trace(self) -> list[int]:
        """Slots another client keeps busy (attached): no leak check then. A server that does not
        answer is left to the trace, whose deadline says what is stuck."""
        try:
            return dialect.busy_slots(self.slot_states(timeout_s=2.0))
        except httpx.HTTPError:
            return []

    def idle_slots(self, busy_before: list[int]) -> None:
        """Once every client has its response, every slot lets go of its request within
        IDLE_WAIT_S: a slot still processing is a leak (``last_pool``, unit "slots"), a request
        still deferred is a hang. Skipped when slots were busy before the trace (another client)."""
        if busy_before:
            reached("leak check skipped: the server was busy before the trace")
            return
        end = time.monotonic() + IDLE_WAIT_S
        while True:
            busy, metrics = dialect.busy_slots(self.slot_states()), self.metrics()
            if (not busy and not metrics.get("running", 0) and not metrics.get("waiting", 0)) or time.monotonic() > end:
                break
            time.sleep(0.02)
        if metrics.get("waiting", 0):
            raise TimeoutError(f"every client has its response, yet {IDLE_WAIT_S:g}s later the server still defers requests; {self.describe_state()}")
        self.last_pool = PoolAccount(total=self.slots, free=self.slots - len(busy), unit="slots")

    def describe_state(self) -> str:
        try:
            slots = self.slot_states(timeout_s=2.0)
        except (httpx.HTTPError, ValueError):
            return "the server does not answer /slots"
        m = self.metrics()
        states = ", ".join(f"slot {s['id']}: " + ("processing" if s.get("is_processing") else "idle") +
                           (f" ({s['next_token'][0].get('n_decoded', 0)} decoded, {s['next_token'][0].get('n_remain')} to go)" if s.get("is_processing") and s.get("next_token") else "")
                           for s in slots)
        return f"server: {m.get('running', 0):g} processing, {m.get('waiting', 0):g} deferred; {states}"


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class ManagedLlamaServer(ManagedProcess, LlamaServerTarget):
    """llama-server started by fuzzcache on the shared factory's tiny ``arch`` model, restarted
    before every trace with the flags of the config it is asked to run."""

    config_shards = SERVER_CONFIGS
    process_name = "llama-server"

    def __init__(self, arch: str = "llama", oracle: str = "server", name: str | None = None, variant: str = "stock",
                 patch: SourcePatch | None = None, configs: dict[str, EngineConfig] | None = None):
        from fuzzcache.targets.llamacpp.gguf_model import write_gguf
        from fuzzcache.targets.tiny_models import ARCHITECTURES, VOCAB_SIZE

        self.arch, self.oracle = arch, oracle
        self.binary = llama_server_binary(variant, patch)
        if configs is not None:
            self.config_shards = configs
        self._folder = tempfile.TemporaryDirectory(prefix=f"fuzzcache-llama-server-{arch}-")
        self.hf_model = write_tiny_model(arch, self._folder.name)
        family = ARCHITECTURES[arch]
        self.window, self.tolerance_floor = family.window, family.tolerance_floor.get("llamacpp", 0.0)
        if family.window:
            # which prefixes llama-server reuses on an SWA cache is its own rule, not measured here: it re-processes a
            # prompt whose SWA cells fell out of the window unless a context checkpoint covers it (tools/server/
            # server-context.cpp, "forcing full prompt re-processing due to lack of cache data"); prefix.hit checks outputs
            self.prefix_reuse = "not asserted"
        self.gguf = write_gguf(self.hf_model, arch, Path(self._folder.name) / f"{arch}.gguf")
        super().__init__(name or f"llama-server:{arch}" + ("+hf-oracle" if oracle == "hf" else ""), "", VOCAB_SIZE, MAX_MODEL_LEN,
                         next(iter(self.config_shards.values())))
        self.server: ManagedServer | None = None
        self.starts: list[float] = []
        self.config_stats = ConfigStats()

    def shards_for_budget(self, budget_s: float, seed: int | None = None) -> dict[str, EngineConfig]:
        """The named configs, then configs drawn from the server-config space (``drawn_config``)
        while each can still be served SHARD_MIN_S."""
        shards = dict(self.config_shards)
        rng = random.Random(seed)
        while budget_s / (len(shards) + 1) >= SHARD_MIN_S:
            shards[f"drawn-{len(shards) - len(self.config_shards) + 1}"] = drawn_config(rng)
        self.config_shards = shards
        return shards

    def use_config(self, config: EngineConfig) -> None:
        """Run ``config`` from now on (the next start uses its flags; every trace starts one)."""
        if config != self.fixed_config:
            self.config_stats.serving_ends()
            self.stop_server()  # the next trace (or oracle call) starts it with the new flags
            self.fixed_config = config

    def start(self) -> None:
        self.stop_server()
        port = free_port()
        argv = [str(self.binary), "-m", str(self.gguf), "--host", "127.0.0.1", "--port", str(port), "--threads", "1", "--threads-batch", "1",
                "--metrics", "--slots", "--no-webui", "--seed", "0", *dialect.server_flags(self.fixed_config, SLOT_CTX)]
        log = Path(self._folder.name) / "server.log"
        log.unlink(missing_ok=True)  # one log per start: a restart before every trace
        self.server = ManagedServer(argv, port, log_path=log, name="llama-server")
        self.url = self.server.url
        with time_limit_paused():
            self.server.start(timeout_s=60.0)
        self.starts.append(self.server.start_seconds or 0.0)
        self.config_stats.serving_starts(config_name(self.fixed_config, self.config_shards))

    def ensure_config(self, config: EngineConfig) -> None:
        if config.interleave:
            raise ValueError("EngineConfig.interleave=True: llama-server always mixes decode rows and prompt tokens in one batch")
        if config.spec_k and config.draft not in self.drafts:
            raise ValueError(f"EngineConfig.draft={config.draft!r}: fuzzcache runs llama-server's n-gram drafts only ('prompt_lookup')")
        if config.num_blocks is not None:
            raise ValueError("EngineConfig.num_blocks: llama-server gives each slot its context (--ctx-size / --parallel); it never preempts")
        if config != self.fixed_config:
            self.fixed_config = config  # the trace's own restart (fresh_cache) starts it with these flags

    def fresh_cache(self) -> None:
        """A restarted server: empty slots and an empty host-memory prompt cache."""
        self.start()


    def reference_logits(self, tokens: Sequence[int]) -> torch.Tensor:
        if self.oracle == "hf":
            with torch.no_grad():
                logits = self.hf_model(torch.tensor([list(tokens)]), use_cache=False).logits[0].float()  # (T, V)
            out = torch.log_softmax(logits, dim=-1)
            out[:, self.end_of_generation] = NEVER
            return out
        self.ensure_running()
        return super().reference_logits(tokens)

    def reference_rows(self, prompt, tokens) -> torch.Tensor:
        if self.oracle == "hf":
            return self.reference_logits(list(prompt) + list(tokens))[len(prompt) - 1 : len(prompt) - 1 + len(tokens)]
        self.ensure_running()
        return super().reference_rows(prompt, tokens)

    def greedy_continuation(self, prompt, n):
        self.ensure_running()
        return super().greedy_continuation(prompt, n)

    def ensure_running(self) -> None:
        if self.server is None or not self.server.alive():
            self.start()

    def count_trace(self, requests: int, seconds: float) -> None:
        self.config_stats.trace(config_name(self.fixed_config, self.config_shards), requests, seconds)

    def stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def stop(self) -> None:
        self.config_stats.serving_ends()
        self.stop_server()

    def close(self) -> None:
        self.stop()

    def server_report(self) -> dict:
        """requests/s, restarts, and per config: traces, requests, traces/s, requests/s."""
        starts = sorted(self.starts)
        return ServerTarget.server_report(self) | {"binary": str(self.binary), "restarts": len(starts),
                                                   "median_start_s": round(starts[len(starts) // 2], 3) if starts else None,
                                                   "per_config": self.config_stats.report()}


def attach(url: str, name: str | None = None) -> LlamaServerTarget:
    """A target over the llama-server at ``url`` (``http://HOST:PORT?vocab=N``; optional
    ``eos=ID[,ID]``, the end-of-generation ids, else learned from ``/props`` and ``/tokenize``;
    ``tie=X&logprobs=X`` tolerances; ``stop=texts`` when the model is fuzzcache's tiny GGUF, whose
    token texts name stop strings). Learns the slots and their context from ``/slots`` (started
    with ``--slots``) and ``/props``."""
    from fuzzcache.targets import UnknownTarget

    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    try:
        slots = httpx.get(base + "/slots", timeout=10.0)
        slots.raise_for_status()
        props = httpx.get(base + "/props", timeout=10.0).json()
        if "vocab" not in options:
            raise UnknownTarget(f"llama-server:{url}: give the model's vocabulary size: llama-server:{base}?vocab=N")
        eos = [int(t) for t in options["eos"].split(",")] if "eos" in options else learn_end_of_generation(base, props)
    except httpx.HTTPError as exc:
        raise UnknownTarget(f"llama-server:{url}: no llama-server with --slots answers at {base} ({type(exc).__name__}: {exc})") from exc
    n_slots = len(slots.json())
    n_ctx = int(slots.json()[0]["n_ctx"])
    reuse = ((props.get("default_generation_settings") or {}).get("params") or {}).get("n_cache_reuse")
    config = EngineConfig(block_size=16, prefix_cache=True, max_num_seqs=n_slots, server_flags=("--cache-reuse", str(reuse)) if reuse else ())
    tol = Tolerance(tie=float(options.get("tie", 0.5)), logits=float(options.get("logprobs", 0.5)))
    return LlamaServerTarget(name or f"llama-server:{base}", base, int(options["vocab"]), min(MAX_MODEL_LEN, n_ctx - 1), config, tol,
                             end_of_generation=tuple(eos), stop_strings=options.get("stop") == "texts")


def learn_end_of_generation(base: str, props: dict) -> list[int]:
    """The id of the server's EOS token: its text from ``/props``, tokenized with special tokens parsed."""
    text = props.get("eos_token")
    ids = httpx.post(base + "/tokenize", json={"content": text, "parse_special": True}, timeout=10.0).json().get("tokens") if text else None
    return ids if ids and len(ids) == 1 else []


def llama_server_target(name: str = "llama", **options):
    """``llama-server:<arch>[+hf-oracle]`` (managed; one per process and name) or
    ``llama-server:http://HOST:PORT?vocab=N`` (attached)."""
    return managed_or_attached("llama-server", name, options, attach, ManagedLlamaServer, "http://HOST:PORT?vocab=N",
                               "runs f32 weights on the CPU (the KV type is a server flag of each config)")
