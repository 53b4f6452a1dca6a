"""Split an optimizer state dict into tensors and a JSON structure, and join them back.

The JSON side keeps what plain JSON would lose: integer keys, tuples (AdamW's `betas`),
non-finite floats and Python-vs-tensor scalars (`step`), so the round trip is exact.
"""

from __future__ import annotations

import math
from typing import Any

import torch

_TENSOR, _TUPLE, _FLOAT, _DICT = "__tensor__", "__tuple__", "__float__", "__dict__"
_MARKERS = {_TENSOR, _TUPLE, _FLOAT, _DICT}


def flatten_optimizer_state(
    state_dict: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return `(tensors, json_meta)` for `optimizer.state_dict()`; store them separately."""
    tensors: dict[str, torch.Tensor] = {}
    return tensors, _encode(state_dict, "", tensors)


def unflatten_optimizer_state(
    tensors: dict[str, torch.Tensor], json_meta: dict[str, Any]
) -> dict[str, Any]:
    """Rebuild the state dict that `flatten_optimizer_state` split, for `load_state_dict`."""
    return _decode(json_meta, tensors)


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        name = path or "tensor"
        while name in tensors:
            name += "_"
        tensors[name] = value
        return {_TENSOR: name}
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {_FLOAT: repr(value)}
    if isinstance(value, tuple | list):
        items = [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]
        return {_TUPLE: items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        pairs = [
            (k, _encode(v, f"{path}.{k}" if path else str(k), tensors)) for k, v in value.items()
        ]
        if all(isinstance(k, str) for k in value) and not (
            len(value) == 1 and set(value) & _MARKERS
        ):
            return dict(pairs)
        return {_DICT: [[_encode(k, path, tensors), v] for k, v in pairs]}
    raise TypeError(f"optimizer state entry {path!r} has unsupported type {type(value).__name__}")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and (marker := next(iter(value))) in _MARKERS:
        payload = value[marker]
        if marker == _TENSOR:
            return tensors[payload]
        if marker == _TUPLE:
            return tuple(_decode(v, tensors) for v in payload)
        if marker == _FLOAT:
            return float(payload)
        return {_decode(k, tensors): _decode(v, tensors) for k, v in payload}
    return {k: _decode(v, tensors) for k, v in value.items()}
