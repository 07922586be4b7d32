"""vLLM's OpenAI-compatible server as a target (vllm-server:...), with real servers, no mocks:
hand-written traces of each kind (a shared prefix under concurrency, preemption in a small pool,
an abort mid-stream, a stop token, a repeat cold then warm, n continuations) agree with both
oracles (the server's own recompute and the HF forward) and reach their paths; a server started
by hand with the documented command (docs/targets/vllm-server.md) is fuzzed attached; a bug
planted inside the server's engine core through vLLM's plugin mechanism is caught, shrunk and
minimized, and the unpatched server passes the repro; a dead server is a crash finding that
carries its log.

Each test group shares one server (about 40 s to start on 2 cores). These run in .venv-vllm
(the README's test command, second part)."""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from pathlib import Path

import pytest
from hypothesis import settings

from fuzzcache import Request
from fuzzcache.coverage import take
from fuzzcache.findings import Finding
from fuzzcache.properties import get
from fuzzcache.properties.engine_level import check_trace
from fuzzcache.runner import replay, run_property
from fuzzcache.corpus import load
from fuzzcache.scenario import TraceScenario
from fuzzcache.targets import UnknownTarget, resolve_target

pytest.importorskip("vllm", reason="vllm-server:<arch> starts vLLM's server from .venv-vllm (README: the test command's second part)")
pytestmark = [pytest.mark.vllm, pytest.mark.engine]

SERVER_PAGE = Path(__file__).resolve().parent.parent / "docs" / "targets" / "vllm-server.md"
SHARED = tuple(i % 50 + 1 for i in range(64))  # two whole blocks of 32
TRACE = settings(max_examples=12, deadline=None, database=None, derandomize=True)


@pytest.fixture(scope="module")
def server():
    """vllm-server:llama on the small-pool config: prefix caching, 8 blocks of 32, a 64-token budget."""
    target = resolve_target("vllm-server:llama")
    target.use_config(target.config_shards["tight-pool"])
    yield target
    target.stop()


def with_config(server, requests) -> TraceScenario:
    return TraceScenario(tuple(requests), server.fixed_config)


def checked_by_both_oracles(server, scenario: TraceScenario) -> list:
    """The trace checked against the server's recompute, then the same outputs against the HF forward."""
    take()
    completions = check_trace(server, scenario)
    server.oracle = "hf"
    try:
        check_trace(server, scenario)
    finally:
        server.oracle = "server"
    return completions


TRACES = {
    "shared prefix under concurrency": [Request(i, SHARED + (i + 1,) * (i + 1), 8) for i in range(6)],
    # each needs 2 shared blocks and 4 of its own (64 + 30 + 80 tokens): any two running at once
    # outgrow the 8-block pool, however the requests' arrivals spread under load
    "preemption": [Request(i, SHARED + (i + 1,) * 30, 80) for i in range(4)],
    "abort mid-stream": [Request(0, SHARED + (3,), 30, abort_at=4), Request(1, SHARED + (4,), 12)],
    "repeat cold then warm": [Request(0, SHARED + (5, 6), 8), Request(1, SHARED + (5, 6), 8, arrival=25)],
    "n continuations": [Request(0, SHARED + (7,), 8, n=3)],
}
PATHS = {
    "shared prefix under concurrency": "prefix hit",
    "preemption": "preemption",
    "abort mid-stream": "abort mid-stream",
    "repeat cold then warm": "repeat of an earlier prompt: warm (prefix hit)",
    "n continuations": "fork",
}


@pytest.mark.xdist_group("vllm-server")
@pytest.mark.parametrize("kind", list(TRACES))
def test_a_hand_written_trace_agrees_with_both_oracles_and_reaches_its_path(server, kind):
    completions = checked_by_both_oracles(server, with_config(server, TRACES[kind]))
    paths = take()
    assert paths[PATHS[kind]] >= 1, (kind, paths)
    assert paths["leak check"] >= 1 and server.last_pool.leaked == 0
    if kind == "abort mid-stream":
        # the client closes the stream once 4 tokens arrived; a lagging client may get more in that
        # event, since vLLM merges streamed deltas the client has not read yet
        # (vllm/v1/engine/output_processor.py, RequestOutputCollector.put): seen once in CI, 30 in one
        assert 4 <= len(completions[0].tokens) <= 30 and completions[0].stats["abort_phase"] == 3
        assert len(completions[1].tokens) == 12
    if kind == "repeat cold then warm":
        assert completions[0].stats["cached_prefix_tokens"] == 0 and completions[1].stats["cached_prefix_tokens"] == 64
        assert completions[0].tokens == completions[1].tokens
    if kind == "n continuations":
        assert [c.tokens for c in completions[0].forks] == [completions[0].tokens] * 2


@pytest.mark.xdist_group("vllm-server")
def test_a_stop_token_ends_the_stream_and_is_kept(server):
    continuation = server.greedy_continuation(SHARED + (9,), 12)
    stop = continuation[5]
    first = continuation.index(stop)
    completions = checked_by_both_oracles(server, with_config(server, [Request(0, SHARED + (9,), 12, stop=(stop,))]))
    assert completions[0].tokens == continuation[: first + 1]
    assert take()["early stop"] >= 1 or first == 11


@pytest.mark.xdist_group("vllm-server")
def test_a_bounded_fuzz_run_finds_nothing_on_the_unpatched_server(server, tmp_path):
    run = run_property(get("engine.trace"), server, "vllm-server:llama", TRACE, tmp_path)
    assert run.examples >= 12 and not run.found and not run.error, (run.found, run.error)
    assert run.paths["leak check"] == run.examples


@pytest.mark.xdist_group("vllm-server")
def test_a_config_the_server_cannot_run_is_refused_without_touching_the_server(server):
    with pytest.raises(ValueError, match="EngineConfig.block_size=16"):
        server.generate([Request(0, (1, 2), 1)], dataclasses.replace(server.fixed_config, block_size=16))
    assert server.server.alive()  # refused before anything was stopped


@pytest.mark.xdist_group("vllm-server-dies")
def test_a_server_that_dies_is_a_crash_finding_with_its_log():
    from fuzzcache.targets.serve.target import SERVER_CONFIGS, ManagedVLLMServer

    target = ManagedVLLMServer("llama", name="vllm-server:llama (dies)", configs={"prefix": SERVER_CONFIGS["prefix"]})
    try:
        target.use_config(SERVER_CONFIGS["prefix"])
        target.server.process.kill()  # the API server, as the OOM killer would
        target.server.process.wait()
        with pytest.raises(Finding) as found:
            target.generate([Request(0, (1, 2, 3), 2)], target.fixed_config)
        assert found.value.kind == "crash" and "died" in found.value.message and "APIServer" in found.value.details["server_log"]
    finally:
        target.stop()


def documented_command() -> list[str]:
    """The documented command that starts vLLM's server by hand on the tiny model (docs/targets/vllm-server.md,
    "A server started by hand")."""
    lines = SERVER_PAGE.read_text().splitlines()
    start = lines.index("<!-- attached-server-command -->")
    command = next(line for line in lines[start:] if line.startswith("python -m fuzzcache.targets.serve.vllm_cli serve"))
    return shlex.split(command)


@pytest.mark.xdist_group("vllm-server-attached")
def test_attached_mode_fuzzes_a_server_started_by_hand_with_the_documented_command(tmp_path):
    from fuzzcache.cli import main as cli
    from fuzzcache.targets.serve.managed import ManagedServer, free_port

    argv = documented_command()
    with pytest.raises(SystemExit) as wrote:
        cli(["tiny-model", str(tmp_path / "tiny")], standalone_mode=True)
    assert wrote.value.code == 0
    port = free_port()
    argv = [sys.executable if a == "python" else str(tmp_path / "tiny") if a == "/tmp/tiny" else str(port) if a == "8000" else a for a in argv]
    env = {"OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_CPU_KVCACHE_SPACE": None}
    with ManagedServer(argv, port, env=env, name="vllm-by-hand") as by_hand:
        with pytest.raises(UnknownTarget, match=r"vocab=N"):
            resolve_target(f"vllm-server:{by_hand.url}")  # no tokenizer: the vocabulary must be given
        target = resolve_target(f"vllm-server:{by_hand.url}?vocab=64")
        assert (target.vocab_size, target.max_seq_len, target.fixed_config.block_size) == (64, 256, 32)
        run = run_property(get("engine.trace"), target, f"vllm-server:{by_hand.url}", TRACE, tmp_path)
        assert run.examples >= 12 and not run.found and not run.error, (run.found, run.error)


@pytest.mark.xdist_group("vllm-server-planted")
def test_a_bug_planted_in_the_servers_engine_core_is_caught_shrunk_and_the_unpatched_server_passes_it(tmp_path):
    planted = resolve_target("fuzzcache.targets.serve.planted:prefix_hash_not_chained")
    try:
        run = run_property(get("engine.trace"), planted, planted.name, settings(max_examples=300, deadline=None, database=None, derandomize=True), tmp_path)
    finally:
        planted.stop()
    assert [s.kind for s in run.found] == ["mismatch"], (run.found, run.error, run.examples)
    case = load(run.found[0].path)
    record = json.loads(run.found[0].path.read_text())
    assert len(case.scenario.requests) <= 2 and record["divergence"]["reproduced"].endswith("runs"), (case.scenario, record["divergence"])
    unpatched = resolve_target("vllm-server:llama")
    try:
        assert replay(case, unpatched) is None
    finally:
        unpatched.stop()


def test_names_that_resolve_to_no_server_are_clear_errors():
    with pytest.raises(UnknownTarget, match="vllm-server:nope"):
        resolve_target("vllm-server:nope")
    with pytest.raises(UnknownTarget, match="no vLLM server answers at http://127.0.0.1:9"):
        resolve_target("vllm-server:http://127.0.0.1:9")
