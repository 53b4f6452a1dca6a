"""Chunked cross-entropy: the same loss and gradients as the logits-tensor CausalLMLoss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gradaccum.losses import CausalLMLoss
from gradaccum.memory.chunked_ce import ChunkedCausalLMLoss, chunked_token_loss_sum
from gradaccum.models import apply_lora, build_random_model
from tests.helpers import make_lm_batch, max_rel_err


def _loss_and_grads(model, loss_fn, batch):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


@pytest.mark.parametrize("family", ["gpt2", "gemma3", "qwen2.5"])
@pytest.mark.parametrize("lora", [False, True])
def test_same_loss_and_gradients_as_the_logits_tensor(family, lora):
    model, _ = build_random_model(family, "tiny", seed=1)
    if family == "gemma3":
        model.config.final_logit_softcapping = 3.0  # exercise the soft-cap chain rule
    if lora:
        model = apply_lora(model)
    batch = make_lm_batch([12, 7, 10], vocab=512, seed=2)
    ref_loss, ref_grads = _loss_and_grads(model, CausalLMLoss(), batch)
    loss, grads = _loss_and_grads(model, ChunkedCausalLMLoss(chunk=100), batch)
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)
    assert max_rel_err(grads, ref_grads) <= 1e-5


def test_weight_gradient_streams_into_a_row_source():
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 8, requires_grad=True)
    weight = torch.randn(50, 8, requires_grad=True)
    labels = torch.randint(0, 50, (2, 9))
    labels[1, :3] = -100
    ref = chunked_token_loss_sum(hidden, weight, labels, chunk=7)
    ref.backward()

    class Rows:
        shape, requires_grad = weight.shape, True
        grad = torch.zeros_like(weight)

        def rows(self, start, stop):
            return weight.detach()[start:stop]

        def add_grad(self, start, stop, grad):
            self.grad[start:stop] += grad

    source, h2 = Rows(), hidden.detach().clone().requires_grad_()
    loss = chunked_token_loss_sum(h2, source, labels, chunk=16)
    loss.backward()
    assert torch.allclose(loss, ref, rtol=1e-6)
    assert torch.allclose(source.grad, weight.grad, rtol=1e-5, atol=1e-7)
    assert torch.allclose(h2.grad, hidden.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16])
def test_under_bf16_autocast_matmuls_are_bf16_and_the_log_sum_exp_fp32(stored):
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(300, 16)
    labels = torch.randint(0, 300, (2, 9))
    logits = (hidden.bfloat16() @ weight.bfloat16().T).float()  # what bf16 matmuls give
    ref = F.cross_entropy(
        logits[:, :-1].reshape(-1, 300), labels[:, 1:].reshape(-1), reduction="sum"
    )
    (ref_grad,) = torch.autograd.grad(ref, hidden)

    class Rows:  # a frozen weight stored in ``stored``, read in chunks
        shape, requires_grad = weight.shape, False

        def rows(self, start, stop):
            return weight[start:stop].to(stored)

    h = hidden.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_token_loss_sum(h, Rows(), labels, chunk=64)
    loss.backward()
    assert abs(float(loss) - float(ref)) <= 1e-5 * abs(float(ref))
    assert max_rel_err([h.grad], [ref_grad]) <= 2e-2  # the weighted sum of rows is bf16


def test_under_bf16_autocast_a_trained_weight_gets_the_gradient_of_its_bf16_logits():
    torch.manual_seed(1)
    hidden = torch.randn(2, 9, 16)
    weight = torch.randn(300, 16, requires_grad=True)
    labels = torch.randint(0, 300, (2, 9))
    logits = (hidden.bfloat16() @ weight.bfloat16().T).float()
    ref = F.cross_entropy(
        logits[:, :-1].reshape(-1, 300), labels[:, 1:].reshape(-1), reduction="sum"
    )
    (ref_grad,) = torch.autograd.grad(ref, weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_token_loss_sum(hidden, weight, labels, chunk=64)
    loss.backward()  # outside autocast: backward must recompute the logits in bf16 again
    assert weight.grad.dtype == torch.float32
    assert max_rel_err([weight.grad], [ref_grad]) <= 1e-3  # fp32 recomputation: 1e-2
