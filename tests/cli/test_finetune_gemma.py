"""The main job on the real pretrained Gemma 3 270M: a couple of steps, end to end."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file

from gradaccum.cli.main import main


@pytest.mark.slow
def test_real_gemma_lora_two_steps(tmp_path, monkeypatch):
    cache = Path(os.environ.get("GRADACCUM_TEST_CACHE", "/tmp/gradaccum-test-cache"))
    monkeypatch.setenv("GRADACCUM_CACHE", str(cache))  # shared: the conversion runs once
    out = tmp_path / "gemma"
    argv = ["finetune", "--out", str(out), "--max-steps", "2", "--global-batch", "4"]
    argv += ["--micro-batch", "2", "--seq-len", "64", "--eval-samples", "4"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["skipped_steps"] == 0
    assert math.isfinite(summary["heldout_ppl_before"])
    # A pretrained model scores the Python reference far better than chance (vocab 262,144).
    assert summary["heldout_ppl_before"] < 1000
    assert summary["heldout_ppl_after"] < summary["heldout_ppl_before"]
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and adapter[k].abs().sum() > 0 for k in adapter)
