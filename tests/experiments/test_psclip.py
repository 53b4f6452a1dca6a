"""The PS-Clip experiment, quick: every setting and method runs, the JSON and plot are written."""

from __future__ import annotations

import json
import math

from gradaccum.cli.main import main
from gradaccum.experiments.psclip import QUICK_DIGITS
from gradaccum.experiments.psclip_methods import METHODS

SETTINGS = ["digits_clean", "digits_heavy_tailed", "gemma"]


def test_quick_experiment_writes_json_plot_and_table(tmp_path, capsys):
    out = tmp_path / "psclip"
    assert main(["experiment", "psclip", "--quick", "--seeds", "2", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    result = json.loads((out / "psclip.json").read_text())
    assert (out / "psclip.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["seeds"] == [0, 1]
    assert list(result["settings"]) == SETTINGS == list(result["runs"])
    for name, setting in result["settings"].items():
        assert list(setting["methods"]) == list(METHODS)
        for m, v in setting["methods"].items():
            assert f"{name:<22}{m:<8}" in table
            assert math.isfinite(v["metric"]["mean"]) and v["seconds"]["mean"] > 0
            assert v["clipped"] == 0.0 if m == "sgdm" else 0.0 <= v["clipped"] <= 1.0
        for run in result["runs"][name]:
            curves = run["curves"]
            # the same budget for every method, and every method starts from the same weights
            assert len({tuple(c[-1][:1]) for c in curves.values()}) == 1
            assert len({c[0][2] for c in curves.values()}) == 1
            for c in curves.values():
                assert [row[1] for row in c] == sorted(row[1] for row in c)
    for name in ("digits_clean", "digits_heavy_tailed"):
        tuned = result["settings"][name]["tuned"]
        assert tuned["sgdm"]["factor"] is None
        sizes = {m: len(t["grid"]) for m, t in tuned.items()}
        assert len(set(sizes.values())) == 1  # the same tuning effort for every method
        assert all(0 <= t["val_accuracy"] <= 1 for t in tuned.values())
    steps = QUICK_DIGITS.steps
    assert result["runs"]["digits_clean"][0]["curves"]["psclip"][-1][0] == steps
    assert all(
        0 <= v["metric"]["mean"] <= 1
        for v in result["settings"]["digits_clean"]["methods"].values()
    )
    assert all(v["metric"]["mean"] > 1 for v in result["settings"]["gemma"]["methods"].values())


def test_skip_gemma_leaves_it_out(tmp_path, capsys):
    out = tmp_path / "psclip"
    args = ["experiment", "psclip", "--quick", "--seeds", "1", "--skip-gemma", "--out", str(out)]
    assert main(args) == 0
    result = json.loads((out / "psclip.json").read_text())
    assert list(result["settings"]) == SETTINGS[:2] and result["gemma_setting"] is None
    assert "\ngemma " not in capsys.readouterr().out
