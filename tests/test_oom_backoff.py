"""Out-of-memory back-off: halve the micro-batch, redo the same window, lose nothing."""

from __future__ import annotations

import copy

import pytest
import torch

from gradaccum.engine import Accumulator
from gradaccum.errors import UserError
from gradaccum.losses import CausalLMLoss
from tests.helpers import TinyCausalLM, make_lm_batch


class OOMAbove(CausalLMLoss):
    """Simulates a device that runs out of memory above ``limit`` samples per micro-batch."""

    def __init__(self, limit: int, cpu_style: bool = False) -> None:
        super().__init__()
        self.limit, self.cpu_style, self.sizes = limit, cpu_style, []

    def __call__(self, model, batch):
        n = batch["input_ids"].shape[0]
        self.sizes.append(n)
        loss = super().__call__(model, batch)  # part of the work happens before the failure
        if n > self.limit:
            if self.cpu_style:
                raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried ...")
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return loss


def train(model, loss_fn, micro, steps=3):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    engine = Accumulator(model, opt, micro_batch_size=micro)
    batches = [make_lm_batch([3, 9, 5, 12, 7, 4, 8, 6], seed=s) for s in range(steps)]
    results = [engine.step(b, loss_fn) for b in batches]
    return engine, results


@pytest.mark.parametrize("cpu_style", [False, True])
def test_backoff_gives_the_same_weights(cpu_style):
    torch.manual_seed(0)
    base = TinyCausalLM()
    plain, backed, same_size = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)
    train(plain, CausalLMLoss(), micro=8)
    train(same_size, CausalLMLoss(), micro=2)
    loss_fn = OOMAbove(limit=2, cpu_style=cpu_style)
    engine, results = train(backed, loss_fn, micro=8)
    assert engine.micro_batch_size == 2 and engine.oom_backoffs == 2
    assert all(r.micro_batch_size == 2 and r.samples == 8 and not r.skipped for r in results)
    assert engine.steps == 3
    for a, b, c in zip(backed.parameters(), same_size.parameters(), plain.parameters()):
        assert torch.equal(a, b)  # exactly the run that used the smaller size from the start
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)


def test_oom_at_one_sample_is_a_clear_error():
    model = TinyCausalLM()
    engine = Accumulator(model, torch.optim.SGD(model.parameters(), lr=0.1), micro_batch_size=4)
    with pytest.raises(UserError, match="one sample per micro-batch"):
        engine.step(make_lm_batch([3, 4, 5, 6]), OOMAbove(limit=0))
    assert all(p.grad is None for p in model.parameters())
