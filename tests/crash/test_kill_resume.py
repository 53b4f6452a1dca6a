"""SIGKILL ``gradaccum finetune`` at 20+ seeded instants, resume each time: same bits at the end."""

from gradaccum.bench.crash import crash_runs


def test_killed_and_resumed_runs_end_bit_identical(tmp_path):
    result = crash_runs(tmp_path, kills=20, seed=0)
    assert result["kills"] >= 20
    assert result["failed_resumes"] == []
    assert result["identical"], "final fp32 weights differ from the uninterrupted run"
    assert result["same_history"], "metrics.jsonl differs from the uninterrupted run"
    assert result["corrupt_checkpoints"] == 0
    assert result["leftovers"] == []
    kinds = result["kills_by_kind"]
    assert kinds.get("write", 0) + kinds.get("write_torn", 0) >= 1  # mid-checkpoint-write
    assert kinds.get("backward", 0) >= 1  # mid-window
