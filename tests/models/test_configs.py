import pytest
import torch
from transformers import AutoModelForCausalLM

from gradaccum.errors import UserError
from gradaccum.models.configs import FAMILIES, build_config

# Parameter counts of the published checkpoints (tied embeddings counted once).
FULL_PARAMS = {"gpt2": 124_439_808, "gemma3": 268_098_176, "qwen2.5": 494_032_768}
MODEL_TYPES = {"gpt2": "gpt2", "gemma3": "gemma3_text", "qwen2.5": "qwen2"}


def _params(config) -> int:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_full_config_has_the_published_parameter_count(family: str) -> None:
    assert _params(build_config(family, "full")) == FULL_PARAMS[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_config_keeps_the_architecture(family: str) -> None:
    tiny, full = build_config(family, "tiny"), build_config(family, "full")
    assert type(tiny) is type(full)
    assert tiny.model_type == full.model_type == MODEL_TYPES[family]
    assert tiny.tie_word_embeddings and full.tie_word_embeddings
    assert tiny.vocab_size == 512
    assert _params(tiny) < 1_000_000


def test_gemma3_full_mixes_sliding_and_global_layers() -> None:
    config = build_config("gemma3", "full")
    assert config.layer_types == (["sliding_attention"] * 5 + ["full_attention"]) * 3
    assert config.rope_parameters["sliding_attention"]["rope_theta"] == 10_000.0
    assert config.rope_parameters["full_attention"]["rope_theta"] == 1_000_000.0
    assert (config.sliding_window, config.head_dim, config.num_key_value_heads) == (512, 256, 1)


def test_tiny_gemma3_exercises_the_sliding_window() -> None:
    assert set(build_config("gemma3").layer_types) == {"sliding_attention", "full_attention"}


def test_build_config_returns_independent_copies() -> None:
    build_config("gemma3").layer_types.append("full_attention")
    assert len(build_config("gemma3").layer_types) == 2


@pytest.mark.parametrize(("family", "size"), [("llama", "tiny"), ("gpt2", "huge")])
def test_unknown_family_or_size_is_a_user_error(family: str, size: str) -> None:
    with pytest.raises(UserError, match="use one of"):
        build_config(family, size)
