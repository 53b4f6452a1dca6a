"""CAGrad (Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning").

With g0 the mean task gradient and g_w = sum_i w_i g_i, find w on the simplex minimizing

    F(w) = g_w . g0 + sqrt(phi) ||g_w||,   phi = c^2 ||g0||^2,

and return d = g0 + (sqrt(phi) / ||g_w||) g_w. Only the N x N Gram matrix K is needed:
g_w . g0 = w . (K 1 / N) and ||g_w||^2 = w K w. Two tasks are solved exactly in closed form;
more by projected gradient descent on the simplex.

Scale: d is returned as in the paper, on the scale of the MEAN gradient (with c = 0 it is
the mean, i.e. WeightedSum with weights 1/N). The authors' code divides d by (1 + c^2) by
default; we do not, so use a learning rate (1 + c^2) times smaller to match their runs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradaccum.multitask.base import Combiner, TaskGrads, gram, weighted_rows


def cagrad_objective(w: Tensor, k: Tensor, c: float) -> Tensor:
    """F(w) for one weight vector (N,) or a batch (M, N), from the fp64 Gram matrix ``k``."""
    gamma = c * math.sqrt(max(float(k.mean()), 0.0))
    quad = ((w @ k) * w).sum(-1).clamp(min=0)
    return w @ k.mean(1) + gamma * quad.sqrt()


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of ``v`` onto the probability simplex (by sorting)."""
    u, _ = torch.sort(v, descending=True)
    css = u.cumsum(0) - 1
    ind = torch.arange(1, v.numel() + 1, dtype=v.dtype)
    rho = int((u - css / ind > 0).nonzero().max())
    return (v - css[rho] / (rho + 1)).clamp(min=0)


def _two_tasks(k: Tensor, c: float) -> Tensor:
    """Exact minimizer for N = 2: F(t) on w = (1 - t, t) is convex; solve F'(t) = 0, clamp."""
    b = k.mean(1)
    gamma = c * math.sqrt(max(float(k.mean()), 0.0))
    a_, b_ = float(k[0, 0]), float(k[0, 1] - k[0, 0])
    c_ = float(k[0, 0] - 2 * k[0, 1] + k[1, 1])  # ||g1 - g0||^2
    beta = float(b[1] - b[0])
    # F(t) = const + beta t + gamma sqrt(Q(t)), Q = a_ + 2 b_ t + c_ t^2 = (u^2 + D) / c_
    # with u = c_ t + b_ and D = a_ c_ - b_^2 >= 0, so F' = beta + gamma sqrt(c_) u / sqrt(u^2 + D).
    if c_ <= 0 or gamma <= 0 or abs(beta) >= gamma * math.sqrt(c_):
        t = 0.5 if beta == 0 else float(beta < 0)  # F is monotone on [0, 1]
    else:
        s = -beta / (gamma * math.sqrt(c_))
        u = s * math.sqrt(max(a_ * c_ - b_ * b_, 0.0) / (1 - s * s))
        t = min(max((u - b_) / c_, 0.0), 1.0)
    return torch.tensor([1 - t, t], dtype=torch.float64)


def _projected_gradient(k: Tensor, c: float, iters: int) -> Tensor:
    """Projected gradient descent on the simplex with backtracking (sufficient decrease)."""
    n = k.shape[0]
    b = k.mean(1)
    gamma = c * math.sqrt(max(float(k.mean()), 0.0))
    w = torch.full((n,), 1.0 / n, dtype=torch.float64)
    f = float(cagrad_objective(w, k, c))
    step = 1.0 / max(float(k.diagonal().sum()), 1e-300)
    for _ in range(iters):
        norm = math.sqrt(max(float(w @ k @ w), 0.0))
        grad = b + (gamma / norm) * (k @ w) if norm > 0 else b
        for _ in range(40):
            new = project_simplex(w - step * grad)
            delta = new - w
            f_new = float(cagrad_objective(new, k, c))
            if f_new <= f + float(grad @ delta) + float(delta @ delta) / (2 * step):
                break
            step /= 2
        if f_new > f:
            break
        w, f = new, f_new
        if float(delta.abs().max()) < 1e-12:
            break
        step *= 2
    return w


def cagrad_weights(k: Tensor, c: float, iters: int = 50) -> Tensor:
    """The simplex weights w minimizing F for the fp64 Gram matrix ``k``."""
    if k.shape[0] == 1:
        return torch.ones(1, dtype=torch.float64)
    if k.shape[0] == 2:
        return _two_tasks(k, c)
    return _projected_gradient(k, c, iters)


class CAGrad(Combiner):
    """Conflict-averse direction: the mean gradient pulled toward the worst-served tasks."""

    def __init__(self, c: float = 0.5, iters: int = 50) -> None:
        if not c >= 0:
            raise ValueError(f"c must be >= 0, got {c}")
        self.c, self.iters = float(c), int(iters)

    def combine(self, tg: TaskGrads) -> tuple[Tensor, dict[str, float]]:
        k = gram(tg.grads)
        n = k.shape[0]
        w = cagrad_weights(k, self.c, self.iters)
        gw_norm = math.sqrt(max(float(w @ k @ w), 0.0))
        sqrt_phi = self.c * math.sqrt(max(float(k.mean()), 0.0))
        lam = sqrt_phi / gw_norm if gw_norm > 0 else 0.0
        coef = torch.full((n,), 1.0 / n, dtype=torch.float64) + lam * w
        info = {f"cagrad/w/{name}": float(wi) for name, wi in zip(tg.names, w, strict=True)}
        info["cagrad/lambda"] = lam
        return weighted_rows(coef, tg.grads), info
