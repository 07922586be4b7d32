"""Hypothesis example databases for fuzz campaigns: a local folder, or a Redis server that every
worker on every machine shares (Hypothesis's own ``RedisExampleDatabase``). The database only
speeds up finding known failures again; the corpus is the record."""

from __future__ import annotations

from pathlib import Path

from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase

REDIS_HINT = "pip install 'fuzzcache[redis]'"


def make_database(spec: str | Path) -> ExampleDatabase:
    """``redis://host:port/db`` -> a Redis database (checked reachable); anything else -> a folder."""
    text = str(spec)
    if not text.startswith(("redis://", "rediss://")):
        return DirectoryBasedExampleDatabase(text)
    try:
        import redis
        from hypothesis.extra.redis import RedisExampleDatabase
    except ImportError as exc:
        raise ValueError(f"--database {text}: the Redis client is not installed ({REDIS_HINT})") from exc
    client = redis.Redis.from_url(text, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ValueError(f"--database {text}: no Redis server answers there ({exc})") from exc
    return RedisExampleDatabase(client)


class KeepingFailures(ExampleDatabase):
    """``inner``, but nothing is ever deleted. A keep-going campaign passes over failures it
    already found, so Hypothesis sees their saved examples pass and would delete them from a
    database other workers and machines replay; here they stay (a move copies)."""

    def __init__(self, inner: ExampleDatabase):
        super().__init__()
        self.inner = inner

    def save(self, key: bytes, value: bytes) -> None:
        self.inner.save(key, value)

    def fetch(self, key: bytes):
        return self.inner.fetch(key)

    def delete(self, key: bytes, value: bytes) -> None:
        pass

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        self.inner.save(dest, value)


class ReadOnlyOnceStopped(ExampleDatabase):
    """``inner``, until ``stop()``; from then on writes are dropped (reads go on). A run that
    ends at its stop time raises ``runner.BudgetExhausted`` (a BaseException) from the test
    before the example runs, and Hypothesis saves the choices of an example that raised a
    BaseException (other than KeyboardInterrupt) under the test's key, beside the failures, to
    replay it first next time. That example never ran: it is random, it passes, and in a shared
    database it stays (``KeepingFailures`` deletes nothing). Hypothesis replays the shortest
    first, so when it is shorter than the failures, every later process (here or on another
    machine) starts with a passing example instead of the known failure."""

    def __init__(self, inner: ExampleDatabase):
        super().__init__()
        self.inner = inner
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True

    def save(self, key: bytes, value: bytes) -> None:
        if not self.stopped:
            self.inner.save(key, value)

    def fetch(self, key: bytes):
        return self.inner.fetch(key)

    def delete(self, key: bytes, value: bytes) -> None:
        if not self.stopped:
            self.inner.delete(key, value)

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        if not self.stopped:
            self.inner.move(src, dest, value)
