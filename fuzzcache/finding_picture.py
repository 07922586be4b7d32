"""The data behind a finding's pictures in the HTML report: one more run of its repro, with the
target's timeline (``fuzzcache.timeline``) and, per generated position, the target's and the
oracle's top token and how far apart they are.

A trace finding of a metamorphic property (``engine.same.*``) is run under both of its configs.
A memory script (``surgery.memory``) is drawn as its ops, and its decodes against the model over
the cache the ops describe. A hang is not run again (it would take the whole time limit); other
scenarios have no timeline.
"""

from __future__ import annotations

import math
from typing import Any

from fuzzcache.compare import target_tolerance
from fuzzcache.contract import continuations
from fuzzcache.findings import Finding
from fuzzcache.guard import call_target
from fuzzcache.properties.engine_level import oracle_rows
from fuzzcache.properties.surgery_memory import OracleRun, touched
from fuzzcache.scenario import TraceScenario
from fuzzcache.surgery.memory_ops import MemoryScenario
from fuzzcache.timeline import StepEvent, timeline_of

MAX_POSITIONS = 64  # per continuation: the pictures are of tiny repros


def picture(prop, target, scenario: Any, finding: Finding) -> dict:
    """{"runs": [{label, config, timeline, timeline_source, positions, error}], "tolerance": ...,
    "focus": {rid, step}, "unit": "request" | "sequence"} for a request trace or a memory script;
    {"note": why not} otherwise."""
    if finding.kind == "hang":
        return {"note": "not run again for the picture: a hang takes the whole time limit"}
    if isinstance(scenario, MemoryScenario):
        return memory_picture(target, scenario, finding)
    if not isinstance(scenario, TraceScenario):
        return {"note": f"no timeline: a {type(scenario).__name__} is neither a request trace nor a memory script"}
    tol = target_tolerance(target)
    configs = [("config A" if prop.variant else "the repro's config", scenario.config)]
    if prop.variant is not None:
        configs.append(("config B", prop.variant(scenario)))
    runs = [run_once(target, scenario, label, config) for label, config in configs]
    details = finding.details
    focus = {"rid": details.get("rid", details.get("row")), "step": details.get("step")}
    return {"runs": runs, "tolerance": {"logits": tol.logits, "tie": tol.tie}, "focus": focus, "unit": "request"}


def run_once(target, scenario: TraceScenario, label: str, config) -> dict:
    """One ``generate`` of the repro's requests under ``config``, compared with the oracle."""
    run: dict[str, Any] = {"label": label, "config": str(config), "error": None, "positions": []}
    if getattr(target, "last_timeline", None) is not None:
        try:
            target.last_timeline = None  # a call refused before it steps must not show the previous call's steps
        except AttributeError:
            pass
    try:
        completions = call_target(f"{target.name}.generate", target.generate, scenario.requests, config)
    except Finding as found:
        run["error"] = f"[{found.kind}] {found.message}"
        completions = []
    except Exception as exc:  # noqa: BLE001 - e.g. a refused config: the picture says so
        run["error"] = f"{type(exc).__name__}: {exc}"
        completions = []
    timeline = timeline_of(target)
    run["timeline_source"] = "target" if timeline is not None else "trace"
    run["timeline"] = timeline if timeline is not None else trace_timeline(scenario, completions)
    for req, whole in zip(scenario.requests, completions):
        for fork, comp in enumerate(continuations(whole)):
            tokens = list(comp.tokens)[:MAX_POSITIONS]
            if not tokens:
                continue
            oracle = oracle_rows(target, req.prompt, tokens)  # (n, V)
            logits = getattr(comp, "logits", None)
            for pos, got in enumerate(tokens):
                row = oracle[pos]
                expected = int(row.argmax())
                diff = float((logits[pos].float() - row).abs().max()) if logits is not None and len(logits) > pos else None
                finite = diff is None or math.isfinite(diff)
                run["positions"].append({"rid": req.rid, "fork": fork, "pos": pos, "got": got, "expected": expected,
                                         "margin": float(row[expected] - row[got]), "logit_diff": diff if finite else None,
                                         "nonfinite": not finite})  # NaN/inf logits: JSON has no NaN
    return run


def trace_timeline(scenario: TraceScenario, completions: list) -> list[dict]:
    """For a target that reports no steps: what the trace itself says (each request queued from its
    arrival, aborted at its ``abort_at``) and how many tokens each continuation returned."""
    events = []
    for i, req in enumerate(scenario.requests):
        events.append(StepEvent(req.arrival, req.rid, "queued").record())
        if req.abort_at is not None:
            events.append(StepEvent(req.abort_at, req.rid, "abort").record())
        if i < len(completions):
            for fork, comp in enumerate(continuations(completions[i])):
                events.append(StepEvent(req.arrival, req.rid, "finished", fork, tokens=len(comp.tokens)).record())
    return events


def memory_picture(target, scenario: MemoryScenario, finding: Finding) -> dict:
    """A memory script (``surgery.memory``): its ops as the timeline (sequences as rows, ops as
    columns), and every decoded token's logits against the model over the cache the ops describe."""
    want = OracleRun(target, scenario)
    run: dict[str, Any] = {"label": "the script", "config": scenario.short(), "error": None, "positions": [], "timeline_source": "script"}
    run["timeline"] = [StepEvent(i, seq, op.kind).record() | {"label": op.short()}
                       for i, op in enumerate(scenario.ops) for seq in sorted({op.seq, *touched(op, target.memory_seqs)})]
    try:
        got = call_target(f"{target.name}.run_memory_script", target.run_memory_script, scenario, want.probe_seqs)
    except Finding as found:
        run["error"], got = f"[{found.kind}] {found.message}", []
    counts: dict[int, int] = {}
    for g, w in zip(got, want.observations):
        if w.kind != "decode" or g.kind != "decode":
            continue
        for seq, rows in w.data.items():  # (n, V) each
            if seq not in g.data or tuple(g.data[seq].shape) != tuple(rows.shape):
                continue
            for target_row, row in zip(g.data[seq].float(), rows.float()):
                expected, token = int(row.argmax()), int(target_row.argmax())
                diff = float((target_row - row).abs().max())
                finite = math.isfinite(diff)
                run["positions"].append({"rid": seq, "fork": 0, "pos": counts.get(seq, 0), "got": token, "expected": expected,
                                         "margin": float(row[expected] - row[token]), "logit_diff": diff if finite else None,
                                         "nonfinite": not finite})
                counts[seq] = counts.get(seq, 0) + 1
    tol = target_tolerance(target)
    focus = {"rid": finding.details.get("seq"), "step": None}
    return {"runs": [run], "tolerance": {"logits": tol.logits, "tie": tol.tie}, "focus": focus, "unit": "sequence"}
