"""The HTML report (``fuzzcache/html_report.py``), opened in a real browser: headless Chromium
(Debian's package, /usr/bin/chromium, driven by Playwright) loads the index.html of a campaign
with a finding on the zoo and of one on a real engine (hf:llama), and the timeline and divergence
plot of each finding must have rendered, with no console errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fuzzcache.contract import EngineConfig, Request
from fuzzcache.targets.reference import ReferenceTarget

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # the machine's network is closed: no background fetches


def fuzz(tmp_path: Path, target: str, prop: str, budget: str) -> Path:
    """``fuzzcache fuzz`` on one property with a copy of the project's corpus; its report folder."""
    corpus = tmp_path / "corpus"
    shutil.copytree(ROOT / "corpus", corpus)
    report = tmp_path / "report"
    run = subprocess.run([sys.executable, "-m", "fuzzcache.cli", "fuzz", "--target", target, "--property", prop, "--budget", budget,
                          "--corpus", str(corpus), "--database", str(tmp_path / "db"), "--report-dir", str(report), "--workers", "1"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode in (0, 1), run.stdout + run.stderr
    return report


def rendered(index: Path) -> dict:
    """Open ``index`` in headless Chromium; what each finding's pictures drew, and the console errors."""
    playwright = pytest.importorskip("playwright.sync_api", reason="the browser test needs the test extra's playwright")
    assert Path(CHROMIUM).exists(), "Debian's chromium is not installed (the README's test command installs it)"
    errors: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(index.resolve().as_uri())
            page.wait_for_load_state("load")
            drawn = page.evaluate("""() => [...document.querySelectorAll('section.finding')].map(s => ({
                title: s.querySelector('h3').textContent,
                text: s.textContent,
                timelines: [...s.querySelectorAll('.timeline .js-plotly-plot')].map(d => ({
                    svg: d.querySelectorAll('.main-svg').length,
                    traces: d.data.map(t => t.name), points: d.querySelectorAll('.point, .bars path').length})),
                divergences: [...s.querySelectorAll('.divergence .js-plotly-plot')].map(d => ({
                    svg: d.querySelectorAll('.main-svg').length,
                    traces: d.data.map(t => t.name), shapes: (d.layout.shapes || []).length})),
            }))""")
        finally:
            browser.close()
    return {"findings": drawn, "errors": errors}


def assert_pictures(finding: dict, work: set[str]) -> None:
    """The finding has a drawn timeline with work of these kinds, and a drawn divergence plot
    with its tolerance line and the first divergence marked."""
    assert finding["timelines"] and all(t["svg"] for t in finding["timelines"]), finding["title"]
    assert work <= {name for t in finding["timelines"] for name in t["traces"]}, finding
    assert any(t["points"] for t in finding["timelines"]), finding
    plots = finding["divergences"]
    assert plots and all(d["svg"] and d["shapes"] >= 1 for d in plots), finding  # the tolerance line
    assert any("first divergence" in d["traces"] for d in plots), finding


@pytest.mark.slow
@pytest.mark.xdist_group("browser")
def test_a_zoo_campaigns_report_draws_each_findings_timeline_and_divergence(tmp_path):
    report = fuzz(tmp_path, "mutant:preempt_keeps_stale_block_table", "engine.same.pool", "25s")
    data = json.loads((report / "report.json").read_text())
    findings = data["properties"]["engine.same.pool"]["findings"]  # wrong logits, NaN ones, or both (keep-going)
    assert findings
    for finding in findings:
        assert [run["timeline_source"] for run in finding["picture"]["runs"]] == ["target", "target"]  # configs A and B
        assert finding["history"][0]["tokens"] >= finding["history"][-1]["tokens"]
    page = rendered(report / "index.html")
    assert page["errors"] == []
    assert len(page["findings"]) == len(findings)
    drawn_kinds = [drawn["title"].split(". ", 1)[1] for drawn in page["findings"]]
    # a stale block table gives wrong logits, NaN ones, or reads past the pool (an exception: a crash)
    assert set(drawn_kinds) <= {"engine.same.pool: mismatch", "engine.same.pool: contract", "engine.same.pool: crash"}, drawn_kinds
    compared = [drawn for drawn, kind in zip(page["findings"], drawn_kinds) if not kind.endswith("crash")]
    for drawn in compared:  # a crash has no logits to diverge (the real engine's test below draws one too); the others in full
        assert_pictures(drawn, {"decode"})
        # the path the mutant breaks
        assert any("preempted" in t["traces"] for t in drawn["timelines"]), (drawn["title"], [t["traces"] for t in drawn["timelines"]])


@pytest.mark.engine
@pytest.mark.xdist_group("browser")
def test_a_real_engines_campaign_report_draws_its_finding_with_the_triage(tmp_path):
    """llama.cpp's own KV-memory ops (llamacpp:llama, surgery.memory): its known, triaged bugs
    are found within seconds; each finding's script and divergence are drawn, with its write-up."""
    pytest.importorskip("llama_cpp", reason="llamacpp:llama needs the llamacpp extra (the README's test command installs it)")
    report = fuzz(tmp_path, "llamacpp:llama", "surgery.memory", "30s")
    data = json.loads((report / "report.json").read_text())
    findings = data["properties"]["surgery.memory"]["findings"]
    diverged = [f for f in findings if "logits differ" in f["message"]]
    assert diverged, f"no logits divergence of llama.cpp's known bugs in 30 s: {[f['message'] for f in findings]}"
    page = rendered(report / "index.html")
    assert page["errors"] == []
    drawn = {d["title"]: d for d in page["findings"]}
    assert len(drawn) == len(findings)
    for n, finding in enumerate(findings, 1):
        [section] = [d for title, d in drawn.items() if title.startswith(f"{n}. ")]
        assert section["timelines"] and all(t["svg"] and t["points"] for t in section["timelines"]), section
        if finding in diverged:
            assert_pictures(section, set())
        if finding["writeup"]:
            assert finding["writeup"] in section["text"]
    assert any(f["writeup"] for f in diverged), "a known llama.cpp bug's finding links its write-up"


def test_report_redraws_the_html_from_report_json_and_names_a_missing_or_broken_one(tmp_path):
    from click.testing import CliRunner

    from fuzzcache.cli import main

    data = {"target": "reference", "seconds": 1.0, "interrupted": False, "properties": {
        "engine.trace": {"examples": 3, "seconds": 1.0, "paths": {"prefill": 3, "rare: stop on a block boundary": 1}, "errors": [],
                         "distinct_failures": 0, "findings": []}}}
    (tmp_path / "report.json").write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "index.html").read_text()
    assert "Paths reached: engine.trace" in page and "NEVER reached: every draft accepted" in page
    assert "Plotly" in page and "<script src=" not in page  # plotly.js inlined: opens with no network
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(main, ["report", str(empty)])
    assert result.exit_code != 0 and "no report.json" in result.output
    (empty / "report.json").write_text("{broken")
    result = CliRunner().invoke(main, ["report", str(empty)])
    assert result.exit_code != 0 and "not a readable report" in result.output


def test_replay_draws_the_files_that_still_fail(tmp_path):
    from click.testing import CliRunner

    from fuzzcache import corpus
    from fuzzcache.cli import main
    from fuzzcache.findings import mismatch
    from fuzzcache.scenario import TraceScenario

    scenario = TraceScenario((Request(0, (1,), 3), Request(1, (1,), 3, arrival=1)), EngineConfig(block_size=1, num_blocks=4))
    path, _ = corpus.save(tmp_path / "corpus", "mutant:preempt_keeps_stale_block_table", "engine.same.pool", scenario, mismatch("planted"))
    result = CliRunner().invoke(main, ["replay", str(path), "--report-dir", str(tmp_path / "report")])
    assert result.exit_code == 1, result.output
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    [finding] = data["findings"]
    assert finding["property"] == "engine.same.pool" and finding["kind"] == "mismatch"
    assert {e["kind"] for run in finding["picture"]["runs"] for e in run["timeline"]} >= {"prefill", "decode", "preempted"}
    assert "section class='finding'" in (tmp_path / "report" / "index.html").read_text()


def test_the_reference_engine_reports_its_steps():
    """Chunked prefill, a verify with drafts, a fork sharing blocks, a waiting request, an abort and a stop."""
    target = ReferenceTarget()
    requests = [Request(0, (1, 2, 3, 4, 5), 4, n=2), Request(1, (7, 8, 9), 3, arrival=1, abort_at=3), Request(2, (5, 6, 5, 6), 6, stop=tuple(range(64)))]
    target.generate(requests, EngineConfig(block_size=2, chunk_size=2, spec_k=2, max_num_seqs=2))
    events = target.last_timeline
    kinds = {(e.rid, e.kind) for e in events}
    assert {(0, "prefill"), (0, "forked"), (1, "queued"), (1, "abort"), (2, "stop"), (0, "finished")} <= kinds, kinds
    first = [(e.kind, e.tokens) for e in events if e.rid == 0 and e.fork == 0 and e.kind in ("prefill", "decode", "verify")]
    assert first[:2] == [("prefill", 2), ("prefill", 2)] and first[2][0] == "verify"  # the prompt's last token verifies drafts
    assert any(e.kind == "verify" and e.drafts for e in events)
    assert all(e.step <= 3 for e in events if e.rid == 1)  # nothing after its abort (at the start of step 3)
    target.generate([Request(0, (1, 2, 3, 4, 5), 3, n=2)], EngineConfig(block_size=2))  # the fork runs at once
    fork_work = [e for e in target.last_timeline if e.fork == 1 and e.kind in ("prefill", "decode", "verify")]
    assert fork_work and set(fork_work[0].shared) == set(fork_work[0].blocks[:2]), "the fork shares its sibling's full blocks"


def test_a_preemption_is_on_the_timeline_when_the_request_is_readmitted_and_finishes_in_the_same_step():
    """The stale block table lets a preempted request back in at once (it needs no new blocks for its
    prompt): its step shows the preemption, then the re-prefill and the finish, not the finish alone."""
    from fuzzcache.targets import resolve_target

    target = resolve_target("mutant:preempt_keeps_stale_block_table")
    target.generate([Request(0, (1,), 5), Request(1, (1,), 4)], EngineConfig(block_size=1, num_blocks=6))
    step = [e.kind for e in target.last_timeline if e.rid == 1 and e.step == 3]
    assert step == ["prefill", "preempted", "finished"], step  # the work first (recorded as it runs), then the lifecycle
    correct = ReferenceTarget()
    correct.generate([Request(0, (1,), 5), Request(1, (1,), 4)], EngineConfig(block_size=1, num_blocks=6))
    assert [e.kind for e in correct.last_timeline if e.rid == 1][-4:] == ["preempted", "queued", "prefill", "finished"]


def test_the_picture_marks_where_the_target_left_the_oracle():
    from fuzzcache.finding_picture import picture
    from fuzzcache.mutants import ZOO
    from fuzzcache.properties import get
    from fuzzcache.minimize import finding_of
    from fuzzcache.scenario import TraceScenario
    from fuzzcache.targets import resolve_target

    target = resolve_target("mutant:preempt_keeps_stale_block_table")
    assert "preempt_keeps_stale_block_table" in ZOO
    scenario = TraceScenario((Request(0, (1,), 3), Request(1, (1,), 3, arrival=1)), EngineConfig(block_size=1, num_blocks=4))
    prop = get("engine.same.pool")
    finding = finding_of(prop, target, scenario)  # [prompt=1 new=3] [prompt=1 new=3 at=1] block_size=1 num_blocks=4
    assert finding is not None and finding.kind in ("mismatch", "contract"), finding
    data = picture(prop, target, scenario, finding)
    a, b = data["runs"]
    assert (a["label"], b["label"]) == ("config A", "config B") and "num_blocks=None" in b["config"]
    bad = [p for p in a["positions"] if p["rid"] == finding.details["rid"] and ((p["logit_diff"] or 0.0) > data["tolerance"]["logits"] or p["nonfinite"])]
    assert bad and bad[0]["pos"] == finding.details["step"]  # config A left the oracle where the finding says
    assert all(p["logit_diff"] <= data["tolerance"]["logits"] for p in b["positions"])  # the unbounded pool did not
