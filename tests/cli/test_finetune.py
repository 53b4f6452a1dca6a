"""``gradaccum finetune`` end to end on tiny random GPT-2, Qwen 2.5 and Gemma 3 folders."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file

from gradaccum.cli.main import main
from gradaccum.models import make_random_model_folder

FAST = ["--max-steps", "4", "--global-batch", "4", "--micro-batch", "2", "--seq-len", "32"]
FAST += ["--eval-samples", "4", "--save-every", "2", "--lr", "5e-3"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {f: make_random_model_folder(f, root / f) for f in ("gpt2", "qwen2.5", "gemma3")}


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "notes.jsonl"
    lines = [
        json.dumps({"text": f"def f{i}(x):\n    return x * {i} + {i % 7}\n" * 4}) for i in range(60)
    ]
    lines.append(json.dumps({"prompt": "Q: what is 2+2?\nA:", "completion": " 4"}))
    lines.append("{not json")
    path.write_text("\n".join(lines) + "\n")
    return path


def run(*argv: str) -> int:
    return main(list(argv))


@pytest.mark.parametrize("family", ["gpt2", "qwen2.5", "gemma3"])
def test_finetune_end_to_end(folders, corpus, tmp_path, family, capsys):
    out = tmp_path / "run"
    code = run(
        "finetune", "--model", str(folders[family]), "--data", str(corpus), "--out", str(out), *FAST
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "skipped 1 line" in printed  # the broken JSONL line is reported, not hidden
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4
    assert summary["heldout_ppl_after"] < summary["heldout_ppl_before"]
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "loss_curve.png").stat().st_size > 1000
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(r["micro_batches"] == 2 for r in train)
    config = json.loads((out / "config.json").read_text())
    assert config["global_batch"] == 4 and config["method"] == "lora"


def test_full_finetune_and_exact_resume(folders, corpus, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = ["finetune", "--model", str(folders["gpt2"]), "--data", str(corpus), "--method", "full"]
    args += [*FAST, "--lr", "1e-3"]
    assert run(*args, "--out", str(whole)) == 0
    # Simulate a run that died after its step-2 checkpoint: drop the later one, resume.
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "step-00000004")
    assert run(*args, "--out", str(cut), "--resume") == 0
    a = load_file(whole / "model" / "model.safetensors")
    b = load_file(cut / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    lines = (cut / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines if '"train"' in x] == [1, 2, 3, 4]


def test_resume_with_changed_settings_is_refused(folders, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["finetune", "--model", str(folders["gpt2"]), "--data", str(corpus), "--out", str(out)]
    assert run(*base, *FAST) == 0
    assert run(*base, *FAST, "--resume", "--seed", "7") == 2
    err = capsys.readouterr().err
    assert "seed: 0 -> 7" in err and "--force" in err
    assert run(*base, *FAST) == 2  # no silent overwrite of a finished run


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gradaccum: error: ")
    return err[0]


def test_bad_input_gets_one_line_and_exit_2(folders, corpus, tmp_path, capsys):
    model = ["--model", str(folders["gpt2"])]
    out = ["--out", str(tmp_path / "o")]
    assert run("finetune", *model, *out, "--data", str(tmp_path / "missing.txt"), *FAST) == 2
    assert "missing.txt" in one_error_line(capsys)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    assert run("finetune", *model, *out, "--data", str(empty), *FAST) == 2
    one_error_line(capsys)
    assert run("finetune", "--model", "no-such-model", *out, "--data", str(corpus), *FAST) == 2
    assert "unknown model" in one_error_line(capsys)
    assert run("finetune", *model, *out, "--data", str(corpus), "--global-batch", "0") == 2
    assert "--global-batch" in one_error_line(capsys)
    assert run("finetune", *model, *out, "--data", str(corpus), "--clip", "sideways:1") == 2
    one_error_line(capsys)
    tiny_budget = ["--micro-batch", "auto", "--memory-budget", "10MB"]
    assert run("finetune", *model, *out, "--data", str(corpus), *FAST, *tiny_budget) == 2
    assert "raise the budget to at least" in one_error_line(capsys)


def test_sequences_longer_than_context_are_split_and_reported(folders, corpus, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["finetune", "--model", str(folders["gpt2"]), "--data", str(corpus), "--out", str(out)]
    assert run(*argv, *FAST[:-6], "--seq-len", "100000", "--max-steps", "1") == 0
    printed = capsys.readouterr().out
    assert "exceeds the model's context" in printed


@pytest.mark.parametrize("clip", ["micro:0.5", "per-sample:0.5+global:1"])
def test_clip_kinds_through_the_cli(folders, corpus, tmp_path, clip):
    out = tmp_path / "run"
    argv = ["finetune", "--model", str(folders["qwen2.5"]), "--data", str(corpus)]
    assert run(*argv, "--out", str(out), *FAST, "--clip", clip) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    key = "micro_clip_coef" if clip.startswith("micro") else "ps_clipped_frac"
    assert all(key in r and 0 <= r[key] <= 1 for r in train)
