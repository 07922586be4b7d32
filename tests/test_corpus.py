"""The corpus (ARCHITECTURE.md section 6) and everything that reads it back: ``corpus.save`` and
``corpus.load``, ``fuzzcache replay``, the pytest plugin's corpus items, and the ``fuzz`` and
``list`` commands end to end, on the reference engine and on a planted-bug target module that
is named ``module:attr`` the way a user names their own engine."""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from fuzzcache import corpus, guard
from fuzzcache.cli import main
from fuzzcache.contract import EngineConfig, Request
from fuzzcache.findings import KINDS, Finding
from fuzzcache.scenario import TraceScenario, to_jsonable

pytest_plugins = ["pytester"]

PLANTED_MODULE = "fuzzcache_planted_bug"
PLANTED = f"{PLANTED_MODULE}:make_target"
PLANTED_SOURCE = '''
from fuzzcache.model import ModelConfig
from fuzzcache.targets.reference import ReferenceTarget


class LastTokenOffByOne(ReferenceTarget):
    """The reference engine with a planted bug: the last token of every completion is off by one.
    No optional features, so Hypothesis draws and shrinks small configs."""

    def __init__(self):
        config = ModelConfig(vocab_size=32, n_layer=1, n_head=2, n_kv_head=1, head_dim=4, max_seq_len=16)
        super().__init__(config, name="last-token-off-by-one")
        self.features = frozenset()

    def generate(self, requests, config):
        out = super().generate(requests, config)
        for c in out:
            if c.tokens:
                c.tokens[-1] = (c.tokens[-1] + 1) % self.vocab_size
        return out


def make_target():
    return LastTokenOffByOne()
'''

# Three greedy tokens after a short prompt; the reference agrees with the oracle on it, the
# planted bug does not (its last token is off by one, far beyond the tie tolerance).
SCENARIO = TraceScenario((Request(0, (1, 2, 3), 3), Request(1, (4, 5), 2, arrival=1)), EngineConfig(block_size=2))
FINDING = Finding("mismatch", "request 0 step 2: expected token 7, got 8", {"rid": 0, "step": 2, "traceback": "Traceback ..."})


@pytest.fixture
def planted(tmp_path, monkeypatch) -> str:
    """A user's target module outside the package, importable as ``fuzzcache_planted_bug``."""
    src = tmp_path / "src"
    src.mkdir()
    (src / f"{PLANTED_MODULE}.py").write_text(PLANTED_SOURCE)
    monkeypatch.syspath_prepend(str(src))
    monkeypatch.delitem(sys.modules, PLANTED_MODULE, raising=False)
    yield PLANTED
    sys.modules.pop(PLANTED_MODULE, None)


@pytest.fixture
def cli(monkeypatch):
    """Run ``fuzzcache ...`` in-process; ``fuzz`` sets guard.TIME_LIMIT_S, which is restored after."""
    monkeypatch.setattr(guard, "TIME_LIMIT_S", guard.TIME_LIMIT_S)
    runner = CliRunner()
    return lambda *args: runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


def save(corpus_dir: Path, target: str = "reference", scenario: TraceScenario = SCENARIO, finding: Finding = FINDING):
    return corpus.save(corpus_dir, target, "engine.trace", scenario, finding)


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# --- save ----------------------------------------------------------------------------------


def test_save_writes_a_readable_content_addressed_file(tmp_path):
    path, new = save(tmp_path / "corpus")
    assert new
    digest = corpus.case_hash("reference", "engine.trace", SCENARIO)
    assert len(digest) == 40 and int(digest, 16) >= 0
    assert path == tmp_path / "corpus" / "reference" / "engine.trace" / f"mismatch-{digest}.json"
    assert files_under(tmp_path) == [path]
    text = path.read_text()
    assert text.startswith("{\n  ") and text.endswith("}\n")  # indented for people to read
    record = json.loads(text)
    assert record["schema"] == corpus.SCHEMA_VERSION
    assert (record["target"], record["property"], record["kind"]) == ("reference", "engine.trace", "mismatch")
    assert record["message"] == FINDING.message
    assert record["scenario"] == to_jsonable(SCENARIO)
    assert record["divergence"] == {"rid": 0, "step": 2}
    assert record["traceback"] == "Traceback ..."
    assert set(record["versions"]) == {"fuzzcache", "torch", "hypothesis"}
    assert record["date"][:2] == "20" and "T" in record["date"]


def test_the_hash_covers_target_property_and_scenario():
    base = corpus.case_hash("reference", "engine.trace", SCENARIO)
    other_scenario = TraceScenario(SCENARIO.requests, EngineConfig(block_size=3))
    assert corpus.case_hash("reference", "engine.trace", SCENARIO) == base
    assert corpus.case_hash("other", "engine.trace", SCENARIO) != base
    assert corpus.case_hash("reference", "engine.same.pool", SCENARIO) != base
    assert corpus.case_hash("reference", "engine.trace", other_scenario) != base


def test_saving_again_is_not_new_and_never_overwrites(tmp_path):
    path, new = save(tmp_path)
    original = path.read_bytes()
    again, new_again = save(tmp_path, finding=Finding("crash", "a different message for the same input"))
    assert (again, new, new_again) == (path, True, False)
    assert files_under(tmp_path) == [path]
    assert path.read_bytes() == original


def test_a_file_that_appears_while_saving_is_kept(tmp_path, monkeypatch):
    """Two workers saving the same case at once: the loser neither overwrites nor leaves debris."""
    real_link = os.link

    def racing_link(src, dst):
        Path(dst).write_text("the other worker's file\n")
        return real_link(src, dst)

    monkeypatch.setattr(corpus.os, "link", racing_link)
    path, new = save(tmp_path)
    assert not new
    assert files_under(tmp_path) == [path]
    assert path.read_text() == "the other worker's file\n"


def test_save_leaves_no_temporary_files(tmp_path):
    for i in range(3):
        save(tmp_path, target=f"t{i}")
        save(tmp_path, target=f"t{i}")
    assert not [p for p in tmp_path.rglob(".tmp-*")]
    assert len(files_under(tmp_path)) == 3


# --- names: a file by its finding's kind; old crash- names are the same case ---------------

NAMED = {"mismatch": "mismatch", "crash": "crash", "hang": "hang", "leak": "leak", "contract": "contract",
         "nondeterministic": "nondeterministic", "engine_error": "engine-error"}


def test_every_finding_kind_has_a_file_name():
    assert set(NAMED) == set(KINDS) and corpus.PREFIXES == NAMED


@pytest.mark.parametrize("kind", sorted(NAMED))
def test_a_saved_finding_is_named_by_its_kind(tmp_path, kind):
    path, new = save(tmp_path, finding=Finding(kind, "m"))
    digest = corpus.case_hash("reference", "engine.trace", SCENARIO)
    assert new and path.name == f"{NAMED[kind]}-{digest}.json" and files_under(tmp_path) == [path]
    assert corpus.load(path).kind == kind and corpus.digest_of(path) == digest


def old_named(path: Path) -> Path:
    """A corpus file renamed as fuzzcache named every file before names said the kind."""
    return path.rename(path.with_name(f"crash-{corpus.digest_of(path)}.json"))


def test_an_old_crash_name_is_the_same_case_for_find_and_save(tmp_path):
    old = old_named(save(tmp_path)[0])  # a mismatch
    original = old.read_bytes()
    assert corpus.find(tmp_path, "reference", "engine.trace", SCENARIO) == old
    for kind in ("mismatch", "hang"):  # its own kind's name or another's: one case, no second file
        assert save(tmp_path, finding=Finding(kind, "again")) == (old, False)
    assert files_under(tmp_path) == [old] and old.read_bytes() == original


def test_an_old_crash_name_loads_and_replays(tmp_path, planted, cli):
    old = old_named(save(tmp_path, target=planted)[0])
    assert corpus.load(old).kind == "mismatch"
    result = cli("replay", old)
    assert result.exit_code == 1 and f"FAILS  {old}: [mismatch]" in result.output


def test_the_pytest_plugin_runs_an_old_crash_name(pytester, planted):
    old = old_named(save(pytester.path / "corpus", target=planted)[0])
    result = pytester.runpytest("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*{old.name}*FAILED*"])


# --- load ----------------------------------------------------------------------------------


def test_load_round_trips_the_scenario(tmp_path):
    path, _ = save(tmp_path, target=PLANTED)
    case = corpus.load(path)
    assert case.scenario == SCENARIO
    assert isinstance(case.scenario, TraceScenario) and isinstance(case.scenario.requests, tuple)
    assert isinstance(case.scenario.requests[0].prompt, tuple)
    assert (case.path, case.target, case.property, case.kind, case.message) == (path, PLANTED, "engine.trace", "mismatch", FINDING.message)


DROP = object()


def record(**changes) -> dict:
    """A corpus record as save() writes it, with fields changed (or dropped: ``field=DROP``)."""
    r = {"schema": corpus.SCHEMA_VERSION, "property": "engine.trace", "target": "reference",
         "kind": "mismatch", "message": "m", "scenario": to_jsonable(SCENARIO)}
    r.update(changes)
    return {k: v for k, v in r.items() if v is not DROP}


BAD_SCENARIO = to_jsonable(SCENARIO)
BAD_REQUEST = {**BAD_SCENARIO, "requests": [{**BAD_SCENARIO["requests"][0], "priority": 1}]}

UNUSABLE = {
    "corrupt JSON": ('{"schema": 1, "property": ', "not a readable corpus file"),
    "not UTF-8": (b"\xff\xfe\x00garbage", "not a readable corpus file"),
    "a JSON list": (json.dumps([record()]), "expected a JSON object"),
    "unknown schema": (json.dumps(record(schema=99)), "unknown corpus schema 99"),
    "no schema": (json.dumps(record(schema=DROP)), "unknown corpus schema None"),
    "missing property": (json.dumps(record(property=DROP)), "missing field 'property'"),
    "missing target": (json.dumps(record(target=DROP)), "missing field 'target'"),
    "missing scenario": (json.dumps(record(scenario=DROP)), "missing field 'scenario'"),
    "unknown property": (json.dumps(record(property="engine.nosuch")), "unknown property 'engine.nosuch'"),
    "unknown scenario field": (json.dumps(record(scenario={**BAD_SCENARIO, "seed": 3})), "unknown field(s) ['seed']"),
    "unknown request field": (json.dumps(record(scenario=BAD_REQUEST)), "unknown field(s) ['priority']"),
    "scenario field missing": (json.dumps(record(scenario={"requests": BAD_SCENARIO["requests"]})), "config"),
    "scenario not an object": (json.dumps(record(scenario=[1, 2])), "expected an object"),
}


@pytest.mark.parametrize("what", list(UNUSABLE))
def test_an_unusable_file_is_an_error_naming_it(tmp_path, what):
    content, why = UNUSABLE[what]
    path = tmp_path / "corpus" / "reference" / "engine.trace" / "crash-bad.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(corpus.CorpusError) as excinfo:
        corpus.load(path)
    assert str(path) in str(excinfo.value)
    assert why in str(excinfo.value)


def test_iter_files_finds_json_under_folders_and_rejects_missing_paths(tmp_path):
    a, _ = save(tmp_path / "c", target="a")
    b, _ = save(tmp_path / "c", target="b")
    (a.parent / ".tmp-123.json").write_text("{}")
    assert corpus.iter_files([tmp_path / "c"]) == [a, b]
    assert corpus.iter_files([b]) == [b]
    with pytest.raises(corpus.CorpusError, match="nosuch"):
        corpus.iter_files([tmp_path / "nosuch"])


# --- fuzzcache replay ----------------------------------------------------------------------


def test_replay_a_case_that_still_fails(tmp_path, planted, cli):
    path, _ = save(tmp_path, target=planted)
    result = cli("replay", path)
    assert result.exit_code == 1, result.output
    assert f"FAILS  {path}: [mismatch] request 0 step 2" in result.output
    assert "1 file(s): 1 still failing, 0 known (triaged), 0 unreadable, 0 fixed" in result.output


def test_replay_a_case_the_target_now_gets_right(tmp_path, cli):
    path, _ = save(tmp_path, target="reference")
    result = cli("replay", path)
    assert result.exit_code == 0, result.output
    assert f"fixed  {path}" in result.output
    assert "1 file(s): 0 still failing, 0 known (triaged), 0 unreadable, 1 fixed" in result.output


def test_replay_against_another_target(tmp_path, planted, cli):
    path, _ = save(tmp_path, target=planted)
    result = cli("replay", "--target", "reference", path)
    assert result.exit_code == 0, result.output
    assert f"fixed  {path}" in result.output


def test_replay_reports_each_file_of_a_folder(tmp_path, planted, cli):
    failing, _ = save(tmp_path / "corpus", target=planted)
    fixed, _ = save(tmp_path / "corpus", target="reference")
    corrupt = tmp_path / "corpus" / "reference" / "engine.trace" / "crash-corrupt.json"
    corrupt.write_text("{ nope")
    unknown = tmp_path / "corpus" / "gone" / "engine.trace" / "crash-gone.json"
    unknown.parent.mkdir(parents=True)
    unknown.write_text(json.dumps(record(target="no_such_module_xyz:target")))
    result = cli("replay", tmp_path / "corpus")
    assert result.exit_code == 1, result.output
    assert f"FAILS  {failing}" in result.output
    assert f"fixed  {fixed}" in result.output
    assert f"ERROR  {corrupt}: {corrupt}: not a readable corpus file" in result.output
    assert f"ERROR  {unknown}" in result.output and "no_such_module_xyz" in result.output
    assert "4 file(s): 1 still failing, 0 known (triaged), 2 unreadable, 1 fixed" in result.output


def test_replay_a_corrupt_file_is_an_error_naming_it(tmp_path, cli):
    bad = tmp_path / "crash-bad.json"
    bad.write_text("[1, 2")
    result = cli("replay", bad)
    assert result.exit_code == 1
    assert f"ERROR  {bad}" in result.output
    assert "1 file(s): 0 still failing, 0 known (triaged), 1 unreadable, 0 fixed" in result.output


def test_replay_a_missing_path_is_an_error_naming_it(tmp_path, cli):
    missing = tmp_path / "no-such-corpus"
    result = cli("replay", missing)
    assert result.exit_code == 2
    assert str(missing) in result.stderr and "error" in result.stderr


def triaged(path: Path, classification: str = "upstream-bug") -> Path:
    """The corpus file with a person's triage added."""
    rec = json.loads(path.read_text())
    rec["triage"] = {"classification": classification, "writeup": "why it fails and whose bug it is"}
    path.write_text(json.dumps(rec))
    return path


def test_replay_a_triaged_case_that_still_fails_is_known_not_failing(tmp_path, planted, cli):
    path = triaged(save(tmp_path, target=planted)[0])
    result = cli("replay", path)
    assert result.exit_code == 0, result.output
    assert f"KNOWN  {path}: [mismatch] request 0 step 2" in result.output and "(triaged: upstream-bug)" in result.output
    assert "1 file(s): 0 still failing, 1 known (triaged), 0 unreadable, 0 fixed" in result.output


def test_replay_a_triaged_case_that_now_passes_asks_for_the_triage_to_be_updated(tmp_path, cli):
    path = triaged(save(tmp_path, target="reference")[0], "by-design")
    result = cli("replay", path)
    assert result.exit_code == 1, result.output
    assert f"FIXED? {path}: triaged as by-design but passes now; update the triage" in result.output


@pytest.mark.parametrize("triage", [{"classification": "wontfix", "writeup": "x"}, {"classification": "by-design"}, "upstream-bug"])
def test_a_malformed_triage_is_an_error_naming_the_file(tmp_path, triage):
    path, _ = save(tmp_path)
    rec = json.loads(path.read_text())
    rec["triage"] = triage
    path.write_text(json.dumps(rec))
    with pytest.raises(corpus.CorpusError, match=f"{path}: triage must be"):
        corpus.load(path)


def test_the_pytest_plugin_expects_triaged_cases_to_fail(pytester, planted):
    """A triaged case is xfail while it fails, and a failure once it passes (update the triage)."""
    still = triaged(save(pytester.path / "corpus", target=planted)[0])
    now_passes = triaged(save(pytester.path / "corpus", target="reference")[0], "by-design")
    result = pytester.runpytest("-p", "no:cacheprovider", "-rxf")
    result.assert_outcomes(xfailed=1, failed=1)
    result.stdout.fnmatch_lines([f"*{now_passes}: triaged as by-design but now passes*", f"XFAIL*{still.stem}*known upstream-bug*"])


# --- the pytest plugin ---------------------------------------------------------------------


def corpus_project(pytester) -> tuple[Path, Path]:
    """A project with one corpus case the reference gets right and one corrupt corpus file."""
    good = pytester.path / "corpus" / "reference" / "engine.trace" / "crash-x.json"
    good.parent.mkdir(parents=True)
    good.write_text(json.dumps(record(scenario=to_jsonable(TraceScenario((Request(0, (1, 2), 2),), EngineConfig())))))
    bad = good.parent / "crash-corrupt.json"
    bad.write_text("{ this is not json")
    (good.parent / ".tmp-123.json").write_text("half-written")  # an interrupted save: not a test
    (pytester.path / "other").mkdir()
    (pytester.path / "other" / "data.json").write_text("{}")  # JSON outside corpus/: not a test
    return good, bad


def test_the_pytest_plugin_collects_corpus_files(pytester):
    """A plain ``pytest``: the pytest11 entry point loads the plugin, which runs the corpus."""
    good, bad = corpus_project(pytester)
    result = pytester.runpytest("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*crash-corrupt*FAILED*", "*crash-x*PASSED*"])
    assert f"{bad}: not a readable corpus file" in result.stdout.str()


def test_the_pytest_plugin_by_name_without_autoload(pytester, monkeypatch):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    good, bad = corpus_project(pytester)
    without = pytester.runpytest("-p", "no:cacheprovider")
    without.assert_outcomes()  # no plugin, no corpus tests
    with_plugin = pytester.runpytest("-p", "no:cacheprovider", "-p", "fuzzcache")
    with_plugin.assert_outcomes(passed=1, failed=1)
    assert f"{bad}: not a readable corpus file" in with_plugin.stdout.str()


# --- fuzzcache list / fuzz -----------------------------------------------------------------


def test_list_shows_targets_and_properties(cli):
    result = cli("list")
    assert result.exit_code == 0, result.output
    targets, properties = result.output.split("properties:")
    assert "reference" in targets
    assert all(f"{family}:<arch>" in targets for family in ("hf", "vllm", "llamacpp"))
    assert "engine.trace" in properties and "surgery.memory" in properties


def test_fuzz_an_unknown_target_is_a_usage_error(cli):
    result = cli("fuzz", "--target", "nosuch", "--budget", "1s")
    assert result.exit_code == 2
    assert "unknown target 'nosuch'" in result.stderr
    assert "available: reference" in result.stderr


def test_fuzz_an_unknown_property_pattern_is_a_usage_error(cli):
    result = cli("fuzz", "--property", "nosuch.*", "--budget", "1s")
    assert result.exit_code == 2
    assert "no property matches 'nosuch.*'" in result.stderr
    assert "engine.trace" in result.stderr  # the ids that do exist


def fuzz_args(tmp_path: Path, target: str, budget: str) -> list:
    return ["fuzz", "--target", target, "--budget", budget, "--property", "engine.trace",
            "--corpus", tmp_path / "corpus", "--report-dir", tmp_path / "report", "--database", tmp_path / "db"]


@pytest.mark.slow
def test_fuzz_finds_saves_and_reports_a_planted_bug(tmp_path, planted, cli):
    result = cli(*fuzz_args(tmp_path, planted, "20s"), "--verbose")
    assert result.exit_code == 1, result.output
    (saved,) = files_under(tmp_path / "corpus")
    assert saved.parent == tmp_path / "corpus" / planted / "engine.trace"
    case = corpus.load(saved)
    assert case.kind == "mismatch" and case.target == planted
    assert any(r.max_new_tokens > 0 for r in case.scenario.requests)
    assert "mismatch" in result.output and str(saved.name) in result.output.replace("\n", "")

    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["target"] == planted
    (finding,) = report["properties"]["engine.trace"]["findings"]
    assert finding["kind"] == "mismatch" and finding["new"] and finding["path"] == str(saved)
    # the minimizer ran on the finding: its cost and Hypothesis's shrunk form are in the report and the file
    assert finding["minimized"]["capped"] is False and finding["repro"] == case.scenario.short().strip()
    assert case.shrunk_scenario is not None and finding["shrunk"] == case.shrunk_scenario.short().strip()
    assert f"minimizer: already minimal ({finding['minimized']['checks']} checks" in result.output  # one request, 1 + 1 tokens
    assert "paths reached" in result.output and "rare paths" in result.output  # --verbose: the detail too

    suite = ET.parse(tmp_path / "report" / "junit.xml").getroot()
    assert suite.get("failures") == "1"
    (failure,) = suite.iter("failure")
    assert failure.get("type") == "mismatch" and failure.text == str(saved)

    # and the saved repro replays as still failing
    replayed = cli("replay", saved)
    assert replayed.exit_code == 1 and "FAILS" in replayed.output


def test_fuzz_the_reference_engine_finds_nothing(tmp_path, cli):
    result = cli(*fuzz_args(tmp_path, "reference", "5s"))
    assert result.exit_code == 0, result.output
    assert "No findings." in result.output
    assert files_under(tmp_path / "corpus") == []
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    trace = report["properties"]["engine.trace"]
    assert trace["examples"] > 0 and trace["findings"] == [] and trace["errors"] == []
    suite = ET.parse(tmp_path / "report" / "junit.xml").getroot()
    assert suite.get("failures") == "0" and not list(suite.iter("failure"))


# --- a run's report folder and what the terminal shows ----------------------------------------


def test_fuzz_then_replay_leave_two_reports_under_the_root_and_the_screen_is_short(tmp_path, planted, cli):
    root = tmp_path / "reports"
    campaign = cli("fuzz", "--target", "reference", "--budget", "6s", "--workers", "1", "--corpus", tmp_path / "corpus", "--report-root", root)
    assert campaign.exit_code == 0, campaign.output
    lines = campaign.output.splitlines()
    assert len(lines) <= 40, campaign.output  # one table, the findings, the report's path
    assert "paths reached" not in campaign.output and "rare paths" not in campaign.output  # those are --verbose's
    (fuzz_dir,) = [p for p in root.iterdir() if p.name.startswith("fuzz-")]
    assert lines[-1].startswith(f"report: {fuzz_dir / 'index.html'}")
    assert {"report.json", "junit.xml", "index.html", "run.json"} <= {p.name for p in fuzz_dir.iterdir()}
    campaign_report = (fuzz_dir / "report.json").read_text()

    path, _ = save(tmp_path / "c", target=planted)
    replayed = cli("replay", path, "--report-root", root)
    assert replayed.exit_code == 1, replayed.output
    (replay_dir,) = [p for p in root.iterdir() if p.name.startswith("replay-")]
    assert (fuzz_dir / "report.json").read_text() == campaign_report  # the campaign's report is still there, unchanged
    assert (root / "latest").resolve() == replay_dir.resolve()
    assert json.loads((replay_dir / "report.json").read_text())["title"].startswith("fuzzcache replay: 1 file(s), 1 still failing")
    page = (replay_dir / "index.html").read_text()
    assert f"../{fuzz_dir.name}/index.html" in page and f"{replay_dir.name}</a> (this run)" in page  # the earlier run, linked
    runs = (root / "runs.html").read_text()
    assert fuzz_dir.name in runs and replay_dir.name in runs

    again = cli("replay", path, "--report-root", root)  # within the same second: a folder of its own still
    assert again.exit_code == 1
    assert len([p for p in root.iterdir() if p.name.startswith("replay-")]) == 2


def test_report_dir_is_an_exact_folder_and_touches_no_root(tmp_path, planted, cli, monkeypatch):
    monkeypatch.setenv("FUZZCACHE_REPORT_ROOT", str(tmp_path / "root"))
    path, _ = save(tmp_path / "c", target=planted)
    result = cli("replay", path, "--report-dir", tmp_path / "exact")
    assert result.exit_code == 1
    assert (tmp_path / "exact" / "report.json").exists() and (tmp_path / "exact" / "index.html").exists()
    assert not (tmp_path / "root").exists()


def test_minimize_writes_a_report_of_its_own(tmp_path, planted, cli):
    path, _ = save(tmp_path / "c", target=planted)
    result = cli("minimize", path, "--report-root", tmp_path / "reports")
    assert result.exit_code == 0, result.output
    (run,) = [p for p in (tmp_path / "reports").iterdir() if p.name.startswith("minimize-")]
    data = json.loads((run / "report.json").read_text())
    assert data["title"].startswith("fuzzcache minimize: 1 file(s)") and data["log"] and (run / "index.html").exists()
