"""The parts every exported repro script shares: its header (what was found, how to run it, the
exit status), literals that read well in an upstream issue, the tiny model's config and weights as
files beside the script, and the code blocks the engine modules put together (the oracle model,
the tie-aware token check, the watchdog, ``main``'s report).

A script is text: code blocks here and in each engine module are fixed strings (plain Python, no
placeholders), and only the data at the top of a script (requests, configs) is generated."""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

WEIGHTS = "model.safetensors"
EXIT_STATUS = ("Exit status: 0 when the engine agrees with the full-recompute forward; 1 while the bug is there\n"
               "({failure}); 2 when the script cannot run here (a missing package or model file).")


@dataclass
class Script:
    """A repro script being put together: ``header`` (the docstring), ``imports``, ``data`` (the
    scenario as literals) and ``blocks`` (code), written as repro.py with ``files`` beside it."""

    header: str
    imports: list[str]
    data: list[str]
    blocks: list[str]
    files: dict[str, bytes] = field(default_factory=dict)

    def text(self) -> str:
        parts = ['#!/usr/bin/env python3\n"""' + self.header.strip() + '\n"""\n', "\n".join(self.imports) + "\n",
                 "\n".join(d.rstrip() for d in self.data) + "\n", *(textwrap.dedent(b).strip() + "\n" for b in self.blocks)]
        return "\n\n\n".join(p.strip("\n") for p in parts) + "\n"


def header(case, engine: str, what: str, run: str, failure: str) -> str:
    """The docstring: the finding (property, target, kind, case hash, message), its write-up, what
    the script does (``what``), the command (``run``) and the exit status (``failure``: what 1 means)."""
    from fuzzcache.corpus import digest_of

    title = writeup_title(case) or f"{case.kind} of {engine}, found by fuzzcache"
    digest = (digest_of(case.path) or "")[:12]
    lines = [*textwrap.wrap(title, 100), "", *textwrap.wrap(f"A standalone repro of a fuzzcache finding: property {case.property} on "
                                                          f"{case.target}, kind {case.kind}" + (f", case {digest}" if digest else "")
                                                          + ". fuzzcache reported:", 100), ""]
    lines += textwrap.wrap(first_lines(case.message) + raised_at(case), 96, initial_indent="    ", subsequent_indent="    ")
    link = writeup_link(case)
    if link:
        lines += ["", f"Write-up: {link} in the fuzzcache repository."]
    lines += ["", *textwrap.wrap(what, 100), "", f"    {run}", "", *textwrap.wrap(EXIT_STATUS.format(failure=failure), 100)]
    return "\n".join(lines)


def first_lines(message: str, limit: int = 700) -> str:
    """The engine's message, one paragraph, cut at ``limit`` characters."""
    text = " ".join(message.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def writeup_link(case) -> str | None:
    """``corpus/<id>.md`` the case's triage names (in its text, else its first known bug's id), if any."""
    from fuzzcache.corpus import writeup_link as link

    return link(case.triage)


def raised_at(case) -> str:
    """For a crash: where the exception was raised (the traceback's last frame and line), else ''."""
    try:
        traceback = json.loads(Path(case.path).read_text()).get("traceback") or ""
    except (OSError, ValueError):
        return ""
    lines = [line.strip() for line in traceback.strip().splitlines()]
    frames = [i for i, line in enumerate(lines) if line.startswith('File "')]
    if not frames:
        return ""
    frame = re.sub(r'File ".*?site-packages/', 'File "', lines[frames[-1]])  # the installed package's own path
    code = lines[frames[-1] + 1] if frames[-1] + 1 < len(lines) and not lines[frames[-1] + 1].startswith(("File ", "Traceback")) else ""
    return f" Raised at {frame}: {code}" if code else f" Raised at {frame}"


def writeup_title(case) -> str | None:
    """The write-up's first line (its title), when the file is there."""
    link = writeup_link(case)
    if link is None or case.path is None:
        return None
    for root in (Path(case.path).resolve().parents):
        page = root.parent / link if root.name == "corpus" else None
        if page is not None and page.is_file():
            return page.read_text().splitlines()[0].lstrip("# ").strip()
    return None


# ---- literals ---------------------------------------------------------------------------------


def tokens(values) -> str:
    """A token list as a literal: ``[0] * 32`` for a run of one token, else the list."""
    values = list(values)
    if len(values) >= 4 and len(set(values)) == 1:
        return f"[{values[0]}] * {len(values)}"
    return repr(values)


TOKEN_FIELDS = ("prompt", "tokens", "probe")  # lists of token ids: rendered by ``tokens``


def flat(v, key: str | None = None) -> str:
    """``v`` as a one-line literal: dicts with identifier keys as ``dict(a=1)``, token lists by ``tokens``."""
    if key in TOKEN_FIELDS and isinstance(v, (list, tuple)):
        return tokens(v)
    if isinstance(v, dict):
        if all(isinstance(k, str) and k.isidentifier() for k in v):
            return "dict(" + ", ".join(f"{k}={flat(x, k)}" for k, x in v.items()) + ")"
        return "{" + ", ".join(f"{flat(k)}: {flat(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(flat(x) for x in v) + "]"
    if isinstance(v, tuple):
        return "(" + ", ".join(flat(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def render(v, indent: int = 0, key: str | None = None, width: int = 110) -> str:
    """``flat(v)`` when it fits in ``width`` at ``indent``, else one item a line, nested likewise."""
    one = flat(v, key)
    if indent + len(one) <= width or not isinstance(v, (dict, list, tuple)) or key in TOKEN_FIELDS:
        return one
    pad = " " * (indent + 4)
    if isinstance(v, dict):
        named = all(isinstance(k, str) and k.isidentifier() for k in v)
        items = [f"{k}={render(x, indent + 4, k, width)}" if named else f"{flat(k)}: {render(x, indent + 4, None, width)}" for k, x in v.items()]
        open_, close = ("dict(", ")") if named else ("{", "}")
    else:
        items = [render(x, indent + 4, None, width) for x in v]
        open_, close = ("[", "]") if isinstance(v, list) else ("(", ")")
    lines = []
    for item in items:  # packed a few to a line while they fit, one a line once any spans lines
        if lines and "\n" not in item and "\n" not in lines[-1] and len(lines[-1]) + len(item) + 2 <= width:
            lines[-1] += f" {item},"
        else:
            lines.append(f"{pad}{item},")
    return open_ + "\n" + "".join(line + "\n" for line in lines) + " " * indent + close


def assignment(name: str, obj, comment: str = "") -> str:
    """``NAME = <obj>`` (``render``), with a comment line above it."""
    return (f"# {comment}\n" if comment else "") + f"{name} = {render(obj, 0)}"


# ---- the tiny model ---------------------------------------------------------------------------


def model_config(model) -> tuple[str, str, dict]:
    """(config class, model class, the config's fields that are not transformers' defaults) of an
    HF model, version-free: a script builds the same model with ``ConfigClass(**CONFIG)``."""
    fields = model.config.to_diff_dict()
    for key in ("transformers_version", "model_type", "architectures", "_name_or_path", "dtype", "torch_dtype"):
        fields.pop(key, None)
    fields = json.loads(json.dumps(fields))  # plain JSON values, as a literal
    rebuilt = type(model.config)(**fields).to_dict()
    original = model.config.to_dict()
    differs = sorted(k for k in set(rebuilt) | set(original)
                     if k not in ("transformers_version", "_attn_implementation_internal", "dtype") and rebuilt.get(k) != original.get(k))
    if differs:
        raise AssertionError(f"the exported config does not rebuild {type(model.config).__name__}: {differs} differ")
    return type(model.config).__name__, type(model).__name__, fields


def weights(model) -> bytes:
    """The model's weights as safetensors bytes (the tensors the finding ran on, bit for bit)."""
    from safetensors.torch import save

    return save({name: t.detach().contiguous() for name, t in model.state_dict().items()}, metadata={"format": "pt"})


def model_data(config_class: str, fields: dict, what: str) -> str:
    return assignment("CONFIG", fields, f"{what}: {config_class} fields (the others are transformers' defaults);\n"
                                        f"# its seeded random weights are {WEIGHTS} beside this script")


# ---- code blocks --------------------------------------------------------------------------------

def imports(stdlib: tuple[str, ...] = (), third_party: tuple[str, ...] = ()) -> list[str]:
    """A script's module-level imports (what every script uses, plus these) and HERE, its folder."""
    return [*sorted({"import signal", "import sys", "from pathlib import Path", *stdlib}, key=lambda line: (line.startswith("from"), line.split()[1])),
            "", *sorted({"import torch", *third_party}), "", "HERE = Path(__file__).resolve().parent"]


ORACLE_MODEL = '''
def tiny_model(**overrides):
    """The tiny model in float32: CONFIG, then every weight from model.safetensors (strict)."""
    import transformers
    from safetensors.torch import load_file

    config = getattr(transformers, CONFIG_CLASS)(**{**CONFIG, **overrides}, attn_implementation="sdpa")
    model = getattr(transformers, MODEL_CLASS)(config)
    state = load_file(HERE / "model.safetensors")
    model.load_state_dict(state, strict=not overrides)  # a draft model of fewer layers takes the ones it has
    return model.eval()
'''

WATCHDOG = '''
def watchdog(seconds):
    """A hang inside one engine call ends the script (exit 1) after ``seconds``."""
    def expired(signum, frame):
        raise TimeoutError(f"no answer from the engine within {seconds} s")

    signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
'''

# The tie-aware check of engine.trace (fuzzcache.compare.compare_request, contract.check_shape):
# ``outputs``: {(rid, k): (tokens, logit rows or None, cached prompt tokens or None)}; ``oracle(ids)``:
# (len(ids), V) rows.
CHECK_TOKENS = '''
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
'''

# main() of the request-trace scripts: each of RUNS in order through ``run(model, fields)``.
MAIN_RUNS = '''
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

'''

ENTRY = '''
if __name__ == "__main__":
    sys.exit(main())
'''

VERSIONS = '''
def versions():
    """The engine's packages and their versions (an ImportError when one is missing)."""
    import importlib

    return ", ".join(f"{name} {importlib.import_module(name).__version__}" for name in PACKAGES)
'''

ORACLE_ROWS = '''
def oracle_rows(model):
    """The full-recompute forward: one forward over ids, no cache: (len(ids), V) logits, or their
    log-softmax where the engine returns log-probs (LOG_PROBS)."""
    @torch.no_grad()
    def rows(ids):
        logits = model(torch.tensor([ids]), use_cache=False).logits[0].float()
        return torch.log_softmax(logits, dim=-1) if LOG_PROBS else logits

    return rows
'''


def packages(*names: str) -> str:
    return f"PACKAGES = {flat(names)}  # the modules this script needs, printed with their versions"

NO_HITS = '''
def check_hits(outputs):
    return True  # this property checks the outputs only
'''

# prefix.hit: each request reuses at least the prompt tokens of full blocks it shares with an earlier one
CHECK_HITS = '''
def check_hits(outputs):
    """Each request reports at least EXPECTED_HITS[rid] prompt tokens read from the prefix cache."""
    for rid, want in EXPECTED_HITS.items():
        got = outputs[(rid, 0)][2]
        if got < want:
            print(f"FAIL request {rid}: cached_prefix_tokens={got}, but it shares {want} tokens of committed full blocks "
                  f"(an earlier request computed them before it started): at least {want} prompt tokens from the prefix cache expected")
            return False
        print(f"ok   request {rid}: cached_prefix_tokens={got} (at least {want} expected)")
    return True
'''


def hits_data(scenario) -> str:
    """EXPECTED_HITS of a prefix.hit scenario."""
    return assignment("EXPECTED_HITS", {i: scenario.expected_hit(i, scenario.block_size) for i in range(len(scenario.prompts))},
                      "prompt tokens each request must read from the prefix cache (its full blocks shared with an earlier prompt)")


# ---- request traces (engine.trace, engine.same.*, prefix.hit) -----------------------------------

REQUEST_COMMENT = ("each request: prompt token ids, greedy new tokens, the engine step it is added at (arrival), the step\n"
                   "# the client cancels it at (abort_at; None: never), tokens that end it (stop) and n continuations")


@dataclass(frozen=True)
class Trace:
    """What a request-trace script runs: the requests, the engine configs in order (label, config),
    and for prefix.hit the prompt tokens each request must read from the prefix cache."""

    requests: tuple
    runs: list[tuple[str, object]]
    expected_hits: object = None  # the PrefixScenario, for hits_data


def trace_of(case, features: frozenset[str]) -> Trace:
    """The requests and configs of an engine-level corpus case: engine.trace's one config,
    engine.same.*'s config A then its variant B (the finding is in one of them; each is checked
    against the oracle), prefix.hit's trace; ExportError for another property."""
    from fuzzcache.export import ExportError
    from fuzzcache.properties import PROPERTIES
    from fuzzcache.scenario import TraceScenario

    scenario = case.scenario
    if case.property == "prefix.hit":
        trace = scenario.trace(features)
        return Trace(trace.requests, [(f"the prefix.hit trace: {config_short(trace.config)}", trace.config)], scenario)
    if not isinstance(scenario, TraceScenario) or not (case.property == "engine.trace" or case.property.startswith("engine.same.")):
        raise ExportError(f"{case.path}: property {case.property} is not exported (export writes request traces: "
                          "engine.trace, engine.same.*, prefix.hit; and llama.cpp's surgery.memory)")
    runs = [(f"config A, the finding's: {config_short(scenario.config)}", scenario.config)]
    if case.property.startswith("engine.same."):
        other = PROPERTIES[case.property].variant(scenario)
        if other != scenario.config:
            changed = ", ".join(f"{k}={getattr(other, k)}" for k in vars(other) if getattr(other, k) != getattr(scenario.config, k))
            runs.append((f"config B, the other side of {case.property} ({changed}): {config_short(other)}", other))
    return Trace(scenario.requests, runs)


def config_short(config) -> str:
    from dataclasses import fields

    changed = [f"{f.name}={getattr(config, f.name)}" for f in fields(config) if getattr(config, f.name) != f.default]
    return " ".join(changed) or "the defaults"


def requests_data(requests) -> str:
    return assignment("REQUESTS", [{"rid": r.rid, "prompt": r.prompt, "max_new_tokens": r.max_new_tokens, "arrival": r.arrival,
                                    "abort_at": r.abort_at, "stop": list(r.stop), "n": r.n} for r in requests], REQUEST_COMMENT)


def check_blocks(trace: Trace) -> list[str]:
    return [CHECK_TOKENS, CHECK_HITS if trace.expected_hits is not None else NO_HITS]


def trace_data(trace: Trace) -> list[str]:
    return [requests_data(trace.requests)] + ([hits_data(trace.expected_hits)] if trace.expected_hits is not None else [])
