"""Finding kinds: what a property reports when a target is wrong."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

KINDS = ("mismatch", "crash", "hang", "contract", "nondeterministic", "engine_error", "leak")


class Finding(AssertionError):
    """A property failure of one ``kind``, with details for the corpus and the report."""

    def __init__(self, kind: str, message: str, details: dict[str, Any] | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown finding kind {kind!r}")
        super().__init__(f"[{kind}] {message}")
        self.kind = kind
        self.message = message
        self.details = details or {}

    def __reduce__(self):  # pickled with its own arguments (a worker process sends its findings back)
        return (Finding, (self.kind, self.message, self.details))


def mismatch(message: str, **details: Any) -> Finding:
    return Finding("mismatch", message, details)


def contract(message: str, **details: Any) -> Finding:
    return Finding("contract", message, details)


SOURCE_ROOT = str(Path(__file__).resolve().parent.parent) + os.sep  # fuzzcache's checkout (or install)


def portable_path(path: str) -> str:
    """A source path as it reads in any environment: from inside site-packages (the same engine
    version installed in two virtual environments is one place), else from fuzzcache's root."""
    for marker in ("site-packages" + os.sep, "dist-packages" + os.sep):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    return path.removeprefix(SOURCE_ROOT)


def crash_site(finding: Finding) -> tuple[str, str] | None:
    """(innermost 'File ..., line ...' frame, with a portable path, and exception type) of a
    crash's traceback."""
    tb = (finding.details.get("traceback") or "").strip()
    if not tb:
        return None
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', tb)
    site = 'File "{}", line {}, in {}'.format(portable_path(frames[-1][0]), *frames[-1][1:]) if frames else ""
    return (site, tb.splitlines()[-1].split(":", 1)[0])


def signature(property_id: str, finding: Finding) -> tuple[str, str, str]:
    """(property, kind, where the first divergence happens): a mismatch's or contract breach's
    sort (``what``) and step, a crash's innermost frame and exception type. A keep-going run
    counts findings with one signature as one failure."""
    if finding.kind == "crash":
        where = " raised ".join(crash_site(finding) or ("", ""))
    else:
        d = finding.details
        where = f"{d.get('what', '')} at step {d['step']}" if "step" in d else str(d.get("what", ""))
    return (property_id, finding.kind, where)
