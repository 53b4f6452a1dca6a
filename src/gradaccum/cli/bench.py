"""``gradaccum bench NAME``: baseline and gradaccum side by side, printed as ratios.

Each benchmark is a module in ``gradaccum.bench`` with ``run(quick: bool, seed: int) -> dict``
and ``format_table(result: dict) -> str``; add one line to ``BENCHES`` to expose another.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
from pathlib import Path

from gradaccum.errors import UserError

BENCHES = {
    "accumulation": "gradaccum.bench.accumulation",
    "memory": "gradaccum.bench.memory",
    "budget": "gradaccum.bench.budget_sweep",
    "crash": "gradaccum.bench.crash",
    "soak": "gradaccum.bench.soak",
    "multitask": "gradaccum.bench.multitask",
    "persample": "gradaccum.bench.persample",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark against its baseline in one process")
    p.add_argument("name", choices=sorted(BENCHES), help="which benchmark")
    p.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    p.add_argument("--quick", action="store_true", help="a small, fast version (for tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None, help="bench budget: draw peak vs budget to this PNG")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHES[args.name])
    extra = {}
    if args.plot:
        if "plot" not in inspect.signature(module.run).parameters:
            raise UserError(f"--plot is not an option of bench {args.name}: leave it out")
        extra["plot"] = Path(args.plot)
    result = module.run(quick=args.quick, seed=args.seed, **extra)
    print(module.format_table(result))
    if args.json:
        print(json.dumps(result))
    return 0
