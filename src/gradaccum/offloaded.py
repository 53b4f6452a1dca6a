"""What the engine needs of gradients that accumulate outside ``p.grad`` (on disk, say).

Their owner (``gradaccum.memory.grad_spill.GradSpill``) takes each micro-batch's gradient
of some parameters out of ``.grad`` as soon as autograd writes it, and the optimizer reads
it back from there. The engine only opens and closes windows on it, adds its norm to the
window's gradient norm, and scales it: by the renormalization of a window whose item
count changed, and through window transforms that scale every gradient by one factor
(global clipping), which receive ``scale`` among their gradients.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


class OffloadedGradients(Protocol):
    scale: Tensor
    """A 0-d factor applied lazily to every offloaded gradient; scaled in place."""

    def begin_window(self) -> None:
        """Forget what has accumulated: the next gradient starts from zero."""
        ...

    def norm_sq(self) -> Tensor:
        """Squared L2 norm of the accumulated offloaded gradient, ``scale`` applied."""
        ...

    def scale_(self, factor: float) -> None:
        """Multiply the offloaded gradient by ``factor``."""
        ...
