"""llama.cpp's server as a target (llama-server:...), with real servers built from the pinned
llama.cpp sources, no mocks: hand-written traces of each kind (parallel slots, a prefix kept in a
slot, a prompt restored from the host-memory cache, a repeat cold then warm, an abort mid-stream,
a stop string, n_cmpl continuations) agree with both oracles (the server's own uncached recompute
and the HF forward) and reach their paths; chunk reuse after a shift is classified by design
only when the trace matches the oracle without it; a bounded fuzz run on every config finds
nothing on the stock server; a server started by hand is fuzzed attached; a stalled server is a
hang that names its busy slots, a dead one a crash with its log; a bug planted in llama-server's
C++ (a second binary from the same build folder) is caught and shrunk, and the stock server
passes the repro.

The first test to run builds llama-server once per machine (minutes; docs/targets/llama-server.md), under a file lock
that keeps parallel workers from building it twice."""

from __future__ import annotations

import json
import os
import signal

import pytest
from hypothesis import settings

from fuzzcache import Request
from fuzzcache.corpus import load
from fuzzcache.coverage import take
from fuzzcache.findings import Finding
from fuzzcache.properties import get
from fuzzcache.properties.engine_level import check_trace
from fuzzcache.runner import replay, run_property
from fuzzcache.scenario import TraceScenario
from fuzzcache.targets import UnknownTarget, resolve_target
from fuzzcache.targets.serve.llama_target import SERVER_CONFIGS, ManagedLlamaServer

pytestmark = [pytest.mark.xdist_group("llama-server"), pytest.mark.engine]
TRACE = settings(max_examples=12, deadline=None, database=None, derandomize=True)
A, B, C = tuple(range(3, 30)), tuple(range(30, 50)), tuple(range(40, 60))


@pytest.fixture(scope="module")
def server():
    target = resolve_target("llama-server:llama")
    yield target
    target.stop()


def checked_by_both_oracles(server, config: str, requests) -> list:
    """The trace on ``config``, checked against the server's recompute, then the same outputs against the HF forward."""
    server.use_config(SERVER_CONFIGS[config])
    scenario = TraceScenario(tuple(requests), server.fixed_config)
    take()
    completions = check_trace(server, scenario)
    server.oracle = "hf"
    try:
        check_trace(server, scenario)
    finally:
        server.oracle = "server"
    return completions


TRACES = {  # kind -> (config, requests, the path it reaches)
    # long enough (100 tokens, 30 ms and more each) that requests sent together overlap even on a loaded machine
    "parallel slots": ("slots", [Request(i, A[: 10 + i], 100) for i in range(4)], "parallel slots busy at once (server metrics)"),
    "prefix kept in the slot": ("slots", [Request(0, A, 4), Request(1, A + (5, 6), 4, arrival=20)], "prompt cache: prefix kept in the request's slot"),
    "host-memory restore": ("host-cache", [Request(0, A, 3), Request(1, B, 3, arrival=10), Request(2, C, 3, arrival=20), Request(3, A + (5,), 3, arrival=30)],
                            "host-memory prompt cache: an earlier prompt restored into the slot"),
    "repeat cold then warm": ("slots", [Request(0, A, 6), Request(1, A, 6, arrival=25)], "repeat of an earlier prompt: warm (prefix hit)"),
    "abort mid-stream": ("slots", [Request(0, A, 40, abort_at=4), Request(1, B, 12)], "abort mid-stream"),
    "n continuations": ("slots", [Request(0, A, 8, n=3)], "fork"),
}


@pytest.mark.parametrize("kind", list(TRACES))
def test_a_hand_written_trace_agrees_with_both_oracles_and_reaches_its_path(server, kind):
    config, requests, path = TRACES[kind]
    # whether the server decodes requests sent together in one batch is up to its timing: on a loaded
    # machine it may serve them one after another, so that trace gets three tries to reach its path
    # (each is checked against both oracles all the same)
    for _ in range(3 if kind == "parallel slots" else 1):
        completions = checked_by_both_oracles(server, config, requests)
        paths = take()
        if sum(n for name, n in paths.items() if name.startswith(path)) >= 1:
            break
    assert sum(n for name, n in paths.items() if name.startswith(path)) >= 1, (kind, paths)
    assert paths["leak check"] >= 1 and server.last_pool.leaked == 0
    if kind == "prefix kept in the slot":
        assert completions[1].stats["cached_prefix_tokens"] == len(A)
    if kind == "host-memory restore":  # request 3's slot last held B or C: A came back from host memory
        assert completions[3].stats["cached_prefix_tokens"] == len(A)
    if kind == "repeat cold then warm":
        assert completions[0].stats["cached_prefix_tokens"] == 0 and completions[1].stats["cached_prefix_tokens"] == len(A) - 1
        assert completions[0].tokens == completions[1].tokens
    if kind == "abort mid-stream":
        assert len(completions[0].tokens) == 4 and completions[0].stats["abort_phase"] == 3 and len(completions[1].tokens) == 12
    if kind == "n continuations":
        assert [c.tokens for c in completions[0].forks] == [completions[0].tokens] * 2


def test_a_stop_string_ends_the_stream_at_its_token_and_keeps_it(server):
    server.use_config(SERVER_CONFIGS["slots"])
    continuation = server.greedy_continuation(A, 16)
    stop = next(t for t in continuation[4:] if t not in server.unstoppable)
    first = continuation.index(stop)
    completions = checked_by_both_oracles(server, "slots", [Request(0, A, 16, stop=(stop,))])
    assert completions[0].tokens == continuation[: first + 1]


def test_chunk_reuse_after_a_shift_is_by_design_only_when_the_trace_matches_without_it(server):
    """P+Y+X+S cached, then P+X+S2: X's keys are reused from where they were computed after Y."""
    P, Y, X = tuple(range(3, 10)), tuple(range(10, 20)), tuple(range(20, 40))
    server.use_config(SERVER_CONFIGS["cache-reuse"])
    requests = (Request(0, P + Y + X + (41, 42), 3), Request(1, P + X + (43, 44), 3, arrival=10))
    take()
    completions = server.generate(requests, server.fixed_config)
    assert completions[1].stats["cached_prefix_tokens"] > len(P) and take()["chunk reuse after a shift (--cache-reuse)"] == 1
    reason = server.divergence_by_design(requests, 1)
    assert reason is not None and "n_cache_reuse 0" in reason  # without chunk reuse the same trace matches the oracle
    assert server.divergence_by_design(requests, 0) is None  # request 0 cached nothing: its divergence would be reported
    server.generate(requests, server.fixed_config)
    real_rows = server.reference_rows
    server.reference_rows = lambda prompt, tokens: real_rows(prompt, tokens).roll(1, dims=-1)  # an oracle the rerun cannot match
    try:
        assert server.divergence_by_design(requests, 1) is None  # diverging without chunk reuse too: not explained by it
    finally:
        del server.reference_rows


@pytest.mark.parametrize("config", list(SERVER_CONFIGS))
def test_a_bounded_fuzz_run_finds_nothing_on_the_stock_server(server, config, tmp_path):
    server.use_config(SERVER_CONFIGS[config])
    run = run_property(get("engine.trace"), server, "llama-server:llama", TRACE, tmp_path)
    assert run.examples >= 12 and not run.found and not run.error, (run.found, run.error)
    assert run.paths["leak check"] >= run.examples - run.paths.get("config rejected by target", 0)


def test_a_stalled_server_is_a_hang_that_names_the_open_requests(monkeypatch):
    from fuzzcache import guard

    monkeypatch.setattr(guard, "TIME_LIMIT_S", 20.0)  # a 5 s trace deadline
    target = ManagedLlamaServer("llama", name="llama-server:llama (stalls)", configs={"slots": SERVER_CONFIGS["slots"]})
    try:
        target.use_config(SERVER_CONFIGS["slots"])
        real_start = target.start

        def start_then_stall():
            real_start()
            os.kill(target.server.process.pid, signal.SIGSTOP)  # resumed below only to stop it

        target.start = start_then_stall
        with pytest.raises(TimeoutError, match=r"1 of 1 requests unfinished after 5s \(request 0: 0 tokens\); the server does not answer /slots"):
            target.generate([Request(0, A, 8)], target.fixed_config)
    finally:
        if target.server is not None and target.server.process is not None:
            os.kill(target.server.process.pid, signal.SIGCONT)
        target.stop()


def test_a_server_that_dies_is_a_crash_finding_with_its_log():
    target = ManagedLlamaServer("llama", name="llama-server:llama (dies)", configs={"slots": SERVER_CONFIGS["slots"]})
    try:
        target.use_config(SERVER_CONFIGS["slots"])
        target.ensure_running()
        target.fresh_cache = lambda: (target.server.process.kill(), target.server.process.wait())  # dies as the trace starts
        with pytest.raises(Finding) as found:
            target.generate([Request(0, (3, 4, 5), 2)], target.fixed_config)
        assert found.value.kind == "crash" and "llama-server died" in found.value.message and "listening on" in found.value.details["server_log"]
    finally:
        target.stop()


def test_attached_mode_fuzzes_a_server_started_by_hand(server, tmp_path):
    from fuzzcache.targets.serve.managed import ManagedServer, free_port

    port = free_port()
    argv = [str(server.binary), "-m", str(server.gguf), "--port", str(port), "--parallel", "2", "--ctx-size", "1024", "--slots", "--metrics"]
    with ManagedServer(argv, port, name="llama-server-by-hand") as by_hand:
        with pytest.raises(UnknownTarget, match=r"vocab=N"):
            resolve_target(f"llama-server:{by_hand.url}")
        plain = resolve_target(f"llama-server:{by_hand.url}?vocab=64")
        assert "stop" not in plain.features  # a model's token texts are unknown: no stop string can name a token
        target = resolve_target(f"llama-server:{by_hand.url}?vocab=64&stop=texts")
        assert (target.vocab_size, target.slots, target.end_of_generation, "stop" in target.features) == (64, 2, [2], True)
        run = run_property(get("engine.trace"), target, f"llama-server:{by_hand.url}", TRACE, tmp_path)
        assert run.examples >= 12 and not run.found and not run.error, (run.found, run.error)


def test_a_bug_planted_in_llama_servers_cpp_is_caught_shrunk_and_the_stock_server_passes_it(server, tmp_path):
    planted = resolve_target("fuzzcache.targets.serve.llama_planted:prompt_cache_keeps_one_too_many")
    try:
        run = run_property(get("engine.trace"), planted, planted.name, settings(max_examples=300, deadline=None, database=None, derandomize=True), tmp_path)
    finally:
        planted.stop()
    assert [s.kind for s in run.found] == ["mismatch"], (run.found, run.error, run.examples)
    case = load(run.found[0].path)
    record = json.loads(run.found[0].path.read_text())
    assert len(case.scenario.requests) == 2, case.scenario.short()
    assert record["divergence"]["reproduced"] == "4 of 4 runs", record["divergence"]  # one slot: no race decides it
    assert replay(case, server) is None  # the stock server on the same config


def test_the_planted_binary_is_a_second_build_and_the_stock_one_is_unchanged(server):
    planted = resolve_target("fuzzcache.targets.serve.llama_planted:prompt_cache_keeps_one_too_many")
    assert planted.binary != server.binary and planted.binary.parent.parent == server.binary.parent.parent
    source = (server.binary.parent.parent / "src" / "tools/server/server-context.cpp").read_text()
    assert "fuzzcache: planted bug" not in source  # the patch is undone after its build


def test_names_that_resolve_to_no_server_are_clear_errors():
    with pytest.raises(UnknownTarget, match="llama-server:nope"):
        resolve_target("llama-server:nope")
    with pytest.raises(UnknownTarget, match="no llama-server with --slots answers at http://127.0.0.1:9"):
        resolve_target("llama-server:http://127.0.0.1:9?vocab=64")


def test_the_build_says_what_is_missing_when_cmake_is_not_installed(tmp_path, monkeypatch):
    from fuzzcache.targets.serve import llama_server_build

    monkeypatch.setenv("FUZZCACHE_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no cmake, no pip download needed: the source is there
    (tmp_path / "llama-server-0.3.36" / "src").mkdir(parents=True)
    (tmp_path / "llama-server-0.3.36" / "src" / "CMakeLists.txt").write_text("")
    with pytest.raises(llama_server_build.BuildFailed, match="cmake is not installed"):
        llama_server_build.llama_server_binary()
