"""Finding kinds: what a property reports when a target is wrong."""

from __future__ import annotations

import re
from typing import Any

KINDS = ("mismatch", "crash", "hang", "contract", "nondeterministic", "engine_error")


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


def crash_site(finding: Finding) -> tuple[str, str] | None:
    """(innermost 'File ..., line ...' frame, exception type) of a crash's traceback."""
    tb = (finding.details.get("traceback") or "").strip()
    if not tb:
        return None
    frames = re.findall(r'File "[^"]+", line \d+, in \S+', tb)
    return (frames[-1] if frames else "", tb.splitlines()[-1].split(":", 1)[0])


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
