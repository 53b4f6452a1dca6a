"""The crash bench's pieces: kill points, checkpoint checks, leftovers, its table."""

import json
import random

import torch

from gradaccum.bench.crash import (
    KINDS,
    corrupt_checkpoints,
    draw_kill,
    format_table,
    leftovers,
)
from gradaccum.checkpoint import save_checkpoint, step_dir
from gradaccum.cli.bench import BENCHES


def test_kill_points_are_seeded_and_spread_over_every_kind():
    counts = {"write": 1000, "fsync": 60, "rename": 20, "backward": 16, "step": 8}
    rng_a, rng_b = random.Random(3), random.Random(3)
    a = [draw_kill(rng_a, counts, 2.0) for _ in range(200)]
    b = [draw_kill(rng_b, counts, 2.0) for _ in range(200)]
    assert a == b
    assert {k.kind for k in a} == set(KINDS)
    for kill in a:
        if kill.kind == "timer":
            assert 0.0 <= kill.delay <= 2.0
        else:
            assert 1 <= kill.nth <= counts[kill.kind]


def test_a_damaged_published_checkpoint_is_counted(tmp_path):
    for step in (1, 2):
        save_checkpoint(tmp_path, step, {"model": {"w": torch.full((64,), float(step))}}, {})
    assert corrupt_checkpoints(tmp_path) == 0
    file = step_dir(tmp_path, 2) / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[-1] ^= 1
    file.write_bytes(bytes(data))
    assert corrupt_checkpoints(tmp_path) == 1


def test_leftover_temporaries_are_listed(tmp_path):
    (tmp_path / "checkpoints" / ".tmp-step-00000003-abc").mkdir(parents=True)
    (tmp_path / "config.json.tmp").write_text("{")
    (tmp_path / "config.json").write_text("{}")
    assert leftovers(tmp_path) == ["checkpoints/.tmp-step-00000003-abc", "config.json.tmp"]


def test_registered_and_table_names_the_outcome():
    assert BENCHES["crash"] == "gradaccum.bench.crash"
    result = {
        "kills": 3,
        "lives": 2,
        "kills_by_kind": {"write": 2, "timer": 1},
        "identical": True,
        "same_history": True,
        "corrupt_checkpoints": 0,
        "failed_resumes": [],
        "leftovers": [],
        "seconds": 1.5,
    }
    table = format_table(json.loads(json.dumps(result)))
    assert "kills            3 over 2 runs (write 2, timer 1)" in table
    assert "bit-identical    True" in table
