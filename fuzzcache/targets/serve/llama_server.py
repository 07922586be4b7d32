"""llama.cpp's server (llama-server) as a dialect of the server targets: the request and response
shapes of its native ``/completion`` route with token ids, the per-prefix uncached recompute that
serves as its oracle, ``/metrics`` and ``/slots`` read for the liveness and leak checks, and its
command-line flags.

========================  =========================================================================
contract                  llama-server (``/completion``, ``stream: true``)
========================  =========================================================================
``prompt``                ``prompt``: the token ids
``max_new_tokens``        ``n_predict``, ``temperature`` 0 (greedy), ``ignore_eos``: a logit bias
                          of -inf on the end-of-generation tokens, so EOS is never generated and
                          both the server's rows and the oracle's are compared without it
``stop``                  ``stop`` strings: each stop token's text (every token's text has one
                          width, so a stop string matches that token only); the stop token is
                          kept in ``tokens``. Tokens without text (``<unk>``, ``<s>``) cannot stop
``n`` > 1                 ``n_cmpl``: the children copy the parent's KV once its prompt is
                          processed (at most ``--parallel``; more are n requests)
tokens                    ``tokens`` of each event (``return_tokens``); ``index`` names the
                          completion of an ``n_cmpl`` request
log-probs                 ``completion_probabilities[0].top_logprobs`` (``n_probs`` = the
                          vocabulary: the model's softmax before sampling)
cached prefix tokens      ``timings.cache_n`` (``timings_per_token``: in every event, so an aborted
                          stream reports it too)
oracle                    per position, one ``n_predict`` 1, ``cache_prompt: false`` request over
                          the prefix: its first token's row (llama-server has no prompt log-probs;
                          ``echo`` is accepted and ignored)
========================  =========================================================================
"""

from __future__ import annotations

import re
from typing import Sequence

from fuzzcache.contract import EngineConfig, Request

COMPLETIONS = "/completion"
END_OF_GENERATION = (2,)  # the tiny GGUF's EOS (gguf_model.write_gguf); ignore_eos biases it to -inf
NO_TEXT = (0, 1)  # <unk> and <s>: control tokens render as no text, so no stop string names them
METRIC = re.compile(r"^llamacpp:([a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+|nan|inf)$")


def token_text(token: int, vocab_size: int) -> str:
    """The text of one token of the tiny GGUF vocabulary (``gguf_model.write_gguf``)."""
    return f"t{token:0{len(str(vocab_size - 1))}d}"


def completion_body(request: Request, n_probs: int, vocab_size: int, n_cmpl: int = 1, cache_prompt: bool = True) -> dict:
    """A streamed greedy completion of ``request``'s prompt (``n_cmpl`` continuations)."""
    body = {"prompt": list(request.prompt), "n_predict": request.max_new_tokens, "temperature": 0.0, "ignore_eos": True,
            "return_tokens": True, "stream": True, "cache_prompt": cache_prompt, "n_probs": n_probs, "timings_per_token": True}
    if request.stop:
        body["stop"] = [token_text(t, vocab_size) for t in sorted(request.stop)]
    if n_cmpl > 1:
        body["n_cmpl"] = n_cmpl
    return body


def tokens_in(event: dict) -> int:
    """Tokens one streamed event carries."""
    return len(event.get("tokens") or [])


def is_final(event: dict) -> bool:
    """The last event of one completion (llama-server's native stream sends no ``[DONE]``)."""
    return event.get("stop") is True


def event_error(event: dict) -> str | None:
    """An error the server reported inside the stream (after the 200 status)."""
    error = event.get("error")
    return None if error is None else str(error.get("message", error) if isinstance(error, dict) else error)


def read_stream(events: Sequence[dict]) -> dict[int, tuple[list[int], list[dict[int, float]], int | None, str | None]]:
    """Per completion index: (tokens, each token's log-prob row {token id: log-prob}, cached
    prompt tokens, stop type: "limit", "word" or "eos")."""
    out: dict[int, tuple[list[int], list[dict[int, float]], int | None, str | None]] = {}
    for event in events:
        index = int(event.get("index", 0))
        tokens, rows, cached, stop = out.setdefault(index, ([], [], None, None))
        tokens += event.get("tokens") or []
        for prob in event.get("completion_probabilities") or []:
            rows.append({int(p["id"]): float(p["logprob"]) for p in prob["top_logprobs"]})
        cached = (event.get("timings") or {}).get("cache_n", cached)  # every event's, with timings_per_token: an aborted stream has it too
        out[index] = (tokens, rows, cached, event.get("stop_type") if is_final(event) else stop)
    return out


def recompute_body(tokens: Sequence[int], n_probs: int) -> dict:
    """One position of the oracle: the row that follows ``tokens``, computed with no cache."""
    return {"prompt": list(tokens), "n_predict": 1, "temperature": 0.0, "ignore_eos": True, "cache_prompt": False,
            "n_probs": n_probs, "return_tokens": True}


def recompute_row(response: dict) -> dict[int, float]:
    """{token id: log-prob} of a recompute's one generated position."""
    return {int(p["id"]): float(p["logprob"]) for p in response["completion_probabilities"][0]["top_logprobs"]}


# llama-server's metric -> the name every dialect reports it under
SIGNALS = {"requests_processing": "running", "requests_deferred": "waiting"}


def parse_metrics(text: str) -> dict[str, float]:
    """llama-server's Prometheus metrics (``llamacpp:`` prefix dropped), with the signals a server
    target reads also under their dialect-neutral names (``SIGNALS``)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = METRIC.match(line.strip())
        if m and m.group(3) not in ("nan", "inf"):
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out | {common: out[name] for name, common in SIGNALS.items() if name in out}


def busy_slots(slots: list[dict]) -> list[int]:
    """The ids of the slots ``/slots`` reports still processing a request."""
    return [s["id"] for s in slots if s.get("is_processing")]


def server_flags(config: EngineConfig, slot_ctx: int) -> list[str]:
    """llama-server flags for one EngineConfig: ``max_num_seqs`` slots (``--parallel``) of
    ``slot_ctx`` tokens each, ``max_batch_tokens`` per ``llama_decode`` (``--batch-size``),
    ``chunk_size`` per micro-batch (``--ubatch-size``), ``spec_k`` n-gram drafts
    (``--spec-type ngram-simple``: the token after the last earlier occurrence of
    the last token, and the ``spec_k`` - 1 after it), then the config's own ``server_flags``."""
    flags = ["--parallel", str(config.max_num_seqs), "--ctx-size", str(config.max_num_seqs * slot_ctx)]
    if config.max_batch_tokens is not None:
        flags += ["--batch-size", str(config.max_batch_tokens)]
    if config.chunk_size is not None:
        flags += ["--ubatch-size", str(config.chunk_size)]
    if config.spec_k:
        flags += ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", "1", "--spec-ngram-simple-size-m", str(config.spec_k),
                  "--spec-ngram-simple-min-hits", "1"]
    return flags + list(config.server_flags)
