"""Target resolution: the built-in reference, hf:<arch>, and user targets named as
``module:attr`` from a module outside the package (an instance or a zero-argument factory)."""

from __future__ import annotations

import sys
import textwrap

import pytest

import fuzzcache
from fuzzcache import FEATURES, EngineConfig, Request, UnknownTarget, available_targets, resolve_target
from fuzzcache.contract import Target

USER_MODULE = '''
from fuzzcache.contract import Completion, FEATURES
from fuzzcache.model import ModelConfig
from fuzzcache.targets.reference import ReferenceTarget


class EchoTarget:
    """A user's own target: the reference engine behind a thin wrapper of its own."""

    def __init__(self, name):
        self.inner = ReferenceTarget(ModelConfig(vocab_size=16, n_layer=1, n_head=2, n_kv_head=1, head_dim=4, max_seq_len=32))
        self.name = name
        self.vocab_size = self.inner.vocab_size
        self.max_seq_len = self.inner.max_seq_len
        self.features = frozenset({"batching", "paged"})

    def reference_logits(self, tokens):
        return self.inner.reference_logits(tokens)

    def generate(self, requests, config):
        return self.inner.generate(requests, config)


INSTANCE = EchoTarget("user-instance")
CALLS = []


def make_target():
    CALLS.append(1)
    return EchoTarget("user-factory")


class HalfTarget:
    name = "half"
    vocab_size = 16

    def generate(self, requests, config):
        return []


HALF = HalfTarget()


def make_nothing():
    return 42


NOT_A_TARGET = "just a string"
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module written to tmp_path, importable only through the path added for this test."""
    name = "fuzzcache_user_targets_for_test"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    yield name
    sys.modules.pop(name, None)


CONTRACT_ATTRS = ("name", "vocab_size", "max_seq_len", "features", "reference_logits", "generate")


def test_reference_has_the_contract():
    target = resolve_target("reference")
    for attr in CONTRACT_ATTRS:
        assert hasattr(target, attr), attr
    assert isinstance(target, Target)
    assert target.name == "reference"
    assert target.features == FEATURES == fuzzcache.FEATURES
    assert isinstance(target.vocab_size, int) and target.vocab_size > 0
    assert isinstance(target.max_seq_len, int) and target.max_seq_len > 0
    assert callable(target.reference_logits) and callable(target.generate)
    logits = target.reference_logits([1, 2, 3])
    assert logits.shape == (3, target.vocab_size)
    [completion] = target.generate([Request(0, (1, 2, 3), 2)], EngineConfig())
    assert completion.rid == 0 and len(completion.tokens) == 2


def test_each_resolve_gives_a_fresh_reference():
    assert resolve_target("reference") is not resolve_target("reference")


def test_available_targets_lists_reference():
    assert "reference" in available_targets()


@pytest.mark.parametrize("spec", ["no-such-target", "Reference", "ref", ""])
def test_unknown_name_lists_what_exists(spec):
    with pytest.raises(UnknownTarget) as info:
        resolve_target(spec)
    message = str(info.value)
    assert "reference" in message
    assert repr(spec) in message
    assert isinstance(info.value, ValueError)  # UnknownTarget is a ValueError for callers that catch those


def test_hf_prefix_names_the_known_architectures():
    with pytest.raises(UnknownTarget, match="'hf:gpt2'; HF architectures: hf:llama, hf:llama-dynamic, hf:mistral"):
        resolve_target("hf:gpt2")


@pytest.mark.parametrize("spec", ["mutant:x", "mutant:"])
def test_unknown_mutant_lists_the_zoo(spec):
    with pytest.raises(UnknownTarget, match="the zoo has: .*paged_gather_floor_blocks"):
        resolve_target(spec)


def test_every_mutant_resolves_and_differs_from_reference():
    from fuzzcache.mutants import ZOO

    assert len(ZOO) >= 16
    for name in ZOO:
        target = resolve_target(f"mutant:{name}")
        assert target.name == f"mutant:{name}" and target.features == resolve_target("reference").features


def test_user_module_instance(user_module):
    target = resolve_target(f"{user_module}:INSTANCE")
    module = sys.modules[user_module]
    assert target is module.INSTANCE
    assert target.name == "user-instance"
    [completion] = target.generate([Request(3, (1, 2), 2)], EngineConfig(block_size=1))
    assert completion.rid == 3 and len(completion.tokens) == 2
    assert completion.tokens == [int(row.argmax()) for row in completion.logits]


def test_user_module_zero_arg_factory(user_module):
    target = resolve_target(f"{user_module}:make_target")
    module = sys.modules[user_module]
    assert module.CALLS == [1]  # called once, with no arguments
    assert isinstance(target, module.EchoTarget) and target.name == "user-factory"
    for attr in CONTRACT_ATTRS:
        assert hasattr(target, attr)
    assert target.reference_logits([0, 1]).shape == (2, 16)
    again = resolve_target(f"{user_module}:make_target")
    assert again is not target and module.CALLS == [1, 1]  # a fresh target per resolve


@pytest.mark.parametrize(
    "attr, missing",
    [("HALF", ["max_seq_len", "features", "reference_logits"]), ("make_nothing", ["name", "generate"]), ("NOT_A_TARGET", ["generate"])],
)
def test_user_attr_without_the_contract_is_a_clear_error(user_module, attr, missing):
    spec = f"{user_module}:{attr}"
    with pytest.raises(UnknownTarget) as info:
        resolve_target(spec)
    message = str(info.value)
    assert repr(spec) in message and "contract" in message
    for name in missing:
        assert name in message


def test_user_module_without_the_attr_is_a_clear_error(user_module):
    with pytest.raises(UnknownTarget, match="has no attribute 'NOPE'"):
        resolve_target(f"{user_module}:NOPE")


def test_missing_module_is_a_clear_error():
    with pytest.raises(UnknownTarget, match="cannot import module 'nosuchmodule'") as info:
        resolve_target("nosuchmodule:x")
    assert "'nosuchmodule:x'" in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)


def test_module_outside_sys_path_is_not_found(tmp_path):
    """Without the path added, the same file does not resolve: the test above really used sys.path."""
    (tmp_path / "fuzzcache_unreachable_module.py").write_text(textwrap.dedent(USER_MODULE))
    with pytest.raises(UnknownTarget, match="cannot import"):
        resolve_target("fuzzcache_unreachable_module:INSTANCE")


def test_a_llamacpp_target_without_its_extra_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    with pytest.raises(UnknownTarget, match=r"pip install 'fuzzcache\[llamacpp\]'"):
        resolve_target("llamacpp:llama", isolate=False)
