"""``fuzzcache bench``: examples/s per property, and the share of wall time spent inside model
forwards (the rest is fuzzer overhead: Hypothesis, scheduling, comparison)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from hypothesis import settings as Settings

from fuzzcache.properties import Property
from fuzzcache.runner import run_property


class ForwardTimer:
    """Wall time inside top-level ``nn.Module`` forwards, via global module hooks."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0
        self._start = 0.0
        self._handles: list = []

    def _pre(self, module, args) -> None:
        if self._depth == 0:
            self._start = time.perf_counter()
        self._depth += 1

    def _post(self, module, args, output) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._start

    def __enter__(self) -> "ForwardTimer":
        self._handles = [
            torch.nn.modules.module.register_module_forward_pre_hook(self._pre),
            torch.nn.modules.module.register_module_forward_hook(self._post),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


@dataclass
class BenchRow:
    property: str
    examples: int
    seconds: float
    forward_seconds: float

    @property
    def rate(self) -> float:
        return self.examples / self.seconds if self.seconds else 0.0

    @property
    def forward_share(self) -> float:
        return self.forward_seconds / self.seconds if self.seconds else 0.0


def bench(target, target_spec: str, properties: list[Property], examples: int) -> list[BenchRow]:
    """Run each property for ``examples`` derandomized examples (no database, no corpus)."""
    rows = []
    for prop in properties:
        s = Settings(max_examples=examples, deadline=None, database=None, derandomize=True)
        with ForwardTimer() as timer:
            start = time.perf_counter()
            run = run_property(prop, target, target_spec, s, corpus_dir=None)
            elapsed = time.perf_counter() - start
        rows.append(BenchRow(prop.id, run.examples, elapsed, timer.seconds))
    return rows
