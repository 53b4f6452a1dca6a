"""GCond, the Gradient Conductor (Limarenko et al. 2025, arXiv 2509.07252).

Accumulate each task's gradient over the window, then resolve conflicts between them:

1. per task, an EMA of its raw gradient norm (e <- 0.95 e + 0.05 ||g||, e starts at 1),
   updated first; then each g_k is clipped to ``norm_cap`` if one is set;
2. at most ``max_iters`` (default 2N) times: take the pair with the lowest cosine c, stop
   when c >= t_weak; an arbitrator names a winner and a loser, and both are moved away
   from each other by amounts that grow smoothly with the conflict (``resolution``);
3. sum the resolved gradients and smooth the sum with bias-corrected momentum (beta 0.85).

Arbitration: a task that won each of the last ``window`` conflicts loses this one; else
each task scores 0.8 max(0, cos(g_k, g_k_prev)) + 0.2 share_k, with g_k_prev its resolved
gradient of the previous window and share_k = (||g_k|| / e_k) over the pair's sum of that
ratio (0.5 each if the sum is 0), as in the authors' code. The higher score wins; ties go
to the task earlier in ``names``. Cosines, norms and scores use the gradients as already
resolved earlier in the same loop.

Because the returned gradient already carries momentum, set the optimizer's own momentum
to 0 (SGD ``momentum=0``, Adam/AdamW ``betas=(0, beta2)``). ``update="sign"`` returns
sign(m_hat) (Lion-style; use a Lion-sized learning rate). The paper's LARS trust ratio needs
each parameter tensor's norm, which a combiner never sees: use a LARS/LAMB optimizer for it.

In ``stochastic`` mode (default) each micro-batch of a window runs a single task
(``schedule``), so a window costs one task pass per micro-batch instead of N.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch
from torch import Tensor

from gradaccum.multitask.base import (
    Combiner,
    TaskGrads,
    cross,
    generator_state,
    gram,
    mix_rows,
    set_generator_state,
)

THRESHOLDS = (-0.8, -0.5, 0.0)
"""(t_crit, t_main, t_weak): cosine thresholds of critical, main and weak conflict."""
UPDATES = ("momentum", "sign")
_TOL = 1e-9
"""Cosines within this of t_weak count as resolved: rounding after an exact projection."""


def stochastic_schedule(k: int, names: list[str], generator: torch.Generator) -> list[str]:
    """Give each of ``k`` micro-batches one task, every task exactly k / N of them, shuffled."""
    n = len(names)
    if n == 0 or k % n:
        raise ValueError(
            f"stochastic GCond splits the {k} micro-batches of a window evenly among "
            f"{n} tasks: make the accumulation steps a multiple of {n}"
        )
    slots = [name for name in names for _ in range(k // n)]
    return [slots[i] for i in torch.randperm(k, generator=generator).tolist()]


def resolution(
    c: float, thresholds: tuple[float, float, float] = THRESHOLDS
) -> tuple[float, float]:
    """(s_w, s_l): how much of the loser the winner sheds, and of the winner the loser sheds.

    c maps to an angle alpha: pi/2 -> 0 as c goes t_main -> t_weak, pi/2 -> pi
    (quadratically) as c goes t_main -> t_crit, pi at or below t_crit; then
    s_w = sin(alpha) and s_l = sin(min(alpha, pi/2)).
    """
    t_crit, t_main, t_weak = thresholds
    if c <= t_crit:
        return 0.0, 1.0  # alpha = pi: the winner is kept, the loser fully projected
    if c < t_main:
        alpha = math.pi / 2 * (1 + ((c - t_main) / (t_crit - t_main)) ** 2)
    else:
        alpha = math.pi / 2 * (1 - min(max((c - t_main) / (t_weak - t_main), 0.0), 1.0))
    return math.sin(alpha), math.sin(min(alpha, math.pi / 2))


def regime(c: float, thresholds: tuple[float, float, float] = THRESHOLDS) -> str:
    """Name of the conflict regime of cosine c: critical, main, weak or none."""
    t_crit, t_main, t_weak = thresholds
    if c <= t_crit:
        return "critical"
    if c < t_main:
        return "main"
    return "weak" if c < t_weak else "none"


class GCond(Combiner):
    """Accumulate, arbitrate, resolve, sum, smooth: see the module docstring."""

    def __init__(
        self,
        *,
        stochastic: bool = True,
        beta: float = 0.85,
        update: str = "momentum",
        norm_cap: float | None = None,
        thresholds: tuple[float, float, float] = THRESHOLDS,
        window: int = 3,
        score_weights: tuple[float, float] = (0.8, 0.2),
        ema: float = 0.95,
        max_iters: int | None = None,
        bn_eval: bool = False,
        seed: int = 0,
    ) -> None:
        t_crit, t_main, t_weak = thresholds
        if not -1 <= t_crit < t_main < t_weak <= 1:
            raise ValueError(f"thresholds must satisfy -1 <= crit < main < weak <= 1: {thresholds}")
        if not 0 <= beta < 1 or not 0 <= ema < 1:
            raise ValueError(f"beta and ema must be in [0, 1), got {beta} and {ema}")
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        if norm_cap is not None and not norm_cap > 0:
            raise ValueError(f"norm_cap must be > 0, got {norm_cap}")
        self.stochastic, self.bn_eval = bool(stochastic), bool(bn_eval)
        self.beta, self.update, self.norm_cap = float(beta), update, norm_cap
        self.thresholds = (float(t_crit), float(t_main), float(t_weak))
        self.window, self.score_weights, self.ema = int(window), score_weights, float(ema)
        self.max_iters = max_iters
        self.gen = torch.Generator().manual_seed(seed)
        self.names: list[str] | None = None
        self.norm_ema: list[float] = []
        self.history: deque[str] = deque(maxlen=self.window)
        self.prev: Tensor | None = None
        self.prev_norm: list[float] = []
        self.momentum: Tensor | None = None
        self.t = 0

    def schedule(self, k: int, names: list[str]) -> list[str] | None:
        return stochastic_schedule(k, names, self.gen) if self.stochastic else None

    def combine(self, tg: TaskGrads) -> tuple[Tensor, dict[str, float]]:
        n = len(tg.names)
        if self.names is None:
            self.names, self.norm_ema = list(tg.names), [1.0] * n
        elif self.names != tg.names:
            raise ValueError(f"GCond was set up for tasks {self.names}, got {tg.names}")
        k = gram(tg.grads)
        raw = k.diagonal().clamp(min=0).sqrt().tolist()
        self.norm_ema = [
            self.ema * e + (1 - self.ema) * r for e, r in zip(self.norm_ema, raw, strict=True)
        ]
        cap = self.norm_cap
        scale = [1.0 if cap is None or r <= cap else cap / r for r in raw]
        coef = torch.diag(torch.tensor(scale, dtype=torch.float64))
        prev_dots = None
        if self.prev is not None:
            prev_dots = cross(tg.grads, self.prev.to(tg.grads.device))

        info = dict.fromkeys(("gcond/iters", "gcond/critical", "gcond/main", "gcond/weak"), 0.0)
        info["gcond/min_cos"] = 1.0
        for it in range(self.max_iters or 2 * n):
            m = coef @ k @ coef.T
            norms = m.diagonal().clamp(min=0).sqrt()
            pair = _most_conflicting(m, norms)
            if pair is None or pair[2] >= self.thresholds[2] - _TOL:
                break
            i, j, c = pair
            if it == 0:
                info["gcond/min_cos"] = c
            w, lo = self._arbitrate(i, j, coef, norms, prev_dots)
            self.history.append(tg.names[w])
            s_w, s_l = resolution(c, self.thresholds)
            d = float(m[w, lo])
            row_w, row_l = coef[w].clone(), coef[lo].clone()
            coef[w] = row_w - s_w * d / float(m[lo, lo]) * row_l
            coef[lo] = row_l - s_l * d / float(m[w, w]) * row_w
            info["gcond/iters"] = float(it + 1)
            info[f"gcond/{regime(c, self.thresholds)}"] += 1

        resolved = mix_rows(coef, tg.grads)
        self.prev = resolved
        self.prev_norm = (coef @ k @ coef.T).diagonal().clamp(min=0).sqrt().tolist()
        out = self._smooth(resolved.sum(0, dtype=torch.float32))
        for name, r, e in zip(tg.names, raw, self.norm_ema, strict=True):
            info[f"gcond/raw_norm/{name}"], info[f"gcond/norm_ema/{name}"] = r, e
        return out, info

    def _arbitrate(
        self, i: int, j: int, coef: Tensor, norms: Tensor, prev_dots: Tensor | None
    ) -> tuple[int, int]:
        """(winner, loser) among tasks i < j."""
        names = self.names or []
        if self.window > 0 and len(self.history) == self.window:
            if all(h == names[i] for h in self.history):
                return j, i
            if all(h == names[j] for h in self.history):
                return i, j
        ema = self.norm_ema
        ratio = [float(norms[x]) / ema[x] if ema[x] > 0 else 0.0 for x in (i, j)]
        total = sum(ratio)
        shares = [r / total for r in ratio] if total > 0 else [0.5, 0.5]
        w_stab, w_str = self.score_weights
        scores = []
        for x, share in zip((i, j), shares, strict=True):
            stab = 0.0
            denom = float(norms[x]) * self.prev_norm[x] if prev_dots is not None else 0.0
            if denom > 0:
                stab = max(0.0, float(coef[x] @ prev_dots[:, x]) / denom)
            scores.append(w_stab * stab + w_str * share)
        return (i, j) if scores[0] >= scores[1] else (j, i)

    def _smooth(self, g: Tensor) -> Tensor:
        """Bias-corrected momentum of the combined gradient (then its sign, if asked)."""
        self.t += 1
        if self.momentum is None:
            self.momentum = torch.zeros_like(g)
        self.momentum = self.momentum.to(g.device)
        self.momentum.mul_(self.beta).add_(g, alpha=1 - self.beta)
        m_hat = self.momentum / (1 - self.beta**self.t)
        return torch.sign(m_hat) if self.update == "sign" else m_hat

    def state_dict(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "norm_ema": list(self.norm_ema),
            "history": list(self.history),
            "prev": None if self.prev is None else self.prev.tolist(),
            "prev_norm": list(self.prev_norm),
            "momentum": None if self.momentum is None else self.momentum.tolist(),
            "t": self.t,
            "generator": generator_state(self.gen),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.names = d["names"]
        self.norm_ema = [float(x) for x in d["norm_ema"]]
        self.history = deque(d["history"], maxlen=self.window)
        self.prev = None if d["prev"] is None else torch.tensor(d["prev"], dtype=torch.float32)
        self.prev_norm = [float(x) for x in d["prev_norm"]]
        m = d["momentum"]
        self.momentum = None if m is None else torch.tensor(m, dtype=torch.float32)
        self.t = int(d["t"])
        set_generator_state(self.gen, d["generator"])


def _most_conflicting(m: Tensor, norms: Tensor) -> tuple[int, int, float] | None:
    """(i, j, cos) of the pair i < j with the lowest cosine, skipping zero gradients."""
    best = None
    n = m.shape[0]
    for i in range(n):
        for j in range(i + 1, n):
            denom = float(norms[i] * norms[j])
            if denom <= 0:
                continue
            c = min(max(float(m[i, j]) / denom, -1.0), 1.0)
            if best is None or c < best[2]:
                best = (i, j, c)
    return best
