"""The committed standalone repros (corpus/export/<write-up>/repro.py, ``fuzzcache export``): where
each came from, and running one with an engine's Python alone, fuzzcache unimportable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from fuzzcache.corpus import load

from bounded import CORPUS

EXPORTS = CORPUS / "export"
COMMITTED = sorted(p.parent for p in EXPORTS.glob("*/repro.py"))
SOURCE = re.compile(r"property\s+(\S+)\s+on\s+(\S+),\s+kind\s+\w+,\s+case\s+([0-9a-f]{12})")
# fuzzcache and the test helpers made unimportable, then the script run as __main__
STANDALONE = "import runpy, sys\nfor name in ('fuzzcache', 'bounded', 'exported'):\n    sys.modules[name] = None\n"


def engine_of(folder: Path) -> str:
    """'hf', 'vllm' or 'llamacpp': the family of the target the export's corpus file names."""
    return source_of(folder).target.partition(":")[0]


def source_of(folder: Path):
    """The corpus case an export was written from (its header names the property, target and case hash)."""
    prop, target, digest = SOURCE.search((folder / "repro.py").read_text()).groups()
    (path,) = (CORPUS / target / prop).glob(f"*-{digest}*.json")
    return load(path)


def run_standalone(script: Path, cwd: Path, python: str = sys.executable, before: str = "", timeout: float = 300) -> subprocess.CompletedProcess:
    """``script`` run by ``python -I`` (no PYTHONPATH, no script or working folder on sys.path) from
    ``cwd``, with fuzzcache unimportable; ``before``: code run first (an engine patched with a fix)."""
    code = STANDALONE + before + f"\nrunpy.run_path({str(script)!r}, run_name='__main__')\n"
    return subprocess.run([python, "-I", "-c", code], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def reported(case) -> str:
    """What the script prints for the finding, from the corpus file's message: a mismatch's whole
    message (the scripts word a difference as the properties do), a hang's first words, the
    exception of a crash or engine error."""
    message = case.message.split(".generate: ", 1)[-1]
    if case.kind == "hang":
        return re.split(r" \(|:", message, maxsplit=1)[0]
    if case.kind in ("crash", "engine_error"):
        return re.search(r"\w+(?:Error|Exception): ?.*", message).group(0)
    return message


NUMBER = re.compile(r"\d+\.\d+(?:e-?\d+)?")


def reports_finding(case, out: str, rel: float = 0.02) -> bool:
    """Whether ``out`` reports ``case``'s finding: ``reported(case)`` word for word, except that each
    measured number (a logit difference printed to three digits) may differ by ``rel`` relative,
    since the last digit moves with the CPU the engine was built for (0.524 against 0.525 here)."""
    expected = reported(case)
    numbers = NUMBER.findall(expected)
    pattern = "".join(re.escape(part) + (f"({NUMBER.pattern})" if i < len(numbers) else "")
                      for i, part in enumerate(NUMBER.split(expected)))
    for found in re.finditer(pattern, out):
        if all(abs(float(got) - float(want)) <= rel * abs(float(want)) for got, want in zip(found.groups(), numbers)):
            return True
    return False
