"""Repro scripts for ``hf:<arch>`` findings: transformers alone, down the path ``HFTarget`` takes
for each config (``HFTarget.path_for``): continuous batching stepped one scheduler step at a time
(as ``fuzzcache.targets.hf.continuous`` does), one left-padded ``generate`` per batch of rows, or
assisted generation; the oracle is one forward of the same model without a cache."""

from __future__ import annotations

from fuzzcache.export import script as S

PATHS = {"continuous": "continuous-batching engine (ContinuousBatchingManager), stepped in this thread",
         "batched": "generate() on left-padded batches of rows", "single": "generate(), one row at a time",
         "speculative": "assisted generation (generate() with a draft model or prompt lookup)"}
BY_DESIGN = {"llama-dynamic": "hf:llama-dynamic diverges from a full forward by design past 16 positions (dynamic RoPE)"}

RUN = '''
def run(model, fields):
    return globals()["run_" + fields["path"]](model, fields)  # run_continuous, run_generate or run_assisted
'''

CONTINUOUS = '''
def run_continuous(model, fields):
    """transformers' continuous batching, stepped in this thread one scheduler step at a time, as
    its background loop steps it (the manager's batch processor: prepare_next_batch, _generation_step,
    update_batch): each request is added at its arrival step and cancelled at its abort_at step; a
    request's n continuations are the request and its n - 1 forks (num_return_sequences). Returns
    {(rid, k): (tokens, logit rows or None, prompt tokens found in the prefix cache)}."""
    import copy

    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    model = copy.deepcopy(model)  # continuous batching switches the model's attention implementation
    generation = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=0)
    config = ContinuousBatchingConfig(**fields["continuous_batching_config"])
    manager = model.init_continuous_batching(generation_config=generation, continuous_batching_config=config)
    processor = manager._create_batch_processor()
    live = [r for r in REQUESTS if r["max_new_tokens"] > 0]
    ids = {(str(r["rid"]) if k == 0 else f"{r['rid']}__child#{k - 1}"): (r["rid"], k) for r in live for k in range(r["n"])}
    tokens, rows, cached = {key: [] for key in ids.values()}, {key: [] for key in ids.values()}, {key: 0 for key in ids.values()}
    scores = keep_scores(processor)
    search = processor.cache.search_prefix_match

    def counted(request_id, prompt_ids):  # prompt tokens each request finds in the prefix cache
        matched = search(request_id, prompt_ids)
        cached[ids[request_id]] = max(cached[ids[request_id]], matched)
        return matched

    processor.cache.search_prefix_match = counted
    unfinished = set(ids)
    for step in range(fields["max_steps"]):
        if not unfinished:
            break
        for r in live:
            if r["arrival"] == step:
                manager.num_return_sequences = r["n"]  # add_request gives the request n - 1 children
                manager.add_request(r["prompt"], request_id=str(r["rid"]), max_new_tokens=r["max_new_tokens"], eos_token_id=r["stop"] or None)
        for r in live:
            if r["abort_at"] == step:
                for request_id in [i for i, key in ids.items() if key[0] == r["rid"] and i in unfinished]:
                    state = find_state(manager, processor, request_id)
                    unfinished.discard(request_id)
                    if state is not None:  # a fork not created yet has no state and no tokens
                        tokens[ids[request_id]] = list(state.to_generation_output().generated_tokens)
                        manager.cancel_request(request_id)
        if processor.prepare_next_batch():  # drains new requests and cancellations, then schedules
            processor._generation_step(model)
            getting = [s.state.request_id for s in processor.inputs_and_outputs.requests_in_batch if s.has_new_token]
            for row, request_id in zip(scores.pop(), getting):
                rows[ids[request_id]].append(row)
            processor.update_batch()
        while not manager.output_router.output_queue.empty():
            out = manager.output_router.output_queue.get()
            if out.error is not None:
                raise RuntimeError(f"continuous batching failed request {out.request_id}: {out.error}")
            tokens[ids[out.request_id]] = list(out.generated_tokens)
            unfinished.discard(out.request_id)
    if unfinished:
        raise TimeoutError(f"continuous batching made no progress: {len(unfinished)} request(s) unfinished after {fields['max_steps']} steps "
                           f"({', '.join(sorted(unfinished))})")
    outputs = {(r["rid"], k): ([], None, 0) for r in REQUESTS for k in range(r["n"])}
    for key in ids.values():
        logits = torch.stack(rows[key]) if rows[key] and len(rows[key]) == len(tokens[key]) else None
        outputs[key] = (tokens[key], logits, cached[key])
    return outputs


def keep_scores(processor):
    """The (num_logits, V) scores of each step, kept as the model runner samples from them."""
    kept = []
    sample = processor.model_runner._sample

    def keeping(scores, output_ids):
        kept.append(scores[0].detach().float().clone())
        return sample(scores, output_ids)

    processor.model_runner._sample = keeping
    return kept


def find_state(manager, processor, request_id):
    """A request's state: scheduled, waiting, or added this step (still in the manager's queue)."""
    scheduler = processor.scheduler
    state = scheduler.active_requests.get(request_id) or scheduler.waiting_requests.get(request_id)
    return state or next((s for s in list(manager.input_queue.queue) if s.request_id == request_id), None)
'''

GENERATE = '''
@torch.no_grad()
def run_generate(model, fields):
    """generate() with a DynamicCache on left-padded batches of at most fields["rows"] rows (a
    request's n continuations are n rows; rows with the same stop tokens share a batch, since
    generate takes one EOS set), prefill_chunk_size from the config. Arrivals and aborts do not
    apply: every request runs from the start to its end."""
    from transformers import DynamicCache, GenerationConfig

    groups = {}
    for r in REQUESTS:
        if r["max_new_tokens"] > 0:
            groups.setdefault(tuple(r["stop"]), []).extend([(r, k) for k in range(r["n"])])
    outputs = {(r["rid"], k): ([], None, 0) for r in REQUESTS for k in range(r["n"])}
    for stop, rows in groups.items():
        for start in range(0, len(rows), fields["rows"]):
            batch = rows[start : start + fields["rows"]]
            width = max(len(r["prompt"]) for r, _ in batch)
            ids = torch.tensor([[0] * (width - len(r["prompt"])) + r["prompt"] for r, _ in batch])  # (B, T), left-padded with 0
            mask = torch.tensor([[0] * (width - len(r["prompt"])) + [1] * len(r["prompt"]) for r, _ in batch])
            new = max(r["max_new_tokens"] for r, _ in batch)
            length = dict(max_new_tokens=new, eos_token_id=list(stop)) if stop else dict(max_new_tokens=new, min_new_tokens=new)
            generation = GenerationConfig(do_sample=False, pad_token_id=0, prefill_chunk_size=fields["prefill_chunk_size"],
                                          output_logits=True, return_dict_in_generate=True, **length)
            out = model.generate(ids, attention_mask=mask, past_key_values=DynamicCache(config=model.config), generation_config=generation)
            logits = torch.stack(out.logits, dim=1).float()  # (B, steps, V)
            for i, (r, k) in enumerate(batch):
                row = out.sequences[i, width:].tolist()
                cut = next((j + 1 for j, t in enumerate(row[: r["max_new_tokens"]]) if t in stop), None)
                row = row[:cut] if cut is not None and all(t == 0 for t in row[cut:]) else row[: r["max_new_tokens"]]  # padded after its stop
                outputs[(r["rid"], k)] = (row, logits[i, : len(row)], None)
    return outputs
'''

ASSISTED = '''
@torch.no_grad()
def run_assisted(model, fields):
    """Assisted generation, one row at a time (transformers runs it for batch size 1 only) with a
    DynamicCache: prompt lookup of fields["spec_k"] tokens, or a draft model (the first layer of
    this model's own weights) proposing exactly spec_k tokens a step."""
    from transformers import DynamicCache, GenerationConfig

    if fields["draft"] == "prompt_lookup":
        assistant, drafting = None, dict(prompt_lookup_num_tokens=fields["spec_k"])
    else:
        assistant = tiny_model(num_hidden_layers=1)
        assistant.generation_config.num_assistant_tokens = fields["spec_k"]
        assistant.generation_config.num_assistant_tokens_schedule = "constant"
        assistant.generation_config.assistant_confidence_threshold = 0.0
        drafting = dict(num_assistant_tokens=fields["spec_k"], num_assistant_tokens_schedule="constant")
    outputs = {(r["rid"], k): ([], None, 0) for r in REQUESTS for k in range(r["n"])}
    for r in REQUESTS:
        if r["max_new_tokens"] == 0:
            continue
        ids = torch.tensor([r["prompt"]])
        new = r["max_new_tokens"]
        length = dict(max_new_tokens=new, eos_token_id=r["stop"]) if r["stop"] else dict(max_new_tokens=new, min_new_tokens=new)
        generation = GenerationConfig(do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True, **length, **drafting)
        for k in range(r["n"]):
            out = model.generate(ids, attention_mask=torch.ones_like(ids), past_key_values=DynamicCache(config=model.config),
                                 assistant_model=assistant, generation_config=generation)
            outputs[(r["rid"], k)] = (out.sequences[0, len(r["prompt"]) :].tolist(), torch.stack(out.logits, dim=1)[0].float(), None)
    return outputs
'''

BLOCKS = {"continuous": CONTINUOUS, "generate": GENERATE, "assisted": ASSISTED}


def engine_fields(path: str, requests, config) -> dict:
    """What ``HFTarget`` hands transformers on ``path`` for ``config`` (HFTarget._continuous,
    _batched / _padded_batch, _assisted)."""
    if path == "continuous":
        total = sum(r.n * (len(r.prompt) + r.max_new_tokens) for r in requests)
        blocks = config.num_blocks if config.num_blocks is not None else sum(r.n for r in requests) + -(-total // config.block_size)
        cb = dict(page_size=config.block_size, num_blocks=blocks,
                  max_batch_tokens=config.max_batch_tokens if config.max_batch_tokens is not None else total,
                  max_requests_per_batch=config.max_num_seqs, allow_block_sharing=config.prefix_cache,
                  use_async_batching=False, use_cuda_graph=False, max_blocks_per_request=0, auto_switch_to_flash=False, cpu_offload_space=0.0)
        return dict(path="continuous", max_steps=4 * total + max((r.arrival for r in requests), default=0) + 16, continuous_batching_config=cb)
    if path == "speculative":
        return dict(path="assisted", spec_k=config.spec_k, draft="prompt_lookup" if config.draft == "prompt_lookup" else "model")
    return dict(path="generate", rows=config.max_num_seqs if path == "batched" else 1, prefill_chunk_size=config.chunk_size)


def export(case, arch: str) -> S.Script:
    from fuzzcache.export import ExportError
    from fuzzcache.targets.hf.target import FEATURES, HFTarget
    from fuzzcache.targets.tiny_models import ARCHITECTURES, tiny_model

    if arch in BY_DESIGN or arch not in ARCHITECTURES:
        raise ExportError(f"{case.path}: {BY_DESIGN.get(arch, f'no HF architecture {arch!r}')}: nothing to export")
    features = FEATURES - {"prefix_cache"} if arch == "mistral" else FEATURES  # HFTarget: no shared blocks with a sliding window
    trace = S.trace_of(case, features)
    paths = [HFTarget.path_for(trace.requests, config) for _, config in trace.runs]
    runs = [(label, engine_fields(path, trace.requests, config)) for (label, config), path in zip(trace.runs, paths)]
    model = tiny_model(arch)
    config_class, model_class, fields = S.model_config(model)
    used = sorted({fields["path"] for _, fields in runs}, key=list(BLOCKS).index)
    what = (f"It builds the tiny seeded model (CONFIG below), runs REQUESTS through transformers' {', then '.join(PATHS[p] for p in dict.fromkeys(paths))}, "
            "as fuzzcache's hf target does, and checks every output token against one forward of the same model over the prompt and "
            "the tokens (no cache: the full-recompute oracle), tie-aware.")
    failure = "a token or logit that differs, the engine's exception, or a hang: no progress within max_steps"
    data = [S.packages("transformers", "torch"), f"CONFIG_CLASS, MODEL_CLASS = {S.flat(config_class)}, {S.flat(model_class)}", S.model_data(config_class, fields, f"the tiny {arch}"),
            *S.trace_data(trace),
            S.assignment("RUNS", runs, "the configs to run, in order, each down the transformers path fuzzcache's hf target takes for it"),
            "LOG_PROBS = False  # the engine's scores are logits",
            "TOLERANCE = dict(tie=1e-3, logits=1e-4)  # a near-tie: the oracle's margin at most tie; logits: max |delta| (float32)",
            "TIMEOUT_S = 600"]
    return S.Script(
        header=S.header(case, "transformers", what, "python repro.py    # needs transformers (5.x), torch and safetensors", failure),
        imports=S.imports(("import traceback",)), data=data,
        blocks=[S.VERSIONS, S.ORACLE_MODEL, S.ORACLE_ROWS, RUN, *(BLOCKS[p] for p in used), *S.check_blocks(trace), S.WATCHDOG, S.MAIN_RUNS, S.ENTRY],
        files={S.WEIGHTS: S.weights(model)},
    )
