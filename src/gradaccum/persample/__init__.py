"""Per-sample gradient norms and weighted sums, one rule per layer kind, by module type.

Importing this package registers the built-in rules: linear (``nn.Linear``, GPT-2's
``Conv1D``), embedding, conv, layer_norm and rms_norm. ``register`` adds more.
"""

from gradaccum.persample import conv, embedding, layer_norm, linear, rms_norm  # noqa: F401
from gradaccum.persample.collector import Collected, Collector
from gradaccum.persample.reference import clipped_reference, sample_grads
from gradaccum.persample.registry import Explicit, PerSample, register, rule_for

__all__ = [
    "Collected",
    "Collector",
    "Explicit",
    "PerSample",
    "clipped_reference",
    "register",
    "rule_for",
    "sample_grads",
]
