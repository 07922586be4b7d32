"""The corpus: shrunk repros as readable JSON files, content-addressed, written atomically and
never overwritten. ``corpus/<target>/<property>/<kind>-<sha1>.json`` (ARCHITECTURE.md section 6),
named by the finding's kind (``PREFIXES``) like libFuzzer's crash-, leak- and timeout- files. The
hash leaves the kind out, so one input is one case under any name: older versions named every
file ``crash-<sha1>.json``, and those names keep loading, deduplicating and merging as the same case."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import hypothesis
import torch

from fuzzcache.findings import KINDS, Finding
from fuzzcache.jsonable import from_jsonable, to_jsonable

SCHEMA_VERSION = 1
TRIAGE_CLASSES = ("upstream-bug", "by-design")  # a triaged case is known to fail until upstream changes
PREFIXES = {kind: kind.replace("_", "-") for kind in KINDS}  # a file's name by its finding kind: engine_error -> engine-error-<sha1>.json
WRITEUP = re.compile(r"corpus/[\w.-]+\.md")  # a triage write-up's path, as a triage's text names it
CASE_NAME = re.compile(rf"(?:{'|'.join(PREFIXES.values())})-(?P<digest>[0-9a-f]{{40}})\.json")  # old crash- names of any kind included


class CorpusError(ValueError):
    """A corpus file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Case:
    path: Path | None
    target: str
    property: str
    scenario: Any  # the property's scenario dataclass
    kind: str
    message: str
    target_options: dict  # dtype / device the target was built with, for resolve_target
    triage: dict | None = None  # added by a person: {"classification": one of TRIAGE_CLASSES, "writeup": "..."}
    shrunk_scenario: Any = None  # Hypothesis's shrunk scenario, when ``scenario`` is the minimizer's
    minimized: dict | None = None  # the minimizer's pass: checks, seconds, capped, interrupted

    @property
    def known(self) -> bool:
        """Triaged as an upstream bug or a by-design divergence: expected to keep failing."""
        return self.triage is not None


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def case_hash(target: str, property_id: str, scenario: Any, target_options: dict | None = None) -> str:
    """sha1 over the canonical JSON of (target, property, scenario); a non-default dtype or
    device joins the target part, so an fp16 repro never shadows the fp32 one."""
    key = [target, target_options] if target_options else target
    return hashlib.sha1(canonical([key, property_id, to_jsonable(scenario)]).encode()).hexdigest()


def writeup_link(triage: dict | None, known_bugs: Iterable[str] = ()) -> str | None:
    """The write-up ``corpus/<name>.md`` a triage names in its text, else that of its first known
    bug (the triage's own, then ``known_bugs``: those that claimed a finding): one of the same name."""
    triage = triage or {}
    named = WRITEUP.search(triage.get("writeup") or "")
    if named:
        return named.group(0)
    bugs = [*triage.get("known_bugs", []), *known_bugs]
    return f"corpus/{bugs[0]}.md" if bugs else None


def target_dir(target: str) -> str:
    """The corpus folder name of a target (an attached server's URL without its slashes)."""
    return target.replace("://", "-").replace("/", "-")


def case_path(corpus_dir: Path, target: str, property_id: str, scenario: Any, target_options: dict | None = None, *, kind: str) -> Path:
    """Where a new ``kind`` finding on ``scenario`` is written (``held`` finds it under any name)."""
    return Path(corpus_dir) / target_dir(target) / property_id / file_name(kind, case_hash(target, property_id, scenario, target_options))


def file_name(kind: str, digest: str) -> str:
    return f"{PREFIXES[kind]}-{digest}.json"


def digest_of(path: Path | str) -> str | None:
    """The case hash in a corpus file's name, whatever kind's prefix it has; None for another name."""
    match = CASE_NAME.fullmatch(Path(path).name)
    return match["digest"] if match else None


def held(folder: Path, digest: str, kind: str | None = None) -> Path | None:
    """The file in ``folder`` that holds case ``digest`` under any kind's name (``kind``'s own
    first): an old ``crash-`` name or another kind's name is the same case."""
    prefixes = sorted(PREFIXES.values(), key=lambda prefix: prefix != PREFIXES.get(kind))
    return next((path for prefix in prefixes if (path := folder / f"{prefix}-{digest}.json").exists()), None)


def find(corpus_dir: Path | str, target: str, property_id: str, scenario: Any, target_options: dict | None = None) -> Path | None:
    """The corpus file that holds ``scenario`` as its repro (its content-addressed name, of any
    kind) or as its Hypothesis-shrunk form (a minimized file of the same finding), if any."""
    folder = Path(corpus_dir) / target_dir(target) / property_id
    path = held(folder, case_hash(target, property_id, scenario, target_options))
    if path is not None:
        return path
    want, options = to_jsonable(scenario), target_options or {}
    for other in sorted(q for q in folder.glob("*.json") if not q.name.startswith(".tmp-")):
        try:
            record = json.loads(other.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # `fuzzcache replay` names the broken file
        if isinstance(record, dict) and record.get("shrunk_scenario") == want and (record.get("target_options") or {}) == options:
            return other
    return None


def save(corpus_dir: Path | str, target: str, property_id: str, scenario: Any, finding: Finding, target_options: dict | None = None,
         shrunk_scenario: Any = None, minimized: dict | None = None, triage: dict | None = None) -> tuple[Path, bool]:
    """Write the repro (``scenario``; replay runs it), with Hypothesis's ``shrunk_scenario`` and
    the minimizer's record beside it when the minimizer ran, named by the finding's kind;
    returns (path, True) when new, (path, False) when the case was already there (under any
    kind's name, an old ``crash-`` one included)."""
    from fuzzcache import __version__

    path = case_path(Path(corpus_dir), target, property_id, scenario, target_options, kind=finding.kind)
    existing = held(path.parent, digest_of(path), finding.kind)
    if existing is not None:
        return existing, False
    record = {
        "schema": SCHEMA_VERSION,
        "property": property_id,
        "target": target,
        "target_options": target_options or {},
        "kind": finding.kind,
        "message": finding.message,
        "scenario": to_jsonable(scenario),
        **({"shrunk_scenario": to_jsonable(shrunk_scenario), "minimized": minimized} if minimized is not None else {}),
        "divergence": {k: v for k, v in finding.details.items() if k != "traceback"},
        "traceback": finding.details.get("traceback"),
        "versions": {"fuzzcache": __version__, "torch": torch.__version__, "hypothesis": hypothesis.__version__},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **({"triage": triage} if triage is not None else {}),
    }
    return path, write_new(path, (json.dumps(record, indent=2, default=str) + "\n").encode())


def write_new(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically, never over an existing file; False if it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        os.fchmod(fd, 0o644)  # readable by the team, like any other file in the repository
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.link(tmp, path)  # atomic, and fails instead of overwriting
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True


SUBSTANCE = ("schema", "property", "target", "target_options", "kind", "scenario", "triage")  # not date, versions, timings


@dataclass
class Merged:
    copied: list[Path] = field(default_factory=list)  # new in the destination
    same: list[Path] = field(default_factory=list)  # already there with the same substance
    conflicts: list[str] = field(default_factory=list)  # "<path>: differs in <keys>"; the destination's kept
    errors: list[str] = field(default_factory=list)  # unreadable source files, not copied


def merge(dest: Path | str, sources: Iterable[Path | str]) -> Merged:
    """Copy every file of each source corpus folder into ``dest`` at the same relative path (an
    old ``crash-`` name of another kind's case under its kind's name). Content addressing makes
    one repro found on many machines one file: a file already there for the same hash, under
    any kind's name, with the same substance (``SUBSTANCE``; dates, versions and timings aside)
    collapses; one that differs (another kind on another machine, another triage) is a
    conflict, reported, and the destination's file is kept. Corpus files are validated first."""
    dest, out = Path(dest), Merged()
    for source in map(Path, sources):
        if not source.is_dir():
            raise CorpusError(f"{source}: not a corpus folder")
        for path in sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")):
            target = dest / path.relative_to(source)
            if path.suffix == ".json":
                try:
                    case = load(path)
                except CorpusError as exc:
                    out.errors.append(str(exc))
                    continue
                digest = digest_of(path)
                if digest is not None:
                    if case.kind in PREFIXES:
                        target = target.with_name(file_name(case.kind, digest))
                    target = held(target.parent, digest, case.kind) or target
            if write_new(target, path.read_bytes()):
                out.copied.append(target)
                continue
            differs = _differences(path, target)
            if differs:
                out.conflicts.append(f"{target}: {path} differs in {', '.join(differs)}; kept the destination's")
            else:
                out.same.append(target)
    return out


def _differences(a: Path, b: Path) -> list[str]:
    if a.suffix != ".json":
        return [] if a.read_bytes() == b.read_bytes() else ["content"]
    try:
        ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return ["content (the destination's file is not readable)"]
    return [k for k in SUBSTANCE if ra.get(k) != rb.get(k)]


def load(path: Path | str) -> Case:
    """Read and validate one corpus file; CorpusError naming the file on any problem."""
    from fuzzcache.properties import get

    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorpusError(f"{path}: not a readable corpus file ({exc})") from exc
    if not isinstance(record, dict):
        raise CorpusError(f"{path}: not a corpus record (expected a JSON object)")
    if record.get("schema") != SCHEMA_VERSION:
        raise CorpusError(f"{path}: unknown corpus schema {record.get('schema')!r} (this fuzzcache reads schema {SCHEMA_VERSION})")
    for key in ("property", "target", "scenario"):
        if key not in record:
            raise CorpusError(f"{path}: missing field {key!r}")
    try:
        prop = get(record["property"])
        scenario = from_jsonable(prop.scenario_type, record["scenario"])
        shrunk = from_jsonable(prop.scenario_type, record["shrunk_scenario"]) if record.get("shrunk_scenario") is not None else None
    except (ValueError, TypeError, KeyError) as exc:
        raise CorpusError(f"{path}: {exc}") from exc
    minimized = record.get("minimized")
    if minimized is not None and not isinstance(minimized, dict):
        raise CorpusError(f"{path}: minimized must be an object (checks, seconds, capped), got {minimized!r}")
    options = record.get("target_options") or {}
    if not isinstance(options, dict) or set(options) - {"dtype", "device"}:
        raise CorpusError(f"{path}: target_options must hold only dtype and device, got {options!r}")
    triage = record.get("triage")
    if triage is not None and (not isinstance(triage, dict) or triage.get("classification") not in TRIAGE_CLASSES or not triage.get("writeup")):
        raise CorpusError(f"{path}: triage must be {{\"classification\": one of {', '.join(TRIAGE_CLASSES)}, \"writeup\": \"...\"}}, got {triage!r}")
    return Case(path, record["target"], record["property"], scenario, record.get("kind", "?"), record.get("message", ""), options, triage, shrunk, minimized)


def iter_files(paths: Iterable[Path | str]) -> list[Path]:
    """Corpus files under the given files or folders, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*.json") if not q.name.startswith(".tmp-"))
        elif p.exists():
            out.append(p)
        else:
            raise CorpusError(f"{p}: no such file or folder")
    return out
