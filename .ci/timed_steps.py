"""Run a shell command line step by step, timing each: the steps are its parts joined by a
top-level `&&` (outside parentheses and quotes), each run by bash in turn; the first that fails
stops the run with its exit status. The times are printed as each step ends and once more as a
table at the end, so CI's output shows what the install, the fast tier and each half took.

    python3 .ci/timed_steps.py "COMMAND"
"""

from __future__ import annotations

import subprocess
import sys
import time


def steps(command: str) -> list[str]:
    """The parts of ``command`` joined by `&&` outside parentheses and quotes."""
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(command):
        c = command[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif command.startswith("&&", i) and depth == 0:
            parts.append(command[start:i].strip())
            start = i + 2
            i += 1
        i += 1
    parts.append(command[start:].strip())
    return [p for p in parts if p]


def main(command: str) -> int:
    times: list[tuple[float, str]] = []
    started = time.monotonic()
    status = 0
    for step in steps(command):
        print(f"+ {step}", flush=True)
        began = time.monotonic()
        status = subprocess.run(["bash", "-c", step]).returncode
        times.append((time.monotonic() - began, step))
        print(f"= {times[-1][0]:.0f} s (exit {status}): {step[:120]}", flush=True)
        if status:
            break
    print(f"step times (seconds){'; stopped at a failing step' if status else ''}:")
    for seconds, step in times:
        print(f"  {seconds:7.0f}  {step[:150]}")
    print(f"  {time.monotonic() - started:7.0f}  the whole test command")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
