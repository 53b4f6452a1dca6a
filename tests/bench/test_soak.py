"""1,000 micro-steps with checkpoints: resident memory and open files stay flat."""

import json

import torch

from gradaccum.bench.soak import format_table, run
from gradaccum.cli.bench import BENCHES


def test_quick_soak_does_not_grow_memory_or_file_handles():
    threads = torch.get_num_threads()
    result = run(quick=True)
    assert torch.get_num_threads() == threads
    assert result["micro_steps"] == 1000
    assert result["checkpoints"] >= 8  # file handles are exercised by saves and loads
    assert result["rss_growth_pct"] < 2.0
    assert result["fd_growth"] <= 0
    assert json.loads(json.dumps(result)) == result
    assert "open files" in format_table(result)
    assert BENCHES["soak"] == "gradaccum.bench.soak"
