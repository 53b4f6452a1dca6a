"""Turn ``--memory-budget`` into a plan: what stays resident, what is sharded, what is recomputed.

The plan starts from what the process already holds (``baseline``: interpreter, torch,
transformers, the model skeleton, the data) and adds what training needs at minimum:
the chunked cross-entropy's working set, one sample's activations with per-block
checkpointing, the trainable state that stays in memory (LoRA adapters with their
gradients and moments; for full fine-tuning, gradients and moments live on disk and only
one module's gradient and a few optimizer chunks are resident), and a few layers of
shard cache. A budget below that sum is refused before any work, naming the
smallest feasible budget. That minimum assumes the strict allocator mode (large blocks
returned the moment they are freed, slower); with room for the allocator's slack the plan
keeps glibc's defaults instead. Both trim the heap after every block, in forward and in
backward (``malloc.py``): without that, slack grows block by block and a many-block model
breaks its budget. Further spare room turns checkpointing off
when it fits (faster), then goes to the shard cache; the micro-batch size is left to the
engine's measured probe. Under bf16 (or fp16) autocast with weights stored in that dtype,
the store hands matrices out as stored, so the cache and weight chunks count 2 bytes per
element instead of 4.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from gradaccum.errors import UserError
from gradaccum.memory.checkpointing import enable_activation_checkpointing
from gradaccum.memory.chunked_ce import LOGITS_BLOCK_BYTES, vocab_chunk
from gradaccum.memory.malloc import return_memory_promptly, transformer_blocks, trim_after_blocks
from gradaccum.memory.shards import DISK_DTYPES, ShardStore

MiB = 2**20
MARGIN = 64 * MiB  # allocator slack and Python objects
MIN_CACHE_LAYERS = 3  # the running module, the prefetched next ones
SLACK_PER_CE = 1.5  # heap slack of the trimming allocator mode, per cross-entropy working set


@dataclass(frozen=True)
class ModelFacts:
    """Sizes the plan needs, read from a (skeleton) model without touching its weights."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int
    shard_bytes: int  # fp32 bytes of every sharded weight except embeddings
    largest_module_bytes: int  # the biggest single module's weights (no embeddings)
    trainable_resident: int  # parameters that train and stay in memory (LoRA)
    trainable_sharded: int  # parameters that train and live in shards (full)

    @staticmethod
    def of(model: nn.Module, trainable_sharded: bool) -> ModelFacts:
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        cfg = lm.config
        head = lm.get_output_embeddings()  # read by rows, like embeddings
        shard, largest, resident, sharded = 0, 0, 0, 0
        seen: set[int] = set()
        for module in lm.modules():
            size = 0
            for p in module.parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                if p.requires_grad and not trainable_sharded:
                    resident += p.numel()
                    continue
                sharded += p.numel() if p.requires_grad else 0
                if not isinstance(module, nn.Embedding) and module is not head:
                    size += 4 * p.numel()
            shard += size
            largest = max(largest, size)
        return ModelFacts(
            layers=cfg.num_hidden_layers,
            hidden=cfg.hidden_size,
            intermediate=getattr(cfg, "intermediate_size", None) or 4 * cfg.hidden_size,
            heads=cfg.num_attention_heads,
            vocab=cfg.vocab_size,
            shard_bytes=shard,
            largest_module_bytes=largest,
            trainable_resident=resident,
            trainable_sharded=sharded,
        )


@dataclass
class BudgetPlan:
    """How a run fits its memory budget; ``describe()`` is printed before training."""

    budget: int
    minimum: int
    shard_cache: int
    checkpointing: bool
    disk_dtype: str
    allocator: str  # "trim" (free pages returned after each block) or "strict"
    fast_minimum: int  # the smallest budget for the trimming allocator mode
    parts: dict[str, int] = field(default_factory=dict)
    precision: str = "fp32"  # the autocast the run trains under
    chunked_ce: bool = True
    micro_batch_size: int | None = None  # set from the engine's probe
    grad_resident: int = 0  # full fine-tuning: gradient bytes GradSpill keeps in memory

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / MiB:.0f}" for k, v in self.parts.items())
        micro = self.micro_batch_size if self.micro_batch_size is not None else "probed"
        return "\n".join(
            [
                f"memory plan for a {self.budget / MiB:.0f} MiB budget "
                f"(smallest feasible about {self.minimum / MiB:.0f} MiB, "
                f"{self.fast_minimum / MiB:.0f} MiB without the strict allocator):",
                f"  resident MiB: {parts}",
                f"  shard cache {self.shard_cache / MiB:.0f} MiB, weights on disk as "
                f"{self.disk_dtype}; chunked cross-entropy on; per-block activation "
                f"checkpointing {'on' if self.checkpointing else 'off'}; "
                f"micro-batch size {micro}; allocator {self.allocator}",
            ]
            + (
                [
                    f"  gradients: {self.grad_resident / MiB:.0f} MiB kept in memory, the "
                    "rest accumulated on disk; AdamW moments on disk"
                ]
                if self.parts.get("gradients")
                else []
            )
        )

    def apply(self, model: nn.Module, store: ShardStore) -> None:
        """Size the shard cache; switch checkpointing and the allocator mode as planned.

        Under bf16/fp16 autocast the store hands out matrices stored in that dtype as
        they are (``ShardStore.matmul_dtype``).
        """
        store.resident_bytes = self.shard_cache
        if self.precision != "fp32":
            store.matmul_dtype = DISK_DTYPES[self.precision]
        if self.checkpointing:
            enable_activation_checkpointing(model)
        if self.allocator == "strict":
            return_memory_promptly()
        # Half the planned slack may fill between trims: a block's own garbage comes on top.
        trim_after_blocks(transformer_blocks(model), self.parts.get("allocator slack", 0) // 2)


def activation_bytes(facts: ModelFacts, tokens: int, checkpointing: bool) -> int:
    """A generous estimate of one micro-batch's activation memory (fp32)."""
    per_token_block = 4 * (
        12 * facts.hidden + 4 * facts.intermediate + 2 * facts.heads * min(tokens, 4096)
    )
    block = tokens * per_token_block
    if checkpointing:
        return facts.layers * tokens * facts.hidden * 4 * 2 + 2 * block
    return facts.layers * block + block


def cross_entropy_bytes(facts: ModelFacts, tokens: int, weight_itemsize: int = 4) -> int:
    """Working set of the chunked cross-entropy: logits blocks and two weight chunks."""
    rows = vocab_chunk(tokens, facts.vocab)
    chunks = 2 * rows * facts.hidden * weight_itemsize
    return 5 * LOGITS_BLOCK_BYTES + chunks + tokens * facts.hidden * 12


def weight_itemsize(disk_dtype: str, precision: str) -> int:
    """Bytes per element of sharded weights in memory: as stored when autocast matches."""
    return DISK_DTYPES[disk_dtype].itemsize if disk_dtype == precision else 4


def make_plan(
    budget: int,
    baseline: int,
    facts: ModelFacts,
    seq_len: int,
    *,
    disk_dtype: str = "fp32",
    precision: str = "fp32",
) -> BudgetPlan:
    """The plan for ``budget`` bytes, or a UserError naming the smallest feasible budget."""
    itemsize = weight_itemsize(disk_dtype, precision)
    cache_min = min(facts.shard_bytes, MIN_CACHE_LAYERS * facts.largest_module_bytes)
    cache_min = cache_min * itemsize // 4
    adam_chunks = 6 * 8 * MiB if facts.trainable_sharded else 0
    parts = {
        "baseline": baseline,
        "margin": MARGIN,
        "cross-entropy": cross_entropy_bytes(facts, seq_len, itemsize),
        "activations": activation_bytes(facts, seq_len, checkpointing=True),
        "trainable": 16 * facts.trainable_resident,  # weight, gradient, two moments
        # Full fine-tuning accumulates gradients in files (GradSpill): one module's fresh
        # gradient and its read-modify-write buffer are in memory at a time.
        "gradients": (2 * facts.largest_module_bytes if facts.trainable_sharded else 0)
        + adam_chunks,
        "shard cache": cache_min,
    }
    minimum = sum(parts.values())
    if budget < minimum:
        raise UserError(
            f"memory budget {budget / MiB:.0f} MiB is too small: this model at sequence length "
            f"{seq_len} needs at least about {minimum / MiB:.0f} MiB "
            f"({baseline / MiB:.0f} MiB of it before training starts); "
            f"raise --memory-budget to {-(-minimum // MiB)}MB or more"
        )
    slack = int(SLACK_PER_CE * parts["cross-entropy"])
    allocator = "trim" if budget >= minimum + slack else "strict"
    spare = budget - minimum - (slack if allocator == "trim" else 0)
    extra_activations = activation_bytes(facts, seq_len, False) - parts["activations"]
    checkpointing = extra_activations > spare // 2
    if not checkpointing:
        spare -= extra_activations
        parts["activations"] += extra_activations
    # Full fine-tuning: gradients kept in memory save a read-modify-write per micro-batch.
    grad_resident = min(4 * facts.trainable_sharded, spare // 2)
    spare -= grad_resident
    parts["gradients"] += grad_resident
    cache = min(facts.shard_bytes * itemsize // 4, cache_min + spare // 2)
    parts["shard cache"] = cache
    if allocator == "trim":
        parts["allocator slack"] = slack
    return BudgetPlan(
        budget,
        minimum,
        cache,
        checkpointing,
        disk_dtype,
        allocator,
        minimum + slack,
        parts,
        precision=precision,
        grad_resident=grad_resident,
    )
