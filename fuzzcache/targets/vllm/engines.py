"""vLLM engines reused across calls. An engine is built per (block size, spec_k): the fields
its model runner is built around (KV layout, draft slots). Every other EngineConfig field is
vLLM's scheduler's, so each call gets a fresh vLLM ``Scheduler`` built by vLLM's own constructor
from copies of the engine's configs with those fields set (validated by vLLM's SchedulerConfig):
a call starts with an empty prefix cache and pool, as in a fresh engine, without the 0.2-10 s of
a new ``LLM``."""

from __future__ import annotations

import atexit
import copy
import dataclasses
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from fuzzcache.contract import EngineConfig
from fuzzcache.targets.vllm.environment import engine_environment

MAX_NUM_SEQS = 8  # the contract's default; a config asking for more is refused
NGRAM_MAX = 3  # prompt lookup matches the last 1..3 tokens


@dataclass(frozen=True)
class EngineShape:
    block_size: int
    spec_k: int


class EnginePool:
    """One ``vllm.LLM`` per EngineShape over the checkpoint in ``folder``."""

    def __init__(self, folder: str, vocab_size: int, max_model_len: int, max_requests: int, kv_groups: int = 1):
        self.folder = folder
        self.kv_groups = kv_groups  # KV-cache groups vLLM makes of the model's layers (one per attention kind)
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.max_batch_tokens = max_requests * max_model_len  # the runner's buffers; a call's budget is at most this
        self.engines: dict[EngineShape, object] = {}
        # Engines replaced after an error in vLLM's code, kept alive: a vllm.LLM that is garbage
        # collected tears down the process-wide parallel state every other engine runs on.
        self.retired: list[object] = []
        atexit.register(self.skip_teardown_at_exit)

    def skip_teardown_at_exit(self) -> None:
        """vLLM tears each engine down at exit with a full ``gc.collect()`` (seconds each in a
        process holding a fuzz campaign's objects, over a minute for ten engines); the process is
        ending, so there is nothing to free: the engine core's finalizers are detached."""
        for llm in [*self.engines.values(), *self.retired]:
            client = llm.llm_engine.engine_core
            finalizer = getattr(client, "_finalizer", None)
            if finalizer is not None:
                finalizer.detach()

    def max_blocks(self, block_size: int) -> int:
        """Blocks the engine's KV tensors hold: every request at full length in every KV-cache
        group, plus vLLM's null block."""
        return (self.max_batch_tokens // block_size + MAX_NUM_SEQS) * self.kv_groups + 1

    def retire(self, shape: EngineShape) -> None:
        """The next call of this shape gets a new engine (this one's state is unknown after an error)."""
        if shape in self.engines:
            self.retired.append(self.engines.pop(shape))

    def llm(self, shape: EngineShape):
        if shape not in self.engines:
            from vllm import LLM

            spec = None
            if shape.spec_k:
                spec = {"method": "ngram", "num_speculative_tokens": shape.spec_k, "prompt_lookup_min": 1, "prompt_lookup_max": NGRAM_MAX}
            blocks = self.max_blocks(shape.block_size)
            with engine_environment(), kernel_scan_safe(), expert_group_ready(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # vLLM's own deprecation notices, once per engine
                self.engines[shape] = LLM(
                    model=self.folder, skip_tokenizer_init=True, dtype="float32", seed=0, enforce_eager=True,
                    max_model_len=self.max_model_len, max_logprobs=self.vocab_size, block_size=shape.block_size,
                    num_gpu_blocks_override=blocks, kv_cache_memory_bytes=blocks * shape.block_size * 4096,
                    max_num_seqs=MAX_NUM_SEQS, max_num_batched_tokens=self.max_batch_tokens,
                    enable_prefix_caching=True, speculative_config=spec,
                )
        return self.engines[shape]


@contextmanager
def kernel_scan_safe() -> Iterator[None]:
    """Work around a vLLM 0.32.0 crash (corpus/vllm-rebind-kernels-llvmlite.md): building an
    LLM scans every module in sys.modules (``triton_utils.dispatcher._rebind_kernels``) and calls
    ``vars(value).get`` on any value that answers ``hasattr(value, "__dict__")``; llvmlite's
    ``binding.ffi.lib`` (imported by numba for the n-gram drafter of the first speculative engine)
    answers with a function wrapper, and every later LLM fails with AttributeError. The module is
    hidden from sys.modules for the scan (it holds no kernel) and put back after."""
    hidden = sys.modules.pop("llvmlite.binding.ffi", None)
    try:
        yield
    finally:
        if hidden is not None:
            sys.modules["llvmlite.binding.ffi"] = hidden


@contextmanager
def expert_group_ready() -> Iterator[None]:
    """Let a MoE family's LLM follow a dense one's in this process (``vllm:*`` campaigns build
    each family in turn). vLLM 0.32.0 makes its parallel groups once per process, for the first
    model: no expert-parallel group for a dense one (``parallel_state.py``: "Don't create EP group
    for dense models"), and a later LLM finds the groups made (``ensure_model_parallel_initialized``)
    and builds Llama 4's MoE layers with none: AssertionError "expert parallel group is not
    initialized". The missing group is made here as vLLM would have for this one-rank world."""
    from vllm.distributed import parallel_state

    if parallel_state.model_parallel_is_initialized() and parallel_state._EP is None:
        import torch.distributed

        world = parallel_state.get_world_group()
        parallel_state._EP = parallel_state.init_model_parallel_group(
            [[world.rank]], world.local_rank, torch.distributed.get_backend(world.device_group), group_name="ep")
    yield


def scheduler_config_for(config: EngineConfig, engine_config, max_model_len: int):
    """vLLM's SchedulerConfig for ``config``, from the engine's (``engine_config``), validated by
    vLLM itself; a ValueError naming the EngineConfig field when vLLM refuses it."""
    if config.max_num_seqs > MAX_NUM_SEQS:
        raise ValueError(f"EngineConfig.max_num_seqs={config.max_num_seqs}: this target's engines run at most {MAX_NUM_SEQS}")
    budget = config.max_batch_tokens if config.max_batch_tokens is not None else engine_config.max_num_batched_tokens
    # A speculative engine's VllmConfig sets max_num_scheduled_tokens from its budget (less the
    # drafting slots, none for n-gram): so does the call's, or vLLM would schedule by the engine's.
    scheduled = None if engine_config.max_num_scheduled_tokens is None else budget
    try:
        return dataclasses.replace(
            engine_config, max_model_len=max_model_len, is_encoder_decoder=False,
            max_num_seqs=config.max_num_seqs, max_num_batched_tokens=budget, max_num_scheduled_tokens=scheduled,
            long_prefill_token_threshold=config.chunk_size or 0, long_prefill_token_threshold_adaptive=False,
        )
    except ValueError as exc:  # vLLM's own rule, e.g. a token budget below max_num_seqs
        raise ValueError(f"EngineConfig.max_batch_tokens={config.max_batch_tokens}: vLLM refuses it ({exc})") from exc


def install_scheduler(llm, config: EngineConfig, scheduler_config, max_blocks: int):
    """A fresh vLLM Scheduler on ``llm``'s engine core for ``config`` (``scheduler_config`` from
    scheduler_config_for); returns it. vLLM's block pool keeps block 0 as its null block, and
    its KV-cache groups (one per attention kind: sliding and full layers of an interleaved model)
    draw their blocks from the one pool, so ``num_blocks`` is room for that many blocks in every
    group: num_blocks x groups + 1 (a pool that holds a request for llama holds it here too)."""
    core = llm.llm_engine.engine_core.engine_core
    old = core.scheduler
    vllm_config = copy.copy(core.vllm_config)
    vllm_config.scheduler_config = scheduler_config
    groups = len(old.kv_cache_config.kv_cache_groups)
    blocks = max_blocks if config.num_blocks is None else config.num_blocks * groups + 1
    vllm_config.cache_config = copy.copy(old.cache_config)
    vllm_config.cache_config.enable_prefix_caching = config.prefix_cache
    vllm_config.cache_config.num_gpu_blocks = blocks
    kv_cache_config = dataclasses.replace(old.kv_cache_config, num_blocks=blocks)
    scheduler = type(old)(
        vllm_config=vllm_config, kv_cache_config=kv_cache_config,
        structured_output_manager=old.structured_output_manager, block_size=old.block_size,
        hash_block_size=old.hash_block_size, include_finished_set=old.finished_req_ids_dict is not None,
        log_stats=old.log_stats,
    )
    scheduler.finished_req_ids = old.finished_req_ids  # none after a drained call; kept for the model runner
    core.scheduler = scheduler
    return scheduler
