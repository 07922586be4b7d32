"""Cache surgery on a transformers ``DynamicCache``: build, truncate, move the document, suffix caches, NLL.

Every operation returns a new cache and leaves its input alone. Caches are built with one
full (non-sliding) layer per model layer, so every position stays addressable; a cache whose
sliding layers have already dropped positions is refused, not silently mis-cut.
Positions: a cache of T entries holds positions 0..T-1; a BOS kept at the front stays at 0.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch

from fuzzcache.surgery.rotary import RopeInfo, rope_info, rope_shift


class CacheSurgeryError(ValueError):
    """An operation that cannot be done right on this cache (dropped positions, an empty span, ...)."""


def layers_of(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (keys, values) of each layer, each (B, H_kv, T, D); refuses sliding layers that dropped positions."""
    out = []
    for i, layer in enumerate(cache.layers):
        seen = getattr(layer, "cumulative_length", None)
        if seen is not None and seen > layer.keys.shape[-2]:
            raise CacheSurgeryError(f"layer {i} is a sliding-window layer that kept {layer.keys.shape[-2]} of {seen} positions; "
                                    "build the cache with build_cache (full layers) before cutting it")
        out.append((layer.keys, layer.values))
    return out


def from_layers(layers: Sequence[tuple[torch.Tensor, torch.Tensor]]):
    """A DynamicCache of full layers holding these (keys, values), each (B, H_kv, T, D)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for i, (k, v) in enumerate(layers):
        cache.update(k.contiguous(), v.contiguous(), i)
    return cache


def build_cache(model, ids: Sequence[int]):
    """One forward over ``ids`` at positions 0..n-1; returns (logits (n, V) float32, cache of full layers)."""
    from transformers import DynamicCache

    tokens = torch.tensor([list(ids)], device=model.device)  # (1, n)
    with torch.no_grad():
        out = model(input_ids=tokens, past_key_values=DynamicCache(), use_cache=True)
    return out.logits[0].float(), out.past_key_values


def truncate(cache, start: int, end: int, keep_bos: bool = True):
    """The entries ``start:end`` (plus entry 0 in front when ``keep_bos``), positions unchanged.
    Keeping BOS with ``start == 0`` keeps it once."""
    layers = layers_of(cache)
    length = layers[0][0].shape[-2] if layers else 0
    if not 0 <= start < end <= length:
        raise CacheSurgeryError(f"span {start}:{end} is not a non-empty span of a cache of {length} positions")
    lead = 1 if keep_bos and start > 0 else 0
    return from_layers([(torch.cat((k[:, :, :lead], k[:, :, start:end]), dim=2),  # (B, H, lead + end - start, D)
                         torch.cat((v[:, :, :lead], v[:, :, start:end]), dim=2)) for k, v in layers])


def correct_positions(cache, delta: int, info: RopeInfo, keep_bos: bool = True, first_position: int | None = None,
                      shift: Callable = rope_shift):
    """Every key moved by ``delta`` positions with ``shift`` (values unchanged); entry 0 left as it is when ``keep_bos``.
    ``first_position``: where the moved entries sit now (default: right after BOS, or 0)."""
    lead = 1 if keep_bos else 0
    first = lead if first_position is None else first_position
    return from_layers([(torch.cat((k[:, :, :lead], shift(k[:, :, lead:], delta, info, first)), dim=2), v)  # (B, H, T, D)
                        for k, v in layers_of(cache)])


def keep_document(model, cache, prefix_len: int, keep_bos: bool = True, info: RopeInfo | None = None,
                  correct: Callable = correct_positions):
    """From a cache of prefix + document (the prefix's first token BOS when ``keep_bos``), the
    document's entries at the positions it has without the prefix: BOS, then the document from 1
    (or from 0 without BOS), moved there by ``correct``. Returns (cache, kept length)."""
    info = info or rope_info(model)
    lead = 1 if keep_bos else 0
    length = layers_of(cache)[0][0].shape[-2]
    if not lead <= prefix_len < length:
        raise CacheSurgeryError(f"prefix of {prefix_len} tokens leaves no document in a cache of {length} (BOS kept: {keep_bos})")
    kept = truncate(cache, prefix_len, length, keep_bos)
    kept = correct(kept, -(prefix_len - lead), info, keep_bos, first_position=prefix_len)
    return kept, lead + length - prefix_len


def document_cache(model, prefix: Sequence[int], document: Sequence[int], bos: int | None = None):
    """Build the cache of [bos] + prefix + document and keep [bos] + document at corrected positions."""
    head = [] if bos is None else [bos]
    _, cache = build_cache(model, head + list(prefix) + list(document))
    return keep_document(model, cache, len(head) + len(prefix), keep_bos=bos is not None)


def document_cache_text(model, tok, prefix: str, document: str, bos: int | None = None):
    """``document_cache`` from text: raises ``bpe.BoundarySplit`` when tokenize(prefix + document)
    has no cut between the two (the cache of the joined text cannot be split there)."""
    from fuzzcache.surgery.bpe import split_text

    split = split_text(tok, prefix, document)
    return document_cache(model, split.prefix, split.doc, bos)


def suffix_cache(model, passage: Sequence[int], query: Sequence[int]):
    """The cache of passage followed by query, positions 0..; its first len(passage) entries are the passage's own."""
    return build_cache(model, list(passage) + list(query))[1]


def score_nll(model, cache, prompt: Sequence[int], answer: Sequence[int]) -> float:
    """Mean NLL (nats/token) of ``answer`` after the cached context and ``prompt``, scored from a
    copy of ``cache`` (left unchanged). The prompt must hold at least one token: its last row
    predicts the answer's first token."""
    if not prompt or not answer:
        raise CacheSurgeryError("score_nll needs a non-empty prompt (its last row predicts the first answer token) and answer")
    past = copy.deepcopy(cache)
    start = past.get_seq_length()
    ids = list(prompt) + list(answer)
    tokens = torch.tensor([ids], device=model.device)  # (1, P + A)
    positions = torch.arange(start, start + len(ids), device=model.device)[None]  # (1, P + A)
    with torch.no_grad():
        out = model(input_ids=tokens, position_ids=positions, past_key_values=past, use_cache=True)
    logits = out.logits[0].float()  # (P + A, V)
    return answer_nll(logits, len(prompt), answer)


def answer_nll(logits: torch.Tensor, answer_start: int, answer: Sequence[int]) -> float:
    """Mean NLL of ``answer`` at rows ``answer_start..`` of ``logits`` (N, V): row i - 1 predicts token i."""
    rows = logits[answer_start - 1 : answer_start - 1 + len(answer)]  # (A, V)
    return float(torch.nn.functional.cross_entropy(rows.detach(), torch.tensor(list(answer), device=rows.device)))
