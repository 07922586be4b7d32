"""Torch threading for fuzz runs. The models under test are tiny: one intra-op thread is
~10x faster than two on a shared 2-core machine (thread hand-offs dominate microsecond ops).
Scale out with workers sharing a database instead. Override with FUZZCACHE_TORCH_THREADS."""

from __future__ import annotations

import os

import torch


def configure_threads() -> int:
    n = int(os.environ.get("FUZZCACHE_TORCH_THREADS", "1"))
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()
