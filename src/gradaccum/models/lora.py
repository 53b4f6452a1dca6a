"""LoRA adapters through peft, with per-family default targets, and saving what was trained."""

from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from gradaccum.errors import UserError

GPT2_TARGETS = ("c_attn", "c_proj", "c_fc")  # GPT-2's fused qkv, output and MLP projections
LLAMA_LIKE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def default_lora_targets(model: nn.Module) -> list[str]:
    """The module names LoRA adapts by default: every attention and MLP projection."""
    model_type = model.config.model_type
    if model_type == "gpt2":
        return list(GPT2_TARGETS)
    linear_names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
    }
    targets = [name for name in LLAMA_LIKE_TARGETS if name in linear_names]
    if not targets:
        raise UserError(
            f"no default LoRA targets for model type {model_type!r}: "
            "pass target_modules naming its linear layers"
        )
    return targets


def apply_lora(
    model: PreTrainedModel,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    target_modules: list[str] | None = None,
) -> PeftModel:
    """Wrap `model` with rank-`r` LoRA adapters; only the adapter weights stay trainable."""
    if r < 1:
        raise UserError(f"LoRA rank r={r} is invalid: use a positive integer such as 8")
    targets = list(target_modules) if target_modules else default_lora_targets(model)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        fan_in_fan_out=model.config.model_type == "gpt2",  # GPT-2 uses transposed Conv1D
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise UserError(
            f"LoRA target_modules {targets} do not match the model's layers: "
            "pass names of its linear layers"
        ) from error


def save_trainable(model: nn.Module, path: str | Path) -> Path:
    """Save what training changes: a LoRA adapter (adapter_model.safetensors) or the full model."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    return path
