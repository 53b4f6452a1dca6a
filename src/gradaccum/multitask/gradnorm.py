"""GradNorm (Chen et al. 2018): learn task weights that balance gradient norms.

Per window, with w_k the task weights and g_k^s task k's gradient restricted to the last
shared layer (``TaskGrads.shared``; all columns when it is None):

* G_k = ||w_k g_k^s||, G_bar = mean_k G_k;
* L~_k = L_k / L_k(first window), r_k = L~_k / mean(L~);
* target_k = G_bar r_k^alpha, held constant;
* one Adam step (betas 0.9, 0.999, eps 1e-8, bias-corrected) on sum_k |G_k - target_k|,
  whose gradient in w_k is sign(G_k - target_k) ||g_k^s||; then w is floored at 1e-6 and
  renormalized to sum N.

Adam rather than SGD: its step is about ``lr`` whatever the scale of the gradients, so the
paper's lr = 0.025 means the same for a tiny model and a large one. The combined gradient
is sum_k w_k g_k with the weights BEFORE this window's update (the ones the norms G_k were
measured with), so the first window returns the plain sum.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradaccum.multitask.base import Combiner, TaskGrads, gram, weighted_rows

_BETAS, _EPS, _FLOOR = (0.9, 0.999), 1e-8, 1e-6


def _f64(x: list[float]) -> Tensor:
    return torch.tensor(x, dtype=torch.float64)


class GradNorm(Combiner):
    """Weighted sum whose task weights follow GradNorm's balancing rule."""

    def __init__(self, alpha: float = 1.5, lr: float = 0.025) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.alpha, self.lr = float(alpha), float(lr)
        self.weights: Tensor | None = None
        self.initial_losses: dict[str, float] = {}
        self._m: Tensor | None = None
        self._v: Tensor | None = None
        self._t = 0

    def combine(self, tg: TaskGrads) -> tuple[Tensor, dict[str, float]]:
        missing = [n for n in tg.names if n not in tg.losses]
        if missing:
            raise ValueError(f"GradNorm needs every task's loss; missing {missing}")
        n = len(tg.names)
        if self.weights is None:
            self.weights = torch.ones(n, dtype=torch.float64)
            self._m, self._v = (
                torch.zeros(n, dtype=torch.float64),
                torch.zeros(n, dtype=torch.float64),
            )
            self.initial_losses = {k: float(tg.losses[k]) for k in tg.names}
        if self.weights.numel() != n:
            raise ValueError(f"GradNorm was set up for {self.weights.numel()} tasks, got {n}")
        w = self.weights.clone()
        out = weighted_rows(w, tg.grads)

        cols = tg.shared if tg.shared is not None else slice(None)
        norms = gram(tg.grads[:, cols]).diagonal().clamp(min=0).sqrt()
        g = w * norms
        ratio = torch.tensor(
            [tg.losses[k] / max(self.initial_losses[k], 1e-12) for k in tg.names],
            dtype=torch.float64,
        )
        target = g.mean() * (ratio / ratio.mean()) ** self.alpha
        grad = torch.sign(g - target) * norms
        self._adam(grad)

        info = {f"gradnorm/w/{k}": float(x) for k, x in zip(tg.names, w, strict=True)}
        info["gradnorm/loss"] = float((g - target).abs().sum())
        return out, info

    def _adam(self, grad: Tensor) -> None:
        assert self.weights is not None and self._m is not None and self._v is not None
        self._t += 1
        b1, b2 = _BETAS
        self._m = b1 * self._m + (1 - b1) * grad
        self._v = b2 * self._v + (1 - b2) * grad * grad
        m_hat, v_hat = self._m / (1 - b1**self._t), self._v / (1 - b2**self._t)
        w = (self.weights - self.lr * m_hat / (v_hat.sqrt() + _EPS)).clamp(min=_FLOOR)
        self.weights = w * (w.numel() / w.sum())

    def state_dict(self) -> dict[str, Any]:
        if self.weights is None:
            return {}
        assert self._m is not None and self._v is not None
        return {
            "weights": self.weights.tolist(),
            "m": self._m.tolist(),
            "v": self._v.tolist(),
            "t": self._t,
            "initial_losses": dict(self.initial_losses),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if not d:
            return
        self.weights, self._m, self._v = _f64(d["weights"]), _f64(d["m"]), _f64(d["v"])
        self._t = int(d["t"])
        self.initial_losses = {k: float(v) for k, v in d["initial_losses"].items()}
