"""Configs of the supported model families, embedded so that nothing comes from the hub.

`full` is the published config of each checkpoint; `tiny` keeps the architecture (model type,
attention layout, tied embeddings) at a size that runs in milliseconds, for tests.
"""

import copy
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from gradaccum.errors import UserError

# Tiny models use the special-token ids of `train_tokenizer`: <pad>=0, <eos>=1, <bos>=2.
_TINY_SPECIAL_IDS = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}

# openai-community/gpt2 (124M).
GPT2_FULL: dict[str, Any] = {
    "model_type": "gpt2",
    "architectures": ["GPT2LMHeadModel"],
    "activation_function": "gelu_new",
    "attn_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "resid_pdrop": 0.1,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-5,
    "n_ctx": 1024,
    "n_embd": 768,
    "n_head": 12,
    "n_layer": 12,
    "n_positions": 1024,
    "vocab_size": 50257,
    "bos_token_id": 50256,
    "eos_token_id": 50256,
    "tie_word_embeddings": True,
}

# google/gemma-3-270m: 5 sliding-window layers then 1 global layer, repeated 3 times.
GEMMA3_FULL: dict[str, Any] = {
    "model_type": "gemma3_text",
    "architectures": ["Gemma3ForCausalLM"],
    "hidden_size": 640,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "intermediate_size": 2048,
    "vocab_size": 262144,
    "sliding_window": 512,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
    "rope_parameters": {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
    },
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": None,
    "final_logit_softcapping": None,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "bos_token_id": 2,
    "eos_token_id": 1,
}

# Qwen/Qwen2.5-0.5B.
QWEN25_FULL: dict[str, Any] = {
    "model_type": "qwen2",
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 896,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "intermediate_size": 4864,
    "vocab_size": 151936,
    "hidden_act": "silu",
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
    "max_window_layers": 24,
    "use_sliding_window": False,
    "sliding_window": None,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "tie_word_embeddings": True,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
}

GPT2_TINY: dict[str, Any] = {
    **GPT2_FULL,
    "n_embd": 64,
    "n_head": 4,
    "n_layer": 2,
    "n_ctx": 512,
    "n_positions": 512,
    "vocab_size": 512,
    # No dropout, so tiny models are deterministic in train mode too.
    "attn_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "resid_pdrop": 0.0,
    **_TINY_SPECIAL_IDS,
}

GEMMA3_TINY: dict[str, Any] = {
    **GEMMA3_FULL,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "query_pre_attn_scalar": 16,
    "intermediate_size": 128,
    "vocab_size": 512,
    "sliding_window": 16,
    "layer_types": ["sliding_attention", "full_attention"],
    "max_position_embeddings": 512,
    **_TINY_SPECIAL_IDS,
}

QWEN25_TINY: dict[str, Any] = {
    **QWEN25_FULL,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "vocab_size": 512,
    "max_position_embeddings": 512,
    "max_window_layers": 2,
    **_TINY_SPECIAL_IDS,
}

CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "gpt2": {"full": GPT2_FULL, "tiny": GPT2_TINY},
    "gemma3": {"full": GEMMA3_FULL, "tiny": GEMMA3_TINY},
    "qwen2.5": {"full": QWEN25_FULL, "tiny": QWEN25_TINY},
}
FAMILIES: tuple[str, ...] = tuple(CONFIGS)
SIZES: tuple[str, ...] = ("tiny", "full")


def build_config(family: str, size: str = "tiny") -> PretrainedConfig:
    """The transformers config of `family` (gpt2, gemma3, qwen2.5) at `size` (tiny or full)."""
    if family not in CONFIGS:
        raise UserError(f"unknown model family {family!r}: use one of {', '.join(FAMILIES)}")
    if size not in SIZES:
        raise UserError(f"unknown model size {size!r}: use one of {', '.join(SIZES)}")
    values = copy.deepcopy(CONFIGS[family][size])
    return AutoConfig.for_model(values.pop("model_type"), **values)
