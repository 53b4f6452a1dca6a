"""A folder of tensor shards on disk, one file per tensor, read back under a resident budget.

Each shard is a one-tensor safetensors file (fp32, fp16 or bf16 on disk) whose metadata
holds the sha256 of every block of rows, so a row range can be read and checked without
reading the whole tensor (the output layer of a 262k-token vocabulary is read in chunks).
A block is checked the first time this store reads it; files it writes itself are known
good. Writes are atomic: a temporary file is fsynced and renamed over the old shard
(``durable=False`` skips the fsyncs, for files a checkpoint makes durable when it links
them, such as the optimizer's every-step rewrites).

``get`` returns whole tensors in the compute dtype and keeps them in a least-recently-used
cache whose total size stays under ``resident_bytes``. A store given a ``matmul_dtype``
(bf16 under bf16 autocast) hands out matrices stored in that dtype as they are: every
matmul would cast them to it anyway, so this saves the upcast at load, the cast at each
use and half the cache. ``prefetch`` loads shards on a
background thread, so reading the next layer overlaps the current layer's compute. Reads
use ``pread``, not memory maps: the OS page cache holds the file, the process does not.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from math import prod
from pathlib import Path

import torch
from torch import Tensor

from gradaccum.checkpoint.durable import fsync_dir
from gradaccum.checkpoint.durable import pwrite_all as _pwrite_all  # tests patch it here
from gradaccum.errors import UserError
from gradaccum.memory.disk_errors import guarded

BLOCK_BYTES = 256 * 2**10
DISK_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_CODES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
_FROM_CODE = {code: dtype for dtype, code in _CODES.items()}
_HASH_HEX = 64


@dataclass(frozen=True)
class ShardInfo:
    """What a shard's header says: shape, dtype on disk, and where its data starts."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    data_start: int
    block_rows: int
    hashes: tuple[str, ...]

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_bytes(self) -> int:
        return prod(self.shape[1:]) * self.dtype.itemsize if self.shape else self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes


def block_rows_for(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Rows per checksummed block: a power of two, about BLOCK_BYTES of data."""
    row_bytes = prod(shape[1:]) * dtype.itemsize if shape else dtype.itemsize
    rows = 1
    while rows * 2 * row_bytes <= BLOCK_BYTES:
        rows *= 2
    return rows


def _header(name: str, shape: tuple[int, ...], dtype: torch.dtype, hashes: list[str]) -> bytes:
    nbytes = prod(shape) * dtype.itemsize
    meta = {"block_rows": str(block_rows_for(shape, dtype)), "sha256": ",".join(hashes)}
    entry = {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [0, nbytes]}
    text = json.dumps({"__metadata__": meta, name: entry}).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _block_count(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    rows = shape[0] if shape else 1
    return -(-rows // block_rows_for(shape, dtype)) if rows else 0


class ShardWriter:
    """Writes one shard row chunk by row chunk, hashing blocks on the way; atomic on close."""

    def __init__(
        self,
        store: ShardStore,
        name: str,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        durable: bool = True,
    ):
        self.durable = durable
        self.store, self.name, self.shape, self.dtype = store, name, shape, dtype
        self.path = store.path(name)
        self.block_bytes = block_rows_for(shape, dtype) * (
            prod(shape[1:]) * dtype.itemsize if shape else dtype.itemsize
        )
        self.hashes: list[str] = []
        self.pending = bytearray()
        blank = ["0" * _HASH_HEX] * _block_count(shape, dtype)
        self.header_len = len(_header(name, shape, dtype, blank))
        tag = f"{os.getpid()}.{threading.get_ident()}"
        self.temp = self.path.with_name(f".{self.path.name}.{tag}.tmp")
        self.fd: int | None = None

    def __enter__(self) -> ShardWriter:
        self.store._guard(self.name, lambda: self.path.parent.mkdir(parents=True, exist_ok=True))
        self.temp.unlink(missing_ok=True)
        self.fd = self.store._guard(
            self.name, lambda: os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        )
        self.store._guard(self.name, lambda: os.pwrite(self.fd, b"\0" * self.header_len, 0))
        self.offset = self.header_len
        return self

    def write(self, rows: Tensor) -> None:
        """Append rows (any float dtype; stored in the shard's dtype)."""
        data = rows.detach().to(self.dtype).contiguous().reshape(-1).view(torch.uint8).numpy()
        view = memoryview(data)
        if self.pending:
            take = min(len(view), self.block_bytes - len(self.pending))
            self.pending += view[:take]
            view = view[take:]
            if len(self.pending) == self.block_bytes:
                self._block(bytes(self.pending))
                self.pending.clear()
        while len(view) >= self.block_bytes:
            self._block(view[: self.block_bytes])
            view = view[self.block_bytes :]
        self.pending += view

    def _block(self, block: bytes | memoryview) -> None:
        self.hashes.append(hashlib.sha256(block).hexdigest())
        self.store._guard(self.name, lambda: _pwrite_all(self.fd, block, self.offset))
        self.offset += len(block)

    def _finish(self) -> None:
        if self.pending:
            self._block(bytes(self.pending))
        expected = self.header_len + prod(self.shape) * self.dtype.itemsize
        if self.offset != expected:
            raise ValueError(f"shard {self.name}: wrote {self.offset} of {expected} bytes")
        header = _header(self.name, self.shape, self.dtype, self.hashes)
        self.store._guard(self.name, lambda: _pwrite_all(self.fd, header, 0))
        if self.durable:
            self.store._guard(self.name, lambda: os.fsync(self.fd))

    def __exit__(self, exc_type: type | None, *rest: object) -> None:
        done = False
        try:
            if exc_type is None:
                self._finish()
                done = True
        finally:
            os.close(self.fd)
            if not done:
                self.temp.unlink(missing_ok=True)
        if not done:
            return
        try:
            self.store._guard(self.name, lambda: os.replace(self.temp, self.path))
        finally:
            self.temp.unlink(missing_ok=True)
        if self.durable:
            fsync_dir(self.path.parent)
        self.store._written(self.name, self.shape, self.dtype, self.header_len, self.hashes)


class ShardStore:
    """Tensors on disk under ``folder``, loaded on demand, cached LRU under a byte budget."""

    def __init__(
        self,
        folder: str | Path,
        resident_bytes: int = 0,
        compute_dtype: torch.dtype = torch.float32,
        matmul_dtype: torch.dtype | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.resident_bytes = resident_bytes
        self.compute_dtype = compute_dtype
        self.matmul_dtype = matmul_dtype
        self.bytes_read = 0
        self.bytes_written = 0
        self.peak_resident = 0
        self._info: dict[str, ShardInfo] = {}
        self._verified: set[tuple[str, int]] = set()
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self._cached_bytes = 0
        self._pending: dict[str, Future] = {}
        self._lock = threading.RLock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-prefetch")

    # -- files ------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        return self.folder / f"{name}.safetensors"

    def has(self, name: str) -> bool:
        return name in self._info or self.path(name).is_file()

    def _guard(self, name: str, action):  # noqa: ANN001, ANN202
        """Run a file operation; a full or unwritable disk becomes one clear line."""
        return guarded(action, f"write shard {name} in {self.folder}")

    def writer(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, durable: bool = True
    ) -> ShardWriter:
        """Stream a new version of shard ``name`` (use as a context manager)."""
        return ShardWriter(self, name, tuple(shape), dtype, durable)

    def put(self, name: str, tensor: Tensor, dtype: torch.dtype | None = None) -> None:
        """Write ``tensor`` as shard ``name`` atomically (in ``dtype`` on disk, default its own)."""
        with self.writer(name, tuple(tensor.shape), dtype or tensor.dtype) as w:
            flat = tensor.detach().reshape(tensor.shape[0] if tensor.dim() else 1, -1)
            step = max(1, BLOCK_BYTES * 16 // max(1, flat[:1].numel() * flat.element_size()))
            for start in range(0, flat.shape[0], step):
                w.write(flat[start : start + step])

    def _written(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, start: int, hashes: list[str]
    ) -> None:
        info = ShardInfo(shape, dtype, start, block_rows_for(shape, dtype), tuple(hashes))
        with self._lock:
            self._info[name] = info
            self._verified.update((name, b) for b in range(len(hashes)))
            self.bytes_written += start + info.nbytes
            self._drop(name)

    def info(self, name: str) -> ShardInfo:
        """The header of shard ``name`` (read once)."""
        with self._lock:
            if name in self._info:
                return self._info[name]
        path = self.path(name)
        try:
            with open(path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(length))
            size = path.stat().st_size
        except FileNotFoundError:
            raise UserError(
                f"shard {name} is missing from {self.folder}: rebuild the shard folder"
            ) from None
        except (struct.error, ValueError, UnicodeDecodeError, MemoryError) as error:
            raise UserError(f"shard {name} in {self.folder} is corrupt (bad header)") from error
        try:
            entry = header[name]
            meta = header["__metadata__"]
            shape = tuple(int(d) for d in entry["shape"])
            dtype = _FROM_CODE[entry["dtype"]]
            hashes = tuple(meta["sha256"].split(",")) if meta["sha256"] else ()
            info = ShardInfo(shape, dtype, 8 + length, int(meta["block_rows"]), hashes)
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"shard {name} in {self.folder} is corrupt (bad header)") from error
        if size != info.data_start + info.nbytes or len(hashes) != _block_count(shape, dtype):
            raise UserError(f"shard {name} in {self.folder} is corrupt (truncated)")
        with self._lock:
            self._info[name] = info
        return info

    # -- reading ----------------------------------------------------------------------
    def _read_blocks(self, name: str, first: int, last: int) -> Tensor:
        """Raw disk-dtype rows of blocks ``first..last-1``, checked against their sha256."""
        info = self.info(name)
        row0 = first * info.block_rows
        row1 = min(last * info.block_rows, info.rows)
        buf = torch.empty((row1 - row0) * info.row_bytes, dtype=torch.uint8)
        view = memoryview(buf.numpy())
        with open(self.path(name), "rb", buffering=0) as f:
            f.seek(info.data_start + row0 * info.row_bytes)
            got = 0
            while got < len(view):
                n = f.readinto(view[got:])
                if not n:
                    raise UserError(f"shard {name} in {self.folder} is corrupt (truncated)")
                got += n
        block_bytes = info.block_rows * info.row_bytes
        for b in range(first, last):
            if (name, b) in self._verified:
                continue
            lo = (b - first) * block_bytes
            if hashlib.sha256(view[lo : lo + block_bytes]).hexdigest() != info.hashes[b]:
                raise UserError(
                    f"shard {name} in {self.folder} is corrupt (checksum mismatch): "
                    "rebuild the shard folder"
                )
            with self._lock:
                self._verified.add((name, b))
        with self._lock:
            self.bytes_read += len(view)
        return buf.view(info.dtype).reshape(row1 - row0, *info.shape[1:])

    def _to_compute(self, raw: Tensor, matrix: bool = False) -> Tensor:
        """``raw`` in the compute dtype; a matrix already in ``matmul_dtype`` stays as it is."""
        if raw.dtype == self.compute_dtype or (matrix and raw.dtype == self.matmul_dtype):
            return raw
        return raw.to(self.compute_dtype)

    def _load(self, name: str) -> Tensor:
        info = self.info(name)
        raw = self._read_blocks(name, 0, len(info.hashes))
        return self._to_compute(raw, len(info.shape) >= 2).reshape(info.shape)

    def get(self, name: str) -> Tensor:
        """Shard ``name`` in the compute dtype (see ``matmul_dtype``), from the cache or disk."""
        with self._lock:
            if name in self._cache:
                self._cache.move_to_end(name)
                return self._cache[name]
            pending = self._pending.get(name)
        if pending is not None:
            pending.result()
            with self._lock:
                if name in self._cache:
                    self._cache.move_to_end(name)
                    return self._cache[name]
        tensor = self._load(name)
        self._keep(name, tensor)
        return tensor

    def rows(self, name: str, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` as ``get`` hands them out; from the cache if whole, else disk."""
        with self._lock:
            if name in self._cache:
                return self._cache[name][start:stop]
        info = self.info(name)
        first, last = start // info.block_rows, -(-stop // info.block_rows)
        raw = self._read_blocks(name, first, last)
        offset = first * info.block_rows
        return self._to_compute(raw[start - offset : stop - offset], len(info.shape) >= 2)

    def gather(self, name: str, index: Tensor) -> Tensor:
        """Rows at sorted unique ``index`` in the compute dtype (embedding lookups start the
        residual stream, which stays in it), reading only the blocks that hold them."""
        with self._lock:
            if name in self._cache:
                return self._to_compute(self._cache[name][index])
        info = self.info(name)
        blocks = torch.unique(index // info.block_rows).tolist()
        parts = []
        for b in blocks:
            raw = self._read_blocks(name, b, b + 1)
            lo = b * info.block_rows
            inside = index[(index >= lo) & (index < lo + info.block_rows)] - lo
            parts.append(self._to_compute(raw[inside]))
        return torch.cat(parts) if parts else torch.empty(0, *info.shape[1:])

    def prefetch(self, names: list[str]) -> None:
        """Start loading shards on the background thread (cached when they arrive)."""
        for name in names:
            if self.info(name).nbytes > self.resident_bytes:
                continue
            with self._lock:
                if name in self._cache or name in self._pending:
                    continue
                self._pending[name] = self._pool.submit(self._prefetch_one, name)

    def _prefetch_one(self, name: str) -> None:
        try:
            self._keep(name, self._load(name))
        finally:
            with self._lock:
                self._pending.pop(name, None)

    # -- the resident cache -------------------------------------------------------------
    def _keep(self, name: str, tensor: Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        with self._lock:
            if size > self.resident_bytes or name in self._cache:
                return
            self._cache[name] = tensor
            self._cached_bytes += size
            while self._cached_bytes > self.resident_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.numel() * old.element_size()
            self.peak_resident = max(self.peak_resident, self._cached_bytes)

    def _drop(self, name: str) -> None:
        with self._lock:
            old = self._cache.pop(name, None)
            if old is not None:
                self._cached_bytes -= old.numel() * old.element_size()

    def evict_all(self) -> None:
        """Empty the resident cache."""
        with self._lock:
            self._cache.clear()
            self._cached_bytes = 0

    def forget(self) -> None:
        """Drop cached tensors and headers: the folder's files were replaced from outside."""
        with self._lock:
            pending = list(self._pending.values())
        for future in pending:  # outside the lock: the loads take it when they finish
            future.result()
        with self._lock:
            self._info.clear()
            self._verified.clear()
        self.evict_all()

    def names(self) -> Iterator[str]:
        """Names of the shards on disk."""
        for path in sorted(self.folder.rglob("*.safetensors")):
            yield str(path.relative_to(self.folder))[: -len(".safetensors")]

    def close(self) -> None:
        """Finish background loads and empty the cache."""
        self._pool.shutdown(wait=True)
        self.evict_all()
