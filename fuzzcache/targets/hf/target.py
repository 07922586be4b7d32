"""HF transformers as a target: ``hf:<arch>`` (llama, llama-dynamic, mistral, qwen2, phi) on a tiny seeded model.

``generate`` maps the EngineConfig onto real transformers machinery, one path per call:

======================  ===========================================================================
config                  transformers path
======================  ===========================================================================
``spec_k > 0``          ``generate`` per request with a DynamicCache: ``prompt_lookup_num_tokens=k``
                        (draft ``prompt_lookup``) or ``assistant_model`` = the 1-layer draft model
                        (``bigram``/``trigram``), ``num_assistant_tokens=k``, constant schedule
``num_blocks``,         continuous batching (paged KV, ``page_size`` = block_size >= 4,
``max_batch_tokens``,   ``num_blocks``, ``max_batch_tokens``, ``allow_block_sharing`` = prefix_cache,
``prefix_cache`` or     ``max_requests_per_batch`` = max_num_seqs, soft reset of a request when the
(without chunk_size)    pool is full), stepped so each request is added at its arrival step
any arrival > 0,        (and cancelled at its abort step)
abort or n > 1
several requests        one left-padded batched ``generate`` per group of max_num_seqs,
                        ``prefill_chunk_size`` = chunk_size
one request             ``generate`` with a DynamicCache, ``prefill_chunk_size`` = chunk_size
======================  ===========================================================================

``generate_via(path, ...)`` forces a path (``static``: one request at a time with a StaticCache),
for the metamorphic paths.* properties between transformers' own paths.

The request lifecycle: stop tokens are ``eos_token_id`` on every path (``generate`` takes one
EOS set per call, so the batched path runs one left-padded batch per stop set; a finished row is
padded, and a row whose padding does not start right after its first stop token is returned
uncut, for the contract check to report). Continuous batching cancels an aborted request with
``cancel_request`` at its abort step and forks a request with ``n > 1`` (see ``continuous.py``),
and its pool is the leak check's ``last_pool``.

Not expressible, and documented rather than faked: arrivals and aborts outside continuous
batching (the batch APIs take every request at once and run it to the end: an abort there is
ignored, and the full continuation is a valid prefix); forks outside continuous batching
(greedy ``generate`` and assisted generation refuse ``num_return_sequences > 1``, so the n
continuations run as n independent rows, sharing no blocks); chunk_size inside continuous
batching (it splits prompts by ``max_batch_tokens`` only); ``max_new_tokens=0``
(transformers always generates one token; such requests get no tokens without a call).
``Completion.logits`` are filled from ``output_logits`` on the ``generate`` paths and from the
sampler's scores in continuous batching.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from fuzzcache.contract import Completion, EngineConfig, Request, validate_requests, with_forks
from fuzzcache.targets.hf.continuous import stepped_generate
from fuzzcache.targets.hf.steps import StepRecorder
from fuzzcache.targets.hf.known_bugs import KNOWN_BUGS
from fuzzcache.targets.tiny_models import ARCHITECTURES, MAX_SEQ_LEN, families_for, VOCAB_SIZE, draft_model, quiet_transformers, tiny_model

PATHS = ("single", "batched", "static", "continuous", "speculative")
FEATURES = frozenset({"batching", "paged", "prefix_cache", "chunked_prefill", "speculative", "preemption", "stop", "abort", "fork"})
MIN_PAGE_SIZE = 4  # ContinuousBatchingConfig.page_size must be >= 4
PAD = 0
CPU_OFFLOAD_GIB = 0.0  # a preempted request is soft-reset (recomputed); offloading needs pinned memory, so a CUDA device


def require_transformers() -> None:
    from fuzzcache.targets import UnknownTarget

    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise UnknownTarget("hf:<arch> targets need transformers: pip install 'fuzzcache[hf]'") from exc


class HFTarget:
    """A tiny seeded ``arch`` model behind transformers' own generation paths. ``cache_class``
    is the DynamicCache class the ``generate`` paths use and ``engine_hook(manager, processor)``
    runs on each continuous-batching engine before its first step (planted bugs set them)."""

    features = FEATURES
    known_bugs = KNOWN_BUGS  # triaged transformers bugs: their new shapes are claimed, not failures (corpus/<id>.md)
    min_block_size = MIN_PAGE_SIZE  # strategies draw block sizes from here up
    exclusive_features = frozenset({"speculative"})  # assisted generation runs without the paged engine: drafts come alone
    engine_hook = None

    def __init__(self, arch: str = "llama", dtype: torch.dtype = torch.float32, device: str = "cpu", name: str | None = None, cache_class=None):
        require_transformers()
        from transformers import DynamicCache

        if arch not in families_for("hf"):
            from fuzzcache.targets import UnknownTarget

            raise UnknownTarget(f"unknown target 'hf:{arch}'; HF architectures: {', '.join('hf:' + a for a in families_for('hf'))}")
        self.arch = arch
        self.name = name or f"hf:{arch}"
        self.dtype = dtype
        self.device = device
        self.vocab_size = VOCAB_SIZE
        self.max_seq_len = MAX_SEQ_LEN
        self.cache_class = cache_class or DynamicCache
        self.model = tiny_model(arch, dtype=dtype, device=device)
        self.window = ARCHITECTURES[arch].window  # strategies draw lengths around a sliding window
        if getattr(self.model.config, "sliding_window", None) is not None:
            self.features = FEATURES - {"prefix_cache"}  # transformers shares no blocks of sliding-window layers
        self.cb_model = copy.deepcopy(self.model)  # continuous batching switches its attention implementation
        self._draft = None
        self.last_ignored: tuple[str, ...] = ()  # what the latest path could not express; note_paths reports it
        self.last_stats: dict[str, int] = {}
        self.last_pool = None  # continuous batching's pool after the latest call (a PoolAccount), else None
        self.last_timeline = None  # continuous batching's steps after the latest call (``fuzzcache.timeline``)

    # ---- the contract -------------------------------------------------------------------------

    def _fresh_rotary(self) -> None:
        """Stateful RoPE (dynamic) keeps the frequencies of the longest forward so far; every call
        starts from the short-length ones, as in a fresh process, so a call never depends on the last."""
        from fuzzcache.surgery.rotary import STATEFUL, reset_rotary

        for model in (self.model, self.cb_model, self._draft):
            if model is not None and model.model.rotary_emb.rope_type in STATEFUL:
                reset_rotary(model)

    @torch.no_grad()
    def reference_logits(self, tokens: Sequence[int]) -> torch.Tensor:
        self._fresh_rotary()
        ids = torch.tensor([list(tokens)], device=self.device)
        return self.model(ids, use_cache=False).logits[0].float().cpu()  # (T, V)

    def generate(self, requests: Sequence[Request], config: EngineConfig) -> list[Completion]:
        return self.generate_via(self.path_for(requests, config), requests, config)

    def generate_via(self, path: str, requests: Sequence[Request], config: EngineConfig) -> list[Completion]:
        """``generate`` forced down one of PATHS (the paths.* properties compare two)."""
        with quiet_transformers():
            return self._generate_via(path, requests, config)

    def _generate_via(self, path: str, requests: Sequence[Request], config: EngineConfig) -> list[Completion]:
        if path not in PATHS:
            raise ValueError(f"unknown transformers path {path!r}; known: {', '.join(PATHS)}")
        validate_requests(requests, config, self.vocab_size, self.max_seq_len)
        self.last_ignored = self.ignored_fields(path, requests, config)
        self.last_stats = {}
        self.last_pool = None
        self.last_timeline = None  # continuous batching's steps (``fuzzcache.timeline``); the other paths keep none
        live = [r for r in requests if r.max_new_tokens > 0]
        done = {r.rid: [Completion(r.rid, [], torch.zeros(0, self.vocab_size)) for _ in range(r.n)] for r in requests if r.max_new_tokens == 0}
        if path == "speculative":
            done |= {r.rid: [self._assisted(r, config) for _ in range(r.n)] for r in live}
        elif path == "continuous":
            done |= self._continuous(requests, config)
        elif path in ("static", "single"):
            done |= {r.rid: [self._padded_batch([r], config, static=path == "static")[0] for _ in range(r.n)] for r in live}
        else:
            done |= self._batched(live, config)
        return [with_forks(done[r.rid][0], done[r.rid][1:], r.n, self.vocab_size) for r in requests]

    def divergence_by_design(self, requests: Sequence[Request]) -> str | None:
        """Why any divergence on this trace is expected by design, or None: dynamic RoPE rescales its
        frequencies once a forward passes the original length, so cached keys and a full forward
        disagree on any trace that runs past it. A left-padded batch runs to its longest prompt plus
        its most new tokens, so that is the length that counts."""
        rope = self.model.config.rope_parameters or {}
        original = self.model.config.max_position_embeddings
        longest = max(len(r.prompt) for r in requests) + max(r.max_new_tokens for r in requests)
        if rope.get("rope_type") == "dynamic" and longest > original:
            return f"dynamic RoPE past its original {original} positions"
        return None

    @staticmethod
    def path_for(requests: Sequence[Request], config: EngineConfig) -> str:
        """Which transformers path ``generate`` takes for this trace and config."""
        if config.spec_k > 0:
            return "speculative"
        if config.num_blocks is not None or config.max_batch_tokens is not None or config.prefix_cache:
            return "continuous"
        if config.chunk_size is None and any(r.arrival or r.abort_at is not None or r.n > 1 for r in requests):
            return "continuous"  # arrivals, aborts and forks are exact there; a chunk size is honoured only by generate
        return "batched" if len(requests) > 1 else "single"

    @staticmethod
    def ignored_fields(path: str, requests: Sequence[Request], config: EngineConfig) -> tuple[str, ...]:
        """The parts of the trace and config ``path`` cannot express (see the module docstring)."""
        asked = {
            "arrival": any(r.arrival for r in requests), "chunk_size": config.chunk_size is not None,
            "num_blocks": config.num_blocks is not None, "max_batch_tokens": config.max_batch_tokens is not None,
            "prefix_cache": config.prefix_cache, "abort_at": any(r.abort_at is not None for r in requests), "n": any(r.n > 1 for r in requests),
        }
        honoured = {"continuous": {"arrival", "num_blocks", "max_batch_tokens", "prefix_cache", "abort_at", "n"}, "speculative": set()}.get(path, {"chunk_size"})
        return tuple(field for field, used in asked.items() if used and field not in honoured)

    # ---- the paths ----------------------------------------------------------------------------

    def _generation_config(self, **fields):
        from transformers import GenerationConfig

        return GenerationConfig(**{"do_sample": False, "eos_token_id": None, "pad_token_id": PAD, **fields})

    @staticmethod
    def _length_fields(stop: tuple[int, ...], new: int) -> dict:
        """Greedy to ``new`` tokens, or to the first of ``stop`` (transformers' EOS; min_new_tokens
        would mask the EOS tokens, so it is set only without them)."""
        return {"max_new_tokens": new, "eos_token_id": list(stop)} if stop else {"max_new_tokens": new, "min_new_tokens": new}

    def _batched(self, live: list[Request], config: EngineConfig) -> dict[int, list[Completion]]:
        """The batched path: a request's n continuations are n rows; rows sharing a stop set go in
        left-padded batches of max_num_seqs rows (``generate`` takes one EOS set per call)."""
        groups: dict[tuple[int, ...], list[Request]] = {}
        for r in live:
            groups.setdefault(r.stop, []).extend([r] * r.n)
        done: dict[int, list[Completion]] = {r.rid: [] for r in live}
        for rows in groups.values():
            for start in range(0, len(rows), config.max_num_seqs):
                chunk = rows[start : start + config.max_num_seqs]
                for r, completion in zip(chunk, self._padded_batch(chunk, config)):
                    done[r.rid].append(completion)
        return done

    @torch.no_grad()
    def _padded_batch(self, requests: list[Request], config: EngineConfig, static: bool = False) -> list[Completion]:
        """One left-padded ``generate`` over ``requests`` (one stop set; the single path when there
        is one), with a DynamicCache, or a StaticCache sized to the sequence when ``static``."""
        from transformers import StaticCache

        if not requests:
            return []
        stop = requests[0].stop
        assert all(r.stop == stop for r in requests), "one generate call takes one EOS set"
        self._fresh_rotary()
        width = max(len(r.prompt) for r in requests)
        ids = torch.tensor([[PAD] * (width - len(r.prompt)) + list(r.prompt) for r in requests], device=self.device)  # (B, T)
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in requests], device=self.device)  # (B, T)
        new = max(r.max_new_tokens for r in requests)
        cache = StaticCache(config=self.model.config, max_cache_len=width + new) if static else self.cache_class(config=self.model.config)
        generation = self._generation_config(
            **self._length_fields(stop, new), prefill_chunk_size=config.chunk_size, output_logits=True, return_dict_in_generate=True,
        )
        out = self.model.generate(ids, attention_mask=mask, past_key_values=cache, generation_config=generation)
        logits = torch.stack(out.logits, dim=1).float().cpu()  # (B, steps, V)
        completions = []
        for i, r in enumerate(requests):
            tokens = stopped_row(out.sequences[i, width:].tolist(), r)
            completions.append(Completion(r.rid, tokens, logits[i, : len(tokens)]))
        return completions

    @torch.no_grad()
    def _assisted(self, request: Request, config: EngineConfig) -> Completion:
        """Assisted generation for one request (transformers supports batch size 1 only)."""
        if config.draft == "prompt_lookup":
            draft_fields = dict(prompt_lookup_num_tokens=config.spec_k)
            assistant = None
        else:
            assistant = self.draft_model
            assistant.generation_config.num_assistant_tokens = config.spec_k
            assistant.generation_config.num_assistant_tokens_schedule = "constant"
            assistant.generation_config.assistant_confidence_threshold = 0.0  # propose exactly k, every step
            draft_fields = dict(num_assistant_tokens=config.spec_k, num_assistant_tokens_schedule="constant")
        counter = _DraftCounter(self.model)
        self._fresh_rotary()
        ids = torch.tensor([list(request.prompt)], device=self.device)
        generation = self._generation_config(
            **self._length_fields(request.stop, request.max_new_tokens), output_logits=True, return_dict_in_generate=True, **draft_fields,
        )
        with counter:
            out = self.model.generate(
                ids, attention_mask=torch.ones_like(ids), past_key_values=self.cache_class(config=self.model.config),
                assistant_model=assistant, generation_config=generation,
            )
        logits = torch.stack(out.logits, dim=1)[0].float().cpu()  # (new, V)
        stats = {"draft_proposed": counter.proposed, "draft_accepted": counter.accepted}
        return Completion(request.rid, out.sequences[0, len(request.prompt) :].tolist(), logits, stats)

    @property
    def surgery(self):
        """fuzzcache's KV-cache surgery ops; the surgery.* properties run them on this architecture."""
        from fuzzcache.surgery.ops import DEFAULT_SURGERY

        return DEFAULT_SURGERY

    @property
    def surgery_architectures(self) -> tuple[str, ...]:
        """The surgery models of this family (``mistral-w32`` -> ``mistral``; the surgery properties
        draw RoPE types themselves); () for a family they have no model of (``gemma3``)."""
        from fuzzcache.surgery.models import ARCHS

        base = self.arch.split("-")[0]
        return (base,) if base in ARCHS else ()

    @property
    def draft_model(self):
        if self._draft is None:
            self._draft = draft_model(self.arch, dtype=self.dtype, device=self.device)
        return self._draft

    def _continuous(self, requests: Sequence[Request], config: EngineConfig) -> dict[int, list[Completion]]:
        """The continuous-batching engine, stepped; each request added at its arrival step and
        cancelled at its abort step; a request's n continuations are the request and its forks."""
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        if config.block_size < MIN_PAGE_SIZE:
            raise ValueError(f"EngineConfig.block_size={config.block_size}: transformers' continuous batching needs page_size >= {MIN_PAGE_SIZE}")
        total = sum(r.n * (len(r.prompt) + r.max_new_tokens) for r in requests)  # every fork holds the whole sequence at worst
        cb_config = ContinuousBatchingConfig(
            page_size=config.block_size,
            num_blocks=config.num_blocks if config.num_blocks is not None else sum(r.n for r in requests) + -(-total // config.block_size),
            max_batch_tokens=config.max_batch_tokens if config.max_batch_tokens is not None else total,
            max_requests_per_batch=config.max_num_seqs,
            allow_block_sharing=config.prefix_cache,
            use_async_batching=False, use_cuda_graph=False, max_blocks_per_request=0, auto_switch_to_flash=False,
            cpu_offload_space=CPU_OFFLOAD_GIB,
        )
        max_steps = 4 * total + max((r.arrival for r in requests), default=0) + 16
        self._fresh_rotary()
        recorder = StepRecorder(requests)
        self.last_timeline = recorder.events  # filled step by step: a crash leaves the steps before it
        run = stepped_generate(self.cb_model, self._generation_config(eos_token_id=-1), cb_config, requests, max_steps, self.engine_hook, recorder)
        self.last_stats = {"steps": run.steps, "preemptions": sum(r.preemptions for r in run.results.values())}
        self.last_pool = run.pool
        completions = {}
        for r in requests:
            if r.max_new_tokens > 0:
                completions[r.rid] = []
                for k in range(r.n):
                    result = run.results[(r.rid, k)]
                    stats = {"cached_prefix_tokens": result.cached_prefix_tokens, "preemptions": result.preemptions}
                    if result.abort_phase:
                        stats["abort_phase"] = result.abort_phase
                    completions[r.rid].append(Completion(r.rid, result.tokens, result.logits(), stats))
        return completions


def stopped_row(row: list[int], request: Request) -> list[int]:
    """A batch row's tokens for ``request``: up to max_new_tokens, ended at its first stop token
    when transformers padded everything after it (its unfinished-sequence flag flipped there);
    otherwise uncut, so the contract check reports a row that went on past its stop token."""
    cut = next((i + 1 for i, t in enumerate(row[: request.max_new_tokens]) if t in request.stop), None)
    if cut is not None and all(t == PAD for t in row[cut:]):
        return row[:cut]
    return row[: request.max_new_tokens]


class _DraftCounter:
    """Counts drafts proposed and accepted in assisted generation by wrapping the candidate
    generator transformers builds for the call (``get_candidates`` / ``update_candidate_strategy``)."""

    def __init__(self, model):
        self.model = model
        self.proposed = self.accepted = 0

    def __enter__(self):
        build = type(self.model)._get_candidate_generator

        def counted_build(*args, **kwargs):
            generator = build(self.model, *args, **kwargs)
            get, update = generator.get_candidates, generator.update_candidate_strategy

            def get_candidates(input_ids, *a, **kw):
                candidates, logits = get(input_ids, *a, **kw)
                self.proposed += candidates.shape[1] - input_ids.shape[1]
                return candidates, logits

            def update_candidate_strategy(input_ids, scores, num_matches):
                self.accepted += int(num_matches)
                return update(input_ids, scores, num_matches)

            generator.get_candidates, generator.update_candidate_strategy = get_candidates, update_candidate_strategy
            return generator

        self.model._get_candidate_generator = counted_build
        return self

    def __exit__(self, *exc):
        del self.model._get_candidate_generator
