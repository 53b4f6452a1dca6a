"""The non-finite guard: a NaN/Inf never reaches the weights."""

from __future__ import annotations

import copy

import torch

from gradaccum.engine import Accumulator
from gradaccum.losses import CausalLMLoss
from gradaccum.plan import slice_batch
from tests.helpers import Capture, TinyCausalLM, make_lm_batch, max_rel_err, one_pass_grads


class PoisonAt(CausalLMLoss):
    """CausalLMLoss that returns a non-finite loss for micro-batch number ``at``."""

    def __init__(self, at: int, value: float = float("nan")) -> None:
        super().__init__()
        self.at, self.value, self.calls = at, value, 0

    def __call__(self, model, batch):
        loss = super().__call__(model, batch)
        self.calls += 1
        return loss * self.value if self.calls - 1 == self.at else loss


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_poisoned_micro_batch_skips_the_step_bit_identically():
    torch.manual_seed(0)
    model = TinyCausalLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    engine = Accumulator(model, opt, scheduler=sched, micro_batch_size=2)
    batch = make_lm_batch([4, 6, 8, 5, 7, 3], seed=1)
    engine.step(batch, CausalLMLoss())
    before = weights(model)
    state_before = copy.deepcopy(opt.state_dict())
    for value in (float("nan"), float("inf")):
        result = engine.step(batch, PoisonAt(1, value))
        assert result.skipped
        assert all(torch.equal(a, b) for a, b in zip(before, weights(model)))
    assert engine.skipped_steps == 2 and engine.steps == 1
    assert sched.last_epoch == 1
    assert str(opt.state_dict()) == str(state_before)
    assert all(p.grad is None for p in model.parameters())


def test_nan_gradient_with_finite_loss_is_caught():
    torch.manual_seed(0)
    model = TinyCausalLM()
    engine = Accumulator(model, torch.optim.SGD(model.parameters(), lr=0.1), micro_batch_size=2)
    batch = make_lm_batch([4, 6, 8], seed=1)
    before = weights(model)
    hook = model.mix.weight.register_hook(lambda g: g * float("nan"))
    result = engine.step(batch, CausalLMLoss())
    hook.remove()
    assert result.skipped and engine.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, weights(model)))


def test_drop_mode_drops_only_the_poisoned_micro_batch():
    torch.manual_seed(0)
    model = TinyCausalLM()
    batch = make_lm_batch([4, 6, 8, 5, 7, 3], seed=1)
    survivors = {k: torch.cat([v[:2], v[4:]]) for k, v in batch.items()}
    want, want_loss = one_pass_grads(model, survivors)
    opt = Capture(model.parameters())
    engine = Accumulator(model, opt, micro_batch_size=2, nonfinite="drop_micro_batch")
    result = engine.step(batch, PoisonAt(1))
    assert not result.skipped and result.dropped_micro_batches == 1
    assert max_rel_err(opt.seen[-1], want) <= 1e-5
    assert abs(result.loss - want_loss) <= 1e-5 * abs(want_loss)
    assert result.items == CausalLMLoss().count(survivors)
    assert engine.dropped_micro_batches == 1
    assert slice_batch(batch, 0, 1)["input_ids"].shape[0] == 1
