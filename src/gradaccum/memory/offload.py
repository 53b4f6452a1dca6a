"""Keep a model's parameters in a ShardStore and bring a module's in only while it runs.

Every sharded parameter is replaced by a placeholder of the same shape and dtype that
holds one element (so ``model.parameters()``, peft and optimizers still see it). A forward
pre-hook puts the real tensor (from the store's LRU cache or disk) in the module for the
length of its forward; a saved-tensor hook keeps autograd from holding on to it: a saved
weight is recorded as a key and read back from the store when backward needs it. With
per-block activation checkpointing the recomputation runs the same hooks again.

Gradients of trainable sharded parameters land in the placeholder's ``.grad`` as usual
(or in a ``GradSpill``'s files, see ``grad_spill.py``).
Two parameters are special because they can be huge (a 262k-token embedding): an
``nn.Embedding`` reads only the rows of the tokens in the batch, and the tied output
weight is exposed as a ``RowSource`` (``param.shard_rows``) that the chunked
cross-entropy streams; both add their gradients into ``.grad`` row by row.

A background thread prefetches the shards of the modules that ran next last time (the
order is learned from the previous step, recomputation included), overlapping I/O with
compute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from gradaccum.memory.shards import ShardStore


def placeholder(shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """A tensor of ``shape`` backed by one NaN element: what a sharded parameter holds."""
    return torch.full((1,), float("nan"), dtype=dtype).expand(shape)


def is_placeholder(t: Tensor) -> bool:
    return t.numel() > 1 and all(s == 0 for s in t.stride())


class _Materialize(torch.autograd.Function):
    """Hands a loaded weight to the module; its gradient goes to the placeholder parameter."""

    @staticmethod
    def forward(ctx, param: Tensor, value: Tensor) -> Tensor:  # type: ignore[override]
        return value.detach()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad, None


def _add_rows_grad(param: Tensor, index: Tensor | slice, grad: Tensor) -> None:
    """Add ``grad`` into rows ``index`` of ``param.grad`` in place (no full-size temporary),
    or of its file when a GradSpill holds the parameter's gradient."""
    spill = getattr(param, "grad_spill", None)
    if spill is not None:
        spill[0].add(spill[1], grad, index)
        return
    if param.grad is None:
        param.grad = torch.zeros(param.shape, dtype=param.dtype)
    if isinstance(index, slice):
        param.grad[index] += grad.to(param.dtype)
    else:
        param.grad.index_add_(0, index, grad.to(param.dtype))


class _GatherRows(torch.autograd.Function):
    """Embedding rows of the batch's tokens; their gradient is added into ``param.grad``."""

    @staticmethod
    def forward(ctx, param: Tensor, rows: Tensor, index: Tensor) -> Tensor:  # type: ignore[override]
        ctx.param = param
        ctx.save_for_backward(index)
        return rows.detach()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (index,) = ctx.saved_tensors
        _add_rows_grad(ctx.param, index, grad)
        return None, None, None


class ShardRows:
    """A sharded matrix as a ``RowSource`` for the chunked cross-entropy."""

    def __init__(self, store: ShardStore, name: str, param: Tensor) -> None:
        self.store, self.name, self.param = store, name, param
        self.shape = param.shape
        self.requires_grad = param.requires_grad

    def rows(self, start: int, stop: int) -> Tensor:
        return self.store.rows(self.name, start, stop)

    def add_grad(self, start: int, stop: int, grad: Tensor) -> None:
        _add_rows_grad(self.param, slice(start, stop), grad)


@dataclass(frozen=True)
class _Key:
    """A saved weight, recorded by name and view geometry instead of by value."""

    name: str
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int


@dataclass
class _Slot:
    module: nn.Module
    attr: str
    name: str  # the shard
    param: nn.Parameter


@dataclass
class _Prefetcher:
    """Learns the order modules run in and prefetches the shards of the next few."""

    ahead: int
    trace: list[str] = field(default_factory=list)
    pos: int = 0

    def advance(self, module: str) -> list[str]:
        if self.pos < len(self.trace) and self.trace[self.pos] == module:
            self.pos += 1
        else:
            found = _index(self.trace, module, self.pos)
            if found is None:
                found = _index(self.trace, module, 0)
            if found is None:
                self.trace.insert(self.pos, module)
                found = self.pos
            self.pos = found + 1
        return self.trace[self.pos : self.pos + self.ahead]


def _index(items: list[str], item: str, start: int) -> int | None:
    try:
        return items.index(item, start)
    except ValueError:
        return None


class ShardedParameters:
    """Moves a model's parameters into ``store`` and installs the hooks that bring them back.

    ``trainable=False`` shards only frozen parameters (LoRA: the adapters stay resident);
    ``True`` shards every parameter (full fine-tuning). Shards already in the store are
    used as they are, so a model built on the meta device can be attached to a prepared
    shard folder. Build the optimizer after this: parameters become new placeholder objects.
    """

    def __init__(
        self,
        model: nn.Module,
        store: ShardStore,
        *,
        trainable: bool = False,
        disk_dtype: torch.dtype | None = None,
        prefetch_ahead: int = 2,
    ) -> None:
        self.store = store
        self.slots: dict[str, list[_Slot]] = {}
        self.params: dict[str, nn.Parameter] = {}
        self._handles: list[RemovableHandle] = []
        self._live: dict[int, str] = {}
        self._contexts: list[object] = []
        self._prefetch = _Prefetcher(prefetch_ahead)
        names: dict[int, str] = {}
        for module_name, module in model.named_modules():
            for attr, p in list(module.named_parameters(recurse=False)):
                if p.requires_grad and not trainable:
                    continue
                qualified = f"{module_name}.{attr}" if module_name else attr
                name = names.setdefault(id(p), qualified)
                if name not in self.params:
                    if not store.has(name):
                        store.put(name, p, disk_dtype)
                    new = nn.Parameter(placeholder(p.shape, p.dtype), p.requires_grad)
                    new.shard_rows = ShardRows(store, name, new)  # type: ignore[attr-defined]
                    self.params[name] = new
                module._parameters[attr] = self.params[name]
                self.slots.setdefault(module_name, []).append(
                    _Slot(module, attr, name, self.params[name])
                )
        for module_name, slots in self.slots.items():
            module = slots[0].module
            self._handles.append(
                module.register_forward_pre_hook(self._pre(module_name, slots), with_kwargs=True)
            )
            self._handles.append(module.register_forward_hook(self._post(slots), always_call=True))

    # -- the hooks ------------------------------------------------------------------------
    def _pre(self, module_name: str, slots: list[_Slot]) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            upcoming = self._prefetch.advance(module_name)
            self.store.prefetch([s.name for m in upcoming for s in self.slots[m]])
            for slot in slots:
                if isinstance(module, nn.Embedding) and slot.attr == "weight":
                    args, kwargs = self._embedding_rows(module, slot, args, kwargs)
                    continue
                value = self.store.get(slot.name)
                self._live[value.untyped_storage().data_ptr()] = slot.name
                if slot.param.requires_grad:
                    value = _Materialize.apply(slot.param, value)
                module._parameters[slot.attr] = value
            self._contexts.append(self._enter_saved_tensor_hooks())
            return args, kwargs

        return hook

    def _enter_saved_tensor_hooks(self) -> object | None:
        """Record saved weights as keys, unless other hooks (checkpointing) already decide.

        Inside a checkpointed block, or its recomputation during backward, the checkpoint's
        own hooks must stay innermost; an enclosing sharded module's hooks already apply.
        """
        if not torch.is_grad_enabled():
            return None
        if torch._C._autograd._top_saved_tensors_default_hooks(False) is not None:
            return None
        context = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        context.__enter__()
        return context

    def _post(self, slots: list[_Slot]) -> Callable:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            context = self._contexts.pop() if self._contexts else None
            if context is not None:
                context.__exit__(None, None, None)  # type: ignore[attr-defined]
            for slot in slots:
                value = module._parameters[slot.attr]
                self._live.pop(value.untyped_storage().data_ptr(), None)
                module._parameters[slot.attr] = slot.param
                if isinstance(module, nn.Embedding) and slot.attr == "weight":
                    module.padding_idx = module._shard_padding_idx  # type: ignore[assignment]

        return hook

    def _embedding_rows(
        self, module: nn.Embedding, slot: _Slot, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict]:
        """Read only the batch's rows; renumber the ids to index them."""
        ids = args[0] if args else kwargs.pop("input")
        index, inverse = torch.unique(ids, return_inverse=True)
        rows = self.store.gather(slot.name, index)
        if slot.param.requires_grad:
            rows = _GatherRows.apply(slot.param, rows, index)
        module._parameters[slot.attr] = rows
        module._shard_padding_idx = module.padding_idx  # type: ignore[assignment]
        if module.padding_idx is not None:
            hit = (index == module.padding_idx).nonzero()
            module.padding_idx = int(hit[0, 0]) if len(hit) else None
        return (inverse, *args[1:]), kwargs

    def _pack(self, t: Tensor) -> Tensor | _Key:
        if t.device.type != "cpu" or t.is_sparse:
            return t
        name = self._live.get(t.untyped_storage().data_ptr())
        if name is None:
            return t
        return _Key(name, tuple(t.shape), tuple(t.stride()), t.storage_offset())

    def _unpack(self, saved: Tensor | _Key) -> Tensor:
        if not isinstance(saved, _Key):
            return saved
        return self.store.get(saved.name).as_strided(saved.size, saved.stride, saved.offset)

    # -- outside the forward pass -----------------------------------------------------------
    def remove(self) -> None:
        """Take the hooks out (parameters stay placeholders; see ``load``)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def load(self, name: str) -> Tensor:
        """The current value of sharded parameter ``name`` (read from the store)."""
        return self.store.get(name).reshape(self.params[name].shape)

    def named_trainable(self) -> list[tuple[str, nn.Parameter]]:
        """Sharded parameters that train, with their shard names."""
        return [(n, p) for n, p in self.params.items() if p.requires_grad]
