from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from gradaccum.errors import UserError
from gradaccum.models.configs import FAMILIES
from gradaccum.models.lora import apply_lora, default_lora_targets, save_trainable
from gradaccum.models.random_folder import build_random_model

TARGETS = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gemma3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2.5": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
# Modules adapted per layer: GPT-2 has c_proj in both attention and MLP.
PER_LAYER = {"gpt2": 4, "gemma3": 7, "qwen2.5": 7}
IDS = torch.arange(3, 43).unsqueeze(0)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_default_targets_per_family(family: str) -> None:
    model, _ = build_random_model(family)
    assert default_lora_targets(model) == TARGETS[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_only_adapters_train_and_start_as_the_identity(family: str) -> None:
    model, _ = build_random_model(family)
    before = _logits(model)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters()}
    lora = apply_lora(model, r=4)
    trainable = [name for name, p in lora.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * PER_LAYER[family] * model.config.num_hidden_layers
    assert all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert torch.equal(_logits(lora), before)

    lora.train()
    lora(input_ids=IDS, labels=IDS).loss.backward()
    torch.optim.SGD([p for p in lora.parameters() if p.requires_grad], lr=0.1).step()
    base = lora.get_base_model()
    for name, p in base.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, frozen[name.replace(".base_layer", "")]), name


def test_saved_adapter_reloads_onto_a_fresh_base(tmp_path: Path) -> None:
    lora = apply_lora(build_random_model("qwen2.5")[0])
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_()
    expected = _logits(lora)
    folder = save_trainable(lora, tmp_path / "adapter")
    keys = load_file(folder / "adapter_model.safetensors")
    assert keys and all("lora_" in key for key in keys)
    reloaded = PeftModel.from_pretrained(build_random_model("qwen2.5")[0], folder)
    assert torch.equal(_logits(reloaded), expected)


def test_full_model_saves_as_safetensors(tmp_path: Path) -> None:
    model, _ = build_random_model("gemma3", seed=4)
    folder = save_trainable(model, tmp_path / "full")
    assert (folder / "model.safetensors").is_file()
    assert torch.equal(_logits(AutoModelForCausalLM.from_pretrained(folder)), _logits(model))


def test_bad_targets_and_rank_are_user_errors() -> None:
    model, _ = build_random_model("gpt2")
    with pytest.raises(UserError, match="do not match"):
        apply_lora(model, target_modules=["no_such_layer"])
    with pytest.raises(UserError, match="rank"):
        apply_lora(model, r=0)
