"""AdamW whose weights and moments stay on disk: it steps one parameter, one row chunk at a time.

For a sharded parameter, a step reads a chunk of the weight and of both moments from the
ShardStore, applies ``torch.optim``'s own single-tensor AdamW update to it (so the result
is bit-identical to ``torch.optim.AdamW`` on CPU), and streams the three chunks into new
shard versions that replace the old ones atomically. The gradient comes from ``.grad``
(released as soon as its parameter is done) or, for parameters whose gradient a
``GradSpill`` keeps on disk, from that file a chunk at a time. Weights, gradients and
moments are therefore never all resident together: at any time only one chunk of each
(``CHUNK_BYTES``) is.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.optim.adam import adam

from gradaccum.memory.grad_spill import GradSpill
from gradaccum.memory.offload import ShardedParameters

CHUNK_BYTES = 8 * 2**20
MOMENTS = ("exp_avg", "exp_avg_sq")


class ShardedAdamW(torch.optim.Optimizer):
    """``torch.optim.AdamW`` for parameters kept in shards (and any resident ones).

    ``params`` are the trainable parameters (placeholders of ``sharded`` and ordinary
    tensors alike). Moments of sharded parameters live in the store as ``exp_avg/NAME``
    and ``exp_avg_sq/NAME``; ``io`` reports the bytes the last step read and wrote.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        sharded: ShardedParameters,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        spill: GradSpill | None = None,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.sharded = sharded
        self.store = sharded.store
        self.spill = spill
        self._names = {id(p): n for n, p in sharded.params.items()}
        self.io = {"read_bytes": 0, "written_bytes": 0}

    def resident_state_bytes(self) -> int:
        """Optimizer state that will be held in memory: moments of resident parameters only."""
        return sum(
            2 * p.numel() * p.element_size()
            for g in self.param_groups
            for p in g["params"]
            if id(p) not in self._names and not self.state.get(p)
        )

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201
        """One AdamW update of every parameter that has a gradient."""
        loss = closure() if closure is not None else None
        read0, written0 = self._io()
        for group in self.param_groups:
            for p in group["params"]:
                name = self._names.get(id(p))
                spilled = name is not None and self.spill is not None and self.spill.has(name)
                if p.grad is None and not spilled:
                    continue
                state = self.state[p]
                if "step" not in state:
                    state["step"] = torch.tensor(0.0)
                if name is None:
                    self._step_resident(p, state, group)
                else:
                    self._step_sharded(name, p, state, group)
                    p.grad = None
                state["step"] += 1
        read1, written1 = self._io()
        self.io = {"read_bytes": read1 - read0, "written_bytes": written1 - written0}
        return loss

    def _io(self) -> tuple[int, int]:
        spill = self.spill
        return (
            self.store.bytes_read + (spill.bytes_read if spill else 0),
            self.store.bytes_written + (spill.bytes_written if spill else 0),
        )

    def _step_resident(self, p: Tensor, state: dict, group: dict) -> None:
        for key in MOMENTS:
            if key not in state:
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        _update(p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"], group)

    def _step_sharded(self, name: str, p: nn.Parameter, state: dict, group: dict) -> None:
        shape = tuple(p.shape)
        rows = shape[0] if shape else 1
        row_bytes = max(1, p[:1].numel() * 4) if shape else 4
        chunk = max(1, CHUNK_BYTES // row_bytes)
        fresh = state["step"].item() == 0
        grad = p.grad.reshape(rows, -1) if p.grad is not None else None

        def grad_rows(start: int, stop: int) -> Tensor:
            if grad is not None:
                return grad[start:stop]
            return self.spill.rows(name, start, stop)  # type: ignore[union-attr]

        disk = self.store.info(name).dtype
        # Not fsynced: a checkpoint links and fsyncs these files; a crash between
        # checkpoints resumes from the checkpoint's copies (cli/run_state.py).
        with (
            self.store.writer(name, shape, disk, durable=False) as w_param,
            self.store.writer(f"exp_avg/{name}", shape, torch.float32, False) as w_avg,
            self.store.writer(f"exp_avg_sq/{name}", shape, torch.float32, False) as w_sq,
        ):
            for start in range(0, rows, chunk):
                stop = min(start + chunk, rows)
                value = self.store.rows(name, start, stop).reshape(stop - start, -1).clone()
                if fresh:
                    avg, sq = torch.zeros_like(value), torch.zeros_like(value)
                else:
                    avg, sq = (
                        self.store.rows(f"{m}/{name}", start, stop).reshape_as(value).clone()
                        for m in MOMENTS
                    )
                _update(value, grad_rows(start, stop), avg, sq, state["step"], group)
                w_param.write(value)
                w_avg.write(avg)
                w_sq.write(sq)


def _update(p: Tensor, g: Tensor, avg: Tensor, sq: Tensor, step: Tensor, group: dict) -> None:
    """torch.optim's single-tensor AdamW, in place, with ``step`` steps already taken."""
    beta1, beta2 = group["betas"]
    adam(
        [p],
        [g],
        [avg],
        [sq],
        [],
        [step.clone()],
        foreach=False,
        fused=False,
        decoupled_weight_decay=True,
        amsgrad=False,
        beta1=beta1,
        beta2=beta2,
        lr=group["lr"],
        weight_decay=group["weight_decay"],
        eps=group["eps"],
        maximize=False,
    )
