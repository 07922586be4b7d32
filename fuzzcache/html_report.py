"""The HTML report: one self-contained ``index.html`` (plotly.js inlined, no server, no network)
drawn from a report.json's data.

Per property: examples, examples/s, distinct failures and the paths reached (rare paths picked
out, those never reached called out). Per finding: its trace timeline, its divergence plot, the
repro with the minimizer's history, and its triage. plotly draws the pictures: its Python package
carries plotly.js, so the file works offline, and its figures are plain JSON kept beside the data.
"""

from __future__ import annotations

import html
import itertools
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from fuzzcache.properties import draws_traces
from fuzzcache.rare_paths import RARE_PATHS
from fuzzcache.report_dirs import root_of, runs_table
from fuzzcache.timeline import KINDS

WORK = {"prefill": "#4c78a8", "decode": "#54a24b", "verify": "#b279a2", "queued": "#d8d8d8"}
MARKS = {"forked": ("triangle-right", "#f58518"), "preempted": ("x", "#e45756"), "stop": ("square", "#222222"),
         "abort": ("x-thin-open", "#e45756"), "finished": ("circle-open", "#222222")}
assert set(WORK) | set(MARKS) == set(KINDS)
OTHER = ("#72b7b2", "#eeca3b", "#ff9da6", "#9d755d", "#bab0ac", "#4c78a8", "#f58518", "#54a24b")  # a memory script's op kinds
FLOOR = 1e-9  # |Δ| of 0 on the divergence plot's log axis

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1em; } td, th { border: 1px solid #ccc; padding: .2em .6em; text-align: right; }
td:first-child, th:first-child { text-align: left; } .never { color: #c00; font-weight: bold; }
section.finding { border-top: 3px solid #e45756; margin-top: 2em; padding-top: .5em; }
code, pre { background: #f4f4f4; padding: .1em .3em; } pre { white-space: pre-wrap; }
.new { color: #c00; } .known { color: #777; }
"""


def write_html(data: dict, out_dir: Path) -> Path:
    """``out_dir/index.html`` from report.json's ``data`` (a campaign's, a replay's or a mutation score's)."""
    ids = itertools.count()
    title = data.get("title") or ("fuzzcache mutants" if "mutants" in data else f"fuzzcache: {data.get('target', '')}")
    parts = [f"<h1>{esc(title)}</h1>", summary(data)]
    if data.get("log"):  # a replay's or minimize's line per file
        parts.append("<h2>Files</h2><pre>" + esc("\n".join(data["log"])) + "</pre>")
    if data.get("mutants"):
        parts.append(mutants_table(data["mutants"]))
    if data.get("properties"):
        parts.append(properties_section(data["properties"], ids))
    if data.get("branch_coverage"):
        parts.append(coverage_section(data["branch_coverage"], ids))
    findings = all_findings(data)
    parts.append(f"<h2>Findings ({len(findings)})</h2>" + ("" if findings else "<p>None.</p>"))
    parts += [finding_section(i, f, ids) for i, f in enumerate(findings, 1)]
    root = root_of(out_dir)
    if root is not None:  # a run's folder under a report root: the runs beside it, linked
        parts.append(f"<h2>Runs in {esc(root)}</h2>" + runs_table(root, out_dir.name, "../{}/index.html"))
    page = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>fuzzcache report</title><style>{STYLE}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "index.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page)
    tmp.replace(path)
    return path


def esc(text) -> str:
    return html.escape(str(text))


def figure(fig: go.Figure, ids, height: int) -> str:
    fig.update_layout(height=height, margin=dict(l=60, r=20, t=40, b=40), template="plotly_white")
    return pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"fig{next(ids)}", config={"displaylogo": False})


def table(head: list[str], rows: list[list]) -> str:
    cells = "".join(f"<tr>{''.join(f'<td>{c}</td>' for c in row)}</tr>" for row in rows)
    return f"<table><tr>{''.join(f'<th>{esc(h)}</th>' for h in head)}</tr>{cells}</table>"


def all_findings(data: dict) -> list[dict]:
    """A campaign's findings per property, a replay's, and the findings that killed mutants."""
    found = [f | {"property": name} for name, p in (data.get("properties") or {}).items() for f in p.get("findings", [])]
    killed = [m["finding"] for m in data.get("mutants") or [] if m.get("finding")]
    return found + list(data.get("findings") or []) + killed


def summary(data: dict) -> str:
    keys = ("target", "seconds", "interrupted", "profile", "budget_s", "total_seconds", "fuzzer_killed", "mutants",
            "median_seconds_to_kill", "worst_seconds_to_kill", "reference_survived", "clean", "clean_flagged")
    rows = [[esc(k), esc(", ".join(map(str, data[k])) if isinstance(data[k], list) else data[k])] for k in keys if k in data]
    return table(["", ""], rows) if rows else ""


# ---- properties ------------------------------------------------------------------------------

def properties_section(properties: dict, ids) -> str:
    rows = []
    for name, p in properties.items():
        rate = p["examples"] / p["seconds"] if p.get("seconds") else 0.0
        rows.append([esc(name), p["examples"], f"{rate:.1f}", p.get("distinct_failures", 0), len(p.get("errors", []))])
    parts = ["<h2>Properties</h2>", table(["property", "examples", "examples/s", "distinct failures", "errors"], rows)]
    for name, p in properties.items():
        if p.get("paths"):
            parts.append(f"<h3>Paths reached: {esc(name)}</h3>" + paths_chart(name, p["paths"], ids))
    return "\n".join(parts)


def paths_chart(name: str, paths: dict, ids) -> str:
    """Examples per path, rare paths in orange; a trace property's rare paths never reached are named."""
    names = sorted(paths, key=lambda k: paths[k])
    colors = ["#f58518" if k.startswith("rare: ") else "#4c78a8" for k in names]
    fig = go.Figure(go.Bar(x=[paths[k] for k in names], y=names, orientation="h", marker_color=colors))
    fig.update_xaxes(type="log", title="examples")
    never = [r for r in RARE_PATHS if not paths.get(f"rare: {r}")] if draws_traces(name) else []
    note = f"<p class='never'>Rare paths NEVER reached: {esc(', '.join(never))}</p>" if never else ""
    return figure(fig, ids, height=120 + 18 * len(names)) + note


def coverage_section(cov: dict, ids) -> str:
    total = cov.get("total", {})
    rows = [[esc(n), f["branches"], f["reached"], f"{100 * f['reached'] / f['branches']:.0f}" if f["branches"] else "-",
             len(f["never_reached"])] for n, f in cov.get("files", {}).items()]
    head = f"<h2>Engine branch coverage: {esc(', '.join(cov.get('packages', [])))}</h2>"
    text = f"<p>{total.get('reached', '?')} of {total.get('branches', '?')} branches reached.</p>" if total else ""
    parts = [head, text, table(["file", "branches", "reached", "%", "never reached"], rows)]
    points = cov.get("over_time") or []
    if points:
        fig = go.Figure(go.Scatter(x=[p["examples"] for p in points], y=[p["branches_reached"] for p in points], mode="lines+markers"))
        fig.update_xaxes(title="examples")
        fig.update_yaxes(title="branches reached")
        parts.append(figure(fig, ids, height=300))
    return "\n".join(parts)


def mutants_table(mutants: list[dict]) -> str:
    rows = [[esc(m["target"]), verdict(m), esc(m.get("killed_by") or "-"),
             esc(m.get("seconds_to_kill") if m.get("seconds_to_kill") is not None else "-"),
             esc(m.get("examples_to_kill") if m.get("examples_to_kill") is not None else "-"), f"<code>{esc(m.get('repro') or '-')}</code>"]
            for m in mutants]
    return "<h2>Mutants</h2>" + table(["mutant", "fuzzer", "property", "s to kill", "examples to kill", "minimized repro"], rows)


def verdict(m: dict) -> str:
    """A mutant killed is good, a mutant surviving is not; a clean target (the correct engine) the other way round."""
    if m.get("clean", m["target"] == "reference"):  # mutants.json before --clean: the correct engine was "reference"
        return "<span class='never'>FLAGGED</span>" if m.get("fuzz_killed") or m.get("fixed_killed") else "stayed clean (must)"
    return "killed" if m.get("fuzz_killed") else "<span class='never'>survived</span>"


# ---- findings --------------------------------------------------------------------------------

def finding_section(n: int, f: dict, ids) -> str:
    status = ("<span class='new'>new, untriaged</span>" if f.get("new") and not f.get("triage")
              else f"<span class='known'>{'new' if f.get('new') else 'already in the corpus'}; triage: {esc(f.get('triage') or 'none')}</span>")
    bugs = f"; known bug: {esc(' + '.join(f['known_bugs']))}" if f.get("known_bugs") else ""
    writeup = f" &middot; write-up: <code>{esc(f['writeup'])}</code>" if f.get("writeup") else ""
    parts = [f"<section class='finding' id='finding-{n}'>",
             f"<h3>{n}. {esc(f.get('property'))}: {esc(f['kind'])}</h3>",
             f"<p>{esc(f['message'])}</p><p>{status}{bugs}{writeup}</p>",
             f"<p>corpus file: <code>{esc(f.get('path'))}</code></p>" if f.get("path") else "",
             f"<p>repro: <code>{esc(f.get('repro'))}</code><br>Hypothesis's shrunk form: <code>{esc(f.get('shrunk'))}</code></p>",
             history_part(f.get("history") or [], ids)]
    picture = f.get("picture") or {"note": "no picture data"}
    if "runs" in picture:
        for run in picture["runs"]:
            parts.append(run_part(run, picture, ids))
    else:
        parts.append(f"<p>{esc(picture['note'])}</p>")
    parts.append("</section>")
    return "\n".join(parts)


def history_part(history: list[dict], ids) -> str:
    if len(history) < 2:
        return "<p>minimizer: no reduction accepted</p>" if history else ""
    fig = go.Figure(go.Scatter(x=list(range(len(history))), y=[h["tokens"] for h in history], mode="lines+markers",
                               text=[f"after {h['checks']} checks: {h['repro']}" for h in history], hoverinfo="text+y"))
    fig.update_xaxes(title="accepted reduction", dtick=1)
    fig.update_yaxes(title="tokens in the repro", rangemode="tozero")
    fig.update_layout(title="minimizer's history")
    return f"<div class='history'>{figure(fig, ids, height=260)}</div>"


def run_part(run: dict, picture: dict, ids) -> str:
    head = f"<h4>{esc(run['label'])}: <code>{esc(run['config'])}</code></h4>"
    error = f"<p>the run raised: <code>{esc(run['error'])}</code></p>" if run.get("error") else ""
    source = {"target": "", "script": "<p>The timeline is the script's operations in order, on the sequences each one edits.</p>",
              "trace": "<p>The target reports no engine steps: the timeline shows what the trace asks for (arrivals, aborts) "
                       "and how many tokens each continuation returned.</p>"}[run.get("timeline_source", "trace")]
    unit = picture.get("unit", "request")
    axis = "operation" if run.get("timeline_source") == "script" else "engine step"
    return (head + error + source + f"<div class='timeline'>{timeline_figure(run['timeline'], ids, unit, axis)}</div>"
            + f"<div class='divergence'>{divergence_figure(run, picture, ids)}</div>" + divergence_table(run, picture))


def row_name(e: dict, unit: str = "request") -> str:
    return f"{unit} {e['rid']}" + (f" #{e['fork']}" if e.get("fork") else "")


def timeline_figure(events: list[dict], ids, unit: str = "request", axis: str = "engine step") -> str:
    """Requests (or a script's sequences) as rows, steps (or ops) as columns: work as bars,
    lifecycle events as marks."""
    rows = sorted({(e["rid"], e.get("fork", 0)) for e in events})
    order = [row_name({"rid": r, "fork": f}, unit) for r, f in rows]
    others = sorted({e["kind"] for e in events} - set(WORK) - set(MARKS))
    fig = go.Figure()
    for kind, color in [*WORK.items(), *zip(others, itertools.cycle(OTHER))]:
        evs = [e for e in events if e["kind"] == kind]
        if evs:
            fig.add_trace(go.Bar(name=kind, base=[e["step"] for e in evs], x=[1] * len(evs), y=[row_name(e, unit) for e in evs],
                                 orientation="h", marker_color=color, text=[event_label(e) for e in evs], textposition="inside",
                                 hovertext=[event_hover(e, unit) for e in evs], hoverinfo="text"))
    for kind, (symbol, color) in MARKS.items():
        evs = [e for e in events if e["kind"] == kind]
        if evs:
            fig.add_trace(go.Scatter(name=kind, x=[e["step"] + 0.5 for e in evs], y=[row_name(e, unit) for e in evs], mode="markers",
                                     marker=dict(symbol=symbol, size=13, color=color, line=dict(width=2, color=color)),
                                     hovertext=[event_hover(e, unit) for e in evs], hoverinfo="text"))
    fig.update_layout(barmode="overlay", title="trace timeline" if unit == "request" else "script", legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(title=axis, dtick=1)
    fig.update_yaxes(categoryorder="array", categoryarray=list(reversed(order)))
    return figure(fig, ids, height=200 + 40 * len(rows))


def event_label(e: dict) -> str:
    if e.get("label"):
        return e["label"]
    if e["kind"] == "verify":
        return f"{e['accepted']}/{e['drafts']}"
    return str(e.get("tokens") or "") if e["kind"] == "prefill" else ""


def event_hover(e: dict, unit: str = "request") -> str:
    text = f"step {e['step']}, {row_name(e, unit)}: {e.get('label') or e['kind']}"
    if e.get("tokens"):
        text += f", {e['tokens']} tokens"
    if e.get("drafts"):
        text += f", drafts accepted {e['accepted']} of {e['drafts']}"
    if e.get("blocks"):
        text += f"<br>blocks {e['blocks']}" + (f", shared {e['shared']}" if e.get("shared") else "")
    return text


def measure(run: dict) -> tuple[str, str]:
    """(position key, axis title): |Δ logit| where the target returned logits, else the oracle's margin."""
    if any(p["logit_diff"] is not None or p.get("nonfinite") for p in run["positions"]):
        return "logit_diff", "|Δ logit| (max over the vocabulary)"
    return "margin", "oracle margin of its top token over the target's"


def divergence_figure(run: dict, picture: dict, ids) -> str:
    """Per generated position, the target against the oracle, the tolerance line, the first divergence."""
    if not run["positions"]:
        return "<p>no tokens to compare</p>"
    key, title = measure(run)
    tol = picture["tolerance"]["logits" if key == "logit_diff" else "tie"]
    top = 10 * max([p[key] or 0.0 for p in run["positions"]] + [tol, 1.0])  # where NaN/inf logits are drawn
    fig = go.Figure()
    positions = sorted(run["positions"], key=lambda p: (p["rid"], p["fork"], p["pos"]))
    for (rid, fork), group in itertools.groupby(positions, key=lambda p: (p["rid"], p["fork"])):
        group = list(group)
        fig.add_trace(go.Scatter(name=row_name({"rid": rid, "fork": fork}, picture.get("unit", "request")), x=[p["pos"] for p in group],
                                 y=[plotted(p, key, top) for p in group], mode="lines+markers",
                                 hovertext=[f"position {p['pos']}: target {p['got']}, oracle {p['expected']}, |Δ logit| "
                                            f"{diff_text(p)}, margin {p['margin']:.3g}" for p in group],
                                 hoverinfo="text"))
    fig.add_hline(y=tol, line_dash="dash", line_color="#e45756", annotation_text=f"tolerance {tol:g}")
    first = first_divergence(run, key, tol, picture.get("focus") or {})
    if first is not None:
        fig.add_trace(go.Scatter(name="first divergence", x=[first["pos"]], y=[plotted(first, key, top)], mode="markers",
                                 marker=dict(symbol="star", size=18, color="#e45756")))
    fig.update_xaxes(title="generated position" if picture.get("unit", "request") == "request" else "decoded token", dtick=1)
    fig.update_yaxes(title=title, type="log")
    fig.update_layout(title="divergence from the oracle")
    return figure(fig, ids, height=360)


def first_divergence(run: dict, key: str, tol: float, focus: dict) -> dict | None:
    """The first position (of the finding's request where it names one) over the tolerance, on
    another token, or with NaN/inf logits."""
    rows = [p for p in run["positions"] if focus.get("rid") is None or p["rid"] == focus["rid"]] or run["positions"]
    return next((p for p in rows if (p[key] or 0.0) > tol or p["got"] != p["expected"] or p.get("nonfinite")), None)


def plotted(p: dict, key: str, top: float) -> float:
    """A position's value on the log axis: NaN/inf logits drawn at ``top``, 0 at FLOOR."""
    return top if p.get("nonfinite") else max(p[key] or 0.0, FLOOR)


def divergence_table(run: dict, picture: dict) -> str:
    if not run["positions"]:
        return ""
    key, _ = measure(run)
    tol = picture["tolerance"]["logits" if key == "logit_diff" else "tie"]
    first = first_divergence(run, key, tol, picture.get("focus") or {})
    rows = [[esc(row_name(p, picture.get("unit", "request"))), p["pos"], p["got"], p["expected"], diff_text(p),
             f"{p['margin']:.3g}", "<b>first divergence</b>" if p is first else ""] for p in run["positions"]]
    return "<details><summary>positions</summary>" + table(
        ["continuation", "position", "target's token", "oracle's top token", "|Δ logit|", "oracle margin", ""], rows) + "</details>"


def diff_text(p: dict) -> str:
    return "NaN/inf" if p.get("nonfinite") else f"{p['logit_diff']:.3g}" if p["logit_diff"] is not None else "-"

