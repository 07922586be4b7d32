"""The reference engine as a target: TinyGPT plus the scheduler, every feature on offer."""

from __future__ import annotations

from typing import Sequence

import torch

from fuzzcache.contract import FEATURES, Completion, EngineConfig, Request, validate_requests
from fuzzcache.engine.ops import DEFAULT_OPS, EngineOps
from fuzzcache.engine.scheduler import Scheduler
from fuzzcache.model import ModelConfig, TinyGPT
from fuzzcache.oracle import full_logits


class ReferenceTarget:
    """fuzzcache's own engine. ``ops`` are the operations its fast paths use (a planted bug
    replaces one); ``surgery`` the KV-cache surgery operations on tiny HF models;
    ``last_stats`` holds the engine-wide counters of the latest ``generate``
    (steps, evictions, prefix_hit_blocks, fused_steps, preemptions)."""

    scheduler_class = Scheduler  # mutants and tests may swap in a subclass

    def __init__(
        self,
        model_config: ModelConfig | None = None,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        name: str = "reference",
        ops: EngineOps = DEFAULT_OPS,
        surgery=None,
    ):
        self.model = TinyGPT(model_config or ModelConfig(), dtype=dtype, device=device)
        self.dtype = dtype
        self.device = device
        self.ops = ops
        self.name = name
        self.vocab_size = self.model.config.vocab_size
        self.max_seq_len = self.model.config.max_seq_len
        self.features = FEATURES
        self.last_stats: dict[str, int] = {}
        self.last_pool = None  # a PoolAccount after each generate
        self.last_timeline: list = []  # the StepEvents of the latest generate (``fuzzcache.timeline``)
        self._surgery = surgery

    @property
    def surgery(self):
        """The KV-cache surgery ops (``fuzzcache.surgery.ops.SurgeryOps``) the surgery properties
        exercise; imported on first use, so the reference target never imports transformers."""
        if self._surgery is None:
            from fuzzcache.surgery.ops import DEFAULT_SURGERY

            self._surgery = DEFAULT_SURGERY
        return self._surgery

    def reference_logits(self, tokens: Sequence[int]) -> torch.Tensor:
        return full_logits(self.model, tokens)

    def generate(self, requests: Sequence[Request], config: EngineConfig) -> list[Completion]:
        validate_requests(requests, config, self.vocab_size, self.max_seq_len)
        scheduler = self.scheduler_class(self.model, config, list(requests), self.ops)
        self.last_timeline = scheduler.timeline  # filled step by step: a crash leaves the steps before it
        completions = scheduler.run()
        self.last_stats = scheduler.engine_stats
        self.last_pool = scheduler.pool_account
        return completions
