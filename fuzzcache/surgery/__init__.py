"""KV-cache surgery on HF causal LMs (transformers 5.x ``DynamicCache``), small and correct.

- ``rotary``: move cached keys by Δ positions with the model's own rotary embedding
  (every RoPE type a config selects; partial rotary; stateful types flagged);
- ``cache_ops``: build, truncate (BOS kept or not), keep a document at corrected positions,
  suffix caches, answer NLL with a cache;
- ``bpe``: an in-process BPE tokenizer and the boundary-split check;
- ``models``: tiny seeded models per (arch, RoPE type, dtype), no downloads;
- ``ops``: ``SurgeryOps``, the replaceable operations the surgery properties exercise.

Importing this package does not import transformers; the operations do, when called.
Install with ``pip install fuzzcache[hf]``.
"""

from __future__ import annotations

import importlib.util

INSTALL_HINT = "the surgery properties need transformers and tokenizers: install fuzzcache[hf]"


def available() -> bool:
    """transformers and tokenizers are importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("transformers", "tokenizers"))
