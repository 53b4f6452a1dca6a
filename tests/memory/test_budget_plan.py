"""The budget plan: refuse what cannot fit (naming what would), spend spare room on speed."""

from __future__ import annotations

import pytest

from gradaccum.errors import UserError
from gradaccum.memory.budget_plan import MiB, ModelFacts, make_plan
from gradaccum.memory.offload import ShardedParameters
from gradaccum.memory.shards import ShardStore
from gradaccum.models import apply_lora, build_random_model

# Gemma 3 270M with LoRA r=8: 18 blocks, 100M weights in blocks, 1.9M adapter weights.
GEMMA = ModelFacts(18, 640, 2048, 4, 262144, 400 * MiB, 5 * MiB + 256 * 1024, 1_898_496, 0)


def test_an_impossible_budget_is_refused_naming_the_smallest_feasible_one():
    smallest = make_plan(2**40, 400 * MiB, GEMMA, 256).minimum
    with pytest.raises(UserError, match=f"raise --memory-budget to {-(-smallest // MiB)}MB"):
        make_plan(smallest - 1, 400 * MiB, GEMMA, 256)
    plan = make_plan(smallest, 400 * MiB, GEMMA, 256)
    assert plan.checkpointing and plan.shard_cache >= 3 * GEMMA.largest_module_bytes
    assert plan.budget == plan.minimum == smallest and plan.allocator == "strict"
    assert make_plan(plan.fast_minimum, 400 * MiB, GEMMA, 256).allocator == "trim"


def test_spare_room_turns_checkpointing_off_then_grows_the_cache():
    roomy = make_plan(4 * 2**30, 400 * MiB, GEMMA, 256)
    assert not roomy.checkpointing
    assert roomy.shard_cache == GEMMA.shard_bytes  # every block weight fits
    assert roomy.allocator == "trim"
    text = roomy.describe()
    assert "4096 MiB budget" in text and "checkpointing off" in text
    assert "chunked cross-entropy on" in text


def test_full_fine_tuning_reserves_one_module_of_gradient_not_the_model():
    """Gradients go to files (GradSpill): the plan holds one module's gradient twice (the
    fresh one and its read-modify-write buffer), never the 1 GB of all of them."""
    full = ModelFacts(**{**GEMMA.__dict__, "trainable_resident": 0, "trainable_sharded": 268e6})
    lora = make_plan(2**40, 0, GEMMA, 256)
    plan = make_plan(2**40, 0, full, 256)
    assert plan.parts["gradients"] >= 2 * GEMMA.largest_module_bytes
    assert plan.minimum < lora.minimum + 2 * GEMMA.largest_module_bytes + 64 * 2**20


def test_facts_of_a_sharded_lora_model(tmp_path):
    model, _ = build_random_model("gemma3", "tiny")
    ShardedParameters(model.requires_grad_(False), ShardStore(tmp_path))
    model = apply_lora(model, r=4)
    facts = ModelFacts.of(model, trainable_sharded=False)
    adapters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert facts.trainable_resident == adapters and facts.trainable_sharded == 0
    assert (facts.layers, facts.hidden, facts.vocab) == (2, 64, 512)
    embedding = model.get_input_embeddings().weight.numel()
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad) - embedding
    assert facts.shard_bytes == 4 * frozen  # the tied embedding is streamed, not cached


def test_spare_room_keeps_gradients_in_memory_before_growing_the_cache():
    full = ModelFacts(**{**GEMMA.__dict__, "trainable_resident": 0, "trainable_sharded": 268e6})
    smallest = make_plan(2**40, 0, full, 256).minimum
    assert make_plan(smallest, 0, full, 256).grad_resident == 0
    roomy = make_plan(smallest + 3 * 2**30, 0, full, 256)
    assert roomy.grad_resident == 4 * full.trainable_sharded
    assert "kept in memory, the rest accumulated on disk" in roomy.describe()
    assert make_plan(2**40, 0, GEMMA, 256).grad_resident == 0  # LoRA: nothing sharded trains
