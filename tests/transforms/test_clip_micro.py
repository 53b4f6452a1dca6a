"""Micro-batch clipping against its formula: sum_j (n_j/N) min(1, c/||g_j||) g_j."""

from __future__ import annotations

import pytest
import torch

from gradaccum.engine import Accumulator
from gradaccum.losses import CausalLMLoss
from gradaccum.plan import slice_batch
from gradaccum.transforms import ClipGlobal, ClipMicro
from tests.helpers import Capture, TinyCausalLM, make_lm_batch, max_rel_err, one_pass_grads


def by_hand(model, batch, bounds, max_norm):
    loss_fn = CausalLMLoss()
    total = loss_fn.count(batch)
    out = None
    for a, b in bounds:
        micro = slice_batch(batch, a, b)
        g, _ = one_pass_grads(model, micro)  # the micro-batch's own mean gradient
        n = float(torch.sqrt(sum((x.double() ** 2).sum() for x in g)))
        w = loss_fn.count(micro) / total * min(1.0, max_norm / n)
        out = [w * x for x in g] if out is None else [o + w * x for o, x in zip(out, g)]
    return out


@pytest.mark.parametrize("max_norm", [0.01, 0.3, 1e4])
def test_micro_clip_matches_hand_formula(max_norm):
    torch.manual_seed(0)
    model = TinyCausalLM()
    batch = make_lm_batch([4, 15, 6, 2, 9, 11, 3], seed=2)
    want = by_hand(model, batch, [(0, 3), (3, 6), (6, 7)], max_norm)
    opt = Capture(model.parameters())
    engine = Accumulator(model, opt, micro_batch_size=3, transforms=[ClipMicro(max_norm)])
    engine.step(batch, CausalLMLoss())
    assert max_rel_err(opt.seen[-1], want) <= 1e-5


def test_micro_then_global_composes():
    torch.manual_seed(0)
    model = TinyCausalLM()
    batch = make_lm_batch([5, 8, 3, 12], seed=3)
    micro = by_hand(model, batch, [(0, 2), (2, 4)], 0.05)
    norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in micro)))
    want = [g * min(1.0, 0.02 / norm) for g in micro]
    opt = Capture(model.parameters())
    transforms = [ClipMicro(0.05), ClipGlobal(0.02)]
    result = Accumulator(model, opt, micro_batch_size=2, transforms=transforms).step(
        batch, CausalLMLoss()
    )
    assert result.grad_norm == pytest.approx(norm, rel=1e-5)
    assert max_rel_err(opt.seen[-1], want) <= 1e-5


def test_micro_clip_without_clipping_is_big_batch():
    torch.manual_seed(0)
    model = TinyCausalLM()
    batch = make_lm_batch([4, 15, 6, 2, 9], seed=7)
    want, _ = one_pass_grads(model, batch)
    opt = Capture(model.parameters())
    Accumulator(model, opt, micro_batch_size=2, transforms=[ClipMicro(1e9)]).step(
        batch, CausalLMLoss()
    )
    assert max_rel_err(opt.seen[-1], want) <= 1e-5
