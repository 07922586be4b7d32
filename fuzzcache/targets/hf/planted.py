"""Planted bugs in wrapped transformers paths, to show the hf:<arch> targets catch them:

    fuzzcache fuzz --target fuzzcache.targets.hf.planted:crop_drops_last_position

Each is a zero-argument factory returning an HFTarget (llama) with one bug. The lifecycle ones
are planted in the continuous-batching engine through ``HFTarget.engine_hook``.
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


def cancel_keeps_blocks() -> HFTarget:
    """``Scheduler.clear_cancelled_requests`` drops a cancelled request from the scheduler but
    never calls ``cache.free_blocks``: an abort's blocks stay held (the leak check)."""
    target = HFTarget("llama", name="hf:llama+cancel_keeps_blocks")
    target.engine_hook = _cancel_keeping_blocks
    return target


def _cancel_keeping_blocks(manager, processor) -> None:
    scheduler = processor.scheduler

    def clear_cancelled_requests() -> list:
        cancelled = []
        with scheduler._cancellation_lock:
            for request_id in scheduler._requests_to_cancel:
                state = scheduler.active_requests.pop(request_id, None) or scheduler.waiting_requests.pop(request_id, None)
                if state is not None:
                    cancelled.append(state)
                if request_id in scheduler.waiting_requests_order:
                    scheduler.waiting_requests_order.remove(request_id)
                # the bug: no scheduler.cache.free_blocks(request_id)
            scheduler._requests_to_cancel = set()
        return cancelled

    scheduler.clear_cancelled_requests = clear_cancelled_requests


def stop_token_dropped() -> HFTarget:
    """``RequestState.update_and_check_completion`` finishes a request at its EOS (stop) token
    without appending it: the output ends one token early, without its stop token."""
    target = HFTarget("llama", name="hf:llama+stop_token_dropped")
    target.engine_hook = _dropping_stop_tokens
    return target


def _dropping_stop_tokens(manager, processor) -> None:
    from transformers.generation.continuous_batching.requests import (
        RequestState,
        RequestStatus,
    )

    class StopTokenDropped(RequestState):
        def update_and_check_completion(self, token_id: int, logprob) -> bool:
            if self.status == RequestStatus.DECODING and token_id in self._eos_token_ids:
                self.status = RequestStatus.FINISHED
                return True
            return super().update_and_check_completion(token_id, logprob)

    add = processor.scheduler.add_waiting_request

    def add_waiting_request(state) -> None:
        state.__class__ = StopTokenDropped
        add(state)

    processor.scheduler.add_waiting_request = add_waiting_request
