"""llama-server, built once per machine from the llama.cpp that the pinned llama-cpp-python vendors.

PyPI has only llama-cpp-python's source, and its wheel holds the library, not the server. This
module downloads that sdist with pip, configures ``vendor/llama.cpp`` with CMake (no web UI, no
curl, no tests or examples, static libraries so one binary is the whole server) and builds the
``llama-server`` target into ``<cache>/llama-server-<version>/``, where the next run finds it
(the first build takes minutes; docs/targets/llama-server.md states them). A variant with a source patch (a bug
planted in the server's C++) is built from the same build folder, so only the patched file
recompiles. One file lock per version keeps parallel test workers from building twice.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # the llamacpp extra's pin (pyproject.toml; a test holds them equal)
PATCHED = "source-patched"  # exists while a planted bug's patch is in the source

CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_CURL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
)


class BuildFailed(RuntimeError):
    """llama-server could not be built; the message names the step and ends with its output."""


@dataclass(frozen=True)
class SourcePatch:
    """One textual change to a llama.cpp source file (``path`` relative to the llama.cpp root):
    ``old`` must occur exactly once."""

    path: str
    old: str
    new: str


def cache_root() -> Path:
    """``$FUZZCACHE_CACHE``, else ``$XDG_CACHE_HOME/fuzzcache``, else ``~/.cache/fuzzcache``."""
    if os.environ.get("FUZZCACHE_CACHE"):
        return Path(os.environ["FUZZCACHE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fuzzcache"


def build_dir(version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    return cache_root() / f"llama-server-{version}"


def llama_server_binary(variant: str = "stock", patch: SourcePatch | None = None,
                        version: str = LLAMA_CPP_PYTHON_VERSION, log=None) -> Path:
    """The path of ``llama-server`` (``variant`` "stock", or a planted variant with its
    ``patch``), built first if this machine has not built it yet."""
    if (variant == "stock") != (patch is None):
        raise ValueError("the stock server has no patch, and every other variant has one")
    root = build_dir(version)
    binary = root / variant / "llama-server"
    if binary.exists():
        return binary
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root.parent / f"{root.name}.lock"):
        if binary.exists():  # another process built it while this one waited
            return binary
        say = log or (lambda message: print(message, file=sys.stderr, flush=True))
        source = root / "src"
        if (root / PATCHED).exists():  # a patched build was killed before it restored the source: start from the sdist again
            shutil.rmtree(source, ignore_errors=True)
            (root / PATCHED).unlink()
        if not (source / "CMakeLists.txt").exists():
            say(f"fuzzcache: building llama-server from llama-cpp-python {version} (once per machine; minutes)")
            _unpack_sdist(version, source)
        build = root / "build"
        if not (build / "CMakeCache.txt").exists():
            _run(["cmake", "-S", str(source), "-B", str(build), *CMAKE_FLAGS], "configure")
        started = time.monotonic()
        with _patched(source, patch, root / PATCHED):
            _run(["cmake", "--build", str(build), "--target", "llama-server", "-j", str(os.cpu_count() or 1)],
                 f"build ({variant})")
            binary.parent.mkdir(exist_ok=True)
            partial = binary.with_suffix(".partial")
            shutil.copy2(build / "bin" / "llama-server", partial)
            os.replace(partial, binary)
        say(f"fuzzcache: built llama-server ({variant}) in {time.monotonic() - started:.0f} s: {binary}")
    return binary


@contextmanager
def _locked(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _unpack_sdist(version: str, source: Path) -> None:
    """``vendor/llama.cpp`` of llama-cpp-python's sdist, unpacked to ``source``."""
    with tempfile.TemporaryDirectory(prefix="fuzzcache-sdist-") as scratch:
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
              f"llama-cpp-python=={version}", "-d", scratch], "download")
        (archive,) = Path(scratch).glob("llama_cpp_python-*.tar.gz")
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for member in members:
                member.name = member.name[len(prefix):]
            unpacked = Path(scratch) / "llama.cpp"
            tar.extractall(unpacked, members=[m for m in members if m.name], filter="data")
        if source.exists():
            shutil.rmtree(source)
        shutil.move(str(unpacked), source)


@contextmanager
def _patched(source: Path, patch: SourcePatch | None, sentinel: Path):
    """The source tree with ``patch`` applied, restored on the way out; ``sentinel`` exists while
    it is patched, so a build killed meanwhile is never taken for the stock source."""
    if patch is None:
        yield
        return
    path = source / patch.path
    original = path.read_text()
    if original.count(patch.old) != 1:
        raise BuildFailed(f"patch for {patch.path}: expected its text once, found it {original.count(patch.old)} times")
    sentinel.write_text(patch.path)
    path.write_text(original.replace(patch.old, patch.new))
    try:
        yield
    finally:
        path.write_text(original)
        sentinel.unlink()


def _run(argv: list[str], step: str) -> None:
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        raise BuildFailed(f"llama-server {step}: {argv[0]} is not installed (the build needs cmake and a C++ compiler)")
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-30:])
        raise BuildFailed(f"llama-server {step} failed (exit {done.returncode}): {' '.join(argv)}\n{tail}")


if __name__ == "__main__":
    # Build the stock server now: ``python3 fuzzcache/targets/serve/llama_server_build.py``. The
    # module needs only the standard library, so the test command builds it beside the installs
    # (docs/development.md), and the tests find it built.
    try:
        print(llama_server_binary())
    except BuildFailed as failed:
        sys.exit(f"fuzzcache: {failed}")
