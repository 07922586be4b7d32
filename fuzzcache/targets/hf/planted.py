"""Planted bugs in wrapped transformers paths, to show the hf:<arch> targets catch them:

    fuzzcache fuzz --target fuzzcache.targets.hf.planted:crop_drops_last_position

Each is a zero-argument factory returning an HFTarget (llama) with one bug.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from fuzzcache.targets.hf.target import HFTarget


def crop_drops_last_position() -> HFTarget:
    """After speculative verification, ``DynamicCache.crop(-n)`` also drops the last kept KV
    position (the newest accepted token's key and value), whenever a draft was rejected."""
    from transformers import DynamicCache

    class CropDropsLastPosition(DynamicCache):
        def crop(self, max_length: int) -> None:
            super().crop(max_length - 1 if max_length < 0 else max_length)

    return HFTarget("llama", name="hf:llama+crop_drops_last_position", cache_class=CropDropsLastPosition)


class PositionsSkipOn(HFTarget):
    """On one path only, positions >= 12 reach the rotary embedding one too high (a position
    off by one after a cache boundary)."""

    def __init__(self, broken_path: str):
        super().__init__("llama", name=f"hf:llama+positions_skip_after_12_on_{broken_path}")
        self.broken_path = broken_path

    def generate_via(self, path, requests, config):
        with self._skipping(path == self.broken_path):
            return super().generate_via(path, requests, config)

    @contextmanager
    def _skipping(self, on: bool):
        hooks = []
        if on:
            for model in (self.model, self.cb_model):
                hooks.append(model.model.rotary_emb.register_forward_pre_hook(_skip_after_12, with_kwargs=True))
        try:
            yield
        finally:
            for h in hooks:
                h.remove()


def _skip_after_12(module, args, kwargs):
    """rotary_emb(x, position_ids): position_ids (B, T) >= 12 moved one up."""
    args, kwargs = list(args), dict(kwargs)
    if len(args) > 1:
        args[1] = torch.where(args[1] >= 12, args[1] + 1, args[1])
    else:
        kwargs["position_ids"] = torch.where(kwargs["position_ids"] >= 12, kwargs["position_ids"] + 1, kwargs["position_ids"])
    return tuple(args), kwargs


def positions_skip_on_static() -> HFTarget:
    return PositionsSkipOn("static")


def positions_skip_on_batched() -> HFTarget:
    return PositionsSkipOn("batched")


def positions_skip_on_continuous() -> HFTarget:
    return PositionsSkipOn("continuous")
