"""The RMS-norm rules (torch, Gemma 3's 1 + w, Qwen 2 / Llama's w) against torch.func."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from tests.persample.oracle import check_rule


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.RMSNorm(8),
        lambda: nn.RMSNorm((3, 8), eps=1e-3),
        lambda: Gemma3RMSNorm(8, eps=1e-6),
        lambda: Qwen2RMSNorm(8, eps=1e-6),
        lambda: LlamaRMSNorm(8, eps=1e-5),
    ],
)
def test_rms_norm(make):
    torch.manual_seed(0)
    layer = make()
    with torch.no_grad():
        layer.weight.normal_()
    check_rule(layer, torch.randn(4, 5, 3, 8))
