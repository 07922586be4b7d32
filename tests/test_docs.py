"""The docs (mkdocs.yml, docs/): they build strictly with no warning, and a broken link, a broken
anchor or a page left out of the navigation fails the build (mkdocs.yml's ``validation``); the
README's links reach files that exist; the 30-line example target of "Fuzz your engine" passes
``engine.trace`` and its planted bug is found; the command that tests/test_vllm_server.py starts by
hand is on the page it reads it from."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parent.parent
NEEDS_MKDOCS = "the docs build needs the docs extra (pip install -e '.[docs]'; the README's test command installs it)"
PENDING_FILES = {"docs/img/report.png"}  # the HTML report's screenshot, which its author adds


def build(config: Path, site: Path) -> tuple[int, str]:
    """``mkdocs build --strict`` of ``config`` into ``site``: its exit status and its output."""
    pytest.importorskip("mkdocs", reason=NEEDS_MKDOCS)
    pytest.importorskip("material", reason=NEEDS_MKDOCS)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's end-of-life notice, printed on every build
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
                          capture_output=True, text=True, env=env, timeout=300)
    return done.returncode, done.stdout + done.stderr


def test_the_docs_build_strictly_with_no_warning(tmp_path):
    rc, out = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert rc == 0 and "WARNING" not in out, out
    assert "SharedCache" in (tmp_path / "site" / "fuzz-your-engine" / "index.html").read_text()  # the example, included


@pytest.mark.parametrize("page, planted, named", [
    ("quickstart.md", "\nSee [the missing page](no-such-page.md).\n", "no-such-page.md"),
    ("quickstart.md", "\nSee [a missing section](properties.md#no-such-section).\n", "#no-such-section"),
    ("stray.md", "# A page no navigation lists\n", "stray.md"),
], ids=["link", "anchor", "page left out of the nav"])
def test_a_broken_link_fails_the_build(tmp_path, page, planted, named):
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    with open(tmp_path / "docs" / page, "a") as f:
        f.write(planted)
    rc, out = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert rc != 0 and "WARNING" in out and named in out, out


def test_the_readmes_links_reach_files_that_exist():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    local = [link for link in links if "://" not in link]
    assert any(link.startswith("docs/") for link in local)
    missing = [link for link in local if not (ROOT / link).exists() and link not in PENDING_FILES]
    assert not missing, missing


def example_targets():
    pytest.importorskip("transformers", reason="the example target runs a tiny HF model (the hf extra)")
    spec = importlib.util.spec_from_file_location("my_engine", ROOT / "docs" / "examples" / "my_engine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_target_passes_and_its_planted_bug_is_found(tmp_path):
    from fuzzcache.properties import get
    from fuzzcache.runner import run_property

    module = example_targets()
    runs = settings(max_examples=30, deadline=None, database=None, derandomize=True)
    correct = run_property(get("engine.trace"), module.MyEngine(), "my_engine:MyEngine", runs, tmp_path / "correct")
    assert correct.examples == 30 and not correct.found and not correct.error, (correct.found, correct.error)
    buggy = run_property(get("engine.trace"), module.SharedCache(), "my_engine:SharedCache", runs, tmp_path / "buggy")
    assert [s.kind for s in buggy.found] == ["mismatch"], (buggy.found, buggy.error)


def test_the_command_the_vllm_server_test_starts_by_hand_is_on_its_page():
    lines = (ROOT / "docs" / "targets" / "vllm-server.md").read_text().splitlines()
    start = lines.index("<!-- attached-server-command -->")  # as tests/test_vllm_server.py's documented_command reads it
    assert any(line.startswith("python -m fuzzcache.targets.serve.vllm_cli serve") for line in lines[start:start + 8])
