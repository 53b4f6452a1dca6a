"""SSIM: exact on constant images, 1 on identical ones, symmetric, and differentiable."""

from __future__ import annotations

import pytest
import torch

from gradaccum.experiments.ssim import K1, gaussian_window, ssim


def test_window_is_a_normalized_symmetric_gaussian():
    w = gaussian_window(7, 1.5, 2)
    assert w.shape == (2, 1, 7, 7)
    assert torch.allclose(w.sum((1, 2, 3)), torch.ones(2))
    assert torch.equal(w, w.flip(-1)) and torch.equal(w, w.transpose(-1, -2))
    assert float(w[0, 0, 3, 3]) == float(w.max())


def test_constant_images_give_the_luminance_term():
    a, b = 0.2, 0.7
    shape = (1, 1, 12, 12)  # fp64: in fp32 the variances are rounding noise of order 1e-8
    x, y = torch.full(shape, a, dtype=torch.float64), torch.full(shape, b, dtype=torch.float64)
    c1 = K1**2
    want = (2 * a * b + c1) / (a * a + b * b + c1)
    assert float(ssim(x, y)[0]) == pytest.approx(want, rel=1e-9)


def test_identical_images_score_one_and_noise_scores_less():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 16, 16, generator=g)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert torch.allclose(ssim(x, x), torch.ones(4), atol=1e-5)
    s = ssim(x, noisy)
    assert s.shape == (4,) and bool((s < 0.9).all())
    assert torch.allclose(s, ssim(noisy, x), atol=1e-6)


def test_ssim_is_differentiable():
    x = torch.rand(2, 1, 16, 16, requires_grad=True)
    (1 - ssim(x, torch.rand(2, 1, 16, 16))).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))
