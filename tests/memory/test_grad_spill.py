"""GradSpill: gradients added in files equal the same additions in memory."""

from __future__ import annotations

import errno
import os

import pytest
import torch
from torch import nn

from gradaccum.engine import Accumulator
from gradaccum.errors import UserError
from gradaccum.memory.grad_spill import GradSpill
from gradaccum.transforms.clip_micro import ClipMicro


def _params():
    g = torch.Generator().manual_seed(0)
    return {
        "emb": nn.Parameter(torch.randn(50, 6, generator=g)),
        "w": nn.Parameter(torch.randn(7, 5, generator=g)),
        "b": nn.Parameter(torch.randn(7, generator=g)),
    }


def _read(spill, name):
    p = spill.params[name]
    return spill.rows(name, 0, p.shape[0]).reshape(p.shape)


def test_whole_slice_and_row_additions_accumulate_like_tensors(tmp_path):
    params = _params()
    spill = GradSpill(tmp_path, params)
    assert set(spill.params) == {"emb", "w", "b"} and spill.resident_bytes == 0
    g = torch.Generator().manual_seed(1)
    expected = torch.zeros(50, 6)
    for _ in range(3):
        whole = torch.randn(50, 6, generator=g)
        spill.add("emb", whole)
        expected += whole
        rows = torch.randn(10, 6, generator=g)
        spill.add("emb", rows, slice(20, 30))
        expected[20:30] += rows
        index = torch.tensor([0, 1, 2, 7, 8, 49])
        picked = torch.randn(6, 6, generator=g)
        spill.add("emb", picked, index)
        expected.index_add_(0, index, picked)
    assert torch.allclose(_read(spill, "emb"), expected, atol=1e-6)
    assert spill.has("emb") and not spill.has("w")
    assert torch.equal(_read(spill, "w"), torch.zeros(7, 5))  # never written: zeros
    spill.scale_(0.5)
    spill.scale_(3.0)
    assert torch.allclose(_read(spill, "emb"), 1.5 * expected, atol=1e-5)
    ref = torch.linalg.vector_norm(1.5 * expected.double()) ** 2
    assert torch.allclose(spill.norm_sq(), ref, rtol=1e-6)


def test_a_new_window_starts_from_zero(tmp_path):
    spill = GradSpill(tmp_path, _params())
    spill.add("w", torch.ones(7, 5))
    spill.scale_(2.0)
    spill.begin_window()
    assert not spill.has("w") and float(spill.norm_sq()) == 0.0
    spill.add("w", torch.full((7, 5), 3.0), None)
    assert torch.equal(_read(spill, "w"), torch.full((7, 5), 3.0))
    spill.begin_window()
    spill.add("w", torch.ones(2, 5), slice(2, 4))  # partial first write: the rest is zero
    expected = torch.zeros(7, 5)
    expected[2:4] = 1
    assert torch.equal(_read(spill, "w"), expected)


def test_backward_empties_grad_into_the_file_and_resident_ones_stay(tmp_path):
    params = _params()
    spill = GradSpill(tmp_path, params, resident_bytes=4 * (7 * 5 + 7))
    assert set(spill.params) == {"emb"}  # the largest goes first, the rest fit
    x = torch.randn(4, 6)
    for _ in range(2):
        (params["emb"][:4] * x).sum().backward()
        (params["w"].sum() + params["b"].sum()).backward()
    assert params["emb"].grad is None and torch.allclose(_read(spill, "emb")[:4], 2 * x)
    assert torch.equal(params["w"].grad, torch.full((7, 5), 2.0))
    spill.close()
    assert not list(tmp_path.iterdir())  # files removed with the hooks
    (params["emb"] * 1).sum().backward()
    assert params["emb"].grad is not None


def test_a_full_disk_is_one_clear_error(tmp_path, monkeypatch):
    spill = GradSpill(tmp_path, _params())

    def full(*_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(UserError, match="disk is full"):
        spill.add("w", torch.ones(7, 5))


def test_the_engine_refuses_what_needs_gradients_in_memory(tmp_path):
    model = nn.Linear(3, 2)
    spill = GradSpill(tmp_path, dict(model.named_parameters()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="global clipping only"):
        Accumulator(
            model, optimizer, micro_batch_size=1, transforms=[ClipMicro(1.0)], offloaded=spill
        )
    with pytest.raises(ValueError, match="global clipping only"):
        Accumulator(
            model, optimizer, micro_batch_size=1, nonfinite="drop_micro_batch", offloaded=spill
        )
