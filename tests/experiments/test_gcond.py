"""The GCond experiment, quick: every method trains, the JSON and the plot are written."""

from __future__ import annotations

import json
import math

from gradaccum.cli.main import main
from gradaccum.experiments.gcond import METHODS


def test_quick_experiment_writes_json_plot_and_table(tmp_path, capsys):
    out = tmp_path / "gcond"
    assert main(["experiment", "gcond", "--quick", "--seeds", "2", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    result = json.loads((out / "gcond.json").read_text())
    assert (out / "gcond_l1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["seeds"] == [0, 1]
    assert list(result["methods"]) == list(METHODS)
    steps = result["setting"]["steps"]
    for m, v in result["methods"].items():
        assert m in table
        assert 0 < v["l1"]["mean"] < 1 and -1 < v["ssim"]["mean"] <= 1
        assert v["seconds"]["mean"] > 0 and math.isfinite(v["time_vs_weighted_sum"])
        for run in result["runs"]:
            curves = run["curves"]
            assert curves[m][0][0] == 0 and curves[m][-1][0] == steps  # same budget for all
            times = [c[1] for c in curves[m]]
            assert times == sorted(times)
    # every method starts from the same weights: the same held-out loss before training
    for run in result["runs"]:
        assert len({tuple(run["curves"][m][0][2:]) for m in METHODS}) == 1
    # only PCGrad and GCond change task gradients; the ablation never does
    for m in ("weighted_sum", "cagrad", "gradnorm", "gcond_no_resolution"):
        assert result["methods"][m]["resolved"] == 0.0


def test_zero_seeds_is_a_user_error(capsys):
    assert main(["experiment", "gcond", "--seeds", "0"]) == 2
    assert "--seeds" in capsys.readouterr().err
