"""pytest plugin (entry point ``pytest11``): registers the Hypothesis profiles, adds
``--fuzzcache-target``, ``--fuzzcache-corpus`` and ``--fuzzcache-isolate``, and collects ``corpus/**/*.json`` files
as test items that pass when their target now agrees with the oracle."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fuzzcache import profiles  # noqa: F401  (registers dev / ci / nightly)


def pytest_addoption(parser) -> None:
    group = parser.getgroup("fuzzcache")
    group.addoption("--fuzzcache-target", default="reference", help="target the property tests fuzz (name or pkg.module:attr)")
    group.addoption("--fuzzcache-corpus", default="corpus", help="folder where shrunk failures are saved")
    group.addoption("--fuzzcache-dtype", default=None, choices=["fp32", "fp16", "bf16"], help="model dtype for the target")
    group.addoption("--fuzzcache-device", default=None, help="model device for the target, e.g. cuda")
    group.addoption("--fuzzcache-isolate", action="store_true", default=None,
                    help="run the target in a worker process, so a native abort is a 'crash' finding "
                         "(default: FUZZCACHE_ISOLATE=1/0, else as the target asks with isolate = True)")


def pytest_configure(config) -> None:
    from fuzzcache.threads import configure_threads

    configure_threads()


@pytest.fixture(scope="session")
def fuzzcache_target_spec(request) -> str:
    return request.config.getoption("--fuzzcache-target")


@pytest.fixture(scope="session")
def fuzzcache_target(request, fuzzcache_target_spec):
    from fuzzcache.targets import resolve_target

    return resolve_target(fuzzcache_target_spec, dtype=request.config.getoption("--fuzzcache-dtype"), device=request.config.getoption("--fuzzcache-device"),
                          isolate=request.config.getoption("--fuzzcache-isolate"))


@pytest.fixture(scope="session")
def fuzzcache_corpus(request) -> Path:
    return Path(request.config.getoption("--fuzzcache-corpus"))


def pytest_collect_file(file_path: Path, parent):
    try:
        parts = file_path.relative_to(parent.config.rootpath).parts
    except ValueError:
        parts = file_path.parts
    if file_path.suffix == ".json" and "corpus" in parts[:-1] and not file_path.name.startswith(".tmp-"):
        return CorpusFile.from_parent(parent, path=file_path)
    return None


# Target families whose engine lives in an environment of its own (README): their corpus files
# carry the family's marker, and are skipped, naming that environment, where the engine is missing.
ENGINE_ENVIRONMENTS = {"vllm": ("vllm", ".venv-vllm"), "vllm-server": ("vllm", ".venv-vllm"),
                       "fuzzcache.targets.vllm.planted": ("vllm", ".venv-vllm"), "fuzzcache.targets.serve.planted": ("vllm", ".venv-vllm"),
                       "llamacpp": ("llama_cpp", "an environment with the llamacpp extra")}  # family -> (module, environment)
MARKERS = {"vllm-server": "vllm", "fuzzcache.targets.vllm.planted": "vllm", "fuzzcache.targets.serve.planted": "vllm"}  # where not the family's name


def engine_family(path: Path) -> str | None:
    """The family of the target a corpus file names, if its engine needs an environment of its own."""
    import json

    try:
        family = str(json.loads(path.read_text()).get("target", "")).partition(":")[0]
    except (OSError, ValueError, AttributeError):
        return None  # a broken file: CorpusItem reports it
    return family if family in ENGINE_ENVIRONMENTS else None


class CorpusFile(pytest.File):
    def collect(self):
        item = CorpusItem.from_parent(self, name=self.path.stem)
        family = engine_family(self.path)
        if family is not None:
            item.add_marker(MARKERS.get(family, family))
            module, environment = ENGINE_ENVIRONMENTS[family]
            if importlib.util.find_spec(module) is None:
                item.add_marker(pytest.mark.skip(reason=f"{family}: targets run in {environment} (see the README's test command)"))
        yield item


class CorpusItem(pytest.Item):
    """One saved repro: passes when the target now agrees with the oracle."""

    def runtest(self) -> None:
        from fuzzcache.corpus import load
        from fuzzcache.runner import claimed_on_replay, replay
        from fuzzcache.targets import resolve_target

        case = load(self.path)  # a CorpusError names the file
        target = resolve_target(case.target, **case.target_options, isolate=self.config.getoption("--fuzzcache-isolate"))
        finding = replay(case, target)
        claim = claimed_on_replay(case, target, finding) if finding is not None and not case.known else None
        if claim is not None:  # an untriaged shape of a known bug
            pytest.xfail(f"known bug {' + '.join(claim.ids)}: {finding.message}")
        if case.known:  # triaged upstream bug / by-design divergence: must keep failing until upstream changes
            if finding is None:
                raise AssertionError(f"{self.path}: triaged as {case.triage['classification']} but now passes: fixed upstream? update or remove the triage")
            pytest.xfail(f"known {case.triage['classification']}: {finding.message}")
        if finding is not None:
            raise AssertionError(f"{self.path}: still fails: {finding}")

    def repr_failure(self, excinfo):
        return str(excinfo.value)

    def reportinfo(self):
        return self.path, 0, f"corpus: {self.path}"  # a line number: pytest asserts one for a skipped item
