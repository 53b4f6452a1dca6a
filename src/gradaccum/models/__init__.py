"""Model families, offline tokenizers, GGUF conversion, loading and LoRA for gradaccum."""

from gradaccum.models.configs import FAMILIES, build_config
from gradaccum.models.gguf_cache import cache_dir, convert_gguf, default_gemma_gguf
from gradaccum.models.gguf_check import check_gguf
from gradaccum.models.load import ACCEPTED, DEFAULT_SPEC, LoadedModel, load_model
from gradaccum.models.lora import apply_lora, default_lora_targets, save_trainable
from gradaccum.models.random_folder import build_random_model, make_random_model_folder
from gradaccum.models.tokenizer import train_tokenizer

__all__ = [
    "ACCEPTED",
    "DEFAULT_SPEC",
    "FAMILIES",
    "LoadedModel",
    "apply_lora",
    "build_config",
    "build_random_model",
    "cache_dir",
    "check_gguf",
    "convert_gguf",
    "default_gemma_gguf",
    "default_lora_targets",
    "load_model",
    "make_random_model_folder",
    "save_trainable",
    "train_tokenizer",
]
