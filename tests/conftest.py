"""The suite's tiers, and the tests' own report folder.

Tiers (docs/development.md says which to run when):
- ``-m fast``: every test that drives no real engine and is not marked ``slow``, and the corpus files
  of the reference engine and its mutants: every module but the engine adapters, in at most three
  minutes on 2 cores (``-n auto``).
- ``-m engine``: the tests of the engine adapters (HF transformers, llama.cpp, vLLM, their servers),
  and the corpus files of real engines.
- ``-m slow``: tests of fuzzcache's own modules too slow for the fast tier (searches, shrinks and
  campaigns that are their subject).

Reports: every ``fuzz``, ``replay``, ``minimize`` and ``mutants`` a test runs without a report folder
of its own writes under a temporary report root, never into the checkout's ``fuzzcache-report/``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fuzzcache.report_dirs import ROOT_VARIABLE

FAST_FAMILIES = ("reference", "mutant")  # corpus files whose target is fuzzcache's own engine


def corpus_family(item) -> str | None:
    """The family of the target a collected corpus file names (None for a test that is not one)."""
    path = Path(str(item.fspath))
    if path.suffix != ".json":
        return None
    try:
        return str(json.loads(path.read_text()).get("target", "")).partition(":")[0]
    except (OSError, ValueError, AttributeError):
        return "?"  # a broken file: its own item reports it; not in the fast tier


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        family = corpus_family(item)
        if family is not None and family not in FAST_FAMILIES:
            item.add_marker(pytest.mark.engine)
        if not (item.get_closest_marker("slow") or item.get_closest_marker("engine")):
            item.add_marker(pytest.mark.fast)


@pytest.fixture(scope="session", autouse=True)
def report_root_outside_the_checkout(tmp_path_factory):
    """Reports of commands run without --report-dir go to a temporary root (subprocesses inherit it)."""
    root = tmp_path_factory.mktemp("report-root")
    old = os.environ.get(ROOT_VARIABLE)
    os.environ[ROOT_VARIABLE] = str(root)
    yield root
    if old is None:
        os.environ.pop(ROOT_VARIABLE, None)
    else:
        os.environ[ROOT_VARIABLE] = old
