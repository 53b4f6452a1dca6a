"""bench budget: every run's measured peak stays under its budget (quick: tiny Gemma)."""

from __future__ import annotations

import json

from gradaccum.cli.main import main


def test_quick_sweep_holds_the_smallest_budgets_and_draws_the_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRADACCUM_CACHE", str(tmp_path / "cache"))
    plot = tmp_path / "budget.png"
    argv = ["bench", "budget", "--quick", "--json", "--plot", str(plot)]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    runs = result["runs"]
    assert [r["method"] for r in runs] == ["lora", "full"]
    assert all(r["peak_mb"] <= r["budget_mb"] for r in runs), runs
    assert result["budget_held"] and result["worst_peak_over_budget"] <= 1.0
    assert plot.stat().st_size > 10_000 and json.loads(plot.with_suffix(".json").read_text())


def test_plot_is_refused_by_benches_without_one(capsys):
    assert main(["bench", "accumulation", "--quick", "--plot", "x.png"]) == 2
    assert "--plot is not an option of bench accumulation" in capsys.readouterr().err
