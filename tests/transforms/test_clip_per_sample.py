"""Per-sample clipping through the engine against the brute-force loop over single samples."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import AutoModelForCausalLM

from gradaccum.engine import Accumulator
from gradaccum.errors import UserError
from gradaccum.losses import CausalLMLoss, SampleLoss
from gradaccum.models import apply_lora, build_config
from gradaccum.persample import clipped_reference, sample_grads
from gradaccum.transforms import ClipGlobal, ClipMicro, ClipPerSample, MicroContext, parse_clip
from gradaccum.transforms.base import total_norm
from tests.helpers import Capture, TinyCausalLM, make_lm_batch, max_rel_err, one_pass_grads


def engine_grads(model, batch, loss_fn, transforms, micro_batch_size):
    opt = Capture([p for p in model.parameters() if p.requires_grad], lr=0.0)
    engine = Accumulator(model, opt, micro_batch_size=micro_batch_size, transforms=transforms)
    result = engine.step(batch, loss_fn)
    return opt.seen[-1], result


def lm_samples(batch, lengths):
    """Each sequence alone, without its padding: what the brute-force loop sees."""
    return [{k: v[i : i + 1, :n] for k, v in batch.items()} for i, n in enumerate(lengths)]


def median_norm(model, samples, loss_fn):
    return float(
        torch.stack([total_norm(g) for g in sample_grads(model, samples, loss_fn)]).median()
    )


def check(model, batch, samples, loss_fn, micro_batch_size, lam=None):
    lam = lam if lam is not None else median_norm(model, samples, loss_fn)
    want = clipped_reference(model, samples, loss_fn, lam)
    got, result = engine_grads(model, batch, loss_fn, [ClipPerSample(lam)], micro_batch_size)
    assert max_rel_err(got, want) <= 1e-5
    return result


def mlp_data(n=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize("micro_batch_size", [1, 4, 9])
def test_mlp(micro_batch_size):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)
    )
    x, y = mlp_data()
    samples = [(x[i : i + 1], y[i : i + 1]) for i in range(len(x))]
    result = check(model, (x, y), samples, SampleLoss(), micro_batch_size)
    assert 0 < result.info["ps_clipped_frac"] < 1


class SmallAlexNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(12 * 2 * 2, 16), nn.ReLU(), nn.Linear(16, 5)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def test_small_alexnet():
    torch.manual_seed(0)
    model = SmallAlexNet()
    x, y = torch.randn(7, 3, 16, 16), torch.randint(0, 5, (7,))
    samples = [(x[i : i + 1], y[i : i + 1]) for i in range(7)]
    check(model, (x, y), samples, SampleLoss(), micro_batch_size=3)


def tiny_lm(family, seed=0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(build_config(family), attn_implementation="sdpa")


@pytest.mark.parametrize("family", ["gpt2", "gemma3", "qwen2.5"])
def test_tiny_language_models_with_padding(family):
    model = tiny_lm(family)
    lengths = [5, 11, 3, 8, 6]
    batch = make_lm_batch(lengths, vocab=512, seed=1, pad_to=14)
    check(model, batch, lm_samples(batch, lengths), CausalLMLoss(), micro_batch_size=2)


@pytest.mark.parametrize("family", ["gpt2", "qwen2.5"])
def test_lora(family):
    model = apply_lora(tiny_lm(family), r=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    lengths = [6, 9, 4, 7]
    batch = make_lm_batch(lengths, vocab=512, seed=2, pad_to=10)
    check(model, batch, lm_samples(batch, lengths), CausalLMLoss(), micro_batch_size=3)


@settings(max_examples=8, deadline=None)
@given(
    lengths=st.lists(st.integers(2, 12), min_size=1, max_size=7),
    extra_pad=st.integers(0, 4),
    micro=st.integers(1, 7),
    seed=st.integers(0, 2**16),
)
def test_any_split_and_padding(lengths, extra_pad, micro, seed):
    torch.manual_seed(seed)
    model = TinyCausalLM()
    batch = make_lm_batch(lengths, seed=seed, pad_to=max(lengths) + extra_pad)
    check(model, batch, lm_samples(batch, lengths), CausalLMLoss(), micro)


def test_large_lam_is_the_big_batch_gradient():
    model = tiny_lm("gpt2")
    batch = make_lm_batch([4, 9, 6, 2], vocab=512, seed=3)
    want, _ = one_pass_grads(model, batch)
    got, result = engine_grads(model, batch, CausalLMLoss(), [ClipPerSample(1e9)], 3)
    assert max_rel_err(got, want) <= 1e-5
    assert result.info["ps_clipped_frac"] == 0.0


def test_tiny_lam_clips_every_sample_to_lam():
    model = TinyCausalLM()
    lengths = [4, 9, 6, 2, 7]
    batch = make_lm_batch(lengths, seed=4)
    per = sample_grads(model, lm_samples(batch, lengths), CausalLMLoss())
    lam = 1e-4
    want = [sum(lam * g[j] / total_norm(g) for g in per) / len(per) for j in range(len(per[0]))]
    got, result = engine_grads(model, batch, CausalLMLoss(), [ClipPerSample(lam)], 2)
    assert max_rel_err(got, want) <= 1e-5
    assert result.info["ps_clipped_frac"] == 1.0


def test_composes_with_micro_and_global_clipping():
    """Micro-batch j's part v_j = (1/n) sum_{i in j} c_i g_i is micro-clipped as a mean
    (v_j N / items_j), the sum of the parts is globally clipped."""
    torch.manual_seed(0)
    model = TinyCausalLM()
    lengths = [5, 8, 3, 12, 6, 9]
    batch = make_lm_batch(lengths, seed=5)
    loss_fn = CausalLMLoss()
    per = sample_grads(model, lm_samples(batch, lengths), loss_fn)
    norms = [float(total_norm(g)) for g in per]
    lam, micro_norm = sorted(norms)[3], 0.3
    n, total = len(per), loss_fn.count(batch)
    window = [torch.zeros_like(g) for g in per[0]]
    for a in (0, 2, 4):
        part = [
            sum(min(1, lam / norms[i]) * per[i][j] / n for i in (a, a + 1))
            for j in range(len(window))
        ]
        items = sum(lengths[a : a + 2]) - 2
        mean_norm = float(total_norm(part)) * total / items
        for w, p in zip(window, part):
            w.add_(p * min(1.0, micro_norm / mean_norm))
    global_norm = 0.5 * float(total_norm(window))
    want = [w * 0.5 for w in window]
    transforms = [ClipPerSample(lam), ClipMicro(micro_norm), ClipGlobal(global_norm)]
    got, result = engine_grads(model, batch, loss_fn, transforms, 2)
    assert max_rel_err(got, want) <= 1e-5
    assert result.info["micro_clip_coef"] < 1 and result.info["clip_coef"] < 1


def test_amp_scale_in_loss_scale_is_divided_out():
    torch.manual_seed(0)
    model = TinyCausalLM()
    lengths = [5, 8, 3]
    batch = make_lm_batch(lengths, seed=6)
    loss_fn = CausalLMLoss()
    lam = median_norm(model, lm_samples(batch, lengths), loss_fn)
    want = clipped_reference(model, lm_samples(batch, lengths), loss_fn, lam)
    items, amp = loss_fn.count(batch), 1024.0
    clip = ClipPerSample(lam)
    clip.begin_window(model)
    try:
        (loss_fn(model, batch) * (amp / items)).backward()
        ctx = MicroContext(
            index=0,
            items=items,
            to_mean=1 / amp,
            samples=3,
            loss_scale=amp / items,
            window_items=items,
            window_samples=3,
        )
        clip.after_backward(list(model.parameters()), ctx)
    finally:
        clip.end_window()
    assert max_rel_err([p.grad / amp for p in model.parameters()], want) <= 1e-5


def test_missing_rule_fails_and_fallback_is_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.PReLU(8), nn.Linear(8, 4))
    x, y = mlp_data(7, seed=1)
    opt = Capture(model.parameters(), lr=0.0)
    engine = Accumulator(model, opt, micro_batch_size=3, transforms=[ClipPerSample(0.1)])
    with pytest.raises(UserError, match="no rule for PReLU"):
        engine.step((x, y), SampleLoss())
    assert all(p.requires_grad for p in model.parameters())
    samples = [(x[i : i + 1], y[i : i + 1]) for i in range(7)]
    lam = median_norm(model, samples, SampleLoss())
    want = clipped_reference(model, samples, SampleLoss(), lam)
    got, _ = engine_grads(model, (x, y), SampleLoss(), [ClipPerSample(lam, allow_fallback=True)], 3)
    assert max_rel_err(got, want) <= 1e-5


def test_lam_schedule_follows_the_step():
    model = TinyCausalLM()
    batch = make_lm_batch([4, 9, 6], seed=7)
    clip = ClipPerSample(lambda step: 1e9 if step == 0 else 1e-6)
    engine = Accumulator(
        model, Capture(model.parameters(), lr=0.0), micro_batch_size=2, transforms=[clip]
    )
    fracs = [engine.step(batch, CausalLMLoss()).info["ps_clipped_frac"] for _ in range(2)]
    assert fracs == [0.0, 1.0] and clip.step == 2


def test_a_window_without_counts_is_refused():
    model = TinyCausalLM()
    engine = Accumulator(model, Capture(model.parameters()), transforms=[ClipPerSample(1.0)])
    batch = make_lm_batch([4, 6], seed=8)
    with pytest.raises(UserError, match="total_items and total_samples"):
        with engine.window(total_items=CausalLMLoss().count(batch)) as window:
            window.backward(CausalLMLoss()(model, batch), 8, samples=2)


def test_spec():
    transforms = parse_clip("per-sample:0.5+global:1")
    assert isinstance(transforms[0], ClipPerSample) and transforms[0].lam == 0.5
    assert isinstance(transforms[1], ClipGlobal)
    with pytest.raises(UserError, match="per-sample"):
        parse_clip("per-sample:x")


def test_a_lambda_schedule_resumes_where_it_stood():
    """The schedule's step travels in the engine's state_dict (checkpoints hold it)."""
    model = TinyCausalLM()
    batch = make_lm_batch([4, 6, 3, 5], seed=2)
    seen = []

    def lam(step):
        seen.append(step)
        return 1.0

    def engine():
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        return Accumulator(model, optimizer, micro_batch_size=2, transforms=[ClipPerSample(lam)])

    first = engine()
    for _ in range(3):
        first.step(batch, CausalLMLoss())
    state = json.loads(json.dumps(first.state_dict()))
    assert state["transforms"] == [{"step": 3}]
    second = engine()
    second.load_state_dict(state)
    seen.clear()
    second.step(batch, CausalLMLoss())
    assert set(seen) == {3}
