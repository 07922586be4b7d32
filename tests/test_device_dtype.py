"""--dtype / --device: fp16 and bf16 run with their wider tolerances and raise no false alarm;
CUDA runs where a GPU is present and skips cleanly where it is not."""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings

from fuzzcache.compare import tolerance_for
from fuzzcache.corpus import load
from fuzzcache.findings import Finding
from fuzzcache.properties import PROPERTIES
from fuzzcache.runner import replay, run_property
from fuzzcache.targets import UnknownTarget, resolve_target

FEW = settings(max_examples=15, deadline=None, database=None, derandomize=True)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_tolerances_widen_with_lower_precision():
    fp32, fp16, bf16 = (tolerance_for(d) for d in (torch.float32, torch.float16, torch.bfloat16))
    assert fp32.logits < fp16.logits < bf16.logits and fp32.tie < fp16.tie < bf16.tie


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("property_id", ["engine.trace", "kv.recompute", "step.fused"])
def test_low_precision_has_no_false_alarm(dtype, property_id):
    target = resolve_target("reference", dtype=dtype)
    assert target.model.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    run = run_property(PROPERTIES[property_id], target, "reference", FEW, corpus_dir=None)
    assert run.error is None and not run.found and run.examples >= 15


def test_unknown_dtype_is_a_clear_error():
    with pytest.raises(UnknownTarget, match="unknown dtype 'fp8'"):
        resolve_target("reference", dtype="fp8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(UnknownTarget, match="no CUDA device"):
        resolve_target("reference", device="cuda")


def test_fp16_repro_replays_in_fp16(tmp_path, monkeypatch):
    """A corpus file records the dtype, and replay rebuilds the target with it."""
    import fuzzcache.targets
    from fuzzcache import corpus

    scenario = PROPERTIES["kv.recompute"].examples[0]
    finding = Finding("mismatch", "saved by the test")
    path, new = corpus.save(tmp_path, "reference", "kv.recompute", scenario, finding, {"dtype": "fp16"})
    case = load(path)
    assert new and case.target_options == {"dtype": "fp16"}
    built = []
    real = fuzzcache.targets.resolve_target

    def recording(spec, **options):
        target = real(spec, **options)
        built.append(target.model.dtype)
        return target

    monkeypatch.setattr(fuzzcache.targets, "resolve_target", recording)
    assert replay(case) is None
    assert built == [torch.float16]
    fp32_path, _ = corpus.save(tmp_path, "reference", "kv.recompute", scenario, finding)
    assert fp32_path != path, "an fp16 repro must not shadow the fp32 one"


@needs_cuda
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("property_id", ["engine.trace", "paged.gather", "spec.greedy"])
def test_cuda_has_no_false_alarm(dtype, property_id):
    target = resolve_target("reference", dtype=dtype, device="cuda")
    assert target.model.device.type == "cuda"
    run = run_property(PROPERTIES[property_id], target, "reference", FEW, corpus_dir=None)
    assert run.error is None and not run.found
