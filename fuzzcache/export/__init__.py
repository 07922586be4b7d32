"""Standalone repros for upstream reports: ``fuzzcache export FILE [--to DIR]``.

For a corpus file of a real engine (``hf:``, ``vllm:``, ``llamacpp:``) it writes DIR/<name>/repro.py,
a script that reproduces the finding with the engine alone (transformers, vLLM or
llama-cpp-python, plus torch; no fuzzcache), and the tiny model's files beside it, written by the
project's own factory (``fuzzcache.targets.tiny_models``), so the weights are the ones the finding
ran on, bit for bit: model.safetensors (the oracle's weights, and vLLM's checkpoint) and, for
llama.cpp, model.gguf. The script builds the model, runs the same requests and config (or memory
operations) through the engine's public API as fuzzcache's target does, runs the full-recompute
forward, prints expected against actual, and exits 1 while the bug is there, 0 once the engine
agrees (2: it cannot run here). One module per engine (hf, vllm, llamacpp); the shared parts are
``fuzzcache.export.script``."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

ENGINES = {"hf": "transformers", "vllm": "vLLM", "llamacpp": "llama.cpp (llama-cpp-python)"}
NOT_EXPORTED = {
    "reference": "fuzzcache's own reference engine: there is no third-party engine to report to (`fuzzcache replay FILE` reproduces it)",
    "mutant": "a mutant of fuzzcache's reference engine, a planted bug: there is no third-party engine to report to",
    "vllm-server": "a server target: its repro is a server started with flags and HTTP requests, which export does not write "
                   "(it writes in-process scripts for hf:, vllm: and llamacpp: findings)",
    "llama-server": "a server target: its repro is a server started with flags and HTTP requests, which export does not write "
                    "(it writes in-process scripts for hf:, vllm: and llamacpp: findings)",
}
WEIGHTS_EXTRA = {"hf": "hf", "vllm": "hf", "llamacpp": "llamacpp"}  # the extra whose packages write the model files


class ExportError(ValueError):
    """A corpus file that cannot be exported; the message names the file and why."""


@dataclass(frozen=True)
class Export:
    folder: Path
    files: tuple[Path, ...]  # repro.py first, then the model files
    engine: str


def family_of(target: str) -> tuple[str, str]:
    """``'vllm:llama'`` -> ``('vllm', 'llama')``; ``('', target)`` for a target outside the families."""
    family, colon, name = target.partition(":")
    return (family, name) if colon else ("", target)


def default_name(case) -> str:
    """``<target>-<case hash, 12 digits>``, e.g. ``vllm-llama-c66427317b3d``; the file's stem when it has no hash."""
    from fuzzcache.corpus import digest_of

    digest = digest_of(case.path)
    return f"{case.target.replace(':', '-').replace('+', '-')}-{digest[:12]}" if digest else Path(case.path).stem


def build(path: Path | str):
    """(case, Script) for the corpus file at ``path``; ExportError when it cannot be exported."""
    from fuzzcache.corpus import CorpusError, load

    try:
        case = load(path)
    except CorpusError as exc:
        raise ExportError(str(exc)) from exc
    family, name = family_of(case.target)
    if family in NOT_EXPORTED or case.target in NOT_EXPORTED:
        raise ExportError(f"{path}: target {case.target} is {NOT_EXPORTED.get(family) or NOT_EXPORTED[case.target]}")
    if family not in ENGINES:
        raise ExportError(f"{path}: target {case.target} is not an engine export knows (hf:, vllm:, llamacpp:); a planted or "
                          "plugged-in target's bug lives in code only fuzzcache loads")
    if case.target_options:
        raise ExportError(f"{path}: target options {case.target_options} (dtype, device) are not exported; the scripts run float32 on the CPU")
    if case.kind in ("leak", "nondeterministic"):
        raise ExportError(f"{path}: a {case.kind} finding: the script checks outputs, crashes and hangs, not this kind "
                          "(`fuzzcache replay FILE` reproduces it)")
    module = importlib.import_module(f"fuzzcache.export.{family}")
    try:
        return case, module.export(case, name)
    except ImportError as exc:
        raise ExportError(f"{path}: writing the model files needs the {WEIGHTS_EXTRA[family]} extra: "
                          f"pip install 'fuzzcache[{WEIGHTS_EXTRA[family]}]' ({exc})") from exc


def export(path: Path | str, to: Path | str = "fuzzcache-export", name: str | None = None) -> Export:
    """Write the repro of the corpus file ``path`` to ``to``/<name>/ (``default_name``); files
    already there are replaced. Writing the model files needs the extra that writes them: hf
    (safetensors, through transformers) and, for llama.cpp, llamacpp (gguf)."""
    case, script = build(path)
    folder = Path(to) / (name or default_name(case))
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "repro.py"]
    written[0].write_text(script.text())
    written[0].chmod(0o755)
    for file_name, data in script.files.items():
        (folder / file_name).write_bytes(data)
        written.append(folder / file_name)
    return Export(folder, tuple(written), ENGINES[family_of(case.target)[0]])
