"""``fuzz --coverage PKG``: coverage.py's branch coverage of the engine's own packages during a
campaign, per file (reached and never reached) and over time, in one process or combined over
workers; a bad package or an isolated target is a clear error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("coverage", reason="the coverage extra (coverage.py) is part of the test extra")


def fuzz(tmp_path, *args, target: str = "reference") -> tuple[subprocess.CompletedProcess, dict | None]:
    """``fuzzcache fuzz`` in a process of its own; its report.json."""
    report = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "fuzzcache.cli", "fuzz", "--target", target,
                           "--corpus", str(tmp_path / "corpus"), "--report-dir", str(report), *args],
                          capture_output=True, text=True, timeout=300)
    path = report / "report.json"
    return proc, json.loads(path.read_text()) if path.exists() else None


@pytest.mark.parametrize("workers, budget", [("1", "4s"), pytest.param("2", "8s", marks=pytest.mark.slow)])
def test_a_campaign_reports_the_engines_branches(tmp_path, workers, budget):
    proc, report = fuzz(tmp_path, "--budget", budget, "--workers", workers, "--property", "engine.same.pool", "--coverage", "fuzzcache.engine", "--verbose")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cov = report["branch_coverage"]
    scheduler = cov["files"]["fuzzcache/engine/scheduler.py"]
    assert 0 < scheduler["reached"] <= scheduler["branches"]
    assert len(scheduler["never_reached"]) == scheduler["branches"] - scheduler["reached"]
    assert cov["reached"] == sum(f["reached"] for f in cov["files"].values()) and 0 < cov["percent"] <= 100
    points = cov["over_time"]
    assert points and points[-1]["branches_reached"] <= cov["reached"] and points[-1]["examples"] > 0
    assert [p["branches_reached"] for p in points] == sorted(p["branches_reached"] for p in points)
    assert "engine branch coverage of fuzzcache.engine" in proc.stdout and "scheduler.py" in proc.stdout  # per file: --verbose


@pytest.mark.slow
def test_the_fuzzer_reaches_the_preemption_branch_only_with_a_bounded_pool(tmp_path):
    """What coverage reports follows what ran: the preemption branch of the scheduler is reached
    by the small-pool property and never by the kv-level one."""
    _, pool = fuzz(tmp_path / "pool", "--budget", "6s", "--workers", "1", "--property", "engine.same.pool", "--coverage", "fuzzcache.engine")
    _, ops = fuzz(tmp_path / "ops", "--budget", "4s", "--workers", "1", "--property", "kv.recompute", "--coverage", "fuzzcache.engine")
    assert pool["branch_coverage"]["files"]["fuzzcache/engine/scheduler.py"]["reached"] > 20
    assert ops["branch_coverage"]["files"]["fuzzcache/engine/scheduler.py"]["reached"] == 0


def test_an_unknown_package_is_a_clear_error(tmp_path):
    proc, report = fuzz(tmp_path, "--budget", "1s", "--property", "engine.trace", "--coverage", "no_such_engine.core")
    assert proc.returncode == 2 and "no_such_engine.core" in proc.stderr and "cannot be imported" in proc.stderr
    assert report is None


def test_an_isolated_target_is_refused(tmp_path):
    proc, _ = fuzz(tmp_path, "--budget", "1s", "--property", "engine.trace", "--isolate", "--coverage", "fuzzcache.engine")
    assert proc.returncode == 2 and "--in-process" in proc.stderr


@pytest.mark.engine
def test_transformers_continuous_batching_is_measured(tmp_path):
    pytest.importorskip("transformers")
    proc, report = fuzz(tmp_path, "--budget", "15s", "--workers", "1", "--property", "engine.trace",
                        "--coverage", "transformers.generation.continuous_batching", target="hf:llama")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # a new shape of a known bug is claimed by it, not a failure
    files = report["branch_coverage"]["files"]
    assert files["transformers/generation/continuous_batching/scheduler.py"]["reached"] > 10
