"""Stream tensors into the safetensors format, one tensor in memory at a time.

`safetensors.torch.save` builds the whole file in memory first; on a phone-sized budget a
checkpoint must not need twice the model's size in RAM.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file

_DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.uint16: "U16",
    torch.uint32: "U32",
    torch.uint64: "U64",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e4m3fnuz: "F8_E4M3FNUZ",
    torch.float8_e5m2: "F8_E5M2",
    torch.float8_e5m2fnuz: "F8_E5M2FNUZ",
    torch.complex64: "C64",
}


def _as_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").resolve_conj().resolve_neg().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def safetensors_header(entries: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> bytes:
    """The header of a safetensors file whose tensors (name, dtype, shape) follow in order."""
    if sys.byteorder != "little":
        raise RuntimeError("safetensors files are little-endian; this machine is not")
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in entries:
        if dtype not in _DTYPE_NAMES:
            raise TypeError(f"checkpoint entry {name!r} has unsupported dtype {dtype}")
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        header[name] = {
            "dtype": _DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-(8 + len(encoded)) % 8)
    return struct.pack("<Q", len(encoded)) + encoded


def safetensors_chunks(tensors: dict[str, torch.Tensor]) -> Iterator[bytes | memoryview]:
    """Yield the bytes of a safetensors file holding `tensors`: header first, then data."""
    names = sorted(tensors)
    for name in names:
        tensor = tensors[name]
        if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided:
            raise TypeError(f"checkpoint entry {name!r} is not a dense tensor")
    yield safetensors_header([(n, tensors[n].dtype, tuple(tensors[n].shape)) for n in names])
    for name in names:
        yield _as_bytes(tensors[name])


def read_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file onto the CPU (no pickle involved), keys in sorted order."""
    return dict(sorted(load_file(path, device="cpu").items()))
