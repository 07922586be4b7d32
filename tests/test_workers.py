"""``fuzz --workers N``: properties spread over worker processes, one live table and one end
report; every worker's findings land in the shared corpus and the report; Ctrl-C (SIGINT to the
process group, as a terminal sends it) and SIGTERM to the fuzzer alone (a CI runner's timeout, in
a background job where SIGINT is ignored) stop every worker and keep what they found."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fuzzcache.corpus import digest_of

PLANTED = '''
from fuzzcache.model import ModelConfig
from fuzzcache.targets.reference import ReferenceTarget


class LastTokenWrong(ReferenceTarget):
    """Every completion's last token is the oracle's least likely: every engine-level property fails."""

    def __init__(self):
        super().__init__(ModelConfig(vocab_size=32, n_layer=1, n_head=2, n_kv_head=1, head_dim=4, max_seq_len=16), name="last-token-wrong")

    def generate(self, requests, config):
        out = super().generate(requests, config)
        for r, c in zip(requests, out):
            if c.tokens:
                c.tokens[-1] = int(self.reference_logits(list(r.prompt) + c.tokens[:-1])[-1].argmin())
                c.logits = None
        return out
'''


def start_fuzz(tmp_path, *args, background: bool = False):
    """``fuzzcache fuzz`` in a session of its own: as a terminal's foreground job (SIGINT as
    Python's default), or as a background job of a non-interactive shell (``nohup ... &``: SIGINT
    ignored, whatever the shell that runs this test does)."""
    (tmp_path / "last_token_target.py").write_text(PLANTED)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "fuzzcache.cli", "fuzz", "--corpus", str(tmp_path / "corpus"), "--report-dir", str(tmp_path / "report"), *args]
    sigint = signal.SIG_IGN if background else signal.SIG_DFL
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))


def corpus_files(tmp_path) -> list:
    """The corpus files written so far, whatever their kind's name (not a save's temporary file)."""
    return [p for p in (tmp_path / "corpus").rglob("*.json") if digest_of(p)]


def wait_for_files(tmp_path, count: int, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and len(corpus_files(tmp_path)) < count:
        time.sleep(0.5)


def report(tmp_path) -> dict:
    return json.loads((tmp_path / "report" / "report.json").read_text())


def test_two_workers_share_the_properties_and_report_as_one(tmp_path):
    # as a background job (SIGINT ignored): the budget alone ends the run
    proc = start_fuzz(tmp_path, "--workers", "2", "--budget", "8s", "--property", "kv.recompute", "--property", "batch.ragged",
                      "--property", "prefill.chunked", "--property", "draft.normalized", background=True)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    props = report(tmp_path)["properties"]
    assert list(props) == ["kv.recompute", "batch.ragged", "prefill.chunked", "draft.normalized"]  # registry order
    assert all(p["examples"] > 0 and p["errors"] == [] for p in props.values()), props
    assert "No findings." in output


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_and_keeps_what_they_found(tmp_path):
    proc = start_fuzz(tmp_path, "--target", "last_token_target:LastTokenWrong", "--workers", "2", "--budget", "10m",
                      "--property", "engine.trace", "--property", "prefix.hit")
    wait_for_files(tmp_path, 2)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: every process of the group
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, output  # new failures were saved
    data = report(tmp_path)
    assert data["interrupted"] is True
    saved = {f["path"] for p in data["properties"].values() for f in p["findings"]}
    assert len(saved) >= 2 and all(os.path.exists(p) for p in saved)
    assert {p for p in data["properties"] if data["properties"][p]["findings"]} == {"engine.trace", "prefix.hit"}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_stops_a_background_run_and_keeps_what_it_found(tmp_path, workers):
    """What a CI runner's timeout, `timeout` or `kill` sends, to the fuzzer's process alone, where
    Ctrl-C cannot reach (SIGINT ignored): the run stops, saves and reports as after Ctrl-C."""
    proc = start_fuzz(tmp_path, "--target", "last_token_target:LastTokenWrong", "--workers", workers, "--budget", "10m",
                      "--property", "engine.trace", "--property", "prefix.hit", background=True)
    wait_for_files(tmp_path, 1)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, output  # a new failure was saved
    data = report(tmp_path)
    assert data["interrupted"] is True
    saved = {f["path"] for p in data["properties"].values() for f in p["findings"]}
    assert saved and all(os.path.exists(p) for p in saved)
    assert {str(p) for p in corpus_files(tmp_path)} <= saved  # every file written is in the report
