"""PCGrad against its definition, computed directly on the vectors."""

from __future__ import annotations

import torch

from gradaccum.multitask import PCGrad
from tests.multitask import task_grads


def reference_pcgrad(grads: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Algorithm 1 of Yu et al. on the vectors themselves, in fp64."""
    grads = grads.double()
    out = grads.clone()
    for i in range(len(grads)):
        for j in torch.randperm(len(grads), generator=gen).tolist():
            dot = out[i] @ grads[j]
            if j != i and dot < 0:
                out[i] -= dot / (grads[j] @ grads[j]) * grads[j]
    return out


def test_two_conflicting_vectors_no_longer_conflict():
    rows = torch.tensor([[1.0, 0.2, -0.5], [-0.8, 1.0, 0.3]])
    g1, g2 = rows.double()
    assert g1 @ g2 < 0
    projected = PCGrad().project(task_grads(rows)).double()
    torch.testing.assert_close(projected[0], g1 - (g1 @ g2) / (g2 @ g2) * g2)
    torch.testing.assert_close(projected[1], g2 - (g1 @ g2) / (g1 @ g1) * g1)
    combined, info = PCGrad().combine(task_grads(rows))
    for v in (*projected, combined.double()):
        for g in (g1, g2):
            assert v @ g >= -1e-6
    assert info["pcgrad/projections"] == 2.0


def test_matches_the_vector_algorithm_with_the_same_random_order():
    grads = torch.randn(4, 9, generator=torch.Generator().manual_seed(5))
    want = reference_pcgrad(grads, torch.Generator().manual_seed(11)).sum(0)
    out, _ = PCGrad(seed=11).combine(task_grads(grads))
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
