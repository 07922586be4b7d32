"""``fuzzcache export``: standalone repros of real engines' findings for upstream reports.

Every triaged write-up with a corpus file of hf:, vllm: or llamacpp: has its exported script in
corpus/export/<write-up>/ and links it; exporting the corpus file again gives the committed files
byte for byte (so they never go stale); each script of transformers and llama.cpp, run with the
engine's Python alone (fuzzcache unimportable), exits 1 and prints what the finding says (vLLM's:
tests/test_vllm_target.py, in its own environment); the transformers scripts pass on
transformers patched with the fixes their write-ups give, and a script passes where the engine
agrees with the oracle. Files of other targets, other properties and corrupt files are refused
with the reason."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from fuzzcache import corpus
from fuzzcache.cli import main
from fuzzcache.contract import EngineConfig, Request
from fuzzcache.export import ExportError, export
from fuzzcache.findings import Finding
from fuzzcache.properties.prefix_hit import PrefixScenario
from fuzzcache.scenario import TraceScenario
from fuzzcache.surgery.memory_ops import MemoryOp, MemoryScenario

from bounded import CORPUS
from exported import COMMITTED, EXPORTS, engine_of, reported, reports_finding, run_standalone, source_of

ENGINES = ("hf", "vllm", "llamacpp")
RUN_HERE = [f for f in COMMITTED if engine_of(f) != "vllm"]  # vLLM's run in .venv-vllm (test_vllm_target.py)
# transformers with the fixes the write-ups name, patched in before the script runs
HF_FIXES = '''
from transformers.generation.continuous_batching.cache import PagedAttentionCache
from transformers.generation.continuous_batching.requests import RequestStatus
from transformers.generation.continuous_batching.scheduler import Scheduler

clear = Scheduler.clear_cancelled_requests
def clear_cancelled_requests(self):  # hf-cancel-after-soft-reset-hang: clear block_new_requests once nothing is active
    cancelled = clear(self)
    if cancelled and not self.active_requests:
        self.block_new_requests = False
    return cancelled
Scheduler.clear_cancelled_requests = clear_cancelled_requests

mark = PagedAttentionCache.mark_complete_blocks
def mark_complete_blocks(self, state, complete_blocks):  # hf-prefix-blocks-unregistered-on-finish: register, then finish
    finished = state.status == RequestStatus.FINISHED
    state.status = RequestStatus.DECODING if finished else state.status
    try:
        return mark(self, state, complete_blocks)
    finally:
        state.status = RequestStatus.FINISHED if finished else state.status
PagedAttentionCache.mark_complete_blocks = mark_complete_blocks
'''


def needs_engine(folder):
    if engine_of(folder) == "llamacpp":
        pytest.importorskip("llama_cpp", reason="llama.cpp's scripts need the llamacpp extra")


def writeups_with_engine_files() -> dict[str, list]:
    """Write-up id -> the triaged corpus files of a real engine that name it (in the triage text or its known bugs)."""
    found: dict[str, list] = {}
    for path in corpus.iter_files(CORPUS / f for f in CORPUS.iterdir() if f.is_dir() and f.name.partition(":")[0] in ENGINES):
        case = corpus.load(path)
        names = set(re.findall(r"corpus/([\w.-]+)\.md", case.triage["writeup"])) | set(case.triage.get("known_bugs") or [])
        for name in names:
            found.setdefault(name, []).append(case)
    return found


def test_every_triaged_writeup_of_a_real_engine_has_its_export_and_links_it():
    writeups = writeups_with_engine_files()
    assert sorted(writeups) == sorted(f.name for f in COMMITTED), "one export per write-up that has a corpus file of hf:, vllm: or llamacpp:"
    for folder in COMMITTED:
        source = source_of(folder)
        assert source.path in [c.path for c in writeups[folder.name]], f"{folder} is not exported from a file of its write-up"
        page = (CORPUS / f"{folder.name}.md").read_text()
        assert f"corpus/export/{folder.name}/repro.py" in page, f"corpus/{folder.name}.md does not link its exported script"


@pytest.mark.parametrize("folder", COMMITTED, ids=lambda f: f.name)
def test_the_committed_export_is_what_export_writes_now(folder, tmp_path):
    source = source_of(folder)
    done = export(source.path, tmp_path, folder.name)
    assert sorted(p.name for p in done.files) == sorted(p.name for p in folder.iterdir()), "a file is missing or stale in the committed export"
    for path in done.files:
        assert path.read_bytes() == (folder / path.name).read_bytes(), (
            f"{folder / path.name} is stale: fuzzcache export {source.path} --to corpus/export --name {folder.name}")
    text = (folder / "repro.py").read_text()
    assert not re.search(r"^\s*(import|from)\s+fuzzcache\b", text, re.M), "the script imports fuzzcache"
    assert all(f.stat().st_size < 400_000 for f in folder.iterdir()), "a model file grew past 400 kB"


@pytest.mark.engine  # runs the engine
@pytest.mark.parametrize("folder", RUN_HERE, ids=lambda f: f.name)
def test_the_exported_script_reproduces_the_finding_with_the_engine_alone(folder, tmp_path):
    needs_engine(folder)
    case = source_of(folder)
    done = run_standalone(folder / "repro.py", tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert "\nFAIL " in "\n" + done.stdout and reports_finding(case, out), (reported(case), out[-3000:])


@pytest.mark.engine  # runs the engine
@pytest.mark.parametrize("name", ["hf-cancel-after-soft-reset-hang", "hf-prefix-blocks-unregistered-on-finish"])
def test_the_transformers_scripts_pass_once_the_engine_is_fixed(name, tmp_path):
    """Patched with the write-up's fix, the same script finds nothing (hf-fork-one-token-prompt's
    fix reshapes the scheduler's forking and is not patched here)."""
    done = run_standalone(EXPORTS / name / "repro.py", tmp_path, before=HF_FIXES)
    assert done.returncode == 0 and "PASS" in done.stdout, (done.stdout + done.stderr)[-3000:]


def control(tmp_path, target: str, prop: str, scenario) -> tuple:
    """A corpus file of ``scenario`` (a finding in name only), exported; (file, export folder)."""
    path, _ = corpus.save(tmp_path / "corpus", target, prop, scenario, Finding("mismatch", "a control"))
    return path, export(path, tmp_path / "out", "control").folder


@pytest.mark.engine  # runs the engine
def test_a_transformers_script_passes_where_transformers_agrees(tmp_path):
    """hf-prefix-blocks-unregistered-on-finish with two new tokens: the prompt blocks are registered
    before the first request finishes, and the second one shares them."""
    _, folder = control(tmp_path, "hf:llama", "prefix.hit", PrefixScenario(4, ((0, 0, 0, 0), (0, 0, 0, 0, 0)), 2))
    done = run_standalone(folder / "repro.py", tmp_path)
    assert done.returncode == 0 and "cached_prefix_tokens=4 (at least 4 expected)" in done.stdout, (done.stdout + done.stderr)[-3000:]


@pytest.mark.engine  # runs the engine
def test_a_llamacpp_script_passes_where_llamacpp_agrees(tmp_path):
    """seq_add moves keys right (llamacpp-seq-div-shift-sign.md): a shift and a decode after it agree."""
    pytest.importorskip("llama_cpp", reason="llama.cpp's scripts need the llamacpp extra")
    scenario = MemoryScenario(((5, 9, 3),), (MemoryOp("add", 0, p0=1, p1=-1, value=2), MemoryOp("decode", 0, tokens=(7,))), (4,))
    _, folder = control(tmp_path, "llamacpp:llama", "surgery.memory", scenario)
    done = run_standalone(folder / "repro.py", tmp_path)
    assert done.returncode == 0 and "PASS" in done.stdout, (done.stdout + done.stderr)[-3000:]


def test_export_through_the_command_line(tmp_path):
    source = source_of(EXPORTS / "llamacpp-seq-div-shift-sign").path
    result = CliRunner().invoke(main, ["export", str(source), "--to", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path}/llamacpp-llama-b404091e7ab9/: repro.py, model.gguf, model.safetensors" in result.output
    assert (tmp_path / "llamacpp-llama-b404091e7ab9" / "repro.py").read_text() == (EXPORTS / "llamacpp-seq-div-shift-sign" / "repro.py").read_text()


TRACE = TraceScenario((Request(0, (1, 2, 3), 2),), EngineConfig())


@pytest.mark.parametrize("target, prop, scenario, words", [
    ("reference", "engine.trace", TRACE, "fuzzcache's own reference engine: there is no third-party engine to report to"),
    ("mutant:chunk_short_last_dropped", "engine.trace", TRACE, "a mutant of fuzzcache's reference engine"),
    ("vllm-server:llama", "engine.trace", TRACE, "a server target"),
    ("llama-server:llama", "engine.trace", TRACE, "a server target"),
    ("fuzzcache.targets.hf.planted:crop_drops_last_position", "engine.trace", TRACE, "not an engine export knows"),
    ("llamacpp:llama", "engine.trace", TRACE, "property engine.trace on llama.cpp is not exported"),
    ("hf:llama", "paths.batched", TRACE, "property paths.batched is not exported"),
    ("hf:llama-dynamic", "engine.trace", TRACE, "diverges from a full forward by design"),
])
def test_export_refuses_what_it_cannot_write_and_says_why(tmp_path, target, prop, scenario, words):
    path, _ = corpus.save(tmp_path / "corpus", target, prop, scenario, Finding("mismatch", "x"))
    with pytest.raises(ExportError, match=re.escape(words)) as refused:
        export(path, tmp_path / "out")
    assert str(path) in str(refused.value)
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(main, ["export", str(path), "--to", str(tmp_path / "out")])
    assert result.exit_code == 2 and "fuzzcache: error:" in result.output and words in result.output, result.output


def test_export_names_a_corrupt_file_as_the_corpus_does(tmp_path):
    bad = tmp_path / "crash-0000000000000000000000000000000000000000.json"
    bad.write_text('{"schema": 99}')
    with pytest.raises(ExportError, match=re.escape(f"{bad}: unknown corpus schema 99")):
        export(bad, tmp_path / "out")
    path, _ = corpus.save(tmp_path / "corpus", "hf:llama", "engine.trace", TRACE, Finding("leak", "3 of 8 blocks not back"))
    with pytest.raises(ExportError, match="a leak finding: the script checks outputs, crashes and hangs"):
        export(path, tmp_path / "out")
