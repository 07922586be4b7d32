"""Known bugs claim their findings (fuzzcache.known_bugs): a new shape of a known bug is saved with
a triage naming the bug and does not fail the run; a finding no known bug explains does; a bug
the oracle models claims what passes once modelled, alone or with the fewest others; replay and
pytest report an untriaged file a known bug claims as known."""

from __future__ import annotations

import dataclasses
import json

from click.testing import CliRunner
from hypothesis import settings

from fuzzcache import corpus
from fuzzcache.cli import main
from fuzzcache.findings import Finding, crash_site
from fuzzcache.known_bugs import KnownBug, claim
from fuzzcache.model import ModelConfig
from fuzzcache.properties import get
from fuzzcache.runner import run_property
from fuzzcache.targets.reference import ReferenceTarget

TRACE = get("engine.trace")
FIND = settings(max_examples=200, deadline=None, database=None, derandomize=True)


def crashes_on_long_prompts(scenario, finding) -> bool:
    """The planted crash's trigger: its site, and a prompt of 4 tokens or more."""
    site, error = crash_site(finding)
    return "planted_crash" in site and error == "RuntimeError" and any(len(r.prompt) >= 4 for r in scenario.requests)


LONG_PROMPT_CRASH = KnownBug("planted-long-prompt-crash", "a prompt of 4 tokens crashes the engine", ("engine.trace",), ("crash",),
                             explains=crashes_on_long_prompts)


class Planted(ReferenceTarget):
    """A small reference engine with one planted bug: a crash on any prompt of 4 tokens or more,
    or (``wrong_token``) the oracle's least likely first token for a prompt holding a token >= 16."""

    def __init__(self, wrong_token: bool = False, known_bugs=(LONG_PROMPT_CRASH,)):
        super().__init__(ModelConfig(vocab_size=32, n_layer=1, n_head=2, n_kv_head=1, head_dim=4, max_seq_len=16), name="planted")
        self.features, self.wrong_token, self.known_bugs = frozenset(), wrong_token, known_bugs

    def generate(self, requests, config):
        if not self.wrong_token:
            self.planted_crash(requests)
        out = super().generate(requests, config)
        for r, c in zip(requests, out):
            if self.wrong_token and max(r.prompt) >= 16 and c.tokens:
                c.tokens[0], c.logits = int(self.reference_logits(r.prompt)[-1].argmin()), None
        return out

    @staticmethod
    def planted_crash(requests):
        if any(len(r.prompt) >= 4 for r in requests):
            raise RuntimeError("planted: a prompt of 4 tokens")


def UnclaimedCrash():  # noqa: N802 - a target spec for the CLI: the same crash, no known bugs
    return Planted(known_bugs=())


def test_a_known_bugs_new_shape_is_saved_triaged_and_does_not_fail_the_run(tmp_path):
    run = run_property(TRACE, Planted(), "planted", FIND, tmp_path)
    (saved,) = run.found
    assert saved.new and saved.kind == "crash" and saved.known_bugs == ["planted-long-prompt-crash"] and not saved.untriaged
    case = corpus.load(saved.path)
    assert case.known and case.triage["known_bugs"] == ["planted-long-prompt-crash"]
    assert "corpus/planted-long-prompt-crash.md" in case.triage["writeup"]
    assert saved.minimized is None  # a known bug's shape is not minimized


def test_a_finding_no_known_bug_explains_fails_the_run(tmp_path):
    run = run_property(TRACE, Planted(wrong_token=True), "planted", FIND, tmp_path)
    (saved,) = run.found
    assert saved.kind == "mismatch" and saved.untriaged and saved.known_bugs == []
    assert corpus.load(saved.path).triage is None


def test_a_crash_elsewhere_is_not_the_known_bugs(tmp_path):
    finding = Finding("crash", "boom", {"traceback": 'Traceback (most recent call last):\n  File "x.py", line 1, in other\nRuntimeError: boom'})
    (request,) = [dataclasses.replace(r, prompt=(1, 2, 3, 4)) for r in _one_request().requests]
    assert claim(TRACE, Planted(), dataclasses.replace(_one_request(), requests=(request,)), finding) is None


def _one_request():
    from fuzzcache.contract import EngineConfig, Request
    from fuzzcache.scenario import TraceScenario

    return TraceScenario(requests=(Request(0, (1,), 1),), config=EngineConfig())


def test_modelled_bugs_claim_alone_or_the_fewest_together():
    needs = {"one": {"a"}, "two": {"a", "b"}, "none": {"z"}}

    def check_modeling(target, scenario, modeled):
        if not needs[scenario] <= modeled:
            raise Finding("mismatch", f"needs {needs[scenario]}")

    prop = dataclasses.replace(TRACE, check_modeling=check_modeling)
    bugs = tuple(KnownBug(f"bug-{m}", m, modeled=m) for m in "abc")
    target = Planted(known_bugs=bugs)
    finding = Finding("mismatch", "x")
    assert claim(prop, target, "one", finding).ids == ["bug-a"]
    together = claim(prop, target, "two", finding)
    assert together.ids == ["bug-a", "bug-b"] and "together" in together.how
    assert claim(prop, target, "none", finding) is None
    assert claim(prop, target, "one", finding, model=False) is None  # no target calls on the way out
    assert claim(prop, target, "one", Finding("nondeterministic", "x")) is None
    assert claim(TRACE, target, "one", finding) is None  # a property whose oracle models no bug


def test_replay_reports_an_untriaged_file_a_known_bug_claims_as_known(tmp_path):
    run = run_property(TRACE, UnclaimedCrash(), "planted", FIND, tmp_path)
    (saved,) = run.found
    assert saved.untriaged
    failing = CliRunner().invoke(main, ["replay", str(saved.path), "--target", "test_known_bugs:UnclaimedCrash"])
    assert failing.exit_code == 1 and "FAILS" in failing.output, failing.output
    known = CliRunner().invoke(main, ["replay", str(saved.path), "--target", "test_known_bugs:Planted"])
    assert known.exit_code == 0 and "KNOWN" in known.output and "planted-long-prompt-crash" in known.output, known.output
    assert json.loads(saved.path.read_text()).get("triage") is None  # replay never edits a file
