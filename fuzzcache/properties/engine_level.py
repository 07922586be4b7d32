"""Engine-level properties: any target, through the contract.

``engine.trace``: every request's output equals the oracle's greedy continuation
(tie-aware), logits close where returned. ``engine.same.*``: metamorphic checks between two
configs of one target, for when the oracle would be too slow.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math

import torch

from fuzzcache.compare import compare_request, target_tolerance
from fuzzcache.contract import ABORT_PHASES, LIFECYCLE, EngineConfig, continuations
from fuzzcache.coverage import reached
from fuzzcache.findings import Finding, contract, mismatch
from fuzzcache.guard import Unsupported, call_target
from fuzzcache.properties.registry import Property, register
from fuzzcache.rare_paths import steer
from fuzzcache.scenario import TraceScenario
from fuzzcache.strategies.engine import target_trace_scenarios
from fuzzcache.strategies.server import server_trace_scenarios

from hypothesis import reject
from hypothesis.control import currently_in_test_context


def run_generate(target, scenario: TraceScenario, via: str | None = None) -> list:
    """``target.generate`` (or ``target.generate_via(via, ...)``, one named path of a target that
    has several) with crash/hang guards and the contract's shape checks."""
    if via is None:
        what, generate = f"{target.name}.generate", target.generate
    else:
        what, generate = f"{target.name}.generate_via({via!r})", functools.partial(target.generate_via, via)
    try:
        out = call_target(what, generate, scenario.requests, scenario.config)
    except Unsupported:
        if not currently_in_test_context():
            raise  # a replay: the caller reports it
        reached("config rejected by target")
        reject()
    out = list(out)
    if len(out) != len(scenario.requests):
        raise contract(f"generate returned {len(out)} completions for {len(scenario.requests)} requests")
    for req, comp in zip(scenario.requests, out):
        if getattr(comp, "rid", None) != req.rid:
            raise contract(f"completion {getattr(comp, 'rid', None)!r} where request {req.rid} was expected (order)")
        forks = list(getattr(comp, "forks", None) or [])
        if len(forks) != req.n - 1:
            raise contract(f"request {req.rid}: {1 + len(forks)} continuations, n={req.n}", rid=req.rid, what="forks")
        for i, each in enumerate([comp, *forks]):
            check_shape(target, req, each, f"request {req.rid}" + (f" continuation {i + 1}" if req.n > 1 else ""))
    check_pool(target)
    note_paths(target, scenario, out)
    return out


def check_shape(target, req, comp, name: str) -> None:
    """One continuation's length (max_new_tokens, ended early only by its first stop token or an
    abort), vocab and logits."""
    tokens = list(comp.tokens)
    early_stop = next((i for i, t in enumerate(tokens[:-1]) if t in req.stop), None)
    if early_stop is not None:
        raise contract(f"{name}: went on past stop token {tokens[early_stop]} at step {early_stop}", rid=req.rid, step=early_stop + 1, what="past stop")
    if len(tokens) > req.max_new_tokens or (len(tokens) < req.max_new_tokens and req.abort_at is None and not (tokens and tokens[-1] in req.stop)):
        raise contract(f"{name}: {len(tokens)} tokens, max_new_tokens={req.max_new_tokens}" + (f", stop={list(req.stop)}" if req.stop else ""),
                       rid=req.rid, what="length")
    if any(not 0 <= t < target.vocab_size for t in tokens):
        raise contract(f"{name}: token outside the vocab", rid=req.rid)
    logits = getattr(comp, "logits", None)
    if logits is not None:
        if tuple(logits.shape) != (len(tokens), target.vocab_size):
            raise contract(f"{name}: logits shape {tuple(logits.shape)}, expected {(len(tokens), target.vocab_size)}", rid=req.rid)
        if not torch.isfinite(logits.float()).all():
            step = int((~torch.isfinite(logits.float())).any(-1).nonzero()[0])
            raise contract(f"{name}: NaN/inf logits at step {step}", rid=req.rid, step=step)


def check_pool(target) -> None:
    """The leak check: once every request finished or was aborted, every block the target's pool
    account (``last_pool``, optional) holds is free or only cached."""
    pool = getattr(target, "last_pool", None)
    if pool is None:
        return
    reached("leak check")
    if pool.leaked > 0:
        raise Finding("leak", f"{pool.leaked} of {pool.total} {pool.unit} not back in the pool after every request ended "
                              f"(free {pool.free}, cached {pool.cached})", {"what": "leak", "leaked": pool.leaked})


def note_paths(target, scenario: TraceScenario, completions: list) -> None:
    """Record which paths this example reached (statistics and the end report)."""
    stats = [getattr(c, "stats", {}) or {} for c in completions]
    engine = getattr(target, "last_stats", {}) or {}
    total = lambda key: sum(s.get(key, 0) for s in stats)  # noqa: E731
    if total("cached_prefix_tokens") > 0:
        reached("prefix hit")
    if total("preemptions") > 0 or engine.get("preemptions", 0) > 0:
        reached("preemption")
    if engine.get("evictions", 0) > 0:
        reached("eviction")
    if engine.get("fused_steps", 0) > 0:
        reached("fused step")
    for s in stats:
        proposed, accepted = s.get("draft_proposed", 0), s.get("draft_accepted", 0)
        if proposed:
            reached("drafts all accepted" if accepted == proposed else "drafts rejected" if accepted == 0 else "drafts partly accepted")
    ignored = tuple(getattr(target, "last_ignored", ()))
    for field in ignored:
        reached(f"{field} not expressible on this target's path")
    for feature in sorted(LIFECYCLE - frozenset(target.features)):
        reached(f"{feature} not expressible on this target (never drawn)")
    c = scenario.config
    if c.chunk_size and "chunk_size" not in ignored and any(len(r.prompt) > c.chunk_size and len(r.prompt) % c.chunk_size for r in scenario.requests):
        reached("short last chunk")
    if "arrival" not in ignored and any(r.arrival for r in scenario.requests):
        reached("arrival after step 0")
    if len(scenario.requests) > 1 and len({len(r.prompt) for r in scenario.requests}) > 1:
        reached("ragged batch")
    if any(r.max_new_tokens == 0 for r in scenario.requests):
        reached("max_new_tokens=0")
    note_lifecycle(scenario, completions)
    steer(scenario, completions)


def note_lifecycle(scenario: TraceScenario, completions: list) -> None:
    """Early stops, aborts by phase, forks."""
    for req, comp in zip(scenario.requests, completions):
        for each in continuations(comp):
            tokens, phase = list(each.tokens), (getattr(each, "stats", {}) or {}).get("abort_phase", 0)
            if tokens and tokens[-1] in req.stop and len(tokens) < req.max_new_tokens:
                reached("early stop")
            if tokens and tokens[-1] in req.stop and len(tokens) == req.max_new_tokens:
                reached("stop token at max_new_tokens")
            if phase:
                reached(f"abort {ABORT_PHASES[phase - 1]}")
            elif req.abort_at is not None:
                reached("abort after the request ended")
        if req.n > 1 and any(c.tokens for c in continuations(comp)[1:]):
            reached("fork")


def oracle_rows(target, prompt, tokens) -> torch.Tensor:
    """One oracle forward over prompt + tokens: the rows (n, V) that chose each token (a target's
    own ``reference_rows(prompt, tokens)`` where it has one, e.g. a server's recompute)."""
    rows = getattr(target, "reference_rows", None)
    if rows is not None:
        return call_target(f"{target.name}.reference_rows", rows, prompt, tokens).float()
    full = call_target(f"{target.name}.reference_logits", target.reference_logits, list(prompt) + list(tokens))
    return full[len(prompt) - 1 : len(prompt) - 1 + len(tokens)].float()


def by_design(target, requests, rid: int | None = None) -> bool:
    """The target declares divergence on this trace expected by design (optional
    ``target.divergence_by_design(requests[, rid]) -> str | None``, e.g. dynamic RoPE past its
    original length; ``rid``: the request that diverged, for a judge that takes it): recorded as a
    path, never reported as a finding."""
    judge = getattr(target, "divergence_by_design", None)
    if judge is None:
        return False
    takes_rid = len(inspect.signature(judge).parameters) >= 2
    reason = judge(requests, rid) if takes_rid else judge(requests)
    if reason:
        reached(f"divergence by design: {reason}")
    return bool(reason)


def check_trace(target, scenario: TraceScenario) -> list:
    """Every request's tokens equal the oracle's (tie-aware); returns the completions."""
    tol = target_tolerance(target)
    completions = run_generate(target, scenario)
    near_ties = 0
    for req, comp in ((r, c) for r, whole in zip(scenario.requests, completions) for c in continuations(whole)):
        if not comp.tokens:
            continue
        result = compare_request(req.rid, list(comp.tokens), oracle_rows(target, req.prompt, comp.tokens), getattr(comp, "logits", None), tol)
        if result.divergence and by_design(target, scenario.requests, req.rid):
            continue
        if result.divergence:
            d = result.divergence
            if d.what == "logits":
                what = f"logits differ from the oracle's by {d.max_abs_diff:.3g} (> {tol.logits:g}); tokens {'agree' if d.expected == d.got else f'{d.expected} expected, {d.got} got'}"
            else:
                what = f"expected token {d.expected}, got {d.got} (oracle margin {d.margin:.4g} > tie tolerance {tol.tie:g})"
            raise mismatch(f"request {d.rid} step {d.step}: {what}", **dataclasses.asdict(d))
        near_ties += result.near_tie_step is not None
    if near_ties:
        reached("near-tie")
    return completions


def traces_for(target):
    """Request traces for ``target``: over the configs it declares, or, for a target that runs
    one config of its own (``fixed_config``, a server's flags), server traces for that config."""
    if getattr(target, "fixed_config", None) is not None:
        return server_trace_scenarios(target)
    return target_trace_scenarios(target)


register(Property(
    id="engine.trace",
    level="engine",
    description="generate() equals the oracle's greedy continuation for every request of a trace",
    scenario_type=TraceScenario,
    strategy=traces_for,
    check=check_trace,
))


def check_same(variant):
    """A metamorphic check: the scenario's config and ``variant(config)`` give the same tokens,
    up to near-ties judged by the oracle at the first difference."""

    def check(target, scenario: TraceScenario) -> None:
        other = TraceScenario(scenario.requests, variant(scenario))
        if other.config == scenario.config:
            return  # the path under test is off: nothing to compare (the minimizer must keep it on)
        a, b = run_generate(target, scenario), run_generate(target, other)
        assert_same_outputs(target, scenario.requests, a, b, "config A", "config B", f"B = {other.config}")

    return check


def assert_same_outputs(target, requests, a: list, b: list, name_a: str, name_b: str, context: str) -> None:
    """Two runs of the same requests agree: logits up to where the tokens part, and tokens up to
    a near-tie judged by the oracle at the first difference."""
    tol = target_tolerance(target)
    pairs = ((r, x, y) for r, wa, wb in zip(requests, a, b) for x, y in zip(continuations(wa), continuations(wb)))
    for req, ca, cb in pairs:
        ta, tb = list(ca.tokens), list(cb.tokens)  # an abort may end them at different lengths
        step = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), None)
        la, lb = getattr(ca, "logits", None), getattr(cb, "logits", None)
        if la is not None and lb is not None:  # logits agree up to where the tokens part
            n = min(len(ta), len(tb)) if step is None else step + 1
            diff = (la[:n].float() - lb[:n].float()).abs().amax(-1) if n else torch.zeros(0)
            bad = (diff > tol.logits).nonzero()
            if len(bad) and by_design(target, requests, req.rid):
                continue
            if len(bad):
                i = int(bad[0])
                raise mismatch(
                    f"request {req.rid} step {i}: logits of {name_a} and {name_b} differ by {float(diff[i]):.3g} (> {tol.logits:g}); {context}",
                    rid=req.rid, step=i, expected=ta[i], got=tb[i], margin=0.0, max_abs_diff=float(diff[i]), what="metamorphic logits",
                )
        if step is None:
            continue
        row = oracle_rows(target, req.prompt, ta[: step + 1])[-1]
        margin = abs(float(row[ta[step]] - row[tb[step]]))
        if (margin > tol.tie or math.isnan(margin)) and by_design(target, requests, req.rid):
            continue
        if margin > tol.tie or math.isnan(margin):
            raise mismatch(
                f"request {req.rid} step {step}: {name_a} gave {ta[step]}, {name_b} gave {tb[step]} "
                f"(oracle margin between them {margin:.4g}); {context}",
                rid=req.rid, step=step, expected=ta[step], got=tb[step], margin=margin, max_abs_diff=0.0, what="metamorphic",
            )
        reached("near-tie")


def _metamorphic(pid: str, description: str, requires: set[str], variant, focus: str) -> None:
    register(Property(
        id=pid, level="engine", description=description, scenario_type=TraceScenario,
        strategy=lambda t: target_trace_scenarios(t, focus),
        check=check_same(variant), requires=frozenset(requires), variant=variant,
    ))


def _with(scenario: TraceScenario, **fields) -> EngineConfig:
    return dataclasses.replace(scenario.config, **fields)


_metamorphic("engine.same.prefix_cache", "prefix cache on == off", {"prefix_cache"},
             lambda s: _with(s, prefix_cache=False), focus="prefix_cache")
_metamorphic("engine.same.pool", "small pool == unbounded pool", {"preemption", "paged"},
             lambda s: _with(s, num_blocks=None), focus="pool")
_metamorphic("engine.same.chunked", "chunked prefill == whole prompt", {"chunked_prefill"},
             lambda s: _with(s, chunk_size=None, max_batch_tokens=None), focus="chunked")
_metamorphic("engine.same.speculative", "k drafts == no drafts", {"speculative"},
             lambda s: _with(s, spec_k=0), focus="speculative")
_metamorphic("engine.same.fused", "fused step == separate forwards", {"interleave"},
             lambda s: _with(s, interleave=False), focus="interleave")
