"""The trimming allocator mode: a malloc_trim after every block, outputs untouched.

(The strict mode changes process-wide thresholds for good; the memory bench runs it.)
"""

from __future__ import annotations

import torch

from gradaccum.memory.malloc import transformer_blocks, trim_after_blocks
from gradaccum.models import build_random_model


def test_trim_hooks_sit_on_every_block_and_leave_outputs_alone():
    model, _ = build_random_model("gpt2", "tiny")
    blocks = transformer_blocks(model)
    assert len(blocks) == model.config.n_layer
    ids = [[5, 6, 7]]
    before = model(input_ids=torch.tensor(ids)).logits
    handles = trim_after_blocks(blocks)
    assert len(handles) == len(blocks)
    assert torch.equal(model(input_ids=torch.tensor(ids)).logits, before)
    for h in handles:
        h.remove()
