"""Engine branch coverage: coverage.py's branch coverage of an engine's own packages during a
campaign (``fuzzcache fuzz --coverage PKG[,PKG...]``), the fuzzer's yardstick of how much of
the engine it reaches.

Every process that runs the target (the campaign's, or each worker's) measures with a
``BranchCoverage``: coverage.py traces only the named packages, and every ``SNAPSHOT_EVERY_S``
the arcs reached since the last snapshot are kept with the examples run so far. At the end the
parent combines the processes' data files and reports, per file, the branches reached and
never reached (coverage.py's own analysis, as ``coverage json`` gives it), and branches
reached against examples over time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

SNAPSHOT_EVERY_S = 15.0
# a package imported before measuring starts (by fuzzcache's own imports) is measured from then on:
# only its import-time lines are missed, which coverage.py would warn about in every process
QUIET = ["module-not-measured", "no-data-collected"]
Arc = tuple[int, int]  # (from line, to line); negative: entry or exit of a code object


class CoverageUnavailable(ValueError):
    """--coverage cannot run: coverage.py is not installed, or a package is not importable."""


def _coverage_module():
    try:
        import coverage
    except ImportError:
        raise CoverageUnavailable("--coverage needs coverage.py, which is not installed: pip install 'fuzzcache[coverage]'") from None
    return coverage


def parse_packages(text: str) -> tuple[str, ...]:
    """'vllm.v1.core,fuzzcache.engine' -> the packages, each checked to be importable."""
    _coverage_module()
    packages = tuple(p.strip() for p in text.split(",") if p.strip())
    if not packages:
        raise CoverageUnavailable("--coverage: name at least one package, e.g. --coverage vllm.v1.core")
    for package in packages:
        try:
            found = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise CoverageUnavailable(f"--coverage: package {package!r} cannot be imported here (is the engine's extra installed in this environment?)")
    return packages


@dataclass
class Snapshot:
    seconds: float  # since this process started measuring
    examples: int  # examples this process ran so far
    new_arcs: dict[str, list[Arc]]  # file -> arcs first reached since the previous snapshot


@dataclass
class BranchCoverage:
    """coverage.py measuring ``packages`` in this process, with snapshots over time."""

    packages: tuple[str, ...]
    data_dir: Path
    snapshots: list[Snapshot] = field(default_factory=list)

    def __post_init__(self):
        coverage = _coverage_module()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._cov = coverage.Coverage(data_file=str(self.data_dir / ".coverage"), data_suffix=True, branch=True,
                                      source=list(self.packages), config_file=False)
        self._cov.set_option("run:disable_warnings", QUIET)
        self._seen: dict[str, set[Arc]] = {}
        self._start = self._last = 0.0
        self._examples_before = 0  # examples of earlier campaigns this measurement spans (a target pattern's targets)

    def start(self) -> None:
        """Start measuring; again after ``stop`` it goes on (one time and example axis over a
        target pattern's campaigns, one after another)."""
        self._cov.start()
        self._last = time.monotonic()
        if not self._start:
            self._start = self._last

    def snapshot(self, examples: int, force: bool = False) -> None:
        """Keep the arcs reached since the last snapshot, at most every SNAPSHOT_EVERY_S."""
        now = time.monotonic()
        if not force and now - self._last < SNAPSHOT_EVERY_S:
            return
        self._last = now
        data = self._cov.get_data()
        new: dict[str, list[Arc]] = {}
        for path in data.measured_files():
            seen = self._seen.setdefault(path, set())
            fresh = set(data.arcs(path) or ()) - seen
            if fresh:
                seen |= fresh
                new[path] = sorted(fresh)
        self.snapshots.append(Snapshot(round(now - self._start, 2), self._examples_before + examples, new))

    def stop(self, examples: int) -> list[Snapshot]:
        """The last snapshot, then stop and save this process's data file."""
        self.snapshot(examples, force=True)
        self._examples_before += examples
        self._cov.stop()
        self._cov.save()
        return self.snapshots


def _package_root(package: str) -> Path:
    """The folder that holds the top-level package of ``package`` (so paths read vllm/v1/...)."""
    spec = importlib.util.find_spec(package.split(".")[0])
    return Path(next(iter(spec.submodule_search_locations))).resolve().parent


def report(packages: tuple[str, ...], data_dir: Path, snapshots_per_process: list[list[Snapshot]]) -> dict:
    """Combine every process's data in ``data_dir``: per file the branches, reached and never
    reached (``"12->14"``; a negative line is the code object's exit), the total, and
    branches reached against examples over time (the processes' snapshots merged in time)."""
    coverage = _coverage_module()
    cov = coverage.Coverage(data_file=str(data_dir / ".coverage"), branch=True, source=list(packages), config_file=False)
    cov.set_option("run:disable_warnings", QUIET)
    cov.combine([str(data_dir)], keep=True)
    out = data_dir / "coverage.json"
    try:
        cov.json_report(outfile=str(out))
    except coverage.exceptions.NoDataError:
        out.write_text(json.dumps({"files": {}}))
    analysed = json.loads(out.read_text())["files"]
    roots = [_package_root(p) for p in packages]
    files, branch_arcs = {}, {}
    for name, entry in sorted(analysed.items()):
        path = Path(name).resolve()
        root = next((r for r in roots if path.is_relative_to(r)), path.parent)
        key = str(path.relative_to(root))
        summary = entry["summary"]
        executed = [tuple(a) for a in entry.get("executed_branches", [])]
        missing = [tuple(a) for a in entry.get("missing_branches", [])]
        branch_arcs[str(path)] = set(executed) | set(missing)
        files[key] = {"branches": summary["num_branches"], "reached": summary["covered_branches"],
                      "never_reached": [f"{a}->{b}" for a, b in missing]}
    total = sum(f["branches"] for f in files.values())
    reached = sum(f["reached"] for f in files.values())
    return {"packages": list(packages), "files": files, "branches": total, "reached": reached,
            "percent": round(100 * reached / total, 1) if total else 0.0,
            "over_time": over_time(snapshots_per_process, branch_arcs)}


def over_time(snapshots_per_process: list[list[Snapshot]], branch_arcs: dict[str, set[Arc]]) -> list[dict]:
    """Branches reached by all processes together at each snapshot time, with their examples."""
    times = sorted({s.seconds for snaps in snapshots_per_process for s in snaps})
    points = []
    for t in times:
        reached: dict[str, set[Arc]] = {}
        examples = 0
        for snaps in snapshots_per_process:
            upto = [s for s in snaps if s.seconds <= t]
            examples += upto[-1].examples if upto else 0
            for s in upto:
                for path, arcs in s.new_arcs.items():
                    key = str(Path(path).resolve())
                    reached.setdefault(key, set()).update(a for a in map(tuple, arcs) if a in branch_arcs.get(key, ()))
        points.append({"seconds": t, "examples": examples, "branches_reached": sum(map(len, reached.values()))})
    return points


def data_dir_for(report_dir: Path) -> Path:
    """Where the processes of one campaign write their coverage data: fresh for each run."""
    path = Path(report_dir) / "coverage-data"
    if path.exists():
        for old in path.glob(".coverage*"):
            os.unlink(old)
    return path
