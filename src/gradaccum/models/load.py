"""One entry point from a model spec string to a model, its tokenizer and its context length.

Specs: `gemma3-270m` (the packaged real weights), `random:<family>[-full]`, a Hugging Face folder
with config.json and safetensors weights, or a `.gguf` file. Nothing is fetched from the hub.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from gradaccum.errors import UserError
from gradaccum.models.configs import FAMILIES
from gradaccum.models.gguf_cache import convert_gguf, default_gemma_gguf
from gradaccum.models.random_folder import build_random_model

DEFAULT_SPEC = "gemma3-270m"
RANDOM_PREFIX = "random:"
FULL_SUFFIX = "-full"
ACCEPTED = (
    f"{DEFAULT_SPEC}, {RANDOM_PREFIX}<{'|'.join(FAMILIES)}>[{FULL_SUFFIX}], "
    "a Hugging Face model folder with config.json, or a .gguf file"
)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
_GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


@dataclass
class LoadedModel:
    """A causal LM ready to fine-tune, with what the rest of gradaccum needs to know about it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    family: str  # the config's model_type: gpt2, gemma3_text, qwen2, ...
    source: str  # where the weights came from, for logs and reports
    max_length: int  # the model's context length in tokens


def load_model(
    spec: str = DEFAULT_SPEC,
    dtype: torch.dtype = torch.float32,
    *,
    trust_remote_code: bool = False,
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """Load the model `spec` names (see ACCEPTED) in `dtype`, in eval mode, without the hub."""
    if spec == DEFAULT_SPEC:
        folder = convert_gguf(default_gemma_gguf())
        source = f"{DEFAULT_SPEC} (packaged Q4_K_M GGUF, dequantized, cached in {folder})"
        return _from_folder(folder, source, dtype, trust_remote_code, attn_implementation)
    if spec.startswith(RANDOM_PREFIX):
        return _random(spec, dtype, attn_implementation)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        folder = convert_gguf(path)
        source = f"GGUF {path.resolve()} (dequantized, cached in {folder})"
        return _from_folder(folder, source, dtype, trust_remote_code, attn_implementation)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model folder {path} has no config.json: use {ACCEPTED}")
        source = f"folder {path.resolve()}"
        return _from_folder(path, source, dtype, trust_remote_code, attn_implementation)
    if path.exists():
        raise UserError(f"{path} is neither a model folder nor a .gguf file: use {ACCEPTED}")
    if path.suffix == ".gguf" or "/" in spec:
        raise UserError(f"model path {path} does not exist: use {ACCEPTED}")
    raise UserError(f"unknown model {spec!r}: use {ACCEPTED}")


def _random(spec: str, dtype: torch.dtype, attn_implementation: str) -> LoadedModel:
    family = spec.removeprefix(RANDOM_PREFIX)
    size = "tiny"
    if family.endswith(FULL_SUFFIX):
        family, size = family.removesuffix(FULL_SUFFIX), "full"
    if family not in FAMILIES:
        raise UserError(f"unknown random model family {family!r} in {spec!r}: use {ACCEPTED}")
    model, tokenizer = build_random_model(family, size, 0, dtype, attn_implementation)
    source = f"random {family} ({size}, seed 0)"
    return LoadedModel(model, tokenizer, model.config.model_type, source, _context(model))


def _from_folder(
    folder: Path,
    source: str,
    dtype: torch.dtype,
    trust_remote_code: bool,
    attn_implementation: str,
) -> LoadedModel:
    if not any(folder.glob("*.safetensors")):
        raise UserError(
            f"model folder {folder} has no *.safetensors weights: "
            "save it with save_pretrained(), which writes safetensors"
        )
    options = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    try:
        AutoConfig.from_pretrained(folder, **options)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {folder / 'config.json'}: {_first_line(error)}") from error
    tokenizer = _load_tokenizer(folder, options)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, attn_implementation=attn_implementation, **options
    )
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise UserError(
            f"the tokenizer in {folder} has {len(tokenizer)} tokens but the model embeds only "
            f"{rows}: use the tokenizer saved with this model"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 style tokenizers have no pad token
    return LoadedModel(model.eval(), tokenizer, model.config.model_type, source, _context(model))


def _load_tokenizer(folder: Path, options: dict) -> PreTrainedTokenizerBase:
    """The folder's tokenizer, as the class its tokenizer_config.json names where that is generic.

    transformers 5 swaps a generic tokenizer of some model types for the family's own class
    (qwen2 -> Qwen2Tokenizer, which adds <|endoftext|> past a small vocab); only a folder without
    a declared generic class goes through AutoTokenizer.
    """
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise UserError(
            f"model folder {folder} has no tokenizer ({' or '.join(_TOKENIZER_FILES)}): "
            "add one with tokenizer.save_pretrained(folder)"
        )
    config_path = folder / "tokenizer_config.json"
    try:
        declared = json.loads(config_path.read_text()) if config_path.is_file() else {}
        generic = declared.get("tokenizer_class") in _GENERIC_TOKENIZERS
        loader = PreTrainedTokenizerFast if generic else AutoTokenizer
        return loader.from_pretrained(folder, **options)
    except (OSError, ValueError, TypeError) as error:
        raise UserError(
            f"cannot load the tokenizer in {folder} ({_first_line(error)}): "
            "re-save it with tokenizer.save_pretrained(folder)"
        ) from error


def _context(model: PreTrainedModel) -> int:
    """The context length the model was built for."""
    length = getattr(model.config, "max_position_embeddings", None)
    if not isinstance(length, int):
        raise UserError(
            f"cannot tell the context length of a {model.config.model_type} model: "
            "set max_position_embeddings in its config.json"
        )
    return length


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
