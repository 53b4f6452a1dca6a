"""Which samples each optimizer step sees: a seeded, resumable order of windows."""

from collections.abc import Iterator
from typing import Any

import numpy as np

from gradaccum.errors import UserError


class WindowSampler:
    """Endless iterator of windows (lists of sample indices, one per optimizer step).

    Epoch e is a permutation seeded by (seed, e), cut into windows of global_batch; its
    last window is short (or dropped with drop_last) and never mixes with the next epoch.
    state_dict() after k windows lets a fresh sampler yield exactly the windows k+1, ...
    """

    def __init__(self, n_samples: int, global_batch: int, seed: int, drop_last: bool = False):
        if n_samples < 1:
            raise UserError("the corpus gave no training samples; give more text")
        if global_batch < 1:
            raise UserError(f"global batch {global_batch} must be at least 1")
        if seed < 0:
            raise UserError(f"seed {seed} is negative; use a seed >= 0")
        if drop_last and global_batch > n_samples:
            raise UserError(
                f"global batch {global_batch} exceeds the {n_samples} samples and drop_last "
                "leaves no step; lower the global batch or keep the short last window"
            )
        self.n_samples = n_samples
        self.global_batch = global_batch
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0
        self._cached: tuple[int, np.ndarray] | None = None

    @property
    def steps_per_epoch(self) -> int:
        """Windows (optimizer steps) in one epoch."""
        if self.drop_last:
            return self.n_samples // self.global_batch
        return -(-self.n_samples // self.global_batch)

    def window(self, epoch: int, position: int) -> list[int]:
        """The sample indices of window `position` of `epoch` (pure: state is untouched)."""
        if not 0 <= position < self.steps_per_epoch:
            raise IndexError(f"position {position} outside 0..{self.steps_per_epoch - 1}")
        start = position * self.global_batch
        return self._permutation(epoch)[start : start + self.global_batch].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        return self

    def __next__(self) -> list[int]:
        indices = self.window(self.epoch, self.position)
        self.position += 1
        if self.position == self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return indices

    def state_dict(self) -> dict[str, Any]:
        """Where the sampler is, plus its settings so a mismatched resume is caught."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "n_samples": self.n_samples,
            "global_batch": self.global_batch,
            "seed": self.seed,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a state_dict(); settings must match those the state was made with."""
        for key in ("n_samples", "global_batch", "seed", "drop_last"):
            if state[key] != getattr(self, key):
                raise UserError(
                    f"the checkpoint was made with {key}={state[key]} but this run has "
                    f"{getattr(self, key)}; resume with the same data and settings"
                )
        if not 0 <= state["position"] < self.steps_per_epoch or state["epoch"] < 0:
            raise ValueError(f"corrupt sampler state {state}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._cached = (epoch, rng.permutation(self.n_samples))
        return self._cached[1]
