"""A greedy decoder with a KV cache (transformers' DynamicCache) as a fuzzcache target:
PYTHONPATH=docs/examples fuzzcache fuzz --target my_engine:MyEngine --budget 60s"""
import torch
from transformers import DynamicCache

from fuzzcache.contract import Completion, EngineConfig, Request
from fuzzcache.targets.tiny_models import tiny_model


class MyEngine:
    name = "my-engine"
    vocab_size = 64
    max_seq_len = 64
    features = frozenset({"stop"})  # one request at a time; it honours stop tokens

    def __init__(self):
        self.model = tiny_model("llama")  # your model: any causal LM over token ids

    @torch.no_grad()
    def reference_logits(self, tokens) -> torch.Tensor:  # the oracle: one forward, no cache
        return self.model(torch.tensor([list(tokens)])).logits[0].float()

    def generate(self, requests, config: EngineConfig) -> list[Completion]:
        return [self.decode(r, DynamicCache()) for r in requests]  # a fresh cache per request

    @torch.no_grad()
    def decode(self, request: Request, cache: DynamicCache) -> Completion:  # the fast path under test
        ids, tokens, rows = torch.tensor([request.prompt]), [], []
        while len(tokens) < request.max_new_tokens and not (tokens and tokens[-1] in request.stop):
            row = self.model(ids, past_key_values=cache, use_cache=True).logits[0, -1].float()
            tokens.append(int(row.argmax()))
            rows.append(row)
            ids = torch.tensor([tokens[-1:]])  # only the new token: the rest is in the cache
        return Completion(request.rid, tokens, torch.stack(rows) if rows else torch.zeros(0, self.vocab_size))


class SharedCache(MyEngine):
    """A planted bug: the requests of one call share one cache."""

    def generate(self, requests, config: EngineConfig) -> list[Completion]:
        cache = DynamicCache()
        return [self.decode(r, cache) for r in requests]
