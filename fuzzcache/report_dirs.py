"""Where a run's report goes: a folder of its own under the report root, never an earlier run's.

``fuzz``, ``replay``, ``minimize`` and ``mutants`` each write into ``<root>/<command>-<date>-<time>/``
(``fuzzcache-report/fuzz-20261206-120304/``), point ``<root>/latest`` at it, and redraw
``<root>/runs.html``, the list of every run there (each run's own index.html lists them too). The
root's own index.html, report.json and junit.xml, where an older fuzzcache wrote them, stay as they were. The root is ``--report-root``, else
``$FUZZCACHE_REPORT_ROOT``, else ``fuzzcache-report``. ``--report-dir`` names an exact folder
instead (for scripts and CI): the run writes there, as it always did, and touches no root.
"""

from __future__ import annotations

import functools
import html
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = Path("fuzzcache-report")
ROOT_VARIABLE = "FUZZCACHE_REPORT_ROOT"
LATEST = "latest"  # a symbolic link to the newest run's folder; a text file naming it where links cannot be made
RUN_FILE = "run.json"  # beside each run's report: the command, when it ran, its one-line outcome


def report_root(root: Path | None = None) -> Path:
    """``root``, else $FUZZCACHE_REPORT_ROOT, else ./fuzzcache-report."""
    return Path(root or os.environ.get(ROOT_VARIABLE) or DEFAULT_ROOT)


def new_run_dir(command: str, root: Path, now: float | None = None) -> Path:
    """A new, empty folder ``root/<command>-YYYYmmdd-HHMMSS`` (``-2``, ``-3``... when that exists)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = root / (f"{command}-{stamp}" if n == 1 else f"{command}-{stamp}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{root}: no free folder name for a {command} run at {stamp}")


class RunDir:
    """A run's report folder: ``exact`` (``--report-dir``), or a new one under ``root``, made when first
    used (a run refused before it writes anything leaves no empty folder)."""

    def __init__(self, command: str, exact: Path | None = None, root: Path | None = None):
        self.command, self.exact, self.root = command, exact, None if exact is not None else report_root(root)

    @functools.cached_property
    def path(self) -> Path:
        if self.exact is not None:
            self.exact.mkdir(parents=True, exist_ok=True)
            return self.exact
        return new_run_dir(self.command, self.root)

    def record(self, outcome: str) -> None:
        """Write run.json (before the report, so the report's list of runs holds this one)."""
        record = {"command": self.command, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "outcome": outcome}
        atomic_write(self.path / RUN_FILE, json.dumps(record, indent=2) + "\n")

    def publish(self) -> None:
        """Once the report is written: point ``latest`` at this run and redraw the root's list of runs."""
        if self.root is not None:
            point_latest(self.root, self.path)
            write_root_index(self.root)


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text)
    tmp.replace(path)


def point_latest(root: Path, run: Path) -> None:
    """``root/latest`` -> ``run`` (replaced atomically, so a reader never sees it missing)."""
    tmp = root / f".tmp-{LATEST}-{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(run.name, target_is_directory=True)
    except OSError:  # no symbolic links here (some Windows set-ups): a file naming the folder
        tmp.write_text(run.name + "\n")
    latest = root / LATEST
    if latest.is_dir() and not latest.is_symlink():
        raise FileExistsError(f"{latest} is a folder, not fuzzcache's pointer to the newest run: move it away")
    tmp.replace(latest)


def latest_run(root: Path) -> Path | None:
    """The folder ``root/latest`` points at, if any."""
    latest = root / LATEST
    if latest.is_symlink():
        return root / os.readlink(latest)
    if latest.is_file():
        return root / latest.read_text().strip()
    return None


@dataclass(frozen=True)
class RunEntry:
    name: str
    command: str
    finished: str
    outcome: str


def runs_in(root: Path) -> list[RunEntry]:
    """The runs recorded under ``root``, newest first (a folder without run.json is not one)."""
    entries = []
    for path in root.iterdir() if root.is_dir() else ():
        if path.is_symlink() or not (path / RUN_FILE).is_file():
            continue
        try:
            record = json.loads((path / RUN_FILE).read_text())
            entries.append(RunEntry(path.name, str(record["command"]), str(record["finished"]), str(record["outcome"])))
        except (OSError, ValueError, KeyError, TypeError):
            entries.append(RunEntry(path.name, "?", "?", f"unreadable {RUN_FILE}"))
    return sorted(entries, key=lambda e: (e.finished, e.name), reverse=True)


def root_of(run_dir: Path) -> Path | None:
    """The report root a run's folder is in (its parent holds the ``latest`` pointer), else None."""
    parent = run_dir.resolve().parent
    return parent if (parent / LATEST).is_symlink() or (parent / LATEST).is_file() else None


def runs_table(root: Path, current: str | None, href: str) -> str:
    """An HTML table of the runs under ``root``, each name linking to ``href.format(name)``."""
    rows = []
    for e in runs_in(root):
        name = html.escape(e.name)
        link = f"<a href='{html.escape(href.format(e.name))}'>{name}</a>" + (" (this run)" if e.name == current else "")
        rows.append(f"<tr><td>{link}</td><td>{html.escape(e.command)}</td><td>{html.escape(e.finished)}</td><td>{html.escape(e.outcome)}</td></tr>")
    head = "<tr><th>run</th><th>command</th><th>finished</th><th>outcome</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>" if rows else "<p>No runs.</p>"


RUNS_PAGE = "runs.html"


def write_root_index(root: Path) -> Path:
    """``root/runs.html``: every run under the root, newest first, each linking to its own report."""
    newest = latest_run(root)
    page = ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>fuzzcache runs</title>"
            "<style>body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; } "
            "table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: .2em .6em; text-align: left; }</style>"
            f"</head><body><h1>fuzzcache runs in {html.escape(str(root))}</h1>"
            + (f"<p>Latest: <a href='{LATEST}/index.html'>{html.escape(newest.name)}</a></p>" if newest else "")
            + runs_table(root, None, "{}/index.html") + "</body></html>\n")
    path = root / RUNS_PAGE
    atomic_write(path, page)
    return path
