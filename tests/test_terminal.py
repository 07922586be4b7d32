"""What ``fuzz`` prints (fuzzcache.terminal): a progress line while it runs (on a terminal redrawn
and gone at the end, in a log file a line per quarter of the budget), then one table and the
findings; the paths, rare paths and per-file coverage only with --verbose."""

from __future__ import annotations

import io

from hypothesis import settings
from rich.console import Console

from fuzzcache.campaign import run_campaign
from fuzzcache.properties import get
from fuzzcache.targets import resolve_target
from fuzzcache.terminal import live_display, print_report, progress_text

ROWS = [("engine.trace", 12, 1.5, 1), ("kv.trim", 0, 0.0, 0)]


def captured(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=120, emoji=False), out


def test_the_progress_line_counts_properties_examples_findings_and_time_left():
    assert progress_text("reference", ROWS, 3, 20.0, 60.0) == "fuzz reference: 1/3 properties run, 12 examples, 1 finding so far, 40s left"


def test_a_log_file_gets_a_line_per_quarter_of_the_budget():
    console, out = captured(terminal=False)
    with live_display(console, "reference", 100.0, 2) as show:
        for elapsed in range(0, 101, 5):
            show(ROWS, float(elapsed))
    lines = out.getvalue().splitlines()
    assert [line.rsplit(", ", 1)[1] for line in lines] == ["75s left", "50s left", "25s left"]


def test_a_terminal_gets_one_line_redrawn_and_cleared_at_the_end():
    console, out = captured(terminal=True)
    with live_display(console, "reference", 10.0, 2) as show:
        show(ROWS, 5.0)
    text = out.getvalue()
    assert "1/2 properties run" in text and "5s left" in text
    assert text.count("\n") <= 3  # one line at a time (cursor controls redraw it), not a growing table


def test_the_end_report_is_one_table_and_the_findings_and_verbose_adds_the_detail():
    target = resolve_target("mutant:chunk_short_last_dropped")
    ci = settings(settings.get_profile("ci"), max_examples=30)
    result = run_campaign(target, "mutant:chunk_short_last_dropped", [get("engine.trace"), get("kv.trim")], 6.0, ci, None, None)
    assert result.findings, "the mutant's bug was not found"
    console, out = captured(terminal=False)
    print_report(result, console)
    short = out.getvalue()
    assert "engine.trace" in short and "kv.trim" in short and "Findings (" in short
    assert "repro: " in short and "paths reached" not in short and "rare paths" not in short
    console, out = captured(terminal=False)
    print_report(result, console, verbose=True)
    verbose = out.getvalue()
    assert "paths reached" in verbose and "rare paths" in verbose and "minimizer:" in verbose
