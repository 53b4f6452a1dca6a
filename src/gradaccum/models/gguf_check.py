"""A cheap completeness check of a GGUF file, so a truncated download fails in one clear line.

It walks the header and tensor table (skipping the long vocabulary arrays without decoding them)
and checks that every tensor's data lies inside the file: about 0.1 s where `gguf.GGUFReader`,
which materialises every vocabulary string, takes over 10 s on Gemma 3.
"""

import mmap
import struct
from math import prod
from pathlib import Path

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from gradaccum.errors import UserError

_FIXED_WIDTH = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_DEFAULT_ALIGNMENT = 32


def check_gguf(path: Path) -> None:
    """Raise UserError unless `path` is a GGUF file whose header and tensor data are all there."""
    try:
        with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as blob:
            complete = _data_end(blob) <= len(blob)
    except (ValueError, struct.error, UnicodeDecodeError, OverflowError, KeyError) as error:
        raise UserError(_corrupt(path)) from error
    if not complete:
        raise UserError(_corrupt(path))


def _corrupt(path: Path) -> str:
    return f"{path} is not a valid GGUF file (truncated or corrupt): re-download or re-assemble it"


def _data_end(blob: mmap.mmap) -> int:
    """Offset one past the last tensor byte the header promises."""
    if blob[:4] != b"GGUF":
        raise ValueError("no GGUF magic")
    version, tensor_count, kv_count = struct.unpack_from("<IQQ", blob, 4)
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version}")
    pos, alignment = 24, _DEFAULT_ALIGNMENT
    for _ in range(kv_count):
        key, pos = _string(blob, pos)
        (value_type,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        if key == "general.alignment" and value_type == _UINT32:
            (alignment,) = struct.unpack_from("<I", blob, pos)
        pos = _skip_value(blob, pos, value_type)
    end = 0
    for _ in range(tensor_count):
        _, pos = _string(blob, pos)
        (dim_count,) = struct.unpack_from("<I", blob, pos)
        dims = struct.unpack_from(f"<{dim_count}Q", blob, pos + 4)
        ggml_type, offset = struct.unpack_from("<IQ", blob, pos + 4 + 8 * dim_count)
        pos += 4 + 8 * dim_count + 12
        block_size, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        end = max(end, offset + prod(dims) // block_size * block_bytes)
    data_start = -(-pos // alignment) * alignment
    return data_start + end


def _string(blob: mmap.mmap, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", blob, pos)
    end = pos + 8 + length
    if end > len(blob):
        raise ValueError("string runs past the end of the file")
    return blob[pos + 8 : end].decode("utf-8"), end


def _skip_value(blob: mmap.mmap, pos: int, value_type: int) -> int:
    if value_type in _FIXED_WIDTH:
        return pos + _FIXED_WIDTH[value_type]
    if value_type == _STRING:
        (length,) = struct.unpack_from("<Q", blob, pos)
        return pos + 8 + length
    if value_type != _ARRAY:
        raise ValueError(f"unknown GGUF value type {value_type}")
    element_type, count = struct.unpack_from("<IQ", blob, pos)
    pos += 12
    if element_type in _FIXED_WIDTH:
        return pos + count * _FIXED_WIDTH[element_type]
    for _ in range(count):
        pos = _skip_value(blob, pos, element_type)
        if pos > len(blob):
            raise ValueError("array runs past the end of the file")
    return pos
