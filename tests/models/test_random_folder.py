from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from gradaccum.models.configs import FAMILIES
from gradaccum.models.load import load_model
from gradaccum.models.random_folder import build_random_model, make_random_model_folder


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_round_trips_to_the_same_logits(family: str, tmp_path: Path) -> None:
    folder = make_random_model_folder(family, tmp_path / family, seed=3)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    in_memory, _ = build_random_model(family, seed=3)
    loaded = load_model(str(folder))
    ids = loaded.tokenizer("for x in range(3): print(x)", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, in_memory(ids).logits)
    assert loaded.family == in_memory.config.model_type


def test_seed_decides_the_weights() -> None:
    a, _ = build_random_model("gpt2", seed=0)
    b, _ = build_random_model("gpt2", seed=0)
    c, _ = build_random_model("gpt2", seed=1)
    weight = "transformer.h.0.attn.c_attn.weight"
    assert torch.equal(a.state_dict()[weight], b.state_dict()[weight])
    assert not torch.equal(a.state_dict()[weight], c.state_dict()[weight])


def test_building_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_random_model("qwen2.5", seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_config_special_ids_match_the_tokenizer(family: str, tmp_path: Path) -> None:
    folder = make_random_model_folder(family, tmp_path / family)
    config = AutoModelForCausalLM.from_pretrained(folder).config
    loaded = load_model(str(folder))
    assert config.eos_token_id == loaded.tokenizer.eos_token_id
    assert config.pad_token_id == loaded.tokenizer.pad_token_id
    assert len(loaded.tokenizer) <= config.vocab_size
