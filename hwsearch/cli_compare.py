"""``hwsearch compare``: arguments to a :class:`~hwsearch.pipelines.CompareConfig`, one call, print the table."""

from __future__ import annotations

import argparse
from typing import Any

from hwsearch.cli_common import add_common, add_target, model_source, say

__all__ = ["add_compare_parser", "cmd_compare"]


def add_compare_parser(sub: Any) -> None:
    p = sub.add_parser("compare", help="compare FP32, fixed-bit baselines and policies on the test split")
    add_common(p, auto_threads=True)
    add_target(p)
    p.add_argument("--policy", action="append", default=[], help="[NAME=]POLICY_FILE[@CKPT] (repeatable)")
    p.add_argument("--fixed", type=int, nargs="*", default=[8, 4], help="fixed bit widths to include")
    p.add_argument("--model", action="append", default=[], help="NAME=CKPT: another FP32 model (e.g. + Lipschitz)")
    p.add_argument("--eps", type=float, nargs="*", default=[], help="robust accuracy at these L-inf eps (e.g. 0.1 0.2)")
    p.add_argument("--attack-steps", type=int, default=20)
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--robust-images", type=int, default=500)
    p.add_argument("--amplification", default=None, help="folder (or PNG) from `hwsearch amplify` to embed")
    p.add_argument("--out", default=None, help="folder for report.md/json/csv and plots")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from hwsearch.pipelines import CompareConfig, compare_report
    from hwsearch.report import compare_table

    config = CompareConfig(
        source=model_source(args),
        target=args.target,
        policies=tuple(args.policy),
        models=tuple(args.model),
        fixed=tuple(args.fixed),
        eps=tuple(args.eps),
        attack_steps=args.attack_steps,
        restarts=args.restarts,
        robust_images=args.robust_images,
        amplification=args.amplification,
        threads=args.threads,
    )
    report = compare_report(config, args.out)
    if report.files:
        say(args, f"report: {report.files['md']}")
    print(compare_table(report.rows, args.target), end="")
    return 0
