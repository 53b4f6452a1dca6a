"""Entry point: dispatch sub-commands; user errors become one line and exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from gradaccum.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from gradaccum.cli import bench, experiment, finetune

    parser = argparse.ArgumentParser(
        prog="gradaccum", description="Exact, cheap and safe gradient accumulation."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    finetune.add_parser(sub)
    bench.add_parser(sub)
    experiment.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    logging.basicConfig(level=logging.WARNING, format="gradaccum: %(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # long documents are chunked on purpose
    hf_logging.disable_progress_bar()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UserError as error:
        print(f"gradaccum: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradaccum: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
