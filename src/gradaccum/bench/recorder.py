"""An optimizer that records the gradient it is asked to apply, without changing weights."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class GradRecorder(torch.optim.SGD):
    """SGD at learning rate 0 that records the gradient it is asked to apply."""

    def __init__(self, params: Any) -> None:
        super().__init__(params, lr=0.0)
        self.grads: list[Tensor] = []

    def step(self, closure: Any = None) -> Any:
        self.grads = [p.grad.detach().clone() for g in self.param_groups for p in g["params"]]
        return super().step(closure)
