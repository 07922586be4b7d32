"""What ``fuzzcache fuzz`` prints: a one-line progress bar while the campaign runs, then one summary
table, the findings (one line each) and, from the command, the report's path. The paths reached,
the rare paths, branch coverage per file and each server config are in the report, and printed
here too with ``--verbose``."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich import box
from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fuzzcache.campaign import CampaignResult, Progress
from fuzzcache.properties import draws_traces
from fuzzcache.runner import Saved
from fuzzcache.scenario import short_form

LOG_LINES = 4  # where the console is a log file, not a terminal: a progress line at each quarter of the budget


def progress_text(target: str, rows: list, properties: int, elapsed: float, budget: float) -> str:
    """'fuzz reference: 3/24 properties run, 1234 examples, 0 findings so far, 45s left'."""
    run = sum(1 for _, examples, seconds, _ in rows if examples or seconds)
    examples = sum(row[1] for row in rows)
    found = sum(row[3] for row in rows)
    return (f"fuzz {target}: {run}/{max(properties, len(rows))} properties run, {examples} examples, "
            f"{found} finding{'s' if found != 1 else ''} so far, {max(budget - elapsed, 0):.0f}s left")


@contextmanager
def live_display(console: Console, target_spec: str, budget_s: float, properties: int) -> Iterator[Progress]:
    """A progress bar that a campaign (or its workers) updates through the yielded callback: on a
    terminal one line, redrawn and gone at the end; in a log file a plain line at each quarter."""
    if not console.is_terminal:
        printed = [0]

        def log(rows, elapsed):
            quarter = int(LOG_LINES * elapsed / budget_s) if budget_s else LOG_LINES
            if printed[0] < quarter < LOG_LINES:
                printed[0] = quarter
                console.print(progress_text(target_spec, rows, properties, elapsed, budget_s), markup=False, highlight=False)

        yield log
        return

    def line(rows, elapsed) -> Table:
        grid = Table.grid(padding=(0, 1))
        grid.add_row(ProgressBar(total=max(budget_s, 1e-9), completed=min(elapsed, budget_s), width=30),
                     Text(progress_text(target_spec, rows, properties, elapsed, budget_s)))
        return grid

    with Live(line([], 0.0), console=console, refresh_per_second=4, transient=True) as live:
        yield lambda rows, elapsed: live.update(line(rows, elapsed))


def print_report(result: CampaignResult, console: Console, verbose: bool = False) -> None:
    """The end of a campaign: its summary table, the findings, and with ``verbose`` the detail."""
    examples = sum(t.examples for t in result.totals.values())
    console.print(f"fuzzcache fuzz --target {result.target}: {result.seconds:.0f}s, {len(result.totals)} properties, {examples} examples"
                  + (" (interrupted)" if result.interrupted else ""), markup=False, highlight=False)
    console.print(summary_table(result))
    if result.server:
        print_server(result.server, console, verbose)
    if result.branch_coverage:
        print_branch_coverage(result.branch_coverage, console, verbose)
    if verbose:
        print_paths(result, console)
        print_rare_paths(result, console)
    print_findings(result.findings, console, verbose)


def summary_table(result: CampaignResult) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("property", "examples", "examples/s", "result"):
        table.add_column(col, justify="left" if col in ("property", "result") else "right")
    for t in result.totals.values():
        status = "error: " + t.errors[0] if t.errors else (f"{len(t.found)} distinct failure(s)" if t.found else "ok")
        table.add_row(t.label, str(t.examples), f"{t.examples / t.seconds:.1f}" if t.seconds else "-", status)
    return table


def print_findings(findings: list[Saved], console: Console, verbose: bool) -> None:
    """One line per finding: kind, property, corpus file and what explains it, then its one-line repro."""
    if not findings:
        console.print("No findings.")
        return
    console.print(f"[bold red]Findings[/] ({len(findings)}):")
    for s in sorted(findings, key=lambda s: (not s.untriaged, s.kind, s.property)):
        console.print(f"  {s.kind} {s.property} {s.path}{saved_note(s)}\n    repro: {short_form(s.scenario)}"
                      + (f"\n    {s.message}{minimized_note(s)}" if verbose else ""), markup=False, highlight=False)


def print_server(s: dict, console: Console, verbose: bool) -> None:
    starts = ", ".join(f"{x['config']} {x['seconds']:.0f}s" for x in s.get("starts", []))
    console.print(f"server: {s['url']}: {s['requests']} requests in {s['trace_seconds']:.0f}s of traces ({s['requests_per_s'] or 0:.1f} requests/s)"
                  + (f"; started for {starts}" if starts else ""), markup=False, highlight=False)
    for name, c in (s.get("per_config") or {}).items() if verbose else ():
        console.print(f"  config {name}: {c['traces']} traces ({c['traces_per_s'] or 0:.2f}/s while it served), {c['requests']} requests "
                      f"({c['requests_per_s'] or 0:.1f}/s while traces ran)", markup=False, highlight=False)


def print_paths(result: CampaignResult, console: Console) -> None:
    console.print("[bold]paths reached[/] (examples that reached each path; a path missing here was never exercised)")
    for t in result.totals.values():
        paths = ", ".join(f"{k} {v}" for k, v in sorted(t.paths.items())) or "(no path events)"
        console.print(f"  {t.label}: {paths}", markup=False, highlight=False)


def print_rare_paths(result: CampaignResult, console: Console) -> None:
    """Per trace property, each rare path the search steers toward (fuzzcache.rare_paths):
    examples that reached it, or NEVER."""
    from fuzzcache.rare_paths import RARE_PATHS

    traced = [t for t in result.totals.values() if draws_traces(t.property) and t.examples]
    if traced:
        console.print("[bold]rare paths[/] (steered toward with hypothesis.target; examples that reached each)")
    for t in traced:
        counts = ", ".join(f"{name} {t.paths.get(f'rare: {name}', 0) or 'NEVER'}" for name in RARE_PATHS)
        console.print(f"  {t.label}: {counts}", markup=False, highlight=False)


def print_branch_coverage(cov: dict, console: Console, verbose: bool = True) -> None:
    """The measured packages' branches reached; with ``verbose`` per file, and over time."""
    console.print(f"[bold]engine branch coverage[/] of {', '.join(cov['packages'])}: {cov['reached']} of {cov['branches']} branches ({cov['percent']}%)")
    if not verbose:
        return
    table = Table()
    for col in ("file", "branches", "reached", "%", "never reached"):
        table.add_column(col, justify="left" if col == "file" else "right")
    for name, f in cov["files"].items():
        table.add_row(name, str(f["branches"]), str(f["reached"]), f"{100 * f['reached'] / f['branches']:.0f}" if f["branches"] else "-",
                      str(len(f["never_reached"])))
    console.print(table)
    points = cov["over_time"]
    if points:
        shown = points if len(points) <= 8 else [points[round(i * (len(points) - 1) / 7)] for i in range(8)]
        console.print("  over time: " + "; ".join(f"{p['seconds']:.0f}s {p['examples']} examples {p['branches_reached']} branches" for p in shown),
                      markup=False, highlight=False)


def saved_note(saved: Saved) -> str:
    """Whether a finding was already in the corpus, and what explains it: a triage, known bugs."""
    bugs = f", known bug: {' + '.join(saved.known_bugs)}" if saved.known_bugs else ""
    triaged = f"triaged: {saved.triage}{bugs}" if saved.triage else ""
    if saved.new:
        return f" (new, {triaged})" if triaged else " (new, untriaged)"
    return " (already in corpus" + (f", {triaged}" if triaged else "") + ")"


def minimized_note(saved: Saved) -> str:
    """How the minimizer changed Hypothesis's shrunk repro, and what it cost."""
    m = saved.minimized
    if m is None:
        return ""
    cost = f"{m.checks} checks, {m.seconds:.1f}s{', capped' if m.capped else ''}{', interrupted' if m.interrupted else ''}"
    if m.note:
        return f"\n    minimizer: {m.note} ({cost})"
    if saved.scenario == saved.shrunk_scenario:
        return f"\n    minimizer: already minimal ({cost})"
    return f"\n    minimizer: from {short_form(saved.shrunk_scenario)} ({cost})"
