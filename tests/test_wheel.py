"""The built wheel installs anywhere: its top level is the ``fuzzcache`` package and its dist-info
alone (strategies/ ships as ``fuzzcache.strategies``), it holds every module of fuzzcache/ and
strategies/, and installed into a fresh environment outside the repository it runs a short
campaign and ``fuzzcache replay``.

The fresh environment borrows the dependencies (torch, hypothesis, ...) of the environment the
tests run in through a path file, so that nothing is downloaded or built twice; the borrowed
site-packages' own path files are not read, so its editable fuzzcache stays out of sight."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"fuzzcache": "fuzzcache", "strategies": "fuzzcache/strategies"}  # repository folder -> its place in the wheel

pytestmark = [pytest.mark.xdist_group("wheel"), pytest.mark.slow]  # a wheel built and installed: about a minute


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of what it is made of (setuptools writes build/ and *.egg-info beside its source)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md", *SOURCES):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if (ROOT / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)], check=True,
                   env=os.environ | {"PIP_NO_INPUT": "1"})
    (path,) = out.glob("fuzzcache-*.whl")
    return path


def test_the_wheel_holds_fuzzcache_and_its_dist_info_alone(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"fuzzcache", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}, top
    expected = {f"{place}/{path.relative_to(ROOT / folder).as_posix()}"
                for folder, place in SOURCES.items() for path in (ROOT / folder).rglob("*.py")}
    assert expected <= set(names), f"modules missing from the wheel: {sorted(expected - set(names))}"
    assert "fuzzcache/surgery/data/train.txt" in names  # package data


@pytest.fixture(scope="module")
def fresh_env(wheel, tmp_path_factory) -> Path:
    """A new virtual environment outside the repository with the wheel installed (no editable copy)."""
    env = tmp_path_factory.mktemp("fresh") / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    borrowed = [p for p in site.getsitepackages() if Path(p).is_dir()]
    env_site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    (env_site / "borrowed-dependencies.pth").write_text("\n".join(borrowed) + "\n")  # plain paths: their .pth files are not run
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    return env


def run_in(env: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FUZZCACHE_REPORT_ROOT")}
    return subprocess.run([str(env / "bin" / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, env=clean, timeout=600)


def test_installed_wheel_runs_a_campaign_and_a_replay_outside_the_repository(fresh_env, tmp_path):
    where = run_in(fresh_env, tmp_path, "python", "-c",
                   "import importlib.util, fuzzcache, fuzzcache.strategies as s; print(fuzzcache.__file__); print(s.__file__); "
                   "print(importlib.util.find_spec('strategies'))")
    assert where.returncode == 0, where.stderr
    package, strategies, top_level = where.stdout.split()
    assert package.startswith(str(fresh_env)) and strategies.startswith(str(fresh_env)), where.stdout  # the wheel's, not the checkout's
    assert top_level == "None"  # no top-level `strategies` to shadow a user's own

    clean = run_in(fresh_env, tmp_path, "fuzzcache", "fuzz", "--target", "reference", "--property", "engine.trace", "--budget", "8s", "--workers", "1")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "No findings." in clean.stdout

    buggy = run_in(fresh_env, tmp_path, "fuzzcache", "fuzz", "--target", "mutant:chunk_short_last_dropped", "--property", "engine.trace",
                   "--budget", "20s", "--workers", "1")
    assert buggy.returncode == 1, buggy.stdout + buggy.stderr
    saved = sorted((tmp_path / "corpus").rglob("*.json"))[0]  # keep-going may save more than one form of the bug
    replayed = run_in(fresh_env, tmp_path, "fuzzcache", "replay", str(saved))
    assert replayed.returncode == 1 and "FAILS" in replayed.stdout, replayed.stdout + replayed.stderr
    fixed = run_in(fresh_env, tmp_path, "fuzzcache", "replay", "--target", "reference", str(saved))
    assert fixed.returncode == 0 and "fixed" in fixed.stdout, fixed.stdout + fixed.stderr
    runs = sorted(p.name.split("-")[0] for p in (tmp_path / "fuzzcache-report").iterdir() if p.is_dir() and not p.is_symlink())
    assert runs == ["fuzz", "fuzz", "replay", "replay"]  # four runs, four report folders
