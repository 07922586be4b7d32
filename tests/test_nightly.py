"""Nightly pieces: ``fuzz --shard I/N`` splits the applicable properties deterministically so N
shards cover each once; ``fuzzcache corpus merge`` combines corpus folders from many machines."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner

from fuzzcache import corpus
from fuzzcache.cli import main
from fuzzcache.contract import EngineConfig, Request
from fuzzcache.findings import Finding
from fuzzcache.properties import PROPERTIES
from fuzzcache.scenario import TraceScenario
from fuzzcache.targets import resolve_target

SCENARIO = TraceScenario((Request(0, (1, 2), 1),), EngineConfig(block_size=2))
FINDING = Finding("mismatch", "request 0 step 0: expected token 3, got 4", {"rid": 0, "step": 0, "what": "token"})


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def shard_properties(output: str) -> list[str]:
    line = re.search(r"shard \d+/\d+: (.*)", output).group(1)
    return [] if line.startswith("no property") else line.split(", ")


def test_shards_cover_every_applicable_property_once(tmp_path):
    applicable = [p.id for p in PROPERTIES.values() if p.applies_to(resolve_target("reference"))]
    runs = [invoke("fuzz", "--shard", f"{i}/3", "--property", "kv.*", "--property", "engine.same.*", "--budget", "1s",
                   "--corpus", tmp_path / "c", "--report-dir", tmp_path / f"r{i}") for i in (1, 2, 3)]
    assert all(r.exit_code == 0 for r in runs), [r.output for r in runs]
    shards = [shard_properties(r.output) for r in runs]
    chosen = [p for p in applicable if p.startswith(("kv.", "engine.same."))]
    assert sorted(sum(shards, [])) == sorted(chosen) and all(shards)
    again = invoke("fuzz", "--shard", "2/3", "--property", "kv.*", "--property", "engine.same.*", "--budget", "1s",
                   "--corpus", tmp_path / "c", "--report-dir", tmp_path / "r")
    assert shard_properties(again.output) == shards[1]  # deterministic
    ran = json.loads((tmp_path / "r2" / "report.json").read_text())["properties"]
    assert sorted(ran) == sorted(shards[1])


def test_more_shards_than_properties_and_bad_shards(tmp_path):
    empty = invoke("fuzz", "--shard", "3/3", "--property", "kv.trim", "--property", "kv.recompute", "--budget", "1s",
                   "--corpus", tmp_path / "c", "--report-dir", tmp_path / "r")
    assert empty.exit_code == 0 and "no property" in empty.output
    for bad in ("0/2", "3/2", "x", "1/"):
        result = invoke("fuzz", "--shard", bad)
        assert result.exit_code == 2 and "--shard" in result.output


def test_corpus_merge_collapses_duplicates_copies_new_files_and_reports_conflicts(tmp_path):
    a, b, dest = tmp_path / "a", tmp_path / "b", tmp_path / "dest"
    same_a, _ = corpus.save(a, "reference", "engine.trace", SCENARIO, FINDING)
    same_b, _ = corpus.save(b, "reference", "engine.trace", SCENARIO, FINDING)
    record = json.loads(same_b.read_text())
    record["date"], record["versions"]["torch"] = "2030-01-01T00:00:00+00:00", "9.9"  # another machine, same substance
    same_b.write_text(json.dumps(record))
    other = TraceScenario((Request(0, (5,), 2),), EngineConfig())
    only_b, _ = corpus.save(b, "reference", "engine.trace", other, FINDING)
    (b / "writeup.md").write_text("why\n")
    result = invoke("corpus", "merge", dest, a, b)
    assert result.exit_code == 0, result.output
    assert "3 copied, 1 already there, 0 conflict(s), 0 unreadable" in result.output
    assert sorted(p.relative_to(dest) for p in dest.rglob("*") if p.is_file()) == sorted(
        [same_a.relative_to(a), only_b.relative_to(b), (b / "writeup.md").relative_to(b)])
    # a conflict: the same repro, another kind on another machine; the destination's file is kept
    record = json.loads(same_b.read_text())
    record["kind"] = "crash"
    same_b.write_text(json.dumps(record))
    kept = (dest / same_a.relative_to(a)).read_text()
    result = invoke("corpus", "merge", dest, b)
    assert result.exit_code == 1 and "CONFLICT" in result.output and "differs in kind" in result.output
    assert (dest / same_a.relative_to(a)).read_text() == kept


def old_named(path):
    """A corpus file as older versions named every file, whatever its kind: crash-<sha1>.json."""
    return path.rename(path.with_name(f"crash-{corpus.digest_of(path)}.json"))


def test_corpus_merge_takes_an_old_and_a_new_name_of_one_hash_as_one_case(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    held, _ = corpus.save(dest, "reference", "engine.trace", SCENARIO, FINDING)  # mismatch-<sha1>.json
    old_named(corpus.save(src, "reference", "engine.trace", SCENARIO, FINDING)[0])
    result = invoke("corpus", "merge", dest, src)
    assert result.exit_code == 0 and "0 copied, 1 already there, 0 conflict(s)" in result.output, result.output
    assert [p for p in dest.rglob("*") if p.is_file()] == [held]
    # the other way round: an old name in the destination, the new name in the source
    old_dest = tmp_path / "old-dest"
    kept = old_named(corpus.save(old_dest, "reference", "engine.trace", SCENARIO, FINDING)[0])
    result = invoke("corpus", "merge", old_dest, dest)
    assert result.exit_code == 0 and "0 copied, 1 already there, 0 conflict(s)" in result.output, result.output
    assert [p for p in old_dest.rglob("*") if p.is_file()] == [kept]
    # a genuine difference between the two names is still a conflict; the destination's file is kept
    (path,) = src.rglob("*.json")
    record = json.loads(path.read_text())
    record["kind"] = "hang"
    path.write_text(json.dumps(record))
    result = invoke("corpus", "merge", dest, src)
    assert result.exit_code == 1 and "CONFLICT" in result.output and "differs in kind" in result.output
    assert json.loads(held.read_text())["kind"] == "mismatch" and [p for p in dest.rglob("*") if p.is_file()] == [held]


def test_corpus_merge_copies_an_old_name_under_its_kinds_name(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    old = old_named(corpus.save(src, "reference", "engine.trace", SCENARIO, FINDING)[0])
    result = invoke("corpus", "merge", dest, src)
    assert result.exit_code == 0 and "1 copied" in result.output, result.output
    (copied,) = [p for p in dest.rglob("*") if p.is_file()]
    assert copied == dest / old.relative_to(src).with_name(f"mismatch-{corpus.digest_of(old)}.json")
    assert copied.read_bytes() == old.read_bytes()


def test_corpus_merge_refuses_unreadable_files_and_missing_folders(tmp_path):
    src = tmp_path / "src"
    (src / "reference" / "engine.trace").mkdir(parents=True)
    (src / "reference" / "engine.trace" / "crash-x.json").write_text("{not json")
    result = invoke("corpus", "merge", tmp_path / "dest", src)
    assert result.exit_code == 1 and "ERROR" in result.output and "crash-x.json" in result.output
    assert not (tmp_path / "dest" / "reference" / "engine.trace" / "crash-x.json").exists()
    missing = invoke("corpus", "merge", tmp_path / "dest", tmp_path / "nope")
    assert missing.exit_code == 2 and "not a corpus folder" in missing.output
