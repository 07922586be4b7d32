"""Targets that kill or stall their own process, for tests/test_isolation.py. Each sets
``isolate = True``: ``resolve_target`` runs it in a worker process."""

from __future__ import annotations

import os
import time

from fuzzcache.model import ModelConfig
from fuzzcache.targets.reference import ReferenceTarget

SMALL = ModelConfig(vocab_size=32, n_layer=1, n_head=2, n_kv_head=1, head_dim=4, max_seq_len=16)


class AbortsOnToken7(ReferenceTarget):
    """A native assert, as llama.cpp's GGML_ASSERT: ``os.abort()`` when a prompt of 3 tokens or
    more holds token 7 (the minimal trigger: one request, prompt (0, 0, 7)). No optional features."""

    isolate = True

    def __init__(self, **options):
        super().__init__(SMALL, name="aborts-on-7", **options)
        self.features = frozenset()

    def generate(self, requests, config):
        if any(len(r.prompt) >= 3 and 7 in r.prompt for r in requests):
            print("aborts-on-7: GGML_ASSERT(token != 7) failed", file=__import__("sys").stderr, flush=True)
            os.abort()
        return super().generate(requests, config)


class SleepsOnToken5(AbortsOnToken7):
    """Never returns when a prompt holds token 5."""

    def generate(self, requests, config):
        if any(5 in r.prompt for r in requests):
            while True:
                time.sleep(1)
        return ReferenceTarget.generate(self, requests, config)


class Correct(ReferenceTarget):
    """The reference engine, asking for a worker process."""

    isolate = True
