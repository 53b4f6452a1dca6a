"""Global clipping against its formula, computed by hand."""

from __future__ import annotations

import pytest
import torch

from gradaccum.engine import Accumulator
from gradaccum.errors import UserError
from gradaccum.losses import CausalLMLoss
from gradaccum.transforms import ClipGlobal, parse_clip
from tests.helpers import Capture, TinyCausalLM, make_lm_batch, max_rel_err, one_pass_grads


@pytest.mark.parametrize("max_norm", [1e-3, 0.05, 1e3])
def test_global_clip_matches_hand_formula(max_norm):
    torch.manual_seed(0)
    model = TinyCausalLM()
    batch = make_lm_batch([4, 9, 6, 12, 3], seed=1)
    want, _ = one_pass_grads(model, batch)
    norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in want)))
    coef = min(1.0, max_norm / norm)
    opt = Capture(model.parameters())
    result = Accumulator(model, opt, micro_batch_size=2, transforms=[ClipGlobal(max_norm)]).step(
        batch, CausalLMLoss()
    )
    assert result.grad_norm == pytest.approx(norm, rel=1e-5)
    assert result.info["clip_coef"] == pytest.approx(coef, rel=1e-5)
    assert max_rel_err(opt.seen[-1], [g * coef for g in want]) <= 1e-5


def test_parse_clip_forms():
    assert parse_clip("none") == []
    kinds = [type(t).__name__ for t in parse_clip("micro:1+global:2.5")]
    assert kinds == ["ClipMicro", "ClipGlobal"]
    for bad in ("bogus:1", "global:x", "global:-1"):
        with pytest.raises(UserError):
            parse_clip(bad)
