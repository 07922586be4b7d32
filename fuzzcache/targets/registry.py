"""Target names: what each resolves to, and the target it builds in this process.

Names: ``reference``; ``<family>:<name>`` for a family of FAMILIES (``mutant:<name>``, the bug
zoo; ``hf:<arch>``, HF transformers; ``vllm:<arch>``, vLLM; ``llamacpp:<arch>``, llama.cpp; ``vllm-server:``
and ``llama-server:``, servers over HTTP); an entry point in the group
``fuzzcache.targets``; or ``package.module:attr`` where attr is a target or a zero-argument
callable returning one. Families are looked up by module path, so this module imports none of
them (fuzzcache.mutants imports the reference target, never the other way round).
"""

from __future__ import annotations

import fnmatch
import importlib
from importlib.metadata import entry_points

import torch

from fuzzcache.targets.reference import ReferenceTarget
from fuzzcache.targets.tiny_models import families_for

ENTRY_POINT_GROUP = "fuzzcache.targets"
BUILTIN = {"reference": ReferenceTarget}
# prefix -> (module, factory taking the name after the prefix, what the names are)
FAMILIES = {
    "mutant": ("fuzzcache.mutants", "build", "mutant:<name> (the bug zoo, see `fuzzcache list`)"),
    "hf": ("fuzzcache.targets.hf.target", "HFTarget", f"hf:<arch> (HF transformers: {', '.join(families_for('hf'))})"),
    "vllm": ("fuzzcache.targets.vllm.target", "VLLMTarget",
             f"vllm:<arch> ({', '.join(families_for('vllm'))}; needs the vllm extra; cannot express interleave, max_new_tokens=0)"),
    "vllm-server": ("fuzzcache.targets.serve.target", "VLLMServerTarget",
                    "vllm-server:<arch>[+hf-oracle] (vLLM's OpenAI-compatible server, started by fuzzcache) or vllm-server:http://HOST:PORT "
                    "(a running one); needs httpx (the serve extra), and the vllm extra to start one"),
    "llama-server": ("fuzzcache.targets.serve.llama_target", "llama_server_target",
                     "llama-server:<arch>[+hf-oracle] (llama.cpp's server, built and started by fuzzcache) or llama-server:http://HOST:PORT?vocab=N "
                     "(a running one); needs httpx (the serve extra), and cmake and a C++ compiler to build one"),
    "llamacpp": ("fuzzcache.targets.llamacpp.target", "LlamaCppTarget",
                 f"llamacpp:<arch>[+f16kv][+flash] ({', '.join(families_for('llamacpp'))}; needs the llamacpp extra; cannot express interleave; runs surgery.memory)"),
}
EXTRA_MODULES = ("httpx", "vllm", "llama_cpp", "gguf", "transformers", "tokenizers")  # what the engine extras install
REQUIRED_ATTRS = ("name", "vocab_size", "max_seq_len", "features", "reference_logits", "generate")


class UnknownTarget(ValueError):
    """A target name that resolves to nothing."""


def available_targets(with_mutants: bool = False) -> list[str]:
    """Built-in names plus installed entry points (and the bug zoo's ``mutant:<name>``)."""
    names = sorted(BUILTIN) + sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    if with_mutants:
        zoo = importlib.import_module(FAMILIES["mutant"][0]).ZOO
        names += [f"mutant:{m}" for m in zoo]
    return names


# target family -> the shared factory's engine whose model families its names are (a pattern expands over them)
FAMILY_ENGINES = {"hf": "hf", "vllm": "vllm", "llamacpp": "llamacpp", "vllm-server": "vllm", "llama-server": "llamacpp"}


def expand_target_pattern(spec: str) -> list[str]:
    """The targets a pattern names, in the factory's order: ``vllm:*`` is every model family
    vLLM runs, ``hf:mistral*`` the HF mistrals, ``mutant:spec_*`` those zoo mutants; a name
    without ``*``, ``?`` or ``[`` is itself. UnknownTarget when a pattern matches nothing."""
    if not any(c in spec for c in "*?["):
        return [spec]
    family, _, pattern = spec.partition(":")
    if family in FAMILY_ENGINES:
        names = families_for(FAMILY_ENGINES[family])
    elif family == "mutant":
        names = tuple(importlib.import_module(FAMILIES["mutant"][0]).ZOO)
    else:
        raise UnknownTarget(f"target pattern {spec!r}: patterns name the model families of {', '.join(f + ':' for f in FAMILY_ENGINES)} "
                            "or the zoo's mutant:, e.g. 'vllm:*'")
    matched = [f"{family}:{name}" for name in names if fnmatch.fnmatchcase(name, pattern)]
    if not matched:
        raise UnknownTarget(f"target pattern {spec!r} matches none of {', '.join(f'{family}:{n}' for n in names)}")
    return matched


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UnknownTarget(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UnknownTarget(f"device {device!r} requested, but this torch sees no CUDA device")


def _instantiate(obj, spec: str, options: dict):
    factory = isinstance(obj, type) or (callable(obj) and not hasattr(obj, "generate"))
    if options and not factory:
        raise UnknownTarget(f"target {spec!r} is an instance; it cannot take {', '.join(options)}")
    try:
        target = obj(**options) if factory else obj
    except TypeError as exc:
        if not options:
            raise
        raise UnknownTarget(f"target {spec!r} does not accept {', '.join(options)} ({exc})") from exc
    missing = [a for a in REQUIRED_ATTRS if not hasattr(target, a)]
    if missing:
        raise UnknownTarget(f"target {spec!r} resolved to {target!r}, which lacks the contract's {', '.join(missing)}")
    return target


def build_target(spec: str, dtype: str | None = None, device: str | None = None):
    """The target named ``spec``, built in this process; UnknownTarget, listing what exists, otherwise."""
    options: dict = {}
    if dtype is not None:
        options["dtype"] = parse_dtype(dtype)
    if device is not None:
        check_device(device)
        options["device"] = device
    if spec in BUILTIN:
        return BUILTIN[spec](**options)
    family, _, name = spec.partition(":")
    if family in FAMILIES:
        module_name, factory, what = FAMILIES[family]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name not in EXTRA_MODULES:
                raise  # a bug of fuzzcache's own, not a missing extra
            raise UnknownTarget(f"target {spec!r} needs the module {exc.name!r}, which is not installed: {what}") from exc
        return getattr(module, factory)(name, **options)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            return _instantiate(ep.load(), spec, options)
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnknownTarget(f"target {spec!r}: cannot import module {module_name!r} ({exc})") from exc
        if not hasattr(module, attr):
            raise UnknownTarget(f"target {spec!r}: module {module_name!r} has no attribute {attr!r}")
        return _instantiate(getattr(module, attr), spec, options)
    raise UnknownTarget(
        f"unknown target {spec!r}; available: {', '.join(available_targets())}, "
        f"{', '.join(what for _, _, what in FAMILIES.values())}, "
        "an entry point in the group 'fuzzcache.targets', or package.module:attr"
    )
