"""The ci profile's bounded run of one property on a real engine's target: a few examples, and
the only finding allowed is a case already triaged in the repository's corpus (an upstream bug)
or one the target's known bugs claim."""

from __future__ import annotations

import shutil
from pathlib import Path

from hypothesis import settings

from fuzzcache.corpus import load
from fuzzcache.properties import PROPERTIES
from fuzzcache.runner import run_property

CORPUS = Path(__file__).parent.parent / "corpus"


def assert_only_triaged_findings(target, spec: str, property_id: str, bounded: settings, tmp_path: Path) -> None:
    known = CORPUS / spec / property_id
    if known.exists():
        shutil.copytree(known, tmp_path / spec / property_id)
    run = run_property(PROPERTIES[property_id], target, spec, bounded, tmp_path)
    assert run.error is None
    assert run.examples > 0
    for saved in run.found:  # a new shape of a known bug is claimed by it (fuzzcache.known_bugs)
        assert not saved.untriaged and load(saved.path).known, f"new finding on {spec}: {saved.message}\n  {saved.path}"
