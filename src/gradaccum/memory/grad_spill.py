"""Gradients of sharded parameters that accumulate in files instead of memory.

Full fine-tuning under a budget cannot keep one fp32 gradient per weight resident (Gemma 3
270M: 1.07 GB). ``GradSpill`` takes over the gradients of the parameters it is given:
each one is a raw fp32 file (``NAME.grad``) that a micro-batch's gradient is added into
as soon as autograd has produced it (a post-accumulate-grad hook empties ``.grad``), or
row by row for embeddings and the streamed output weight. The files are read with
``pread``, so only the page cache holds them, never this process.

Parameters are spilled largest first until the ones left fit ``resident_bytes``; those
keep their gradient in ``.grad`` as usual. The spilled gradient carries one lazy factor,
``scale`` (a 0-d tensor), which normalization and global clipping multiply in place and
``rows`` applies when the optimizer reads it: this is the engine's ``OffloadedGradients``.
A window's gradient is transient: a crash loses it with the window, so the files have no
checksums and are simply zeroed (truncated) when first written in a window.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from gradaccum.checkpoint.durable import pwrite_all
from gradaccum.errors import UserError
from gradaccum.memory.disk_errors import guarded

CHUNK_BYTES = 8 * 2**20  # rows read at a time by ``norm_sq``


class GradSpill:
    """The gradients of ``params`` (shard name -> parameter) in files under ``folder``."""

    def __init__(
        self, folder: str | Path, params: dict[str, nn.Parameter], resident_bytes: int = 0
    ) -> None:
        self.folder = Path(folder)
        self._guard(lambda: self.folder.mkdir(parents=True, exist_ok=True))
        self.scale = torch.ones((), dtype=torch.float64)
        self.params: dict[str, nn.Parameter] = {}
        self.bytes_read = 0
        self.bytes_written = 0
        self._fds: dict[str, int] = {}
        self._written: set[str] = set()
        self._handles = []
        kept = sum(4 * p.numel() for p in params.values())
        for name, p in sorted(params.items(), key=lambda kv: -kv[1].numel()):
            if kept <= resident_bytes:
                break
            kept -= 4 * p.numel()
            self.params[name] = p
            p.grad_spill = (self, name)  # type: ignore[attr-defined]
            self._handles.append(p.register_post_accumulate_grad_hook(self._hook(name)))
        self.resident_bytes = kept

    # -- where gradients come in ----------------------------------------------------------
    def _hook(self, name: str):  # noqa: ANN202
        def hook(p: Tensor) -> None:
            grad, p.grad = p.grad, None
            if grad is not None:  # None when the rows went straight to the file
                self.add(name, grad)

        return hook

    def add(self, name: str, grad: Tensor, index: Tensor | slice | None = None) -> None:
        """Add ``grad`` to the gradient of ``name``: all of it, rows ``index`` (a slice or
        sorted unique row numbers), in place on disk."""
        p = self.params[name]
        rows = p.shape[0] if p.dim() else 1
        row_bytes = 4 * (p[:1].numel() if p.dim() else 1)
        fresh = name not in self._written
        fd = self._open(name, rows * row_bytes)
        grad = grad.detach().to(torch.float32).reshape(-1, row_bytes // 4)
        if index is None:
            index = slice(0, rows)
        if isinstance(index, slice):
            self._add_run(fd, index.start * row_bytes, grad, fresh)
            return
        start, count = 0, len(index)
        ids = index.tolist()
        while start < count:  # one read-modify-write per run of consecutive rows
            stop = start + 1
            while stop < count and ids[stop] == ids[stop - 1] + 1:
                stop += 1
            self._add_run(fd, ids[start] * row_bytes, grad[start:stop])
            start = stop

    def _open(self, name: str, nbytes: int) -> int:
        fd = self._fds.get(name)
        if fd is None:
            path = self.folder / f"{name.replace('/', '__')}.grad"
            fd = self._guard(lambda: os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            self._fds[name] = fd
        if name not in self._written:  # a fresh window: all zeros (a sparse file)
            self._guard(lambda: (os.ftruncate(fd, 0), os.ftruncate(fd, nbytes)))
            self._written.add(name)
        return fd

    def _add_run(self, fd: int, offset: int, grad: Tensor, fresh: bool = False) -> None:
        """Add ``grad`` to the rows at ``offset``; ``fresh``: they are zeros, just write."""
        if fresh:
            current = grad.contiguous()
        else:
            current = self._pread(fd, offset, grad.shape)
            current += grad
        data = memoryview(current.numpy()).cast("B")
        self._guard(lambda: pwrite_all(fd, data, offset))
        self.bytes_written += len(data)

    def _pread(self, fd: int, offset: int, shape: torch.Size | tuple[int, ...]) -> Tensor:
        out = torch.empty(shape, dtype=torch.float32)
        view = memoryview(out.numpy()).cast("B")
        done = 0
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done)
            if got == 0:
                raise UserError(f"gradient file in {self.folder} was truncated while in use")
            done += got
        self.bytes_read += len(view)
        return out

    # -- what the optimizer and the engine read -------------------------------------------
    def has(self, name: str) -> bool:
        """Whether ``name``'s gradient is spilled and got something this window."""
        return name in self._written

    def owns(self, name: str) -> bool:
        return name in self.params

    def rows(self, name: str, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` of ``name``'s gradient (times ``scale``), as (rows, -1)."""
        p = self.params[name]
        width = p[:1].numel() if p.dim() else 1
        if name not in self._written:
            return torch.zeros(stop - start, width)
        out = self._pread(self._fds[name], start * width * 4, (stop - start, width))
        factor = float(self.scale)
        return out.mul_(factor) if factor != 1.0 else out

    def norm_sq(self) -> Tensor:
        """Squared L2 norm of the spilled gradient (scale applied), in float64."""
        total = torch.zeros((), dtype=torch.float64)
        for name in sorted(self._written):
            p = self.params[name]
            rows = p.shape[0] if p.dim() else 1
            width = p[:1].numel() if p.dim() else 1
            step = max(1, CHUNK_BYTES // (4 * width))
            for start in range(0, rows, step):
                stop = min(rows, start + step)
                chunk = self._pread(self._fds[name], start * width * 4, (stop - start, width))
                total += torch.linalg.vector_norm(chunk, dtype=torch.float64) ** 2
        return total * self.scale**2

    def scale_(self, factor: float) -> None:
        self.scale.mul_(factor)

    def begin_window(self) -> None:
        """Forget the gradient: the next add of each parameter starts from zero."""
        self._written.clear()
        self.scale.fill_(1.0)

    def close(self) -> None:
        """Remove the hooks and the files."""
        for handle in self._handles:
            handle.remove()
        for p in self.params.values():
            if hasattr(p, "grad_spill"):
                del p.grad_spill
        for name, fd in self._fds.items():
            os.close(fd)
            (self.folder / f"{name.replace('/', '__')}.grad").unlink(missing_ok=True)
        self._fds.clear()
        self._written.clear()

    def _guard(self, action):  # noqa: ANN001, ANN202
        return guarded(action, f"keep gradients in {self.folder}")
