"""A vLLM general plugin (entry point group ``vllm.general_plugins``) that plants a bug inside a
running vLLM server, for the server target's tests.

vLLM calls every general plugin in each of its processes (the API server, the engine core, its
workers) before building an engine. This one does nothing unless ``FUZZCACHE_VLLM_PLANT`` names
one of ``BUGS`` (the bugs of ``fuzzcache.targets.vllm.planted``, patched in for the life of the
process), so installing it leaves every other vLLM process in the environment as shipped.
"""

from __future__ import annotations

import os

BUGS = ("block_hash_not_chained", "aborted_blocks_not_freed", "stop_tokens_not_trimmed")
ENV = "FUZZCACHE_VLLM_PLANT"
_planted: list = []


def plant() -> None:
    name = os.environ.get(ENV)
    if not name or _planted:
        return
    if name not in BUGS:
        raise ValueError(f"{ENV}={name!r}: not a planted bug; known: {', '.join(BUGS)}")
    from fuzzcache.targets.vllm import planted

    patch = getattr(planted, name)()
    patch.__enter__()  # for the life of this process
    _planted.append(patch)
