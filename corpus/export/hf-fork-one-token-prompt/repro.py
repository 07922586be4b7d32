#!/usr/bin/env python3
"""transformers 5.23: continuous batching fails a one-token prompt with num_return_sequences > 1

A standalone repro of a fuzzcache finding: property engine.trace on hf:llama, kind engine_error,
case 1f079269dab3. fuzzcache reported:

    hf:llama.generate: continuous batching step 0 failed, failing the 2 unfinished request(s):
    RuntimeError: cannot reshape tensor of 0 elements into shape [1, 0, -1, 8] because the
    unspecified dimension size -1 can be any value and is ambiguous

Write-up: corpus/hf-fork-one-token-prompt.md in the fuzzcache repository.

It builds the tiny seeded model (CONFIG below), runs REQUESTS through transformers' continuous-
batching engine (ContinuousBatchingManager), stepped in this thread, as fuzzcache's hf target does,
and checks every output token against one forward of the same model over the prompt and the tokens
(no cache: the full-recompute oracle), tie-aware.

    python repro.py    # needs transformers (5.x), torch and safetensors

Exit status: 0 when the engine agrees with the full-recompute forward; 1 while the bug is there (a
token or logit that differs, the engine's exception, or a hang: no progress within max_steps); 2
when the script cannot run here (a missing package or model file).
"""


import signal
import sys
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


PACKAGES = ("transformers", "torch")  # the modules this script needs, printed with their versions
CONFIG_CLASS, MODEL_CLASS = "LlamaConfig", "LlamaForCausalLM"
# the tiny llama: LlamaConfig fields (the others are transformers' defaults);
# its seeded random weights are model.safetensors beside this script
CONFIG = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, hidden_act="silu", max_position_embeddings=64, initializer_range=0.4,
    rms_norm_eps=1e-06, use_cache=True, pad_token_id=None, bos_token_id=None, eos_token_id=None,
    pretraining_tp=1, tie_word_embeddings=False,
    rope_parameters=dict(rope_theta=10000.0, rope_type="default"), attention_bias=False,
    attention_dropout=0.0, mlp_bias=False, head_dim=8,
)
# each request: prompt token ids, greedy new tokens, the engine step it is added at (arrival), the step
# the client cancels it at (abort_at; None: never), tokens that end it (stop) and n continuations
REQUESTS = [dict(rid=0, prompt=[0], max_new_tokens=1, arrival=0, abort_at=None, stop=[], n=2)]
# the configs to run, in order, each down the transformers path fuzzcache's hf target takes for it
RUNS = [
    (
        "config A, the finding's: the defaults",
        dict(
            path="continuous", max_steps=32,
            continuous_batching_config=dict(
                page_size=16, num_blocks=3, max_batch_tokens=4, max_requests_per_batch=8,
                allow_block_sharing=False, use_async_batching=False, use_cuda_graph=False,
                max_blocks_per_request=0, auto_switch_to_flash=False, cpu_offload_space=0.0,
            ),
        ),
    ),
]
LOG_PROBS = False  # the engine's scores are logits
TOLERANCE = dict(tie=1e-3, logits=1e-4)  # a near-tie: the oracle's margin at most tie; logits: max |delta| (float32)
TIMEOUT_S = 600


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


def run(model, fields):
    return globals()["run_" + fields["path"]](model, fields)  # run_continuous, run_generate or run_assisted


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
