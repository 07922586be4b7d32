"""Measure a target's logits gap, the numbers its tolerance floor comes from: to the HF forward
(the oracle) and between a chunked prefill and the whole prompt on the same engine.

    .venv/bin/python tests/measure_family_gap.py llamacpp:gemma3 200

Random requests (1-4 per trace, prompts of 1-50 tokens, 1-12 new) for the given seconds; each
gap is the largest |logit difference| up to where the compared token sequences part."""

from __future__ import annotations

import random
import sys
import time

from fuzzcache import EngineConfig, Request
from fuzzcache.properties.engine_level import oracle_rows
from fuzzcache.targets import build_target

CHUNKS = (1, 2, 3, 5, 7, 8, 16, 19, 20, 21, 32)


def agreeing(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main(spec: str, seconds: float) -> None:
    target = build_target(spec)
    rng = random.Random(0)
    to_hf = between = 0.0
    count, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        requests = [Request(i, tuple(rng.randrange(target.vocab_size) for _ in range(rng.randint(1, 50))), rng.randint(1, 12))
                    for i in range(rng.randint(1, 4))]
        chunk = rng.choice(CHUNKS)
        whole = target.generate(requests, EngineConfig())
        chunked = target.generate(requests, EngineConfig(chunk_size=chunk, max_batch_tokens=rng.choice([chunk, 2 * chunk, 64])))
        for r, a, b in zip(requests, whole, chunked):
            k = agreeing(a.tokens, b.tokens)
            if k:
                between = max(between, float((a.logits[:k] - b.logits[:k]).abs().max()))  # (k, V)
            rows = oracle_rows(target, r.prompt, a.tokens)  # (new, V)
            k = agreeing(a.tokens, [int(row.argmax()) for row in rows])
            if k:
                to_hf = max(to_hf, float((a.logits[:k] - rows[:k]).abs().max()))
            count += 1
    print(f"{spec}: {count} requests in {time.monotonic() - start:.0f} s: max |logits - HF| {to_hf:.3g}, "
          f"max |chunked - whole prompt| {between:.3g}")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 60.0)
