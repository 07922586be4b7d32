"""The ``fuzzcache`` command: fuzz, replay, minimize, export, corpus merge, bench, mutants, list."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
import sys
import time
from pathlib import Path

import click
import torch
from hypothesis import settings as Settings
from rich.console import Console
from rich.markup import escape

from fuzzcache import profiles  # noqa: F401  (registers dev / ci / nightly)
from fuzzcache import report_dirs
from fuzzcache.corpus import CorpusError, iter_files, load
from fuzzcache.stopping import stopped_by_signals
from fuzzcache.targets import UnknownTarget, available_targets, expand_target_pattern, resolve_target
from fuzzcache.targets.tiny_models import families_for
from fuzzcache.threads import configure_threads


def make_console() -> Console:
    """Rich console; wide when the output is a log file, so tables are not squeezed to 80 columns."""
    console = Console(emoji=False)  # "hf:llama" must not print as "hf" plus a llama emoji
    return console if console.is_terminal else Console(width=200, emoji=False)


def fail(message: str) -> None:
    click.echo(f"fuzzcache: error: {message}", err=True)
    sys.exit(2)


def target_or_fail(spec: str, dtype: str | None = None, device: str | None = None, isolate: bool | None = None):
    try:
        return resolve_target(spec, dtype=dtype, device=device, isolate=isolate)
    except UnknownTarget as exc:
        fail(str(exc))


REPORT_DIR_HELP = ("write the report into exactly this folder, replacing what an earlier run left there (for scripts and CI; "
                   "default: a new folder <root>/{command}-<date>-<time> under the report root)")
REPORT_ROOT = click.option("--report-root", type=click.Path(path_type=Path, file_okay=False), default=None,
                           help=f"the folder each run's report folder is made in, with 'latest' pointing at the newest and "
                                f"runs.html listing them all (default: ${report_dirs.ROOT_VARIABLE}, else {report_dirs.DEFAULT_ROOT})")


def report_dir_option(command: str, *names: str):
    return click.option("--report-dir", *names, "report_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
                        help=REPORT_DIR_HELP.format(command=command))


ISOLATE = click.option("--isolate/--in-process", default=None,
                       help="run the target in a worker process, so a native abort is a 'crash' finding (default: "
                            "FUZZCACHE_ISOLATE=1/0, else as the target asks with isolate = True)")


@click.group()
def main() -> None:
    """Property-based differential fuzzer for the KV-cache machinery of LLM inference engines."""
    configure_threads()


@main.command()
@click.option("--target", "target_spec", default="reference", show_default=True, help="reference, mutant:<name>, hf:<arch>, an entry point, or pkg.module:attr; a pattern (e.g. 'vllm:*') "
              "runs every model family it matches in turn, sharing the budget")
@click.option("--property", "property_patterns", multiple=True, help="property id or glob (repeatable); default: all that apply")
@click.option("--budget", default="60s", show_default=True, help="wall-clock budget, e.g. 90s, 10m, 2h")
@click.option("--profile", default="nightly", show_default=True, type=click.Choice(["dev", "ci", "nightly"]), help="Hypothesis settings; the budget bounds the time whatever the profile")
@click.option("--corpus", "corpus_dir", default="corpus", show_default=True, type=click.Path(path_type=Path))
@click.option("--database", "database_spec", default=None, help="Hypothesis example database: a folder, or redis://host:port/db shared by every worker on every machine")
@report_dir_option("fuzz")
@REPORT_ROOT
@click.option("--example-timeout", default=60.0, show_default=True, help="seconds one call into the target may take before it is a 'hang' finding")
@click.option("--dtype", default=None, type=click.Choice(["fp32", "fp16", "bf16"]), help="model dtype (default: the target's own; tolerances widen for fp16/bf16)")
@click.option("--device", default=None, help="model device, e.g. cpu or cuda (default: the target's own)")
@click.option("--shard", default=None, metavar="I/N", help="run shard I of N (1-based) of the applicable properties, for a CI matrix or an indexed job")
@click.option("--workers", default=None, type=click.IntRange(min=1), help="worker processes, properties spread over them (default: the number of cores)")
@click.option("--coverage", "coverage_packages", default=None, metavar="PKG[,PKG...]",
              help="measure branch coverage (coverage.py) of these packages of the engine during the campaign, e.g. vllm.v1.core")
@click.option("--verbose", "-v", is_flag=True, help="also print the paths reached, the rare paths, the branch coverage per file and each server config "
                                                  "(all of it is in the report either way)")
@ISOLATE
@stopped_by_signals
def fuzz(target_spec, property_patterns, budget, profile, corpus_dir, database_spec, report_dir, report_root, example_timeout, dtype, device, shard,
         workers, coverage_packages, verbose, isolate) -> None:
    """Fuzz a target until the budget is spent. Exit 1 when a new failure that no triage or known
    bug explains was saved (fuzzcache.known_bugs), 2 when a worker failed. SIGTERM stops it as
    Ctrl-C does (fuzzcache.stopping)."""
    from fuzzcache import guard
    from fuzzcache.campaign import merge_results, parse_budget, write_reports
    from fuzzcache.terminal import print_report
    from fuzzcache.properties import select

    guard.TIME_LIMIT_S = example_timeout

    from fuzzcache.database import make_database
    from fuzzcache import branch_coverage

    try:
        budget_s = parse_budget(budget)
        props = select(list(property_patterns))
        index, count = parse_shard(shard) if shard else (1, 1)
        database = make_database(database_spec) if database_spec else None
        packages = branch_coverage.parse_packages(coverage_packages) if coverage_packages else ()
    except ValueError as exc:
        fail(str(exc))
    if packages and isolate:
        fail("--coverage measures the processes fuzzcache runs the target in: drop --isolate (an isolated target runs in a worker "
             "process of its own), or run it --in-process")
    try:
        specs = expand_target_pattern(target_spec)
    except UnknownTarget as exc:
        fail(str(exc))
    run_dir = report_dirs.RunDir("fuzz", report_dir, report_root)
    coverage_dir = branch_coverage.data_dir_for(run_dir.path) if packages else None
    measuring = branch_coverage.BranchCoverage(packages, coverage_dir) if packages else None
    if measuring:
        measuring.start()  # before the target is built: its modules' import-time branches count too
    console = make_console()
    if len(specs) > 1:
        console.print(f"{target_spec}: {', '.join(specs)}, {budget_s / len(specs):.0f}s each", markup=False, highlight=False)
    results, errors = [], []
    for n, spec in enumerate(specs):  # a pattern's targets share the budget, one after another, under one coverage measurement
        if measuring and n:
            measuring.start()  # the last target's campaign stopped it
        result, failed = fuzz_target(spec, props, budget_s / len(specs), profile, corpus_dir, database_spec, database, example_timeout, dtype,
                                     device, (index, count) if shard else None, workers, verbose, isolate, measuring, packages, coverage_dir, console)
        results.append(result)
        errors += failed
        if result.interrupted:  # Ctrl-C or SIGTERM: the targets after this one are not started
            break
    result = results[0] if len(results) == 1 else merge_results(target_spec, results)
    if packages:
        result.branch_coverage = branch_coverage.report(packages, coverage_dir, result.coverage_snapshots)
    print_report(result, console, verbose)
    for error in errors:
        console.print(f"worker failed, its properties are missing from the report: {error}", markup=False, highlight=False)
    run_dir.record(campaign_outcome(result, errors))
    write_reports(result, run_dir.path)
    run_dir.publish()
    console.print(f"report: {run_dir.path / 'index.html'} (report.json, junit.xml beside it)", markup=False, highlight=False)
    sys.exit(1 if result.untriaged_findings else 2 if errors else 0)


def fuzz_target(target_spec, props, budget_s, profile, corpus_dir, database_spec, database, example_timeout, dtype, device, shard, workers,
                verbose, isolate, measuring, packages, coverage_dir, console):
    """One target's campaign of ``fuzz`` (a target pattern runs one per target): (result, worker errors)."""
    from fuzzcache.campaign import run_campaign
    from fuzzcache.isolation import IsolatedTarget
    from fuzzcache.terminal import live_display
    from fuzzcache.workers import run_workers

    target = target_or_fail(target_spec, dtype, device, isolate)
    if measuring and isinstance(target, IsolatedTarget):
        fail("--coverage measures the processes fuzzcache runs the target in; this target runs in a worker process of its "
             "own (isolated): run it --in-process to measure its coverage")
    applicable = [p for p in props if p.applies_to(target)]
    skipped = [f"{p.id} (needs {p.unmet(target)})" for p in props if p not in applicable]
    if not applicable:
        fail(f"no selected property applies to target {target_spec!r} (features: {sorted(target.features)}): {'; '.join(skipped)}")
    if skipped:
        why = "; ".join(skipped) if verbose else "--verbose says what each needs"
        console.print(f"not applicable to {target_spec}: {', '.join(p.id for p in props if p not in applicable)} ({why})", markup=False, highlight=False)
    if shard:
        index, count = shard
        applicable = applicable[index - 1 :: count]
        console.print(f"shard {index}/{count}: {', '.join(p.id for p in applicable) or 'no property (fewer properties than shards)'}")
        if not applicable:
            sys.exit(0)
    workers = min(workers or cores(), len(applicable))
    errors: list[str] = []
    with live_display(console, target_spec, budget_s, len(applicable)) as show, closing_target(target):
        if workers > 1:
            if isinstance(target, IsolatedTarget):
                target.close()  # each worker builds its own, with a worker process of its own
            parent = [measuring.stop(0)] if measuring else []  # each worker measures its own
            result, errors = run_workers(target_spec, {"dtype": dtype, "device": device, "isolate": isolate}, [p.id for p in applicable], workers, budget_s,
                                         Settings.get_profile(profile), corpus_dir, database_spec, example_timeout, show,
                                         (packages, coverage_dir) if packages else None)
            result.coverage_snapshots = parent + result.coverage_snapshots
        else:
            result = run_campaign(target, target_spec, applicable, budget_s, Settings.get_profile(profile), corpus_dir, database, show, measuring)
    return result, errors


def campaign_outcome(result, errors: list[str]) -> str:
    """One line for the list of runs: the target, examples, findings."""
    examples = sum(t.examples for t in result.totals.values())
    found = f"{len(result.findings)} finding(s), {len(result.untriaged_findings)} untriaged" if result.findings else "no findings"
    failed = f", {len(errors)} worker(s) failed" if errors else ""
    return f"{result.target}: {len(result.totals)} properties, {examples} examples in {result.seconds:.0f}s, {found}{failed}" + (
        " (interrupted)" if result.interrupted else "")


@contextmanager
def closing_target(target):
    """The target's ``close`` (a worker process, a server fuzzcache started) on every way out."""
    try:
        yield target
    finally:
        close = getattr(target, "close", None)
        if callable(close):
            close()


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' (1 <= I <= N) -> (I, N); shard I runs every N-th applicable property from the I-th,
    in registry order, so N shards cover each property once."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected I/N, e.g. 1/4") from None
    if not 1 <= index <= count:
        raise ValueError(f"--shard {text!r}: I must be between 1 and N")
    return index, count


def corpus_cases(paths, target_spec: str | None, isolate: bool | None = None):
    """(path, case, target) for each corpus file under ``paths``, the target the file names or
    ``target_spec``; (path, None, error) for a file that cannot be used."""
    try:
        files = iter_files(paths)
    except CorpusError as exc:
        fail(str(exc))
    override = target_or_fail(target_spec, isolate=isolate) if target_spec else None
    for path in files:
        try:
            case = load(path)
            yield path, case, override or resolve_target(case.target, **case.target_options, isolate=isolate)
        except (CorpusError, UnknownTarget) as exc:
            yield path, None, exc


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--target", "target_spec", default=None, help="replay against this target instead of the one each file names")
@report_dir_option("replay")
@REPORT_ROOT
@ISOLATE
def replay(paths, target_spec, isolate, report_dir, report_root) -> None:
    """Re-run corpus files or folders; say per file whether it still fails. Exit 1 if any does.
    The files that still fail are drawn in the run's index.html (data in report.json), in a new
    folder under the report root (or exactly --report-dir)."""
    from fuzzcache.runner import claimed_on_replay, replay as replay_case, replayed_record

    still, bad, known, files = 0, 0, 0, 0
    records = []
    echo = EchoLog()
    for path, case, target in corpus_cases(paths, target_spec, isolate):
        files += 1
        if case is None:
            echo(f"ERROR  {path}: {target}")
            bad += 1
            continue
        finding = replay_case(case, target)
        claim = claimed_on_replay(case, target, finding) if finding is not None and not case.known else None
        if finding is not None:
            records.append(replayed_record(path, case, target, finding, claim.ids if claim else []))
        if claim is not None:
            known += 1
            echo(f"KNOWN  {path}: {finding} (known bug: {' + '.join(claim.ids)}; not triaged in the file)")
        elif case.known and finding is not None:
            known += 1
            echo(f"KNOWN  {path}: {finding} (triaged: {case.triage['classification']})")
        elif case.known:
            still += 1
            echo(f"FIXED? {path}: triaged as {case.triage['classification']} but passes now; update the triage")
        elif finding is None:
            echo(f"fixed  {path}")
        else:
            still += 1
            echo(f"FAILS  {path}: {finding}")
    echo(f"{files} file(s): {still} still failing, {known} known (triaged), {bad} unreadable, {files - still - bad - known} fixed")
    title = f"fuzzcache replay: {files} file(s), {still} still failing, {known} known, {bad} unreadable"
    write_run_report(report_dirs.RunDir("replay", report_dir, report_root), title, records, echo)
    sys.exit(1 if still or bad else 0)


class EchoLog(list):
    """``click.echo`` that keeps each line it printed, for the run's report."""

    def __call__(self, line: str) -> None:
        self.append(line)
        click.echo(line)


def write_run_report(run_dir: "report_dirs.RunDir", title: str, findings: list[dict], log: list[str]) -> None:
    """A replay's or minimize's report: report.json and index.html (the findings drawn, each file's line)."""
    from fuzzcache.html_report import write_html

    data = {"title": title, "findings": findings, "log": log}
    run_dir.record(title.removeprefix("fuzzcache "))
    report_dirs.atomic_write(run_dir.path / "report.json", json.dumps(data, indent=2) + "\n")
    page = write_html(data, run_dir.path)
    run_dir.publish()
    click.echo(f"report: {page}")


@main.command()
@click.argument("report_dir", type=click.Path(path_type=Path, file_okay=False))
def report(report_dir) -> None:
    """Write REPORT_DIR/index.html from the report.json that fuzz, replay or mutants left there."""
    from fuzzcache.html_report import write_html

    for name in ("report.json", "mutants.json"):
        source = report_dir / name
        if source.exists():
            break
    else:
        fail(f"{report_dir}: no report.json (fuzz, replay) nor mutants.json (mutants) to draw")
    try:
        data = json.loads(source.read_text())
    except (OSError, ValueError) as exc:
        fail(f"{source}: not a readable report ({exc})")
    if not isinstance(data, dict):
        fail(f"{source}: not a fuzzcache report (a JSON object was expected)")
    click.echo(f"report: {write_html(data, report_dir)}")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--target", "target_spec", default=None, help="minimize against this target instead of the one each file names")
@click.option("--corpus", "corpus_dir", default=None, type=click.Path(path_type=Path), help="where minimized files go (default: the corpus folder each file is in)")
@click.option("--max-checks", default=None, type=click.IntRange(min=1), help="property checks per file (default: the minimizer's cap, 400)")
@click.option("--keep-original", is_flag=True, help="keep the input file beside the minimized one (default: a new minimized file replaces it, holding its scenario as shrunk_scenario)")
@report_dir_option("minimize")
@REPORT_ROOT
@ISOLATE
@stopped_by_signals
def minimize(paths, target_spec, corpus_dir, max_checks, keep_original, report_dir, report_root, isolate) -> None:
    """Minimize corpus files (older versions', a long nightly run's, hand-written ones): each
    still-failing case is reduced by its structure and saved as a new, content-addressed file
    holding the old scenario as shrunk_scenario (and its triage). The input is removed only when
    that new file was written for it, never with --target (the input belongs to another target).
    Ctrl-C (or SIGTERM) saves the best so far and stops. Exit 1 if a file could not be read.
    Each minimized file is drawn in the run's index.html, in a new folder under the report root."""
    from fuzzcache import corpus
    from fuzzcache.findings import Finding
    from fuzzcache.guard import Unsupported
    from fuzzcache.minimize import MAX_CHECKS
    from fuzzcache.properties import get
    from fuzzcache.runner import checked, minimize_found, replayed_record, target_options
    from fuzzcache.scenario import short_form

    bad, files = 0, 0
    echo, records = EchoLog(), []
    run_dir = report_dirs.RunDir("minimize", report_dir, report_root)

    def report() -> None:
        title = f"fuzzcache minimize: {files} file(s), {len(records)} minimized, {bad} unreadable or rejected"
        write_run_report(run_dir, title, records, echo)

    for path, case, target in corpus_cases(paths, target_spec, isolate):
        files += 1
        if case is None:
            echo(f"ERROR  {path}: {target}")
            bad += 1
            continue
        prop = get(case.property)
        try:
            checked(prop, target, case.scenario)
            echo(f"passes {path}: the target agrees with the oracle now; nothing to minimize")
            continue
        except Unsupported as exc:
            echo(f"ERROR  {path}: the target rejects this config: {exc}")
            bad += 1
            continue
        except Finding as finding:
            scenario, found, result = minimize_found(prop, target, case.scenario, finding, max_checks or MAX_CHECKS)
        stats = f"{result.checks} checks, {result.seconds:.1f}s{', capped' if result.capped else ''}{', interrupted' if result.interrupted else ''}"
        if scenario == case.scenario:
            echo(f"minimal {path}: {short_form(scenario)} ({result.note or 'no smaller form fails the same way'}; {stats})")
        else:
            spec, options, triage = (target_spec, target_options(target), None) if target_spec else (case.target, case.target_options, case.triage)
            new_path, new = corpus.save(corpus_dir or _corpus_root(path, case), spec, case.property, scenario, found, options,
                                        shrunk_scenario=case.shrunk_scenario or case.scenario, minimized=result.record(), triage=triage)
            if new and not keep_original and not target_spec:
                path.unlink()  # its scenario lives on in the new file's shrunk_scenario, its triage beside it
            kept = "" if new and not keep_original and not target_spec else "; input kept"
            echo(f"reduced {path}: {short_form(case.scenario)} -> {short_form(scenario)} ({stats})\n"
                 f"        -> {new_path}{'' if new else ' (already there)'}{kept}")
            records.append(replayed_record(new_path, corpus.load(new_path), target, found, []))
        if result.interrupted:
            echo("interrupted: stopped after this file")
            report()
            sys.exit(130)
    report()
    sys.exit(1 if bad else 0)


def _corpus_root(path: Path, case) -> Path:
    """The corpus folder of ``corpus/<target>/<property>/<kind>-<sha1>.json``; else ``path``'s folder."""
    from fuzzcache.corpus import target_dir

    if path.parent.name == case.property and path.parent.parent.name == target_dir(case.target):
        return path.parent.parent.parent
    return path.parent


@main.command()
@click.option("--target", "target_spec", default="reference", show_default=True)
@click.option("--property", "property_patterns", multiple=True, help="property id or glob (repeatable); default: all that apply")
@click.option("--examples", default=30, show_default=True, help="examples per property")
@click.option("--dtype", default=None, type=click.Choice(["fp32", "fp16", "bf16"]))
@click.option("--device", default=None)
@ISOLATE
def bench(target_spec, property_patterns, examples, dtype, device, isolate) -> None:
    """Examples/s per property and the share of time inside model forwards."""
    from rich.table import Table

    from fuzzcache.bench import bench as run_bench
    from fuzzcache.isolation import IsolatedTarget
    from fuzzcache.properties import select

    try:
        props = select(list(property_patterns))
    except ValueError as exc:
        fail(str(exc))
    target = target_or_fail(target_spec, dtype, device, isolate)
    warm_up = getattr(target, "warm_up", None)  # a target's one-off set-up (vLLM: its engines), timed apart
    started = time.perf_counter()
    if warm_up is not None:
        warm_up()
    warm_s = time.perf_counter() - started
    rows = run_bench(target, target_spec, [p for p in props if p.applies_to(target)], examples)
    isolated = isinstance(target, IsolatedTarget)  # its forwards run in the worker, unseen by the timer
    title = f"fuzzcache bench --target {target_spec} --examples {examples} (torch threads: {torch.get_num_threads()}{', in a worker process' if isolated else ''})"
    if warm_up is not None:
        title += f"; target warm-up {warm_s:.1f}s, not counted"
    table = Table(title=title)
    for col in ("property", "examples", "seconds", "examples/s", "in model forward"):
        table.add_column(col, justify="left" if col == "property" else "right")
    for r in rows:
        table.add_row(r.property, str(r.examples), f"{r.seconds:.1f}", f"{r.rate:.1f}", "(in the worker)" if isolated else f"{100 * r.forward_share:.0f}%")
    make_console().print(table)


@main.command()
@click.option("--targets", "target_list", default=None, help="comma-separated mutants, the targets that must be killed (default: the whole zoo, mutant:<name> each)")
@click.option("--clean", "clean_list", default="reference", show_default=True,
              help="comma-separated targets that must stay clean: neither the fixed checks nor the fuzzer may flag them")
@click.option("--profile", default="ci", show_default=True, type=click.Choice(["dev", "ci", "nightly"]))
@click.option("--budget", default="60s", show_default=True, help="fuzzing budget per target")
@report_dir_option("mutants", "--out")
@REPORT_ROOT
def mutants(target_list, clean_list, profile, budget, report_dir, report_root) -> None:
    """Mutation score: the seed's fixed checks vs the fuzzer on each mutant (--targets), with the
    targets that must stay clean (--clean, the correct engine by default) alongside.

    Exit 0 exactly when the fuzzer killed every mutant and no clean target was flagged (by the fuzzer
    or by the fixed checks), else 1; 2 for bad arguments. mutants.md, mutants.json and index.html go
    into a new folder under the report root (or exactly --report-dir)."""
    from rich.table import Table

    from fuzzcache.campaign import parse_budget
    from fuzzcache.mutants import ZOO
    from fuzzcache.mutation_score import fuzzer_verdict, minimizer_costs, score_target, write_outputs

    try:
        budget_s = parse_budget(budget)
    except ValueError as exc:
        fail(str(exc))
    clean = names_of(clean_list)
    if target_list:
        specs = names_of(target_list)
        zoo_entry = lambda spec: ZOO.get(spec.removeprefix("mutant:")) if spec.startswith("mutant:") else None  # noqa: E731
        entries = [(spec, zoo_entry(spec)) for spec in specs]
    else:
        entries = [(f"mutant:{m.name}", m) for m in ZOO.values()]
    if both := sorted(set(clean) & {spec for spec, _ in entries}):
        fail(f"{', '.join(both)}: named both as a mutant to kill (--targets) and as a target that must stay clean (--clean)")
    if not entries:
        fail("--targets names no target")
    for spec in clean + [spec for spec, m in entries if m is None]:
        target_or_fail(spec)  # a clear error before any work (the zoo's mutants resolve)
    console = make_console()
    table = Table(title=f"fuzzcache mutants --profile {profile} --budget {budget}")
    for col in ("mutant", "fixed checks", "fuzzer", "property", "s to kill", "examples", "repro (minimized)", "tokens", "= trigger"):
        table.add_column(col)
    scores = []
    started = time.monotonic()
    for spec, m in [(spec, None) for spec in clean] + entries:
        bug = "(must stay clean)" if spec in clean else ""
        score = score_target(spec, lambda spec=spec: resolve_target(spec), Settings.get_profile(profile), budget_s, m, bug, clean=spec in clean)
        scores.append(score)
        equal = {True: "yes", False: "no", None: "-"}[score.equals_documented]
        table.add_row(spec, score.fixed_checks, fuzzer_verdict(score), score.killed_by or "-",
                      f"{score.seconds_to_kill:.1f}" if score.seconds_to_kill is not None else "-", str(score.examples_to_kill or "-"),
                      escape(score.repro.split(": ", 1)[-1]) if score.repro else "-",  # "[prompt=2 new=1]" is not markup
                      f"{score.shrunk_tokens} -> {score.repro_tokens} ({score.documented_tokens})" if score.repro else "-", equal)
        known = f"; known bug: {', '.join(score.known_bugs)}" if score.known_bugs else ""
        console.print(f"{spec}: {'killed by ' + score.killed_by if score.fuzz_killed else 'survived'} ({score.seconds_total:.0f}s{known})", markup=False, highlight=False)
    total = time.monotonic() - started
    console.print(table)
    zoo = [s for s in scores if not s.clean]
    kills = [s.seconds_to_kill for s in zoo if s.fuzz_killed]
    kills.sort()
    summary = {
        "profile": profile, "budget_s": budget_s, "total_seconds": round(total, 1),
        "mutants": len(zoo), "fixed_checks_killed": sum(s.fixed_killed for s in zoo), "fuzzer_killed": len(kills),
        "documented_trigger_matched": sum(bool(s.equals_documented) for s in zoo),
        "at_or_below_documented_tokens": sum(s.repro_tokens is not None and s.documented_tokens is not None and s.repro_tokens <= s.documented_tokens for s in zoo),
        **minimizer_costs(zoo),
        "median_seconds_to_kill": kills[len(kills) // 2] if kills else None, "worst_seconds_to_kill": kills[-1] if kills else None,
        "clean": clean, "clean_flagged": [s.target for s in scores if s.clean and s.flagged],
    }
    console.print(
        f"fixed checks killed {summary['fixed_checks_killed']}/{len(zoo)}; fuzzer killed {len(kills)}/{len(zoo)}; "
        f"repro = documented trigger for {summary['documented_trigger_matched']}/{len(zoo)}, at or below its tokens for "
        f"{summary['at_or_below_documented_tokens']}/{len(zoo)}; minimizer checks median {summary['minimizer_checks_median']} worst "
        f"{summary['minimizer_checks_worst']}, seconds median {summary['minimizer_seconds_median']} worst {summary['minimizer_seconds_worst']}; "
        f"seconds to kill median {summary['median_seconds_to_kill']} worst {summary['worst_seconds_to_kill']}; "
        f"clean targets: {'FLAGGED ' + ', '.join(summary['clean_flagged']) if summary['clean_flagged'] else 'all stayed clean'}; "
        f"total {total:.0f}s", markup=False, highlight=False)
    run_dir = report_dirs.RunDir("mutants", report_dir, report_root)
    survivors = [s.target for s in zoo if not s.fuzz_killed]
    run_dir.record(f"{len(kills)}/{len(zoo)} mutants killed" + (f" (survived: {', '.join(survivors)})" if survivors else "")
                   + (f"; clean targets FLAGGED: {', '.join(summary['clean_flagged'])}" if summary["clean_flagged"] else "; clean targets clean"))
    md, js = write_outputs(scores, run_dir.path, summary)
    run_dir.publish()
    console.print(f"written: {md} {js} {run_dir.path / 'index.html'}", markup=False, highlight=False)
    sys.exit(0 if not survivors and not summary["clean_flagged"] else 1)


def names_of(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c'], each once, in order."""
    return list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))


@main.group("corpus")
def corpus_group() -> None:
    """Corpus folders: merge those of many machines."""


@corpus_group.command("merge")
@click.argument("dest", type=click.Path(path_type=Path))
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
def corpus_merge(dest, sources) -> None:
    """Copy the corpus folders SOURCES into DEST: a repro found on many machines is one file
    (content-addressed); a file DEST holds with other substance (kind, scenario, triage) is a
    conflict, reported, DEST's kept. Exit 1 on a conflict or an unreadable file."""
    from fuzzcache.corpus import merge

    try:
        merged = merge(dest, sources)
    except CorpusError as exc:
        fail(str(exc))
    for line in merged.conflicts:
        click.echo(f"CONFLICT {line}")
    for line in merged.errors:
        click.echo(f"ERROR    {line}")
    click.echo(f"{len(merged.copied)} copied, {len(merged.same)} already there, {len(merged.conflicts)} conflict(s), {len(merged.errors)} unreadable")
    sys.exit(1 if merged.conflicts or merged.errors else 0)


@main.command("export")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--to", "to", default="fuzzcache-export", show_default=True, type=click.Path(path_type=Path), help="folder the repro's folder goes in")
@click.option("--name", default=None, help="the repro's folder name (default: <target>-<case hash>, e.g. vllm-llama-c66427317b3d)")
def export_cmd(file, to, name) -> None:
    """Write a standalone repro of the corpus FILE of a real engine (hf:, vllm:, llamacpp:) for an
    upstream report: DIR/<name>/repro.py, which runs the finding with the engine alone (no
    fuzzcache) and exits 1 while the bug is there, and the tiny model's files beside it."""
    from fuzzcache.export import ExportError, export

    try:
        done = export(file, to, name)
    except ExportError as exc:
        fail(str(exc))
    click.echo(f"wrote {done.folder}/: {', '.join(p.name for p in done.files)}")
    click.echo(f"run it: python {done.folder / 'repro.py'}   (needs {done.engine} and torch; exit 1 while the bug is there)")


@main.command("tiny-model")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--arch", default="llama", show_default=True, type=click.Choice(list(families_for("vllm"))))
def tiny_model(folder, arch) -> None:
    """Write the tiny seeded model that vllm-server:<arch> serves (an HF checkpoint without a
    tokenizer) to FOLDER, to start a server on it by hand and attach to it."""
    from fuzzcache.targets.serve.target import write_tiny_model

    write_tiny_model(arch, folder)
    click.echo(f"wrote the tiny {arch} model to {folder} (vocabulary 64, 256 positions, float32)")


def list_families() -> None:
    """The shared factory's model families, and per engine whether it runs each (servers serve
    their engine's: vllm-server vLLM's, llama-server llama.cpp's)."""
    from fuzzcache.targets.tiny_models import ARCHITECTURES, ENGINES

    click.echo("model families (<arch> above; vllm-server serves vllm's, llama-server llamacpp's):")
    for family in ARCHITECTURES.values():
        window = f", window {family.window}" if family.window else ""
        click.echo(f"  {family.name:24} [{family.attention} attention{window}] {family.what}")
        for engine in ENGINES:
            verdict = "runs" if family.runs_on(engine) else family.engines[engine]
            click.echo(f"      {engine + ':':10} {verdict}")


@main.command("list")
def list_cmd() -> None:
    """Targets (with their features, and the contract's features each cannot express) and properties."""
    from fuzzcache.contract import FEATURES
    from fuzzcache.properties import PROPERTIES

    click.echo("targets:")
    for name in available_targets():
        try:
            declared = frozenset(resolve_target(name).features)
            features = ", ".join(sorted(declared)) + (f"; cannot express: {', '.join(sorted(FEATURES - declared))}" if FEATURES - declared else "")
        except Exception as exc:  # noqa: BLE001 - a broken plugin should not hide the others
            features = f"(cannot load: {exc})"
        click.echo(f"  {name:24} {features}")
    click.echo("  package.module:attr      a target object, class or zero-argument factory")
    from fuzzcache.targets import FAMILIES

    for family, (_, _, what) in FAMILIES.items():
        if family != "mutant":
            click.echo(f"  {family + ':<arch>':24} {what}")
    list_families()
    from fuzzcache.mutants import ZOO

    click.echo("mutants (the bug zoo; each has the reference engine's features):")
    for m in ZOO.values():
        click.echo(f"  mutant:{m.name:40} [{m.path}] {m.bug}")
    click.echo("properties:")
    for p in PROPERTIES.values():
        needs = f"  [needs {', '.join(sorted(p.requires))}]" if p.requires else ""
        click.echo(f"  {p.id:28} {p.level:6} {p.description}{needs}")


if __name__ == "__main__":
    main()
