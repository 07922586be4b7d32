"""The shared HTTP driver of server targets: a trace's calls sent at their wall-clock offsets over
one ``httpx.AsyncClient``, each a streamed completion read to its end or closed by the client
after k tokens (the client abort), all within one deadline.

The driver knows nothing of a server's request and response shapes: a dialect builds each call's
body and tells the driver how many tokens an event carries (``tokens_in``).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import httpx

Key = tuple[int, int]  # (rid, continuation index)


@dataclass(frozen=True)
class Call:
    key: Key
    path: str  # e.g. "/v1/completions"
    body: dict  # the JSON body of a streamed completion
    start_s: float  # offset from the start of the trace
    close_after: int | None = None  # close the stream once this many tokens arrived (an abort); None: read it to the end
    completions: int = 1  # a server that sends no "data: [DONE]": the stream is complete after this many final events


@dataclass
class Streamed:
    """What the client saw of one call."""

    key: Key
    status: int | None = None  # HTTP status (None: no response)
    events: list[dict] = field(default_factory=list)  # the server-sent events, parsed
    error: str | None = None  # an HTTP error's body, or the exception that ended the call
    closed: bool = False  # the client closed the stream (an abort)
    complete: bool = False  # the server ended the stream itself ("data: [DONE]")
    tokens: int = 0  # tokens received
    sent_s: float = 0.0  # when it was sent and when it ended, from the start of the trace
    ended_s: float = 0.0


@dataclass
class TraceRun:
    results: list[Streamed]
    seconds: float
    max_in_flight: int  # the most calls open at once


class Deadline(TimeoutError):
    """The trace did not end within its deadline; ``results`` says which calls were still open."""

    def __init__(self, message: str, results: list[Streamed]):
        super().__init__(message)
        self.results = results


def run_trace(base_url: str, calls: Sequence[Call], tokens_in: Callable[[dict], int], deadline_s: float, headers: dict | None = None,
              is_final: Callable[[dict], bool] | None = None) -> TraceRun:
    """Send ``calls`` (concurrently, each at its offset) and read them; Deadline after
    ``deadline_s``. A stream is complete at ``data: [DONE]``, or, for a server that sends none,
    once ``is_final`` events of each of its completions arrived."""
    return asyncio.run(_run(base_url, list(calls), tokens_in, deadline_s, headers or {}, is_final))


async def _run(base_url: str, calls: list[Call], tokens_in, deadline_s: float, headers: dict, is_final) -> TraceRun:
    results = [Streamed(c.key) for c in calls]
    in_flight = [0, 0]  # now, most
    limits = httpx.Limits(max_connections=max(8, len(calls)), max_keepalive_connections=0)  # a closed stream never reuses a connection
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(deadline_s, connect=10.0), limits=limits, headers=headers) as client:
        try:  # the client's first request pays its set-up (about 25 ms): not one of the trace's, whose offsets it would skew
            await client.get("/health", timeout=2.0)
        except httpx.HTTPError:
            pass  # a server that does not answer: the trace's own requests say so
        start = time.monotonic()
        tasks = [asyncio.create_task(_one(client, call, result, tokens_in, start, in_flight, is_final)) for call, result in zip(calls, results)]
        done, pending = await asyncio.wait(tasks, timeout=deadline_s)
        open_calls = [r for r in results if not r.ended_s]  # before the cancel below ends them
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)  # closes their streams: the server sees the client go
        for task in done:
            task.result()  # a bug of the driver itself surfaces here
        if pending:
            raise Deadline(f"{len(open_calls)} of {len(calls)} requests unfinished after {deadline_s:g}s "
                           f"({', '.join(f'request {r.key[0]}' + (f' continuation {r.key[1]}' if r.key[1] else '') + f': {r.tokens} tokens' for r in open_calls)})",
                           results)
        return TraceRun(results, time.monotonic() - start, in_flight[1])


async def _one(client: httpx.AsyncClient, call: Call, result: Streamed, tokens_in, start: float, in_flight: list[int], is_final) -> None:
    await asyncio.sleep(max(0.0, call.start_s - (time.monotonic() - start)))
    result.sent_s = time.monotonic() - start
    in_flight[0] += 1
    in_flight[1] = max(in_flight)
    try:
        async with client.stream("POST", call.path, json=call.body) as response:
            result.status = response.status_code
            if response.status_code != 200:
                result.error = (await response.aread()).decode(errors="replace")[:2000]
                return
            if call.close_after == 0:
                result.closed = True  # the client goes before its first token
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    result.complete = True
                    break
                event = json.loads(data)
                result.events.append(event)
                result.tokens += tokens_in(event)
                if call.close_after is not None and result.tokens >= call.close_after:
                    result.closed = True  # leaving the block closes the connection mid-stream
                    break
            if is_final is not None and sum(map(is_final, result.events)) >= call.completions:
                result.complete = True
            if not result.complete and not result.closed:
                result.error = "the stream ended before its end ('data: [DONE]', or the dialect's final event of each completion)"
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        in_flight[0] -= 1
        result.ended_s = time.monotonic() - start
