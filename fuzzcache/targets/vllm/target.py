"""vLLM as a target: ``vllm:<arch>`` (the shared factory's families vLLM runs: ``fuzzcache list``) runs vLLM's real V1 engine in-process on the
CPU over a tiny seeded model (the shared factory's weights, head_dim 32, saved as an HF
checkpoint), one HF forward over the same weights as the oracle.

======================  ===========================================================================
EngineConfig            vLLM
======================  ===========================================================================
requests, arrivals      ``LLMEngine.add_request`` before the engine step numbered ``arrival``;
                        ``LLMEngine.step`` until every request finished (greedy: temperature 0,
                        ``ignore_eos``, ``max_tokens`` = max_new_tokens, token ids in and out).
                        A hang (``TimeoutError``): STALL_STEPS steps in a row that change no
                        request with no arrival or abort due, or too many steps; its message
                        names where each unfinished request sits (``stuck_report``)
``block_size``          ``block_size`` (32 or 64: the CPU attention kernel's multiples of 32)
``num_blocks``          the block pool: ``num_gpu_blocks`` = num_blocks x KV-cache groups + 1
                        (vLLM's null block; an interleaved model's sliding and full layers are
                        two groups drawing on one pool); None = room for every request at full
                        length. A full pool preempts.
``max_batch_tokens``    ``max_num_batched_tokens``: the per-step token budget of chunked prefill
``chunk_size``          ``long_prefill_token_threshold``: at most this many prompt tokens per
                        request per step (adaptive threshold off)
``max_num_seqs``        ``max_num_seqs`` (at most 8)
``prefix_cache``        ``enable_prefix_caching`` (cache reset between calls)
``spec_k``, ``draft``   ``speculative_config``: method ``ngram`` (prompt lookup, 1..3-token
                        match), ``num_speculative_tokens`` = spec_k; only draft
                        ``prompt_lookup`` exists (the contract's bigram/trigram are refused)
======================  ===========================================================================

======================  ===========================================================================
Request                 vLLM
======================  ===========================================================================
``stop``                ``SamplingParams.stop_token_ids`` (``min_tokens`` 0, ``ignore_eos``): the
                        scheduler's ``check_stop`` ends the request at the first one and trims a
                        spec-decode step's tokens after it; the stop token stays in ``token_ids``
                        (``include_stop_str_in_output`` is about text only)
``abort_at``            ``LLMEngine.abort_request`` (vLLM's client abort: output processor, then
                        ``Scheduler.finish_requests(FINISHED_ABORTED)``) before the engine step
                        numbered ``abort_at``; the tokens are the last output before it, the
                        phase read from vLLM's ``Request`` (``num_output_tokens`` > 0: after
                        prefill; else ``num_computed_tokens`` > 0: during; else before)
``n`` > 1               ``SamplingParams.n``: vLLM fans the request out into n child requests
                        (``ParentRequest``, ids ``{i}_{id}``) that share prompt blocks through
                        the prefix cache when it is on. vLLM refuses n > 1 at temperature 0, so
                        they sample at temperature 1 with ``top_k`` = 1 (the argmax; raw
                        log-probs). With ``spec_k`` > 0 the target fans out n greedy requests
                        itself (vLLM's CPU rejection sampler crashes on non-greedy requests,
                        corpus/vllm-spec-sampling-cpu.md). An abort aborts every child
======================  ===========================================================================

``last_pool``: vLLM's block pool once every request ended (before the engine is drained):
total = ``num_gpu_blocks`` - 1 (the null block is never free nor leaked), free = the free
block queue (vLLM's ``get_num_free_blocks``) less its cached blocks (a block hash: evictable
prefix-cache blocks, which vLLM keeps in the free queue), cached = those.

Not expressible: ``interleave`` (vLLM always runs decode rows and prefill chunks in one step);
``max_new_tokens=0`` (vLLM generates at least one token: such requests get no tokens without a
call). ``Completion.logits`` are vLLM's full-vocab log-probs (``logprobs`` = vocab size, raw
log-probs of the model's logits), so ``reference_logits`` are the oracle's log-softmax.
"""

from __future__ import annotations

import itertools
import tempfile
from typing import Sequence

import torch

from fuzzcache.compare import Tolerance
from fuzzcache.contract import Completion, EngineConfig, PoolAccount, Request, validate_requests, with_forks
from fuzzcache.targets.tiny_models import ARCHITECTURES as FAMILIES, SHAPES, VOCAB_SIZE, families_for, save_checkpoint, tiny_model
from fuzzcache.targets.vllm.engines import EnginePool, EngineShape, install_scheduler, scheduler_config_for
from fuzzcache.targets.vllm.environment import engine_environment, import_vllm
from fuzzcache.targets.vllm.known_bugs import KNOWN_BUGS
from fuzzcache.targets.vllm.steps import StepRecorder

ARCHITECTURES = families_for("vllm")  # the shared factory's families vLLM runs here
MAX_SEQ_LEN = 256
BLOCK_SIZES = (32, 64)
MAX_REQUESTS = 4  # strategies.engine draws at most this many
MAX_SPEC_K = 4  # and at most this many drafts per step
FEATURES = frozenset({"batching", "paged", "prefix_cache", "chunked_prefill", "speculative", "preemption", "stop", "abort", "fork"})
# Measured (README, "vLLM"): log-probs within 1.2e-4 of the oracle's over 744 drawn requests (llama), 8.3e-5 (qwen2).
TOLERANCE = Tolerance(tie=1e-3, logits=1e-3)
# Steps in a row in which vLLM changed no request (nothing scheduled) with no arrival or abort due:
# the scheduler decides from its state alone, so it will not schedule anything later either (a hang).
STALL_STEPS = 32


class VLLMTarget:
    """vLLM's engine over the tiny ``arch`` model (see the module docstring for the mapping)."""

    features = FEATURES
    block_sizes = BLOCK_SIZES  # strategies draw block sizes from these
    drafts = ("prompt_lookup",)
    budget_covers_seqs = True  # vLLM refuses max_num_batched_tokens < max_num_seqs
    known_bugs = KNOWN_BUGS  # triaged upstream bugs: their findings are claimed, not failures (corpus/<id>.md)
    tolerance = TOLERANCE
    vocab_size = VOCAB_SIZE
    max_seq_len = MAX_SEQ_LEN

    def __init__(self, arch: str = "llama", dtype: torch.dtype = torch.float32, device: str = "cpu", name: str | None = None):
        from fuzzcache.targets import UnknownTarget

        if arch not in ARCHITECTURES:
            raise UnknownTarget(f"unknown target 'vllm:{arch}'; vLLM architectures: {', '.join('vllm:' + a for a in ARCHITECTURES)}")
        if dtype != torch.float32 or str(device) != "cpu":
            raise UnknownTarget(f"vllm:{arch} runs vLLM's CPU build in float32 only (asked for {dtype} on {device})")
        self.vllm = import_vllm()
        self.arch = arch
        self.name = name or f"vllm:{arch}"
        self.dtype, self.device = dtype, device
        self.model = tiny_model(arch, **SHAPES["wide_heads"], max_position_embeddings=MAX_SEQ_LEN)
        self.window = FAMILIES[arch].window  # strategies draw lengths around a sliding window
        if FAMILIES[arch].attention == "chunked":
            # vLLM asserts at the first step, not at build time: "attn_chunk_size 32 is not divisible by
            # block_size 64" (v1/attention/backends/utils.py make_local_attention_virtual_batches)
            self.block_sizes = tuple(b for b in BLOCK_SIZES if self.window % b == 0)
        self._folder = tempfile.TemporaryDirectory(prefix=f"fuzzcache-vllm-{arch}-")
        save_checkpoint(self.model, self._folder.name)
        self.engines = EnginePool(self._folder.name, VOCAB_SIZE, MAX_SEQ_LEN, MAX_REQUESTS, kv_groups(self.model.config))
        self._call_ids = itertools.count()
        self.last_stats: dict[str, int] = {}
        self.last_ignored: tuple[str, ...] = ()
        self.last_pool: PoolAccount | None = None
        self.last_timeline: list = []  # the StepEvents of the latest generate (``fuzzcache.timeline``)

    def warm_up(self) -> None:
        """Build every engine a config can ask for (``fuzzcache bench`` times this apart)."""
        for block_size in self.block_sizes:
            for spec_k in range(MAX_SPEC_K + 1):
                self.engines.llm(EngineShape(block_size, spec_k))

    @torch.no_grad()
    def reference_logits(self, tokens: Sequence[int]) -> torch.Tensor:
        """[len(tokens), vocab] log-probs of one HF forward over the same weights."""
        logits = self.model(torch.tensor([list(tokens)]), use_cache=False).logits[0].float()  # (T, V)
        return torch.log_softmax(logits, dim=-1)

    def generate(self, requests: Sequence[Request], config: EngineConfig) -> list[Completion]:
        self.last_pool = None  # set by a call that ran vLLM to the end
        validate_requests(requests, config, self.vocab_size, self.max_seq_len)
        if config.block_size not in BLOCK_SIZES:
            raise ValueError(f"EngineConfig.block_size={config.block_size}: vLLM's CPU attention runs blocks of {', '.join(map(str, BLOCK_SIZES))} here")
        if config.block_size not in self.block_sizes:
            raise ValueError(f"EngineConfig.block_size={config.block_size}: {self.name}'s chunks of {self.window} positions "
                             f"need a block size that divides them ({', '.join(map(str, self.block_sizes))})")
        if config.spec_k and config.draft not in self.drafts:
            raise ValueError(f"EngineConfig.draft={config.draft!r}: vLLM drafts by n-gram prompt lookup only ('prompt_lookup')")
        self.last_ignored = ()
        done = {r.rid: self._empty(r) for r in requests if r.max_new_tokens == 0}  # finished before any abort
        live = [r for r in requests if r.max_new_tokens > 0]
        if live:
            with engine_environment():
                done |= self._run(live, config)
        return [done[r.rid] for r in requests]

    def _empty(self, request: Request) -> Completion:
        return with_forks(Completion(request.rid, [], torch.zeros(0, self.vocab_size)), [], request.n, self.vocab_size)

    def _run(self, requests: list[Request], config: EngineConfig) -> dict[int, Completion]:
        shape = EngineShape(config.block_size, config.spec_k)
        llm = self.engines.llm(shape)
        scheduler_config = scheduler_config_for(config, llm.llm_engine.vllm_config.scheduler_config, MAX_SEQ_LEN)  # refused configs touch no engine
        try:
            return self._stepped(llm, requests, config, scheduler_config)
        except BaseException:
            self.engines.retire(shape)  # an error in vLLM's code (a finding): the next call gets a new engine
            raise

    def sampling_params(self, request: Request, n: int = 1):
        """Greedy (temperature 0, ``ignore_eos``, ``min_tokens`` 0), token ids in and out,
        full-vocab log-probs, ``stop`` as stop_token_ids. vLLM refuses n > 1 at temperature 0
        (``SamplingParams._verify_greedy_sampling``, re-run by the input processor's clone), so
        ``n`` > 1 samples at temperature 1 with top_k 1: the argmax (a random choice only between
        exactly tied tokens, which the tie-aware comparison accepts); log-probs stay raw
        (``logprobs_mode`` raw_logprobs), as for greedy requests."""
        from vllm import SamplingParams

        fields = {"max_tokens": request.max_new_tokens, "logprobs": self.vocab_size, "ignore_eos": True, "detokenize": False,
                  "stop_token_ids": list(request.stop), "min_tokens": 0}
        if n == 1:
            return SamplingParams(temperature=0.0, **fields)
        return SamplingParams(n=n, temperature=1.0, top_k=1, **fields)

    def _add(self, engine, scheduler, request: Request, external_id: str, spec_k: int) -> list[tuple[str, int, object]]:
        """Add ``request`` to vLLM; returns (external id, first continuation index, vLLM's Request of
        each continuation it covers). n > 1 is vLLM's ``n`` (``LLMEngine.add_request`` fans it out
        through ``ParentRequest`` into children ``{i}_{id}``, outputs come back per child as
        ``CompletionOutput.index``), except with speculative decoding: vLLM's CPU rejection sampler
        cannot run a non-greedy request (corpus/vllm-spec-sampling-cpu.md), so there the target
        fans out itself, as ParentRequest does: n greedy requests with the prompt, added together."""
        from vllm.inputs import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=list(request.prompt))
        if request.n == 1 or not spec_k:
            internal_id = engine.add_request(external_id, prompt, self.sampling_params(request, request.n))
            names = [internal_id] if request.n == 1 else [f"{i}_{internal_id}" for i in range(request.n)]  # parallel_sampling.py
            return [(external_id, 0, [scheduler.requests[name] for name in names])]
        added = []
        for i in range(request.n):
            internal_id = engine.add_request(f"{external_id}/{i}", prompt, self.sampling_params(request))
            added.append((f"{external_id}/{i}", i, [scheduler.requests[internal_id]]))
        return added

    def _stepped(self, llm, requests: list[Request], config: EngineConfig, scheduler_config) -> dict[int, Completion]:
        """Each request added at its arrival step and aborted at the start of its ``abort_at``
        step; the engine stepped until all ended."""
        scheduler = install_scheduler(llm, config, scheduler_config, self.engines.max_blocks(config.block_size))
        drafts = DraftCounter(scheduler)
        recorder = StepRecorder(scheduler, drafts)
        self.last_timeline = recorder.events  # filled step by step: a crash leaves the steps before it
        engine = llm.llm_engine
        call = next(self._call_ids)
        pending = sorted(requests, key=lambda r: r.arrival)
        aborting = sorted((r for r in requests if r.abort_at is not None), key=lambda r: r.abort_at)
        slot: dict[str, tuple[int, int]] = {}  # our external id -> (rid, index of its first continuation)
        external: dict[int, list[str]] = {}  # rid -> its external ids (one, or n where the target fans out)
        children: dict[int, list] = {}  # rid -> vLLM's Request of each continuation (preemptions, drafts, phase)
        latest: dict[tuple[int, int], tuple[object, int]] = {}  # (rid, index) -> last CompletionOutput (cumulative), cached tokens
        phases: dict[tuple[int, int], int] = {}
        max_steps = 4 * sum(len(r.prompt) + r.n * r.max_new_tokens for r in requests) + max(r.arrival for r in requests) + 64
        step = idle = 0
        state = progress(scheduler)
        while pending or engine.has_unfinished_requests():
            while pending and pending[0].arrival <= step:
                r = pending.pop(0)
                for external_id, first, reqs in self._add(engine, scheduler, r, f"{call}-{r.rid}", config.spec_k):
                    slot[external_id] = (r.rid, first)
                    external.setdefault(r.rid, []).append(external_id)
                    children.setdefault(r.rid, []).extend(reqs)
            while aborting and aborting[0].abort_at <= step:
                r = aborting.pop(0)
                self.abort(engine, r, external[r.rid], children[r.rid], phases)
            if not pending and not engine.has_unfinished_requests():
                break  # the last live requests were just aborted
            for out in engine.step():
                rid, first = slot[out.request_id]
                for sample in out.outputs:
                    latest[(rid, first + sample.index)] = (sample, out.num_cached_tokens or 0)
            recorder.after_step(step, children)
            step += 1
            before, state = state, progress(scheduler)
            idle = idle + 1 if state == before and not pending and not aborting else 0  # nothing scheduled, nothing due
            if idle >= STALL_STEPS or step > max_steps:
                stuck = stuck_report(engine, scheduler, children, step, idle)  # before the abort finishes them all
                engine.abort_request(list(slot))
                raise TimeoutError(stuck)
        self.last_pool = pool_account(scheduler)  # every request ended, as its client sees it
        for _ in range(max_steps):  # tell the model runner about the last finished requests
            if not scheduler.has_requests():
                break
            engine.step()
        preemptions = {(rid, i): c.num_preemptions for rid, cs in children.items() for i, c in enumerate(cs)}
        self.last_stats = {"steps": step, "preemptions": sum(preemptions.values())}
        done = {}
        for r in requests:
            first, *forks = [
                self._completion(r, latest.get((r.rid, i)), preemptions[(r.rid, i)], drafts.of(c.request_id), phases.get((r.rid, i)))
                for i, c in enumerate(children[r.rid])
            ]
            done[r.rid] = with_forks(first, forks, r.n, self.vocab_size)
        return done

    @staticmethod
    def abort(engine, request: Request, external_ids: list[str], children: list, phases: dict) -> None:
        """vLLM's client abort (``LLMEngine.abort_request``: the output processor drops the
        request, all children of an n > 1 request included, and the engine core's
        ``Scheduler.finish_requests`` frees them); each continuation still live gets its phase
        from vLLM's Request."""
        for i, child in enumerate(children):
            if not child.is_finished():
                phases[(request.rid, i)] = 3 if child.num_output_tokens else 2 if child.num_computed_tokens else 1
        engine.abort_request(external_ids)

    def _completion(self, request: Request, output, preemptions: int, drafts: tuple[int, int], abort_phase: int | None) -> Completion:
        sample, cached = output if output is not None else (None, 0)  # None: aborted before its first token
        rows = sample.logprobs if sample is not None else []
        logits = torch.tensor([[row[v].logprob for v in range(self.vocab_size)] for row in rows]).reshape(len(rows), self.vocab_size)  # (new, V)
        stats = {"cached_prefix_tokens": cached, "preemptions": preemptions, "draft_proposed": drafts[0], "draft_accepted": drafts[1]}
        if abort_phase:
            stats["abort_phase"] = abort_phase
        return Completion(request.rid, list(sample.token_ids) if sample is not None else [], logits, stats)


def progress(scheduler) -> tuple:
    """What a step changes when vLLM makes progress: each request the scheduler holds, its status
    and computed and output tokens (a finished request leaves ``scheduler.requests``)."""
    return tuple((r.request_id, r.status, r.num_computed_tokens, r.num_output_tokens) for r in scheduler.requests.values())


def stuck_report(engine, scheduler, children: dict[int, list], steps: int, idle: int) -> str:
    """Where vLLM is stuck, read before the target aborts its requests: the unfinished
    continuations, the scheduler queue each sits in (tokens, computed tokens, and for a waiting
    request the prefix-cache hit its admission would find), the token budget a step has, and
    what the output processor (the client's side) still awaits."""
    names = {id(c): f"request {rid}" + (f" continuation {i}" if len(cs) > 1 else "") for rid, cs in children.items() for i, c in enumerate(cs)}
    unfinished = [c for cs in children.values() for c in cs if not c.is_finished()]
    cache = scheduler.kv_cache_manager

    def describe(r) -> str:
        name = names.get(id(r), r.request_id)
        status = "" if r.status.name in ("WAITING", "RUNNING") else f"{r.status.name}, "
        text = f"{name} ({status}{r.num_tokens} tokens, {r.num_computed_tokens} computed"
        if r in waiting and r.num_computed_tokens == 0 and scheduler.cache_config.enable_prefix_caching:
            hit = cache.get_computed_blocks(r)[1]  # what admission finds (no side effect: a lookup)
            text += f", {hit} in the prefix cache, {r.num_tokens - hit} to compute"
        return text + ")"

    waiting = [*scheduler.kv_holding_waiting, *scheduler.waiting]
    queues = "; ".join(f"{queue}: {', '.join(map(describe, reqs)) or 'none'}" for queue, reqs in (("waiting", waiting), ("running", scheduler.running)))
    config = scheduler.scheduler_config
    budget = f"token budget {config.max_num_batched_tokens} a step (max_num_batched_tokens)"
    if config.long_prefill_token_threshold:
        budget += f", at most {config.long_prefill_token_threshold} prompt tokens a request (long_prefill_token_threshold)"
    if scheduler.num_spec_tokens:
        budget += f", a speculative decode step takes 1 + {scheduler.num_spec_tokens} tokens"
    total = sum(len(cs) for cs in children.values())
    when = f"nothing scheduled in the last {idle} steps" if idle else f"still running after {steps} steps"
    awaited = engine.output_processor.get_num_unfinished_requests()
    held = "vLLM's scheduler holds" if any(r.request_id in scheduler.requests for r in unfinished) else "vLLM's scheduler holds none of them"
    return (f"vLLM made no progress ({when}): {len(unfinished)} of {total} continuations unfinished, "
            f"the output processor awaits {awaited} request{'s' if awaited != 1 else ''}; {held}: {queues}; {budget}")


def pool_account(scheduler) -> PoolAccount:
    """vLLM's block pool in the contract's terms: the null block (block 0, taken out of the free
    queue for good when the pool is built) is not counted; evictable prefix-cache blocks sit in
    vLLM's free queue with their hash and are counted as cached, not free."""
    pool = scheduler.kv_cache_manager.block_pool
    cached = sum(block.block_hash is not None for block in pool.free_block_queue.get_all_free_blocks())
    return PoolAccount(total=pool.num_gpu_blocks - 1, free=pool.get_num_free_blocks() - cached, cached=cached)


class DraftCounter:
    """Drafts proposed and accepted per request id, observed where vLLM's scheduler records them
    (``Scheduler.make_spec_decoding_stats``, wrapped on this one instance)."""

    def __init__(self, scheduler):
        self.counts: dict[str, list[int]] = {}
        record = scheduler.make_spec_decoding_stats

        def observed(stats, num_draft_tokens, num_accepted_tokens, num_invalid_spec_tokens, request_id):
            invalid = (num_invalid_spec_tokens or {}).get(request_id, 0)
            counts = self.counts.setdefault(request_id, [0, 0])
            counts[0] += num_draft_tokens - invalid
            counts[1] += num_accepted_tokens
            return record(stats, num_draft_tokens=num_draft_tokens, num_accepted_tokens=num_accepted_tokens,
                          num_invalid_spec_tokens=num_invalid_spec_tokens, request_id=request_id)

        scheduler.make_spec_decoding_stats = observed

    def of(self, request_id: str) -> tuple[int, int]:
        proposed, accepted = self.counts.get(request_id, (0, 0))
        return proposed, accepted


def kv_groups(config) -> int:
    """The KV-cache groups vLLM makes of ``config``'s layers: one per layer kind (Gemma 3's
    sliding and full layers: 2), else 1."""
    return len(set(getattr(config, "layer_types", None) or ["one"]))
