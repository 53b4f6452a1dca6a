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


def test_trim_runs_after_every_block_in_forward_and_again_in_checkpointed_backward(monkeypatch):
    from gradaccum.memory import malloc
    from gradaccum.memory.checkpointing import enable_activation_checkpointing

    calls = []

    class FakeLibc:
        def malloc_trim(self, pad):
            calls.append(torch.is_grad_enabled())

    monkeypatch.setattr(malloc, "_libc", lambda: FakeLibc())
    model, _ = build_random_model("qwen2.5", "tiny")
    model.train()
    enable_activation_checkpointing(model)
    blocks = transformer_blocks(model)
    trim_after_blocks(blocks)
    loss = model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits.sum()
    assert len(calls) == len(blocks)  # one per block's forward
    loss.backward()  # the recomputation skips block hooks; the gradient hook still trims
    assert len(calls) == 2 * len(blocks)


def test_with_a_slack_trim_waits_until_the_resident_set_has_grown_by_it(monkeypatch):
    from gradaccum.memory import malloc

    calls = []
    rss = [100]

    class FakeLibc:
        def malloc_trim(self, pad):
            calls.append(rss[0])
            rss[0] -= 30  # what the trim handed back

    monkeypatch.setattr(malloc, "_libc", lambda: FakeLibc())
    monkeypatch.setattr(malloc, "resident_bytes", lambda: rss[0])
    model, _ = build_random_model("gpt2", "tiny")
    (block,) = transformer_blocks(model)[:1]
    trim_after_blocks([block], slack=50)
    for _ in range(4):  # 120, 140, 160 (over 100 + 50: trimmed to 130), 150 (not over 180)
        rss[0] += 20
        model(input_ids=torch.tensor([[5, 6, 7]]))
    assert calls == [160]
