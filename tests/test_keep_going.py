"""Keep-going campaigns: after a finding a property searches on, passing over failures with a
signature it already found, so one run saves every distinct failure it reaches, each shrunk and
minimized to its own trigger; a corpus file (triaged or not) no longer ends its property."""

from __future__ import annotations

import pytest
from hypothesis import settings

from fuzzcache import corpus
from fuzzcache.campaign import run_campaign
from fuzzcache.findings import Finding, signature
from fuzzcache.model import ModelConfig
from fuzzcache.properties import get
from fuzzcache.targets.reference import ReferenceTarget

TRACE = get("engine.trace")


class TwoBugsOneProperty(ReferenceTarget):
    """Two planted bugs engine.trace reaches: a request whose prompt holds a token >= 16 gets its
    oracle's least likely first token (a mismatch; trigger: one request, prompt (16,)); any prompt
    of 4 tokens or more crashes the engine (trigger: one request of 4 tokens). No optional
    features, so configs stay simple."""

    def __init__(self):
        super().__init__(ModelConfig(vocab_size=32, n_layer=1, n_head=2, n_kv_head=1, head_dim=4, max_seq_len=16), name="two-bugs")
        self.features = frozenset()

    def generate(self, requests, config):
        if any(len(r.prompt) >= 4 for r in requests):
            raise RuntimeError("planted: a prompt of 4 tokens")
        out = super().generate(requests, config)
        for r, c in zip(requests, out):
            if max(r.prompt) >= 16 and c.tokens:
                c.tokens[0], c.logits = int(self.reference_logits(r.prompt)[-1].argmin()), None
        return out


def campaign(tmp_path, budget_s: float = 12.0):
    base = settings(max_examples=200, deadline=None, database=None)
    return run_campaign(TwoBugsOneProperty(), "two-bugs", [TRACE], budget_s, base, tmp_path / "corpus", None)


@pytest.mark.slow
def test_one_keep_going_run_saves_both_bugs_each_at_its_own_trigger(tmp_path):
    result = campaign(tmp_path)
    found = {s.kind: s for s in result.totals[TRACE.id].found}
    assert set(found) == {"mismatch", "crash"}, [s.message for s in result.totals[TRACE.id].found]
    assert all(s.new for s in found.values()) and len(corpus.iter_files([tmp_path / "corpus"])) == 2
    (token,) = found["mismatch"].scenario.requests
    assert token.prompt == (16,) and token.max_new_tokens == 1
    (long,) = found["crash"].scenario.requests
    assert len(long.prompt) == 4 and long.max_new_tokens == 1 and not any(long.prompt)
    assert any(path.startswith("known failure passed over: ") for path in result.totals[TRACE.id].paths)


@pytest.mark.slow
def test_a_failure_already_in_the_corpus_no_longer_ends_its_property(tmp_path):
    first = campaign(tmp_path, budget_s=6.0)
    saved = {s.kind for s in first.totals[TRACE.id].found}
    assert saved
    again = campaign(tmp_path, budget_s=6.0)  # same corpus: what it finds again is reported once, not new
    totals = again.totals[TRACE.id]
    found_again = [s for s in totals.found if s.kind in saved]  # under load the first 6 s may reach only one of the two bugs
    assert found_again and not [s for s in found_again if s.new] and totals.examples > 50
    assert len({s.path for s in totals.found}) == len(totals.found)  # each distinct failure once


def test_signature_is_kind_and_where_the_first_divergence_happens():
    token = Finding("mismatch", "m", {"rid": 1, "step": 0, "what": "token"})
    assert signature("engine.trace", token) == ("engine.trace", "mismatch", "token at step 0")
    assert signature("engine.trace", Finding("mismatch", "m", {"rid": 0, "step": 0, "what": "token"})) == signature("engine.trace", token)
    assert signature("engine.trace", Finding("mismatch", "m", {"rid": 1, "step": 2, "what": "token"})) != signature("engine.trace", token)
    tb = 'Traceback (most recent call last):\n  File "/x/e.py", line 3, in step\nRuntimeError: boom'
    assert signature("p", Finding("crash", "c", {"traceback": tb}))[2] == 'File "/x/e.py", line 3, in step raised RuntimeError'


class FlakyFirstToken(TwoBugsOneProperty):
    """Wrong first token on every other call: confirmed as nondeterministic."""

    calls = 0

    def generate(self, requests, config):
        out = ReferenceTarget.generate(self, requests, config)
        self.calls += 1
        if self.calls % 2:
            for r, c in zip(requests, out):
                if c.tokens:
                    c.tokens[0], c.logits = int(self.reference_logits(r.prompt)[-1].argmin()), None
        return out


def test_a_flaky_failure_is_saved_once_not_once_per_example(tmp_path):
    result = run_campaign(FlakyFirstToken(), "flaky", [TRACE], 6.0, settings(max_examples=200, deadline=None, database=None),
                          tmp_path / "corpus", None)
    found = result.totals[TRACE.id].found
    assert [s.kind for s in found] == ["nondeterministic"], [s.message for s in found]
    # the failure as the search sees it (a mismatch) is passed over after that, not shrunk again
    assert result.totals[TRACE.id].paths["known failure passed over: mismatch"] > 0
