"""``gradaccum bench NAME``: baseline and gradaccum side by side, printed as ratios."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark against its baseline in one process")
    p.add_argument("name", choices=["accumulation"], help="which benchmark")
    p.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    p.add_argument("--quick", action="store_true", help="a small, fast version (for tests)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gradaccum.bench.accumulation import format_table, run_accumulation_bench

    result = run_accumulation_bench(quick=args.quick, seed=args.seed)
    print(format_table(result))
    if args.json:
        print(json.dumps(result))
    return 0
