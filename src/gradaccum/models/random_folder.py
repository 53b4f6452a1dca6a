"""Randomly initialised models of the supported families, in memory or as a Hugging Face folder.

The tokenizer is `train_tokenizer` asked for the config's vocab size. For `tiny` configs (vocab
512) the two match exactly. The `full` vocabularies (50k-262k) are far beyond what the offline
corpus supports, so there the tokenizer stops at about 9.2k tokens: every id it produces is valid
and the remaining embedding rows are simply never used, as with padded vocabularies in real
checkpoints. The config's pad/bos/eos ids are set to the tokenizer's so the two agree.
"""

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from gradaccum.models.configs import build_config
from gradaccum.models.tokenizer import train_tokenizer


def build_random_model(
    family: str,
    size: str = "tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A `family`/`size` model with weights drawn from `seed`, in eval mode, and its tokenizer."""
    config = build_config(family, size)
    tokenizer = train_tokenizer(config.vocab_size, config.max_position_embeddings)
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=attn_implementation
        )
    return model.eval(), tokenizer


def make_random_model_folder(
    family: str, path: str | Path, size: str = "tiny", seed: int = 0
) -> Path:
    """Write a random `family` model (config.json, model.safetensors, tokenizer) to `path`."""
    path = Path(path)
    model, tokenizer = build_random_model(family, size, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
