"""scikit-learn images: a fixed held-out split in [0, 1], and masks of the asked ratio."""

from __future__ import annotations

import torch

from gradaccum.experiments.images import load_images, random_mask


def test_split_is_fixed_and_in_the_unit_interval():
    a = load_images(size=16, patches_per_image=20)
    b = load_images(size=16, patches_per_image=20)
    assert a.train.shape == (1438 + 2 * 20, 1, 16, 16)
    assert a.held_out.shape == (359 + 2 * 5, 1, 16, 16)
    assert torch.equal(a.held_out, b.held_out) and torch.equal(a.train, b.train)
    for x in (a.train, a.held_out):
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_mask_blanks_whole_squares_at_about_the_ratio():
    m = random_mask((64, 1, 16, 16), 2, 0.5, torch.Generator().manual_seed(0))
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    squares = m[:, :, ::2, ::2]
    assert torch.equal(m, squares.repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert abs(1 - float(m.mean()) - 0.5) < 0.05
