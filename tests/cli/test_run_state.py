"""What a finetune checkpoint is named after, and how --resume picks one."""

import pytest
import torch

from gradaccum.checkpoint import step_dir
from gradaccum.cli.run_state import Parts, find_resume_point, save_run
from gradaccum.data import WindowSampler
from gradaccum.engine import Accumulator
from gradaccum.errors import UserError

CONFIG = {"seed": 0, "global_batch": 2}


def parts() -> Parts:
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    engine = Accumulator(model, optimizer, scheduler=scheduler, micro_batch_size=1)
    return Parts(model, optimizer, scheduler, engine, WindowSampler(4, 2, seed=0))


def test_checkpoints_count_skipped_steps_so_resume_and_metrics_agree(tmp_path):
    live = parts()
    live.engine.steps, live.engine.skipped_steps = 2, 1  # three windows done, one skipped
    assert save_run(tmp_path, live, CONFIG, {}) == step_dir(tmp_path, 3)
    ckpt = find_resume_point(tmp_path, CONFIG, force=False)
    assert ckpt.step == 3 and ckpt.meta["engine"]["skipped_steps"] == 1


def test_resume_never_falls_back_silently(tmp_path):
    assert find_resume_point(tmp_path / "none", CONFIG, force=False) is None
    save_run(tmp_path, parts(), CONFIG, {})  # the only checkpoint, step 0
    meta = step_dir(tmp_path, 0) / "meta.json"
    meta.write_text(meta.read_text().replace('"seed": 0', '"seed": 1'))
    with pytest.raises(UserError, match="meta.json is corrupt .* start without --resume"):
        find_resume_point(tmp_path, CONFIG, force=False)
