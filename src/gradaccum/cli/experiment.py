"""``gradaccum experiment NAME``: train, write JSON and a plot, print a table.

Each experiment is a module in ``gradaccum.experiments`` with
``run(quick: bool, seeds: int, out: str) -> dict`` and ``format_table(result: dict) -> str``;
add one line to ``EXPERIMENTS`` to expose another.
"""

from __future__ import annotations

import argparse
import importlib
import json

from gradaccum.errors import UserError

EXPERIMENTS = {
    "gcond": "gradaccum.experiments.gcond",
    "psclip": "gradaccum.experiments.psclip",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="run a reproduction experiment and plot it")
    p.add_argument("name", choices=sorted(EXPERIMENTS), help="which experiment")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    p.add_argument("--quick", action="store_true", help="a small, fast version (for tests)")
    p.add_argument("--out", default=None, help="output folder (default runs/experiments/NAME)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    p.add_argument("--skip-gemma", action="store_true", help="psclip: leave out the Gemma part")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    module = importlib.import_module(EXPERIMENTS[args.name])
    out = args.out or f"runs/experiments/{args.name}"
    extra = {"skip_gemma": True} if args.skip_gemma else {}
    result = module.run(quick=args.quick, seeds=args.seeds, out=out, **extra)
    print(module.format_table(result))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "runs"}))
    return 0
