"""What a managed server did under each config it ran: traces, requests, seconds of traces, and
seconds it served that config (traces/s while it served, requests/s while traces ran)."""

from __future__ import annotations

import time


class ConfigStats:
    def __init__(self):
        self.by_config: dict[str, dict[str, float]] = {}
        self.serving: tuple[str, float] | None = None  # (config, since) while a server runs one

    def _of(self, config: str) -> dict[str, float]:
        return self.by_config.setdefault(config, {"traces": 0, "requests": 0, "trace_seconds": 0.0, "served_seconds": 0.0})

    def trace(self, config: str, requests: int, seconds: float) -> None:
        stats = self._of(config)
        stats["traces"] += 1
        stats["requests"] += requests
        stats["trace_seconds"] += seconds

    def serving_starts(self, config: str) -> None:
        """A server runs ``config`` from now on (a no-op while it already does)."""
        if self.serving is None or self.serving[0] != config:
            self.serving_ends()
            self.serving = (config, time.monotonic())

    def serving_ends(self) -> None:
        if self.serving is not None:
            config, since = self.serving
            self._of(config)["served_seconds"] += time.monotonic() - since
            self.serving = None

    def report(self) -> dict[str, dict]:
        """Per config: traces, requests, traces/s while it served, requests/s while traces ran."""
        now = time.monotonic()

        def served(name: str, s: dict) -> float:
            return s["served_seconds"] + (now - self.serving[1] if self.serving and self.serving[0] == name else 0.0)

        return {name: {"traces": s["traces"], "requests": s["requests"],
                       "traces_per_s": round(s["traces"] / served(name, s), 2) if served(name, s) else None,
                       "requests_per_s": round(s["requests"] / s["trace_seconds"], 1) if s["trace_seconds"] else None}
                for name, s in self.by_config.items()}
