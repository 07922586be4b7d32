"""fuzzcache bench: examples/s per property and the share of time inside model forwards."""

from __future__ import annotations

from click.testing import CliRunner

from fuzzcache.bench import ForwardTimer, bench
from fuzzcache.cli import main
from fuzzcache.model import build_model
from fuzzcache.properties import PROPERTIES
from fuzzcache.targets import resolve_target


def test_forward_timer_counts_only_model_forwards():
    model = build_model()
    import torch

    with ForwardTimer() as timer:
        model(torch.tensor([[1, 2, 3]]), torch.arange(3)[None])
    assert timer.seconds > 0
    with ForwardTimer() as idle:
        sum(range(1000))
    assert idle.seconds == 0


def test_bench_rows_have_rates_and_forward_shares():
    (row,) = bench(resolve_target("reference"), "reference", [PROPERTIES["kv.trim"]], examples=5)
    assert row.examples >= 5 and row.rate > 0 and 0 < row.forward_share < 1


def test_bench_command_prints_a_table():
    result = CliRunner().invoke(main, ["bench", "--examples", "3", "--property", "kv.recompute", "--property", "draft.normalized"])
    assert result.exit_code == 0, result.output
    assert "examples/s" in result.output and "kv.recompute" in result.output and "draft.normalized" in result.output
