"""KV-cache surgery: the RoPE shift (seed 004, checks 1-4), over architectures, RoPE types and dtypes.

surgery.rope.model    -- shifting keys rotated at p by Δ equals the model's own rotary at p + Δ (seed 1)
surgery.rope.compose  -- shift(0) is the identity bit for bit, shift(a) then shift(b) equals shift(a + b),
                         a round trip is the identity within the dtype's bound (fp64: 1e-12) (seed 2)
surgery.rope.bos      -- correcting a cache's positions leaves a kept BOS and all values untouched
                         and moves every other key exactly like the shift (seed 3, 4)
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from fuzzcache.coverage import reached
from fuzzcache.findings import mismatch
from fuzzcache.properties.registry import Property, register
from fuzzcache.properties.surgery_support import CACHE_REL_TOL, SHIFT_REL_TOL, TORCH_DTYPES, assert_rel_close, seeded, surgery_of, unless_refused
from fuzzcache.surgery.models import ROPE_TYPES, SurgeryModel
from fuzzcache.strategies.surgery import MAX_POSITION, archs_of, position_and_shift, surgery_models


@dataclass(frozen=True)
class RopeScenario:
    model: SurgeryModel
    position: int
    delta: int

    def short(self) -> str:
        return f"{self.model.short()} p={self.position} delta={self.delta}"


def check_rope_model(target, s: RopeScenario) -> None:
    """A pre-RoPE key rotated by the model at p, then shifted by Δ, equals the model's rotation at p + Δ."""
    from fuzzcache.surgery.rotary import model_rotary, reset_rotary

    ops, model = surgery_of(target), s.model.load()
    info = ops.rope_info(model)
    p, q = s.position, s.position + s.delta
    x = seeded((1, 2, 1, info.head_dim), TORCH_DTYPES[s.model.dtype])  # (B, H, T, D), pre-RoPE key
    reset_rotary(model)
    at_p, at_q = model_rotary(model, x, [p]), model_rotary(model, x, [q])  # (1, 2, 1, D) each
    got = unless_refused(info, max(p, q), f"{info.rope_type} shift reaching its original max length", lambda: ops.rope_shift(at_p, s.delta, info, p))
    if got is None:
        return
    reached(f"rope {s.model.rope}")
    assert_rel_close(f"key rotated at {p} and shifted by {s.delta} vs the model's rotary at {q}", got, at_q, CACHE_REL_TOL[s.model.dtype])


register(Property(
    id="surgery.rope.model", level="surgery", description="RoPE shift by Δ == the model's own rotary at p + Δ, every RoPE type (seed 004: 1)",
    scenario_type=RopeScenario,
    strategy=lambda t: st.builds(lambda m, pd: RopeScenario(m, *pd), surgery_models(archs_of(t)), position_and_shift()),
    check=check_rope_model,
    examples=(RopeScenario(SurgeryModel(), 21, -20), RopeScenario(SurgeryModel(dtype="fp16"), 21, -20),
              *(RopeScenario(SurgeryModel(), 3 + d, -d) for d in (1, 5, 50, 200))),
))


@dataclass(frozen=True)
class ComposeScenario:
    arch: str
    rope: str
    dtype: str  # of the keys: fp64, fp32, fp16, bf16
    position: int
    a: int
    b: int

    def short(self) -> str:
        return f"{self.arch}/{self.rope}/{self.dtype} p={self.position} a={self.a} b={self.b}"


def check_rope_compose(target, s: ComposeScenario) -> None:
    """shift(0) == identity (bit for bit); shift(a)∘shift(b) == shift(a + b); shift(a)∘shift(-a) == identity."""
    ops = surgery_of(target)
    info = ops.rope_info(SurgeryModel(s.arch, s.rope).load())
    keys = seeded((1, 2, 3, info.head_dim), TORCH_DTYPES[s.dtype])  # (B, H, T, D), cached at p..p+2
    p, a, b, tol = s.position, s.a, s.b, SHIFT_REL_TOL[s.dtype]
    highest = max(p, p + a, p + a + b) + keys.shape[-2] - 1
    if unless_refused(info, highest, "stateful shift past its limit",
                      lambda: (ops.rope_shift(keys, a, info, p), ops.rope_shift(keys, a + b, info, p), ops.rope_shift(keys, 0, info, p + a))) is None:
        return
    same = ops.rope_shift(keys, 0, info, p)
    if not same.equal(keys):
        raise mismatch(f"shift by 0 changed the keys (max abs diff {float((same.double() - keys.double()).abs().max()):.3g})")
    moved = ops.rope_shift(keys, a, info, p)
    assert_rel_close(f"shift({a}) then shift({-a})", ops.rope_shift(moved, -a, info, p + a), keys, tol)
    assert_rel_close(f"shift({a}) then shift({b}) vs shift({a + b})", ops.rope_shift(moved, b, info, p + a), ops.rope_shift(keys, a + b, info, p), 2 * tol)
    reached(f"compose {s.dtype}")


@st.composite
def compose_scenarios(draw, archs):
    m = draw(surgery_models(archs))
    p, a = draw(position_and_shift())
    b = draw(st.integers(-(p + a), MAX_POSITION - p - a))
    return ComposeScenario(m.arch, m.rope, draw(st.sampled_from(("fp32", "fp64", "fp16", "bf16"))), p, a, b)


register(Property(
    id="surgery.rope.compose", level="surgery", description="RoPE shifts: 0 is identity, a then b == a + b, round trip bounded per dtype (seed 004: 2)",
    scenario_type=ComposeScenario, strategy=lambda t: compose_scenarios(archs_of(t)), check=check_rope_compose,
    examples=(ComposeScenario("llama", "default", "fp64", 0, 15, -15), ComposeScenario("llama", "default", "fp16", 0, 15, -15)),
))


@dataclass(frozen=True)
class BosScenario:
    model: SurgeryModel
    keep_bos: bool
    first: int  # position of the entries after BOS (or of all entries without BOS)
    length: int  # entries after BOS
    delta: int

    def short(self) -> str:
        return f"{self.model.short()} bos={self.keep_bos} first={self.first} len={self.length} delta={self.delta}"


def check_rope_bos(target, s: BosScenario) -> None:
    """correct_positions moves each key after a kept BOS exactly like rope_shift, leaves BOS and the values bit for bit."""
    from fuzzcache.surgery.cache_ops import from_layers, layers_of

    ops = surgery_of(target)
    model = s.model.load()
    info = ops.rope_info(model)
    dtype, lead = TORCH_DTYPES[s.model.dtype], int(s.keep_bos)
    shape = (1, 1, lead + s.length, info.head_dim)  # (B, H, T, D)
    layers = [(seeded(shape, dtype, 2 * i), seeded(shape, dtype, 2 * i + 1)) for i in range(2)]
    highest = max(s.first, s.first + s.delta) + s.length - 1 if s.length else -1  # -1: no key moves
    if unless_refused(info, highest, "stateful position correction past its limit",
                      lambda: ops.rope_shift(layers[0][0][:, :, lead:], s.delta, info, s.first)) is None:
        return
    # correct_positions with the target's own shift: this checks the correction, rope.model checks the shift
    out = layers_of(ops.correct_positions(from_layers(layers), s.delta, info, s.keep_bos, first_position=s.first, shift=ops.rope_shift))
    for i, ((k, v), (k2, v2)) in enumerate(zip(layers, out)):
        if s.keep_bos and not k2[:, :, :1].equal(k[:, :, :1]):
            diff = float((k2[:, :, :1].double() - k[:, :, :1].double()).abs().max())
            raise mismatch(f"layer {i}: the kept BOS key changed (max abs diff {diff:.3g})", layer=i)
        if not v2.equal(v):
            raise mismatch(f"layer {i}: values changed by a position correction", layer=i)
        want = ops.rope_shift(k[:, :, lead:], s.delta, info, s.first)
        assert_rel_close(f"layer {i}: corrected keys after BOS vs rope_shift", k2[:, :, lead:], want, 0.0, layer=i)
    reached(f"bos kept={s.keep_bos}")


@st.composite
def bos_scenarios(draw, archs):
    keep = draw(st.booleans())
    first = draw(st.integers(int(keep), 24))
    return BosScenario(draw(surgery_models(archs)), keep, first, draw(st.integers(0, 6)), draw(st.integers(int(keep) - first, 16)))


register(Property(
    id="surgery.rope.bos", level="surgery", description="position correction keeps BOS and values bit for bit, moves the rest like the shift (seed 004: 3, 4)",
    scenario_type=BosScenario, strategy=lambda t: bos_scenarios(archs_of(t)), check=check_rope_bos,
    examples=(BosScenario(SurgeryModel(dtype="fp16"), True, 11, 9, -10), BosScenario(SurgeryModel(dtype="fp16"), True, 1, 9, 0),
              BosScenario(SurgeryModel(dtype="fp16"), False, 10, 10, -10)),
))

assert ROPE_TYPES[0] == "default"  # strategies shrink toward the first RoPE type
