"""The engine's accumulated gradient against the one-pass big-batch gradient."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel

from gradaccum.engine import Accumulator
from gradaccum.losses import CausalLMLoss, SampleLoss
from gradaccum.plan import slice_batch
from tests.helpers import Capture, TinyCausalLM, make_lm_batch, max_rel_err, one_pass_grads


def accumulated(model, batch, **engine_kwargs):
    opt = Capture(model.parameters())
    engine = Accumulator(model, opt, **engine_kwargs)
    result = engine.step(batch, CausalLMLoss())
    return opt.seen[-1], result, engine


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(2, 20), min_size=1, max_size=10),
    extra_pad=st.integers(0, 5),
    micro=st.integers(1, 10),
    seed=st.integers(0, 2**16),
)
def test_token_loss_exact_for_any_split(lengths, extra_pad, micro, seed):
    torch.manual_seed(seed)
    model = TinyCausalLM()
    batch = make_lm_batch(lengths, seed=seed, pad_to=max(lengths) + extra_pad)
    want, want_loss = one_pass_grads(model, batch)
    got, result, _ = accumulated(model, batch, micro_batch_size=micro)
    assert max_rel_err(got, want) <= 1e-5
    assert result.loss == pytest.approx(want_loss, rel=1e-6)
    assert result.items == int((batch["labels"][:, 1:] != -100).sum())


@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.integers(2, 12), min_size=2, max_size=8), budget=st.integers(8, 60))
def test_token_budget_split_exact(lengths, budget):
    torch.manual_seed(0)
    model = TinyCausalLM()
    batch = make_lm_batch(lengths, seed=1)
    want, _ = one_pass_grads(model, batch)
    sizes = {"size_fn": lambda s: int(s["attention_mask"].sum())}
    got, _, _ = accumulated(model, batch, token_budget=budget, **sizes)
    assert max_rel_err(got, want) <= 1e-5


def test_real_gpt2_with_padding_exact():
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=37, n_positions=32)
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.0
    model = GPT2LMHeadModel(cfg)
    batch = make_lm_batch([2, 20, 5, 9, 13, 3, 17, 8], seed=3)
    want, _ = one_pass_grads(model, batch)
    got, _, _ = accumulated(model, batch, micro_batch_size=3)
    assert max_rel_err(got, want) <= 1e-5


def test_mean_of_micro_means_is_wrong_here():
    """The common shortcut (mean loss per micro-batch / K) is measurably not the big batch."""
    torch.manual_seed(0)
    model = TinyCausalLM()
    batch = make_lm_batch([2, 20, 3, 18, 4, 16, 5, 14], seed=0)
    want, _ = one_pass_grads(model, batch)
    loss_fn = CausalLMLoss()
    for k in range(4):
        micro = slice_batch(batch, 2 * k, 2 * k + 2)
        (loss_fn(model, micro) / loss_fn.count(micro) / 4).backward()
    naive = [p.grad for p in model.parameters()]
    assert max_rel_err(naive, want) > 1e-2


def test_sample_mean_loss_exact():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y = torch.randn(11, 5), torch.randint(0, 3, (11,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    opt = Capture(model.parameters())
    Accumulator(model, opt, micro_batch_size=4).step((x, y), SampleLoss())
    assert max_rel_err(opt.seen[-1], want) <= 1e-5


def test_short_last_window_weighted_by_its_items_and_no_leak():
    torch.manual_seed(0)
    model = TinyCausalLM()
    batch = make_lm_batch([5, 9, 3, 7, 11, 4, 6, 8, 2, 10], seed=5)
    windows = [slice_batch(batch, 0, 4), slice_batch(batch, 4, 8), slice_batch(batch, 8, 10)]
    windows.append(slice_batch(batch, 0, 4))  # first window of the next epoch
    ref = copy.deepcopy(model)
    opt = Capture(model.parameters(), lr=0.05)
    engine = Accumulator(model, opt, micro_batch_size=3)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    for w in windows:
        engine.step(w, CausalLMLoss())
        want, _ = one_pass_grads(ref, w)
        assert max_rel_err(opt.seen[-1], want) <= 1e-5
        for p, g in zip(ref.parameters(), want, strict=True):
            p.grad = g
        ref_opt.step()
    assert engine.steps == 4


def test_scheduler_and_counters_step_once_per_optimizer_step():
    torch.manual_seed(0)
    model = TinyCausalLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    calls = []
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: calls.append(s) or 1.0 / (1 + s))
    engine = Accumulator(model, opt, scheduler=sched, micro_batch_size=2)
    batch = make_lm_batch([4, 5, 6, 7, 8, 9, 10, 11], seed=2)
    results = [engine.step(batch, CausalLMLoss()) for _ in range(3)]
    assert [r.step for r in results] == [1, 2, 3]
    assert engine.steps == 3 and engine.windows == 3
    assert sched.last_epoch == 3
    assert results[-1].lr == pytest.approx(1e-2 / 4)
    assert all(r.micro_batches == 4 for r in results)


def test_returned_loss_is_global_batch_loss_not_scaled():
    torch.manual_seed(0)
    model = TinyCausalLM()
    batch = make_lm_batch([3, 17, 4, 12], seed=9)
    _, want_loss = one_pass_grads(model, batch)
    _, result, _ = accumulated(model, batch, micro_batch_size=1)
    assert result.loss == pytest.approx(want_loss, rel=1e-6)


def test_low_level_window_with_unknown_total_is_exact():
    torch.manual_seed(0)
    model = TinyCausalLM()
    batch = make_lm_batch([3, 8, 14, 6, 9], seed=4)
    want, want_loss = one_pass_grads(model, batch)
    opt = Capture(model.parameters())
    engine = Accumulator(model, opt)
    loss_fn = CausalLMLoss()
    with engine.window() as w:
        for start in (0, 2, 3):
            micro = slice_batch(batch, start, {0: 2, 2: 3, 3: 5}[start])
            with engine.autocast():
                loss = loss_fn(model, micro)
            w.backward(loss, loss_fn.count(micro))
    assert max_rel_err(opt.seen[-1], want) <= 1e-5
    assert w.result.loss == pytest.approx(want_loss, rel=1e-6)


def test_window_with_wrong_total_is_refused():
    model = TinyCausalLM()
    engine = Accumulator(model, torch.optim.SGD(model.parameters(), lr=0.1))
    batch = make_lm_batch([4, 5])
    loss_fn = CausalLMLoss()
    with pytest.raises(ValueError, match="opened for"):
        with engine.window(total_items=999) as w:
            w.backward(loss_fn(model, batch), loss_fn.count(batch))
