"""Opacus as the per-sample clipping baseline: hooks mode and ghost clipping, without noise.

Both run the estimator gradaccum's ``ClipPerSample`` runs: ``(1/n) sum_i min(1, lam/||g_i||)
g_i`` with noise multiplier 0 and ``max_grad_norm = lam``, built from Opacus's own pieces
the way ``PrivacyEngine.make_private`` builds them (it needs a data loader, the bench has
one fixed batch). With a mean loss over all n*T tokens, Opacus's hooks scale each sample's
share by n, so its g_i is gradaccum's token-level g_i (see ``transforms/clip_per_sample``).

* hooks: ``GradSampleModule`` materializes every per-sample gradient (layer kinds without
  an Opacus rule, such as GPT-2's ``Conv1D``, go through its ``functorch`` fallback) and
  ``DPOptimizer`` clips and averages them;
* ghost: ``GradSampleModuleFastGradientClipping`` computes per-sample norms (the Gram
  form for linear layers), then a second backward of the coefficient-weighted per-sample
  losses gives the clipped sum.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

Forward = Callable[[nn.Module, Any], tuple[Tensor, Tensor, torch.Size | None]]
"""(model, batch) -> flat logits (N, C), flat targets (N,), and the logits' (B, T, C)
shape for a sequence loss (None when there is one target per sample)."""


def hooks_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    forward: Forward,
    batch: Any,
    batch_size: int,
    lam: float,
) -> Callable[[], None]:
    """One clipped step with Opacus's ``GradSampleModule`` and ``DPOptimizer``."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # secure-RNG advice: no noise is drawn here
        module = GradSampleModule(model, loss_reduction="mean")
        opt = DPOptimizer(
            optimizer, noise_multiplier=0.0, max_grad_norm=lam, expected_batch_size=batch_size
        )
    criterion = nn.CrossEntropyLoss()

    def step() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logits, target, _ = forward(module, batch)
            criterion(logits, target).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def ghost_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    forward: Forward,
    batch: Any,
    batch_size: int,
    lam: float,
) -> Callable[[], None]:
    """One clipped step with Opacus's ghost clipping (two backward passes)."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = GradSampleModuleFastGradientClipping(
            model, loss_reduction="mean", max_grad_norm=lam, use_ghost_clipping=True
        )
        opt = DPOptimizerFastGradientClipping(
            optimizer, noise_multiplier=0.0, max_grad_norm=lam, expected_batch_size=batch_size
        )
        loss_fn = DPLossFastGradientClipping(module, opt, nn.CrossEntropyLoss(), "mean")

    def step() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logits, target, shape = forward(module, batch)
            loss_fn(logits, target, shape=shape).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step
