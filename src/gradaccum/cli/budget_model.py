"""``finetune --shard-dir``: the model with its frozen weights on disk, and the budget plan.

The recipe calls ``load_into_shards`` instead of ``load_model`` and, once LoRA is on,
``plan_budget``: the plan is printed and applied (shard cache size, checkpointing,
allocator mode), and the chunked cross-entropy returned as the loss.
"""

from __future__ import annotations

from pathlib import Path

import psutil
from torch import nn

from gradaccum.errors import UserError
from gradaccum.memory.budget_plan import BudgetPlan, ModelFacts, make_plan
from gradaccum.memory.chunked_ce import ChunkedCausalLMLoss
from gradaccum.memory.offload import ShardedParameters
from gradaccum.memory.peak import release_free_memory
from gradaccum.memory.sharded_model import load_sharded
from gradaccum.memory.shards import ShardStore
from gradaccum.models import (
    DEFAULT_SPEC,
    LoadedModel,
    cache_dir,
    convert_gguf,
    default_gemma_gguf,
    make_random_model_folder,
)
from gradaccum.models.load import FULL_SUFFIX, RANDOM_PREFIX, _context, _load_tokenizer


def model_folder(spec: str) -> Path:
    """The Hugging Face folder behind a model spec (converting or generating it once)."""
    if spec == DEFAULT_SPEC:
        return convert_gguf(default_gemma_gguf())
    if spec.startswith(RANDOM_PREFIX):
        family, size = spec.removeprefix(RANDOM_PREFIX), "tiny"
        if family.endswith(FULL_SUFFIX):
            family, size = family.removesuffix(FULL_SUFFIX), "full"
        folder = cache_dir() / "random" / f"{family}-{size}-seed0"
        if not (folder / "config.json").is_file():
            make_random_model_folder(family, folder, size=size, seed=0)
        return folder
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        return convert_gguf(path)
    if not (path / "config.json").is_file():
        raise UserError(f"--shard-dir needs a model folder with config.json, got {spec!r}")
    return path


def load_into_shards(spec: str, shard_dir: str) -> tuple[LoadedModel, ShardedParameters]:
    """The model of ``spec`` with every weight frozen in shards under ``shard_dir``."""
    folder = model_folder(spec)
    tokenizer = _load_tokenizer(folder, {"local_files_only": True})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model, sharded = load_sharded(folder, ShardStore(shard_dir), trainable=False)
    source = f"{spec} (weights in shards under {shard_dir})"
    return LoadedModel(model, tokenizer, model.config.model_type, source, _context(model)), sharded


def plan_budget(
    model: nn.Module, sharded: ShardedParameters, budget: int, seq_len: int
) -> tuple[BudgetPlan, ChunkedCausalLMLoss]:
    """Make, print and apply the plan for ``budget`` bytes; the loss to train with."""
    facts = ModelFacts.of(model, trainable_sharded=False)
    release_free_memory()  # what loading (the tokenizer above all) freed but glibc kept
    plan = make_plan(budget, psutil.Process().memory_info().rss, facts, seq_len)
    plan.apply(model, sharded.store)
    print(plan.describe())
    return plan, ChunkedCausalLMLoss()


def check_method(method: str) -> None:
    """Sharded weights in ``finetune`` are for LoRA (full fine-tuning: ShardedAdamW, bench)."""
    if method != "lora":
        raise UserError(
            "--shard-dir supports --method lora; full fine-tuning under a budget is in "
            "gradaccum.memory (ShardedAdamW) and 'gradaccum bench memory'"
        )
