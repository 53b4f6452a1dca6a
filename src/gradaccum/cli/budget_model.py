"""``finetune --shard-dir``: the model with its weights on disk, and the budget plan.

The recipe calls ``load_into_shards`` instead of ``load_model`` and, once LoRA is on,
``plan_budget``: the plan is printed and applied (shard cache size, checkpointing,
allocator mode), and the chunked cross-entropy returned as the loss.

LoRA reads the frozen weights straight from ``--shard-dir``. Full fine-tuning changes
them, so it trains a working copy in the run's own folder (``OUT/shards``, hard links to
``--shard-dir`` until the first step replaces them; checkpoints link it in turn), keeps
AdamW's moments there too, and accumulates gradients in files (``OUT/grad-spill``).
"""

from __future__ import annotations

from pathlib import Path

import psutil
from torch import nn

from gradaccum.errors import UserError
from gradaccum.memory.budget_plan import BudgetPlan, ModelFacts, make_plan
from gradaccum.memory.chunked_ce import ChunkedCausalLMLoss
from gradaccum.memory.grad_spill import GradSpill
from gradaccum.memory.offload import ShardedParameters
from gradaccum.memory.peak import release_free_memory
from gradaccum.memory.shard_files import restore_shards, shard_files
from gradaccum.memory.sharded_adamw import ShardedAdamW
from gradaccum.memory.sharded_model import load_sharded, write_shards
from gradaccum.memory.shards import DISK_DTYPES, ShardStore
from gradaccum.models import (
    DEFAULT_SPEC,
    LoadedModel,
    cache_dir,
    convert_gguf,
    default_gemma_gguf,
    make_random_model_folder,
)
from gradaccum.models.load import FULL_SUFFIX, RANDOM_PREFIX, _context, _load_tokenizer
from gradaccum.transforms import parse_clip


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


def load_into_shards(
    spec: str, shard_dir: str, work_dir: Path | None = None, disk_dtype: str = "fp32"
) -> tuple[LoadedModel, ShardedParameters, str]:
    """The model of ``spec`` with its weights in shards under ``shard_dir``: frozen, or
    (with ``work_dir``, full fine-tuning) trainable in a working copy there.

    A new shard folder is written in ``disk_dtype``; an existing one is used as it is.
    Returns the model, its shards and their dtype on disk.
    """
    folder = model_folder(spec)
    tokenizer = _load_tokenizer(folder, {"local_files_only": True})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    store = ShardStore(shard_dir)
    names = list(store.names())
    if not names:
        names = write_shards(folder, store, DISK_DTYPES[disk_dtype])
    stored = {v: k for k, v in DISK_DTYPES.items()}[store.info(names[0]).dtype]
    if work_dir is not None and stored != "fp32":
        raise UserError(
            f"{shard_dir} holds {stored} shards, but full fine-tuning trains fp32 weights: "
            "choose another --shard-dir (it will be written in fp32)"
        )
    if work_dir is not None:
        work = ShardStore(work_dir)
        restore_shards(work, shard_files(store))  # links: the base shards stay untouched
        store.close()
        store = work
    model, sharded = load_sharded(folder, store, trainable=work_dir is not None)
    source = f"{spec} (weights in shards under {store.folder})"
    loaded = LoadedModel(model, tokenizer, model.config.model_type, source, _context(model))
    return loaded, sharded, stored


def plan_budget(
    model: nn.Module,
    sharded: ShardedParameters,
    budget: int,
    seq_len: int,
    *,
    precision: str = "fp32",
    disk_dtype: str = "fp32",
) -> tuple[BudgetPlan, ChunkedCausalLMLoss]:
    """Make, print and apply the plan for ``budget`` bytes; the loss to train with."""
    facts = ModelFacts.of(model, trainable_sharded=any(True for _ in sharded.named_trainable()))
    release_free_memory()  # what loading (the tokenizer above all) freed but glibc kept
    rss = psutil.Process().memory_info().rss
    plan = make_plan(budget, rss, facts, seq_len, disk_dtype=disk_dtype, precision=precision)
    plan.apply(model, sharded.store)
    print(plan.describe())
    return plan, ChunkedCausalLMLoss()


def sharded_optimizer(
    model: nn.Module,
    sharded: ShardedParameters,
    plan: BudgetPlan,
    spill_dir: Path,
    lr: float,
    weight_decay: float,
) -> tuple[ShardedAdamW, GradSpill]:
    """Full fine-tuning under the budget: gradients in files (those the plan keeps in memory
    aside), AdamW stepping shard by shard."""
    spill = GradSpill(spill_dir, dict(sharded.named_trainable()), plan.grad_resident)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = ShardedAdamW(trainable, sharded, lr=lr, weight_decay=weight_decay, spill=spill)
    return optimizer, spill


def shard_io(
    sharded: ShardedParameters, spill: GradSpill | None, since: dict[str, float] | None = None
) -> dict[str, float]:
    """MiB read and written by the shard store and the gradient files (minus ``since``)."""
    read, written = sharded.store.bytes_read, sharded.store.bytes_written
    if spill is not None:
        read, written = read + spill.bytes_read, written + spill.bytes_written
    since = since or {}
    return {
        "shard_read_mb": read / 2**20 - since.get("shard_read_mb", 0.0),
        "shard_written_mb": written / 2**20 - since.get("shard_written_mb", 0.0),
    }


def check_clip_for_offloaded(clip: str) -> None:
    """Gradients in files can be clipped globally only (nothing sees one micro-batch's)."""
    if not all(t.scales_uniformly for t in parse_clip(clip)):
        raise UserError(
            f"--clip {clip} needs gradients in memory, but --method full with --shard-dir "
            "keeps them on disk: use --clip N (global clipping) or --clip none"
        )
