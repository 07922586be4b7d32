"""Request traces and engine configs drawn over the features a target declares."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from fuzzcache.contract import DRAFTS, EngineConfig, Request, min_pool_blocks
from fuzzcache.scenario import TraceScenario
from fuzzcache.strategies.lengths import max_new_tokens, prompt_lengths, target_block_sizes
from fuzzcache.strategies.lifecycle import Greedy, oracle_greedy, with_lifecycles
from fuzzcache.strategies.swarm import SWARM_FEATURES, available, swarms

MAX_REQUESTS = 4
MAX_NEW = 8


def prompts(token: st.SearchStrategy[int], block_size: int, max_len: int, window: int | None = None) -> st.SearchStrategy[list[int]]:
    """Token lists whose length shrinks freely, half the time at a block (or window) boundary."""
    boundary = prompt_lengths(block_size, max_len, window).flatmap(lambda n: st.lists(token, min_size=n, max_size=n))
    return st.one_of(st.lists(token, min_size=1, max_size=max_len), boundary)


@st.composite
def request_bodies(draw, token: st.SearchStrategy[int], shared: list[int], block_size: int, max_prompt: int, max_new: int, max_seq_len: int,
                   arrivals: bool = True, window: int | None = None) -> tuple:
    """(prompt, max_new_tokens, arrival) of one request, drawn as a unit so the shrinker can delete it whole."""
    use_shared = bool(shared) and draw(st.booleans())
    prompt = (shared if use_shared else []) + draw(prompts(token, block_size, max_prompt, window))
    return tuple(prompt[: max_seq_len - max_new]), draw(max_new_tokens(max_new)), draw(st.integers(0, 3) if arrivals else st.just(0))


@st.composite
def batch_mixes(draw, vocab_size: int, max_seq_len: int, block_size: int, max_requests: int = MAX_REQUESTS, max_new: int = MAX_NEW, min_requests: int = 1,
                swarm: frozenset[str] | None = None, window: int | None = None) -> tuple[Request, ...]:
    """1..max_requests requests: ragged lengths, an optional shared prefix (whole or partial
    blocks; with a sliding ``window``, lengths at its multiples too, so a shared prefix may be
    longer than the window or end inside it), arrivals that often coincide, tokens from an alphabet that is often small (so
    equal blocks recur after different prefixes). Shrinks to one short request at step 0.
    With a ``swarm`` (strategies.swarm), one request unless it has "several requests", every
    arrival at step 0 unless it has "arrivals"."""
    cap = 40 if block_size <= 16 else 3 * block_size + 1  # large blocks (vLLM's 32+): prompts still reach several
    max_prompt = max(1, min(4 * block_size + 1, max_seq_len - max_new, cap))
    alphabet = draw(st.one_of(st.integers(1, 3), st.just(vocab_size)))
    token = st.integers(0, alphabet - 1)
    several = swarm is None or "several requests" in swarm
    shared_prompts = prompts(token, block_size, max_prompt, window)
    shared = draw(shared_prompts if min_requests > 1 else st.one_of(st.just([]), shared_prompts))
    body = request_bodies(token, shared, block_size, max_prompt, max_new, max_seq_len, swarm is None or "arrivals" in swarm, window)
    least = max(min_requests, 2) if several and swarm is not None else min_requests
    bodies = draw(st.lists(body, min_size=least, max_size=max_requests if several else least))
    return tuple(Request(rid, prompt, new, arrival) for rid, (prompt, new, arrival) in enumerate(bodies))


FOCUS = ("prefix_cache", "chunked", "speculative", "interleave", "pool")
FOCUS_SWARM = {"prefix_cache": {"prefix cache", "several requests"}, "chunked": {"chunking", "several requests"},
               "speculative": {"drafts", "several requests"}, "interleave": {"fused step", "several requests"},
               "pool": {"bounded pool", "several requests"}}  # a focus's swarm features, always on


def usable_features(features: frozenset[str], exclusive: frozenset[str], swarm: frozenset[str]) -> frozenset[str]:
    """The features one config may use: an exclusive feature (one the target cannot combine with
    the others, e.g. transformers' assisted generation) is used alone when the swarm switched
    it on, else not at all."""
    for feature in sorted(exclusive & features):
        alone = any(SWARM_FEATURES[name] == feature for name in swarm)
        features = frozenset({feature, "batching"} & features) if alone else features - {feature}
    return features


@dataclass(frozen=True)
class Traits:
    """What a target declares about the configs it runs, beyond its features (each an optional
    attribute of the target; the defaults fit an engine that runs every config)."""

    block_sizes: tuple[int, ...] | None = None  # the only block sizes it runs (vLLM's CPU kernel: 32, 64)
    min_block_size: int = 1  # else: any block size from here to 16
    exclusive: frozenset[str] = frozenset()  # features a config uses alone (``exclusive_features``)
    drafts: tuple[str, ...] = DRAFTS  # the draft methods it has
    budget_covers_seqs: bool = False  # it refuses max_batch_tokens < max_num_seqs
    window: int | None = None  # its model's sliding window (``window``): lengths are drawn around it too


def traits_of(target) -> Traits:
    return Traits(
        tuple(getattr(target, "block_sizes", None) or ()) or None, getattr(target, "min_block_size", 1),
        frozenset(getattr(target, "exclusive_features", ())), tuple(getattr(target, "drafts", DRAFTS)),
        bool(getattr(target, "budget_covers_seqs", False)), getattr(target, "window", None),
    )


@st.composite
def engine_configs(draw, features: frozenset[str], requests: tuple[Request, ...], block_size: int, focus: str | None = None, traits: Traits = Traits(),
                   swarm: frozenset[str] | None = None) -> EngineConfig:
    """An EngineConfig varying only the fields whose feature the target declares and the
    example's ``swarm`` switched on (None: every one), each at full strength when on; pools go
    down to the contract's minimum to force eviction and preemption. ``focus`` (one of FOCUS)
    means a property about that path (its swarm features are on: FOCUS_SWARM)."""
    on = lambda name: swarm is None or name in swarm or name in FOCUS_SWARM.get(focus, ())  # noqa: E731
    tight_pool = focus == "pool"
    fields: dict = {}
    if "paged" in features:
        fields["block_size"] = block_size
    if "batching" in features:
        default = EngineConfig().max_num_seqs  # shrink toward the default, not toward 1
        fields["max_num_seqs"] = draw(st.one_of(st.just(default), st.integers(2 if focus else 1, MAX_REQUESTS)))
    if "chunked_prefill" in features:
        fields["chunk_size"] = draw(st.integers(1, 8)) if on("chunking") else None
        least = fields.get("max_num_seqs", 1) if traits.budget_covers_seqs else 1
        fields["max_batch_tokens"] = draw(st.integers(least, max(least, 16))) if on("budget") else None
    if "prefix_cache" in features:
        fields["prefix_cache"] = on("prefix cache")
    if "speculative" in features and on("drafts"):
        fields["spec_k"] = draw(st.integers(1, 4))
        drafts = ["trigram", *[d for d in DRAFTS if d != "trigram"]] if traits.drafts == DRAFTS else list(traits.drafts)
        fields["draft"] = draw(st.sampled_from(drafts))
    if "interleave" in features:
        fields["interleave"] = on("fused step")
    config = EngineConfig(**fields)
    if "preemption" in features and "paged" in features and on("bounded pool"):
        slack = draw(st.integers(0, 1 if tight_pool else 3))
        config = EngineConfig(**{**fields, "num_blocks": min_pool_blocks(requests, config) + slack})
    return config


@st.composite
def trace_scenarios(draw, features: frozenset[str], vocab_size: int, max_seq_len: int, focus: str | None = None,
                    traits: Traits = Traits(), greedy: Greedy | None = None) -> TraceScenario:
    """A request trace plus a config over the target's features, swarm-tested: the example
    first draws which features it switches on (strategies.swarm). With ``focus``, at least
    two requests (with a shared prefix) and that path always on. ``greedy`` (the oracle's
    continuation) lets stop tokens be drawn from it."""
    forced = frozenset(FOCUS_SWARM.get(focus, ()))
    swarm = draw(swarms(features, forced))
    features = usable_features(features, traits.exclusive, swarm)
    swarm = swarm & frozenset(available(features))
    block_size = draw(target_block_sizes(traits.block_sizes, traits.min_block_size)) if "paged" in features else EngineConfig().block_size
    requests = draw(batch_mixes(vocab_size, max_seq_len, block_size, min_requests=2 if focus else 1, swarm=swarm, window=traits.window))
    requests = draw(with_lifecycles(requests, features, block_size, vocab_size, greedy, swarm))
    return TraceScenario(requests, draw(engine_configs(features, requests, block_size, focus, traits, swarm)))


def target_trace_scenarios(target, focus: str | None = None, features: frozenset[str] | None = None) -> st.SearchStrategy[TraceScenario]:
    """trace_scenarios over what ``target`` declares: its features (or ``features``) and its Traits."""
    return trace_scenarios(
        frozenset(target.features) if features is None else features, target.vocab_size, target.max_seq_len, focus, traits_of(target),
        oracle_greedy(target),
    )
