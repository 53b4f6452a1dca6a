"""Mixed precision: bf16 autocast; fp16 with a GradScaler, unscaled once before clipping."""

from __future__ import annotations

import pytest
import torch

from gradaccum.engine import Accumulator
from gradaccum.losses import CausalLMLoss
from gradaccum.precision import make_precision
from gradaccum.transforms import ClipGlobal, ClipMicro
from tests.helpers import Capture, TinyCausalLM, make_lm_batch, max_rel_err, one_pass_grads


@pytest.mark.parametrize("kind", ["bf16", "fp16"])
def test_low_precision_gradient_close_to_fp32(kind):
    torch.manual_seed(0)
    model = TinyCausalLM()
    batch = make_lm_batch([5, 9, 3, 12, 7, 4], seed=1)
    want, want_loss = one_pass_grads(model, batch)
    opt = Capture(model.parameters())
    engine = Accumulator(model, opt, micro_batch_size=2, precision=kind)
    result = engine.step(batch, CausalLMLoss())
    assert max_rel_err(opt.seen[-1], want) < 5e-2  # the optimizer sees unscaled gradients
    assert result.loss == pytest.approx(want_loss, rel=5e-2)
    assert (engine.precision.scaler is not None) == (kind == "fp16")


def test_fp16_scale_is_applied_per_micro_batch_and_removed_once():
    torch.manual_seed(0)
    model = TinyCausalLM()
    batch = make_lm_batch([5, 9, 3, 12], seed=2)
    seen = []
    hook = model.head.weight.register_hook(lambda g: seen.append(g.abs().max().item()))
    opt = Capture(model.parameters())
    engine = Accumulator(model, opt, micro_batch_size=2, precision="fp16")
    engine.precision.scaler = make_precision("fp16", "cpu", init_scale=1024.0).scaler
    engine.step(batch, CausalLMLoss())
    hook.remove()
    assert len(seen) == 2  # one scaled backward per micro-batch
    index = [p is model.head.weight for p in model.parameters()].index(True)
    applied = opt.seen[-1][index]
    assert max(seen) > 100 * applied.abs().max().item()  # scaled inside, unscaled outside


@pytest.mark.parametrize("transform", [ClipGlobal(1e-3), ClipMicro(1e-3)])
def test_fp16_clipping_sees_unscaled_norms(transform):
    torch.manual_seed(0)
    model = TinyCausalLM()
    batch = make_lm_batch([5, 9, 3, 12], seed=3)
    opt = Capture(model.parameters())
    engine = Accumulator(model, opt, micro_batch_size=2, precision="fp16", transforms=[transform])
    result = engine.step(batch, CausalLMLoss())
    applied = float(torch.sqrt(sum((g.double() ** 2).sum() for g in opt.seen[-1])))
    assert applied <= 1e-3 * 1.01
    assert result.grad_norm < 100  # a pre-clip norm in real units, not times 2**16


def test_fp16_overflow_skips_the_step_and_lowers_the_scale():
    torch.manual_seed(0)
    model = TinyCausalLM()
    before = [p.detach().clone() for p in model.parameters()]
    engine = Accumulator(model, torch.optim.SGD(model.parameters(), lr=0.1), precision="fp16")
    engine.precision.scaler = make_precision("fp16", "cpu", init_scale=2.0**120).scaler
    result = engine.step(make_lm_batch([5, 9]), CausalLMLoss())
    assert result.skipped and engine.skipped_steps == 1
    assert engine.precision.scaler.get_scale() < 2.0**120
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
