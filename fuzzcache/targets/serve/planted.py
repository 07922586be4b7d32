"""Bugs planted inside a running vLLM server, to show ``vllm-server:`` catches a bug in the
engine-core process through HTTP alone:

    fuzzcache fuzz --target fuzzcache.targets.serve.planted:prefix_hash_not_chained
    fuzzcache fuzz --target fuzzcache.targets.serve.planted:abort_keeps_blocks

The bug is loaded by vLLM's own plugin mechanism: the test package ``tests/vllm_plugin``
(``pip install -e tests/vllm_plugin`` in vLLM's environment; the README's test command does)
registers a ``vllm.general_plugins`` entry point that patches one of
``fuzzcache.targets.vllm.planted``'s bugs into every vLLM process whose environment names it
(``FUZZCACHE_VLLM_PLANT``). A managed server started without that variable runs vLLM as shipped.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from fuzzcache.targets.serve.target import SERVER_CONFIGS, ManagedVLLMServer

PLUGIN = "fuzzcache_planted"
INSTALL_HINT = "the planted-bug plugin is not installed in vLLM's environment: .venv-vllm/bin/pip install -e tests/vllm_plugin"


_PLANTED: dict[str, ManagedVLLMServer] = {}  # one per bug and process (a server start costs about a minute)


def planted_server(bug: str, name: str, configs=None) -> ManagedVLLMServer:
    from fuzzcache.targets import UnknownTarget

    if name in _PLANTED:
        return _PLANTED[name]
    if not any(ep.name == PLUGIN for ep in entry_points(group="vllm.general_plugins")):
        raise UnknownTarget(INSTALL_HINT)
    env = {"FUZZCACHE_VLLM_PLANT": bug, "VLLM_PLUGINS": PLUGIN}
    _PLANTED[name] = ManagedVLLMServer("llama", env=env, name=name, configs=configs or {"prefix": SERVER_CONFIGS["prefix"]})
    return _PLANTED[name]


def prefix_hash_not_chained(**options) -> ManagedVLLMServer:
    """vllm-server:llama whose engine core hashes a block without the blocks before it: a prompt
    hits cached KV computed after a different prefix."""
    return planted_server("block_hash_not_chained", "vllm-server:llama+prefix_hash_not_chained")


def abort_keeps_blocks(**options) -> ManagedVLLMServer:
    """vllm-server:llama whose engine core never frees the blocks of a request its client aborted."""
    return planted_server("aborted_blocks_not_freed", "vllm-server:llama+abort_keeps_blocks")
