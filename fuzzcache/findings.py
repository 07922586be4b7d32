"""Finding kinds: what a property reports when a target is wrong."""

from __future__ import annotations

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


def mismatch(message: str, **details: Any) -> Finding:
    return Finding("mismatch", message, details)


def contract(message: str, **details: Any) -> Finding:
    return Finding("contract", message, details)
