"""Checkpoints: exact resume, RNG replay, pruning, damage detection and write faults."""

from __future__ import annotations

import errno
import json
import math
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gradaccum.checkpoint import (
    capture_rng_state,
    flatten_optimizer_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    step_dir,
    unflatten_optimizer_state,
)
from gradaccum.checkpoint.durable import write_durably
from gradaccum.checkpoint.tensorfile import read_tensor_file, safetensors_chunks
from gradaccum.errors import UserError

OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adamw-amsgrad": lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True),
    "sgd-plain": lambda p: torch.optim.SGD(p, lr=1e-2),
}


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Tanh(), nn.Linear(8, 1))


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    """Every step draws from all three global generators, so resume must restore each."""
    for _ in range(steps):
        x = torch.randn(6, 4) + float(np.random.rand()) + random.random()
        loss = model(x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _assert_identical(a: Any, b: Any) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        as_bits = [t.contiguous().reshape(-1).view(torch.uint8) for t in (a, b)]
        assert torch.equal(*as_bits)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_identical(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_identical(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


def _save(folder: Path, step: int, model: nn.Module, opt: torch.optim.Optimizer, **kw) -> Path:
    opt_tensors, opt_meta = flatten_optimizer_state(opt.state_dict())
    tensors = {"model": model.state_dict(), "optimizer": opt_tensors}
    meta = {"optimizer": opt_meta, "rng": capture_rng_state(), "config": {"lr": 1e-2}}
    return save_checkpoint(folder, step, tensors, meta, **kw)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_resume_is_bit_identical_to_uninterrupted_run(tmp_path: Path, name: str) -> None:
    _seed_all(0)
    reference = _model()
    _train(reference, OPTIMIZERS[name](reference.parameters()), 6)

    _seed_all(0)
    model = _model()
    optimizer = OPTIMIZERS[name](model.parameters())
    _train(model, optimizer, 3)
    _save(tmp_path, 3, model, optimizer)

    _seed_all(1234)
    model = _model()
    optimizer = OPTIMIZERS[name](model.parameters())
    checkpoint = load_checkpoint(tmp_path)
    model.load_state_dict(checkpoint.tensors["model"])
    state = unflatten_optimizer_state(checkpoint.tensors["optimizer"], checkpoint.meta["optimizer"])
    optimizer.load_state_dict(state)
    restore_rng_state(checkpoint.meta["rng"])
    _train(model, optimizer, 3)

    assert checkpoint.step == 3
    for resumed, expected in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(resumed, expected)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_state_round_trips_exactly_through_json(name: str) -> None:
    model = _model()
    optimizer = OPTIMIZERS[name](model.parameters())
    _train(model, optimizer, 2)
    original = optimizer.state_dict()
    tensors, meta = flatten_optimizer_state(original)
    meta = json.loads(json.dumps(meta, allow_nan=False))
    _assert_identical(unflatten_optimizer_state(tensors, meta), original)


_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5)
    | st.builds(torch.tensor, st.floats(allow_nan=False, width=32))
)
_key = st.integers(-3, 3) | st.sampled_from(["__tensor__", "__tuple__", "__dict__", "a", "0"])
_tree = st.recursive(
    _leaf,
    lambda kids: (
        st.lists(kids, max_size=3)
        | st.lists(kids, max_size=3).map(tuple)
        | st.dictionaries(_key, kids, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(tree=st.dictionaries(st.text(max_size=3), _tree, max_size=3))
def test_flatten_round_trips_any_nested_state(tree: dict[str, Any]) -> None:
    tensors, meta = flatten_optimizer_state(tree)
    meta = json.loads(json.dumps(meta, allow_nan=False))
    _assert_identical(unflatten_optimizer_state(tensors, meta), tree)


_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int8]
_DTYPES += [torch.uint8, torch.bool, torch.float8_e4m3fn, torch.uint16, torch.complex64]


@settings(max_examples=60, deadline=None)
@given(
    dtypes=st.lists(st.sampled_from(_DTYPES), max_size=4),
    shapes=st.lists(st.lists(st.integers(0, 4), max_size=3), min_size=4, max_size=4),
    seed=st.integers(0, 2**16),
    transpose=st.booleans(),
)
def test_streamed_file_loads_bit_exactly_with_safetensors(
    dtypes: list[torch.dtype], shapes: list[list[int]], seed: int, transpose: bool
) -> None:
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, (dtype, shape) in enumerate(zip(dtypes, shapes, strict=False)):
        numel = math.prod(shape)
        high = 2 if dtype == torch.bool else 256
        raw = torch.randint(0, high, (numel * dtype.itemsize,), dtype=torch.uint8, generator=gen)
        tensor = raw.view(dtype).reshape(shape)
        tensors[f"t{i}"] = tensor.mT if transpose and tensor.dim() >= 2 else tensor
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.safetensors"
        write_durably(path, safetensors_chunks(tensors))
        _assert_identical(
            read_tensor_file(path), {k: v.contiguous() for k, v in sorted(tensors.items())}
        )


def test_rng_capture_restore_replays_the_same_draws() -> None:
    random.gauss(0, 1)  # leave a cached Gaussian in each generator that has one
    np.random.standard_normal()

    def draws() -> list[Any]:
        return [
            random.random(),
            random.gauss(0, 1),
            np.random.rand(3).tolist(),
            np.random.standard_normal(),
            torch.rand(3).tolist(),
            torch.randn(2).tolist(),
            torch.nn.functional.dropout(torch.ones(8), 0.5).tolist(),
        ]

    state = json.loads(json.dumps(capture_rng_state()))
    first = draws()
    restore_rng_state(state)
    assert draws() == first


def _tiny(value: float) -> dict[str, dict[str, torch.Tensor]]:
    return {"model": {"w": torch.full((3,), value)}}


def _steps_on_disk(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_keep_last_prunes_older_checkpoints(tmp_path: Path) -> None:
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, _tiny(step), {"step": step}, keep_last=2)
    assert _steps_on_disk(tmp_path) == ["step-00000004", "step-00000005"]
    save_checkpoint(tmp_path, 6, _tiny(6), {}, keep_last=1)
    assert _steps_on_disk(tmp_path) == ["step-00000006"]
    with pytest.raises(UserError, match="--keep-last must be at least 1"):
        save_checkpoint(tmp_path, 7, _tiny(7), {}, keep_last=0)


def test_saving_an_earlier_step_discards_the_abandoned_later_ones(tmp_path: Path) -> None:
    for step in (4, 5):
        save_checkpoint(tmp_path, step, _tiny(step), {})
    save_checkpoint(tmp_path, 3, _tiny(30), {})
    assert _steps_on_disk(tmp_path) == ["step-00000003"]
    save_checkpoint(tmp_path, 3, _tiny(31), {"again": True})
    checkpoint = load_checkpoint(tmp_path, 3)
    assert checkpoint.meta == {"again": True}
    assert torch.equal(checkpoint.tensors["model"]["w"], torch.full((3,), 31.0))
    assert _steps_on_disk(tmp_path) == ["step-00000003"]


def _flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-5])


@pytest.mark.parametrize(
    ("file", "damage", "problem"),
    [
        ("model.safetensors", _flip_bit, "is corrupt (sha256 mismatch)"),
        ("optimizer.safetensors", _truncate, "is truncated ("),
        ("meta.json", Path.unlink, "is missing"),
        ("manifest.json", lambda p: p.write_text("{not json"), "is unreadable"),
    ],
)
def test_damaged_file_is_named_and_latest_falls_back(
    tmp_path: Path, file: str, damage: Callable[[Path], Any], problem: str
) -> None:
    model = _model()
    optimizer = OPTIMIZERS["adamw"](model.parameters())
    _train(model, optimizer, 1)
    _save(tmp_path, 1, model, optimizer)
    _train(model, optimizer, 1)
    _save(tmp_path, 2, model, optimizer)
    damage(step_dir(tmp_path, 2) / file)

    expected = f"checkpoint {step_dir(tmp_path, 2) / file} {problem}"
    with pytest.raises(UserError, match="fall back to the previous checkpoint") as info:
        load_checkpoint(tmp_path)
    assert str(info.value).startswith(expected)
    assert latest_checkpoint(tmp_path) == 1
    assert load_checkpoint(tmp_path, 1).step == 1


def test_damage_to_the_only_checkpoint_says_start_fresh(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, _tiny(1), {})
    _flip_bit(step_dir(tmp_path, 1) / "model.safetensors")
    with pytest.raises(UserError, match="delete that folder and start without --resume"):
        load_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path) is None


def test_missing_checkpoints_are_user_errors(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "absent") is None
    with pytest.raises(UserError, match="no checkpoint in"):
        load_checkpoint(tmp_path / "absent")
    save_checkpoint(tmp_path, 1, _tiny(1), {})
    with pytest.raises(UserError, match=r"no complete checkpoint for step 9 .*\(found: 1\)"):
        load_checkpoint(tmp_path, 9)


def test_latest_ignores_half_written_folders_and_save_cleans_them(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, _tiny(1), {})
    half = tmp_path / ".tmp-step-00000002-deadbeef"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\x08\x00\x00")
    (tmp_path / "step-00000003").mkdir()  # e.g. an interrupted copy: no manifest
    assert latest_checkpoint(tmp_path) == 1
    assert load_checkpoint(tmp_path).step == 1
    save_checkpoint(tmp_path, 2, _tiny(2), {})
    assert not half.exists()


def _failing(real: Callable[..., Any], nth: int, err: int, short: bool = False) -> Callable:
    """Wrap an os function to fail on its nth call; `short` first writes half the bytes."""
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if short and calls == nth:
            fd, data = args
            return real(fd, memoryview(data)[: max(len(data) // 2, 1)])
        if calls == nth + short:
            raise OSError(err, os.strerror(err))
        return real(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize(
    ("func", "nth", "err", "short", "fix"),
    [
        ("write", 1, errno.ENOSPC, True, "free space or choose another --out"),
        ("write", 3, errno.ENOSPC, False, "free space or choose another --out"),
        ("fsync", 4, errno.ENOSPC, False, "free space or choose another --out"),
        ("fsync", 5, errno.EIO, False, "check that folder or choose another --out"),
        ("open", 1, errno.EACCES, False, "fix the folder's permissions"),
        ("rename", 1, errno.EROFS, False, "choose a writable --out"),
    ],
)
def test_write_fault_keeps_previous_checkpoint_and_no_leftovers(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    func: str,
    nth: int,
    err: int,
    short: bool,
    fix: str,
) -> None:
    model = _model()
    optimizer = OPTIMIZERS["adamw"](model.parameters())
    _train(model, optimizer, 1)
    _save(tmp_path, 1, model, optimizer)
    saved = {k: v.clone() for k, v in sorted(model.state_dict().items())}
    _train(model, optimizer, 1)

    with monkeypatch.context() as patch:
        patch.setattr(os, func, _failing(getattr(os, func), nth, err, short))
        with pytest.raises(UserError) as info:
            _save(tmp_path, 2, model, optimizer)

    assert str(info.value) == f"cannot write checkpoint to {tmp_path}: {os.strerror(err)}; " + (
        fix if fix.endswith("--out") else f"{fix} or choose another --out"
    )
    assert _steps_on_disk(tmp_path) == ["step-00000001"]
    assert latest_checkpoint(tmp_path) == 1
    _assert_identical(load_checkpoint(tmp_path).tensors["model"], saved)


def test_unwritable_location_and_bad_tensors_leave_nothing_behind(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match=f"cannot write checkpoint to {blocker / 'run'}: Not a dir"):
        save_checkpoint(blocker / "run", 1, _tiny(1), {})
    with pytest.raises(TypeError, match="unsupported dtype"):
        save_checkpoint(
            tmp_path / "run", 1, {"model": {"z": torch.zeros(2, dtype=torch.cdouble)}}, {}
        )
    assert _steps_on_disk(tmp_path / "run") == []


def test_files_are_linked_in_verified_and_survive_their_source(tmp_path: Path) -> None:
    """``files=`` keeps a file's state as of the save, even after the source is replaced."""
    source = tmp_path / "work" / "sub" / "a.bin"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"version one")
    save_checkpoint(tmp_path / "ckpt", 1, {}, {"k": 1}, files={"sub/a.bin": source})
    replacement = source.with_name("new")
    replacement.write_bytes(b"version two")
    os.replace(replacement, source)  # how shard files change: a new file, never in place
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.tensors == {} and ckpt.files["sub/a.bin"].read_bytes() == b"version one"
    ckpt.files["sub/a.bin"].write_bytes(b"version 0ne")
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="relative"):
        save_checkpoint(tmp_path / "ckpt", 2, {}, {}, files={"../x": source})
