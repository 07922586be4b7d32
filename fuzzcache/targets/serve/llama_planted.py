"""A bug planted inside llama-server's C++, to show ``llama-server:`` catches a bug in the server
itself through HTTP alone:

    fuzzcache fuzz --target fuzzcache.targets.serve.llama_planted:prompt_cache_keeps_one_too_many

The patched server is a second binary built from the same build folder as the stock one (only
the patched file recompiles; ``llama_server_build``); the stock binary stays as shipped.
"""

from __future__ import annotations

import dataclasses

from fuzzcache.targets.serve.llama_server_build import SourcePatch
from fuzzcache.targets.serve.llama_target import SERVER_CONFIGS, ManagedLlamaServer

# When a new prompt shares a prefix with the slot's cached one, the slot keeps one cached token
# past that prefix: the first token that differs is never evaluated and its cell keeps the old
# token's keys and values.
PROMPT_CACHE_ONE_TOO_MANY = SourcePatch(
    "tools/server/server-context.cpp",
    "n_past = slot.prompt.tokens.get_common_prefix(input_tokens);",
    "n_past = std::min({slot.prompt.tokens.get_common_prefix(input_tokens) + 1, slot.prompt.tokens.size(), input_tokens.size()});"
    "  // fuzzcache: planted bug",
)

_PLANTED: dict[str, ManagedLlamaServer] = {}


def prompt_cache_keeps_one_too_many(**options) -> ManagedLlamaServer:
    """llama-server:llama whose slots keep one cached token too many of their previous prompt, on
    one slot (every request reuses it, so the bug does not hang on which slot a request lands)."""
    name = "llama-server:llama+prompt_cache_keeps_one_too_many"
    if name not in _PLANTED:
        _PLANTED[name] = ManagedLlamaServer("llama", name=name, variant="prompt-cache-one-too-many", patch=PROMPT_CACHE_ONE_TOO_MANY,
                                            configs={"one slot": dataclasses.replace(SERVER_CONFIGS["slots"], max_num_seqs=1)})
    return _PLANTED[name]
