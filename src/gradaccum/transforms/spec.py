"""Parse a clipping spec such as ``none``, ``global:1.0``, ``micro:0.5`` or ``per-sample:1``."""

from __future__ import annotations

from gradaccum.errors import UserError
from gradaccum.transforms.base import Transform
from gradaccum.transforms.clip_global import ClipGlobal
from gradaccum.transforms.clip_micro import ClipMicro
from gradaccum.transforms.clip_per_sample import ClipPerSample

_KINDS = {"global": ClipGlobal, "micro": ClipMicro, "per-sample": ClipPerSample}
FORMS = (
    "none, global:MAX_NORM, micro:MAX_NORM, per-sample:LAMBDA "
    "(join several with '+', e.g. per-sample:1+global:1)"
)


def parse_clip(spec: str | None) -> list[Transform]:
    """Transforms for a clip spec; several kinds compose when joined with ``+``."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return []
    transforms: list[Transform] = []
    for part in spec.split("+"):
        kind, _, value = part.strip().partition(":")
        if kind not in _KINDS:
            raise UserError(f"unknown clip kind {kind!r} in --clip {spec!r}: use {FORMS}")
        try:
            threshold = float(value)
        except ValueError:
            raise UserError(f"--clip {spec!r}: {kind} needs a number, e.g. {kind}:1.0") from None
        if not threshold > 0:
            raise UserError(f"--clip {spec!r}: the threshold must be > 0")
        transforms.append(_KINDS[kind](threshold))
    return transforms
