"""The ``hwsearch`` command: builds the parser from the command modules and runs one command.

Each command module (``cli_train``, ``cli_search``, ``cli_compare``, ``cli_export``, ``cli_latency``) turns its
arguments into a config, makes one library call and prints. User mistakes exit 2 in one line, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hwsearch.cli_compare import add_compare_parser
from hwsearch.cli_export import add_export_parser
from hwsearch.cli_latency import add_latency_parser
from hwsearch.cli_search import add_search_parsers
from hwsearch.cli_train import add_train_parsers
from hwsearch.errors import HwsearchError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hwsearch",
        description="Find per-layer bit widths that keep a network accurate and robust within a device budget.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parsers(sub)
    add_search_parsers(sub)
    add_compare_parser(sub)
    add_latency_parser(sub)
    add_export_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            print(f"hwsearch: error: --threads {threads} must be >= 1", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(threads)
    try:
        return int(args.func(args) or 0)
    except HwsearchError as exc:
        print(f"hwsearch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hwsearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
