"""Transforms applied at the accumulation points of an optimizer step."""

from gradaccum.transforms.base import MicroContext, Transform, total_norm
from gradaccum.transforms.clip_global import ClipGlobal
from gradaccum.transforms.clip_micro import ClipMicro
from gradaccum.transforms.clip_per_sample import ClipPerSample
from gradaccum.transforms.spec import parse_clip

__all__ = [
    "ClipGlobal",
    "ClipMicro",
    "ClipPerSample",
    "MicroContext",
    "Transform",
    "parse_clip",
    "total_norm",
]
