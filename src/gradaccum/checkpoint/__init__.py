"""Atomic, verifiable checkpoints for exact resume (`gradaccum finetune --resume`)."""

from gradaccum.checkpoint.optimizer_state import (
    flatten_optimizer_state,
    unflatten_optimizer_state,
)
from gradaccum.checkpoint.rng import capture_rng_state, restore_rng_state
from gradaccum.checkpoint.store import (
    Checkpoint,
    latest_checkpoint,
    load_checkpoint,
    published_steps,
    save_checkpoint,
    step_dir,
)

__all__ = [
    "Checkpoint",
    "capture_rng_state",
    "flatten_optimizer_state",
    "latest_checkpoint",
    "load_checkpoint",
    "published_steps",
    "restore_rng_state",
    "save_checkpoint",
    "step_dir",
    "unflatten_optimizer_state",
]
