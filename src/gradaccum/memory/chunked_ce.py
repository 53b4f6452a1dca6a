"""Causal-LM cross-entropy that never builds the (batch x length x vocab) logits tensor.

The output projection and the loss are fused and streamed over vocabulary chunks: each
chunk of the output weight gives a (tokens x chunk) block of logits, folded into a running
log-sum-exp (as in flash attention). When the output weight is frozen (LoRA), the gradient
with respect to the hidden states is folded in during the same pass (a softmax-weighted
sum of weight rows), so backward only scales it: two matmuls per chunk, as unfused. When
the weight trains, backward streams the chunks again to form its gradient chunk by chunk.

The weight can be a tensor or any ``RowSource`` (e.g. shards on disk read chunk by chunk),
so the largest matrix of a small LM (Gemma 3's 262,144 x 640 tied embedding) need not be
resident at once.

Under autocast the matmuls run in its dtype (bf16: each weight chunk is cast once, or not
at all when it arrives in bf16), while the log-sum-exp, the softmax and the accumulated
gradient stay fp32; backward recomputes the logits in the dtype forward used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradaccum.errors import UserError
from gradaccum.losses import IGNORE_INDEX

LOGITS_BLOCK_BYTES = 16 * 2**20  # one (tokens x vocab chunk) block of fp32 logits


class RowSource(Protocol):
    """A (rows x columns) matrix read in row ranges, optionally collecting its gradient."""

    shape: torch.Size
    requires_grad: bool

    def rows(self, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` as a tensor."""
        ...

    def add_grad(self, start: int, stop: int, grad: Tensor) -> None:
        """Add ``grad`` to the gradient of rows ``start:stop``."""
        ...


class _TensorRows:
    """A plain weight tensor seen as a RowSource; its gradient goes back through autograd."""

    def __init__(self, weight: Tensor) -> None:
        self.weight = weight
        self.shape = weight.shape
        self.requires_grad = False  # handled by the autograd Function itself

    def rows(self, start: int, stop: int) -> Tensor:
        return self.weight[start:stop]


def vocab_chunk(tokens: int, vocab: int) -> int:
    """Rows per chunk: a power of two (aligned with shard blocks), at least 1024, with one
    block of fp32 logits near LOGITS_BLOCK_BYTES."""
    rows = max(1024, LOGITS_BLOCK_BYTES // (4 * max(1, tokens)))
    return min(vocab, 1 << (rows.bit_length() - 1))


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed CE of ``hidden @ weight.T`` (optionally soft-capped) against ``targets``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        hidden: Tensor,
        weight: Tensor,
        targets: Tensor,
        source: RowSource,
        softcap: float | None,
        chunk: int | None,
    ) -> Tensor:
        need_hidden = ctx.needs_input_grad[0]
        n, vocab = hidden.shape[0], source.shape[0]
        chunk = chunk or vocab_chunk(n, vocab)
        dtype = _matmul_dtype(hidden)
        h = hidden.to(dtype) if dtype is not None else hidden
        running_max = torch.full((n,), -torch.inf)
        denom = torch.zeros(n)
        target_logit = torch.zeros(n)
        acc = torch.zeros(n, hidden.shape[1]) if need_hidden else None
        target_rows = torch.zeros(n, hidden.shape[1]) if need_hidden else None
        for start in range(0, vocab, chunk):
            stop = min(start + chunk, vocab)
            w = _cast(source.rows(start, stop), dtype)
            logits, slope = _logits(h, w, softcap)
            hit = (targets >= start) & (targets < stop)
            if bool(hit.any()):
                cols = targets[hit] - start
                target_logit[hit] = logits[hit, cols]
                if need_hidden:
                    row = w[cols].to(target_rows.dtype)
                    target_rows[hit] = row if slope is None else row * slope[hit, cols, None]
            new_max = torch.maximum(running_max, logits.amax(dim=1))
            rescale = torch.exp(running_max - new_max)
            probs = logits.sub_(new_max[:, None]).exp_()  # in place: no fresh pages per chunk
            denom = denom * rescale + probs.sum(dim=1)
            if need_hidden:
                weighted = probs if slope is None else probs.mul_(slope)
                acc.mul_(rescale[:, None]).add_((weighted.to(w.dtype) @ w).float())
            running_max = new_max
        lse = running_max + torch.log(denom)
        grad_hidden = acc / denom[:, None] - target_rows if need_hidden else None
        ctx.save_for_backward(hidden, targets, lse, grad_hidden, weight)
        ctx.source, ctx.softcap, ctx.chunk, ctx.dtype = source, softcap, chunk, dtype
        return (lse - target_logit).sum()

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        hidden, targets, lse, grad_hidden, weight = ctx.saved_tensors
        source: RowSource = ctx.source
        grad_h = (grad_hidden * grad_out).to(hidden.dtype) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1] or source.requires_grad:
            if ctx.needs_input_grad[1]:
                grad_w = torch.zeros(source.shape, dtype=weight.dtype)
            rows = torch.arange(hidden.shape[0])
            h = hidden.to(ctx.dtype) if ctx.dtype is not None else hidden
            for start in range(0, source.shape[0], ctx.chunk):
                stop = min(start + ctx.chunk, source.shape[0])
                w = _cast(source.rows(start, stop), ctx.dtype)
                logits, slope = _logits(h, w, ctx.softcap)
                g = logits.sub_(lse[:, None]).exp_()
                hit = (targets >= start) & (targets < stop)
                g[rows[hit], targets[hit] - start] -= 1.0
                if slope is not None:
                    g = g * slope
                chunk_grad = ((g * grad_out).to(h.dtype).T @ h).float()
                if grad_w is not None:
                    grad_w[start:stop] = chunk_grad
                else:
                    source.add_grad(start, stop, chunk_grad)
        return grad_h, grad_w, None, None, None, None


def _matmul_dtype(hidden: Tensor) -> torch.dtype | None:
    """The dtype autocast gives matmuls on ``hidden``'s device, or None outside autocast."""
    device = hidden.device.type
    if not torch.is_autocast_enabled(device):
        return None
    return torch.get_autocast_dtype(device)


def _cast(w: Tensor, dtype: torch.dtype | None) -> Tensor:
    return w if dtype is None or w.dtype == dtype else w.to(dtype)


def _logits(h: Tensor, w: Tensor, softcap: float | None) -> tuple[Tensor, Tensor | None]:
    """fp32 logits of one chunk and, when soft-capped, d(capped)/d(raw) for the chain rule."""
    logits = (h.to(w.dtype) @ w.T).float()
    if softcap is None:
        return logits, None
    t = torch.tanh(logits / softcap)
    return t * softcap, 1.0 - t * t


def chunked_token_loss_sum(
    hidden: Tensor,
    weight: Tensor | RowSource,
    labels: Tensor,
    *,
    softcap: float | None = None,
    ignore_index: int = IGNORE_INDEX,
    chunk: int | None = None,
) -> Tensor:
    """Summed next-token CE of the logits ``hidden @ weight.T`` against shifted ``labels``.

    Equals ``token_loss_sum(lm_head(hidden), labels)`` (with Gemma-style soft-capping when
    ``softcap`` is set) without materializing the logits; positions whose label is
    ``ignore_index`` cost nothing. ``chunk`` (rows per vocabulary chunk) defaults to a size
    that keeps one block of logits near ``LOGITS_BLOCK_BYTES``.
    """
    target = F.pad(labels[:, 1:], (0, 1), value=ignore_index).reshape(-1)
    keep = target != ignore_index
    flat = hidden.reshape(-1, hidden.shape[-1])[keep.to(hidden.device)]
    if isinstance(weight, Tensor):
        source: RowSource = _TensorRows(weight)
        anchor = weight
    else:
        source, anchor = weight, torch.empty(0)
    return _LinearCrossEntropy.apply(flat, anchor, target[keep], source, softcap, chunk)


def causal_lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, float | None]:
    """The decoder (hidden states), output projection and final soft-cap of a causal LM.

    Unwraps peft models; works for transformers models with ``base_model`` and
    ``get_output_embeddings``.
    """
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    decoder = getattr(lm, "base_model", None)
    if head is None or decoder is None or decoder is lm:
        raise UserError(
            f"chunked cross-entropy needs a transformers causal LM, got {type(lm).__name__}: "
            "use the plain CausalLMLoss for this model"
        )
    if getattr(head, "bias", None) is not None:
        raise UserError("chunked cross-entropy does not support an output bias: use CausalLMLoss")
    return decoder, head, getattr(lm.config, "final_logit_softcapping", None)


class ChunkedCausalLMLoss:
    """Drop-in for ``CausalLMLoss`` on transformers causal LMs, without the logits tensor.

    ``weight`` overrides the output weight; by default it is the head's weight, or the
    ``shard_rows`` RowSource that ``ShardedParameters`` attaches to a sharded one.
    """

    def __init__(
        self,
        ignore_index: int = IGNORE_INDEX,
        weight: Tensor | RowSource | None = None,
        chunk: int | None = None,
    ) -> None:
        self.ignore_index = ignore_index
        self.weight = weight
        self.chunk = chunk

    def count(self, batch: Mapping[str, Tensor]) -> int:
        return int((batch["labels"][:, 1:] != self.ignore_index).sum())

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        decoder, head, softcap = causal_lm_parts(model)
        out = decoder(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            use_cache=False,
        )
        weight = self.weight
        if weight is None:  # a sharded output weight is read through its RowSource
            weight = getattr(head.weight, "shard_rows", head.weight)
        return chunked_token_loss_sum(
            out.last_hidden_state,
            weight,
            batch["labels"],
            softcap=softcap,
            ignore_index=self.ignore_index,
            chunk=self.chunk,
        )
