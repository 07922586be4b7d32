"""vLLM as a target: ``vllm:<arch>`` (llama, qwen2) runs vLLM's real V1 engine in-process on the
CPU over a tiny seeded model (the shared factory's weights, head_dim 32, saved as an HF
checkpoint), one HF forward over the same weights as the oracle.

======================  ===========================================================================
EngineConfig            vLLM
======================  ===========================================================================
requests, arrivals      ``LLMEngine.add_request`` before the engine step numbered ``arrival``;
                        ``LLMEngine.step`` until every request finished (greedy: temperature 0,
                        ``ignore_eos``, ``max_tokens`` = max_new_tokens, token ids in and out)
``block_size``          ``block_size`` (32 or 64: the CPU attention kernel's multiples of 32)
``num_blocks``          the block pool: ``num_gpu_blocks`` = num_blocks + 1 (vLLM's null block);
                        None = room for every request at full length. A full pool preempts.
``max_batch_tokens``    ``max_num_batched_tokens``: the per-step token budget of chunked prefill
``chunk_size``          ``long_prefill_token_threshold``: at most this many prompt tokens per
                        request per step (adaptive threshold off)
``max_num_seqs``        ``max_num_seqs`` (at most 8)
``prefix_cache``        ``enable_prefix_caching`` (cache reset between calls)
``spec_k``, ``draft``   ``speculative_config``: method ``ngram`` (prompt lookup, 1..3-token
                        match), ``num_speculative_tokens`` = spec_k; only draft
                        ``prompt_lookup`` exists (the contract's bigram/trigram are refused)
======================  ===========================================================================

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
from fuzzcache.contract import Completion, EngineConfig, Request, validate_requests
from fuzzcache.targets.tiny_models import SHAPES, VOCAB_SIZE, save_checkpoint, tiny_model
from fuzzcache.targets.vllm.engines import EnginePool, EngineShape, install_scheduler, scheduler_config_for
from fuzzcache.targets.vllm.environment import engine_environment, import_vllm

ARCHITECTURES = ("llama", "qwen2")
MAX_SEQ_LEN = 256
BLOCK_SIZES = (32, 64)
MAX_REQUESTS = 4  # strategies.engine draws at most this many
MAX_SPEC_K = 4  # and at most this many drafts per step
FEATURES = frozenset({"batching", "paged", "prefix_cache", "chunked_prefill", "speculative", "preemption"})
# Measured (README, "vLLM"): log-probs within 1.2e-4 of the oracle's over 744 drawn requests (llama), 8.3e-5 (qwen2).
TOLERANCE = Tolerance(tie=1e-3, logits=1e-3)


class VLLMTarget:
    """vLLM's engine over the tiny ``arch`` model (see the module docstring for the mapping)."""

    features = FEATURES
    block_sizes = BLOCK_SIZES  # strategies draw block sizes from these
    drafts = ("prompt_lookup",)
    budget_covers_seqs = True  # vLLM refuses max_num_batched_tokens < max_num_seqs
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
        self._folder = tempfile.TemporaryDirectory(prefix=f"fuzzcache-vllm-{arch}-")
        save_checkpoint(self.model, self._folder.name)
        self.engines = EnginePool(self._folder.name, VOCAB_SIZE, MAX_SEQ_LEN, MAX_REQUESTS)
        self._call_ids = itertools.count()
        self.last_stats: dict[str, int] = {}
        self.last_ignored: tuple[str, ...] = ()

    def warm_up(self) -> None:
        """Build every engine a config can ask for (``fuzzcache bench`` times this apart)."""
        for block_size in BLOCK_SIZES:
            for spec_k in range(MAX_SPEC_K + 1):
                self.engines.llm(EngineShape(block_size, spec_k))

    @torch.no_grad()
    def reference_logits(self, tokens: Sequence[int]) -> torch.Tensor:
        """[len(tokens), vocab] log-probs of one HF forward over the same weights."""
        logits = self.model(torch.tensor([list(tokens)]), use_cache=False).logits[0].float()  # (T, V)
        return torch.log_softmax(logits, dim=-1)

    def generate(self, requests: Sequence[Request], config: EngineConfig) -> list[Completion]:
        validate_requests(requests, config, self.vocab_size, self.max_seq_len)
        if config.block_size not in BLOCK_SIZES:
            raise ValueError(f"EngineConfig.block_size={config.block_size}: vLLM's CPU attention runs blocks of {', '.join(map(str, BLOCK_SIZES))} here")
        if config.spec_k and config.draft not in self.drafts:
            raise ValueError(f"EngineConfig.draft={config.draft!r}: vLLM drafts by n-gram prompt lookup only ('prompt_lookup')")
        self.last_ignored = ()
        done = {r.rid: Completion(r.rid, [], torch.zeros(0, self.vocab_size)) for r in requests if r.max_new_tokens == 0}
        live = [r for r in requests if r.max_new_tokens > 0]
        if live:
            with engine_environment():
                done |= self._run(live, config)
        return [done[r.rid] for r in requests]

    def _run(self, requests: list[Request], config: EngineConfig) -> dict[int, Completion]:
        shape = EngineShape(config.block_size, config.spec_k)
        llm = self.engines.llm(shape)
        scheduler_config = scheduler_config_for(config, llm.llm_engine.vllm_config.scheduler_config, MAX_SEQ_LEN)  # refused configs touch no engine
        try:
            return self._stepped(llm, requests, config, scheduler_config)
        except BaseException:
            self.engines.retire(shape)  # an error in vLLM's code (a finding): the next call gets a new engine
            raise

    def _stepped(self, llm, requests: list[Request], config: EngineConfig, scheduler_config) -> dict[int, Completion]:
        """Each request added at its arrival step; the engine stepped until all finished."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        scheduler = install_scheduler(llm, config, scheduler_config, self.engines.max_blocks(config.block_size))
        drafts = DraftCounter(scheduler)
        engine = llm.llm_engine
        call = next(self._call_ids)
        ids = {r.rid: f"{call}-{r.rid}" for r in requests}  # ours; vLLM's internal ids are in ``scheduled``
        pending = sorted(requests, key=lambda r: r.arrival)
        scheduled: dict[int, object] = {}  # rid -> vLLM's Request (its preemption count)
        finished: dict[str, object] = {}
        max_steps = 4 * sum(len(r.prompt) + r.max_new_tokens for r in requests) + max(r.arrival for r in requests) + 64
        step = 0
        while pending or engine.has_unfinished_requests():
            while pending and pending[0].arrival <= step:
                r = pending.pop(0)
                params = SamplingParams(temperature=0.0, max_tokens=r.max_new_tokens, logprobs=self.vocab_size, ignore_eos=True, detokenize=False)
                internal_id = engine.add_request(ids[r.rid], TokensPrompt(prompt_token_ids=list(r.prompt)), params)
                scheduled[r.rid] = scheduler.requests[internal_id]
            finished |= {out.request_id: out for out in engine.step() if out.finished}
            step += 1
            if step > max_steps:
                engine.abort_request(list(ids.values()))
                raise TimeoutError(f"vLLM did not finish {len(requests) - len(finished)} of {len(requests)} requests in {max_steps} steps")
        while scheduler.has_requests():  # tell the model runner about the last finished requests
            engine.step()
        preemptions = {rid: req.num_preemptions for rid, req in scheduled.items()}
        self.last_stats = {"steps": step, "preemptions": sum(preemptions.values())}
        return {r.rid: self._completion(r, finished[ids[r.rid]], preemptions[r.rid], drafts.of(scheduled[r.rid].request_id)) for r in requests}

    def _completion(self, request: Request, output, preemptions: int, drafts: tuple[int, int]) -> Completion:
        sample = output.outputs[0]
        logits = torch.tensor([[row[v].logprob for v in range(self.vocab_size)] for row in sample.logprobs])  # (new, V)
        stats = {
            "cached_prefix_tokens": output.num_cached_tokens or 0, "preemptions": preemptions,
            "draft_proposed": drafts[0], "draft_accepted": drafts[1],
        }
        return Completion(request.rid, list(sample.token_ids), logits, stats)


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
