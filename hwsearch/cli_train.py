"""``hwsearch train | finetune | amplify``: arguments to configs, one library call (:mod:`hwsearch.pipelines`),
print."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hwsearch.cli_common import DEFAULT_CHECKPOINT, ProgressBar, add_common, add_compute_device, model_source, say

__all__ = ["add_train_parsers", "cmd_train", "cmd_finetune", "cmd_amplify"]


def add_train_parsers(sub: Any) -> None:
    """Add ``train``, ``finetune`` and ``amplify`` to the main CLI."""
    p = sub.add_parser("train", help="train an FP32 baseline and save a checkpoint")
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--data-root", default=None)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lipschitz-beta", type=float, default=0.0, help="orthogonality term weight (0 = off)")
    p.add_argument("--seed", type=int, default=0)
    add_compute_device(p, alias=True)
    p.add_argument("--out", default=DEFAULT_CHECKPOINT)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="quantization-aware fine-tuning of a policy, with the Lipschitz term")
    add_common(p)
    p.add_argument("--policy", required=True)
    p.add_argument("--lipschitz-beta", type=float, default=0.0, help="orthogonality term weight (0 = plain QAT)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/defended.pt")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("amplify", help="per-layer error amplification of FP32, a policy and its defended version")
    add_common(p)
    p.add_argument("--policy", default=None)
    p.add_argument("--defended", default=None, help="checkpoint written by `hwsearch finetune`")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/amplify")
    p.set_defaults(func=cmd_amplify)


def cmd_train(args: argparse.Namespace) -> int:
    from hwsearch.pipelines import BaselineConfig, train_baseline

    config = BaselineConfig(
        model=args.model,
        dataset=args.dataset,
        data_root=args.data_root,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        lipschitz_beta=args.lipschitz_beta,
        seed=args.seed,
        compute_device=args.compute_device,
    )
    bar = ProgressBar(args.quiet, args.epochs, "train")
    try:
        done = train_baseline(config, args.out, on_epoch=bar.epoch)
    finally:
        bar.close()
    say(
        args,
        f"trained {args.model} on {args.dataset} in {done.seconds:.1f}s: test accuracy {100 * done.test_accuracy:.2f}%",
    )
    say(args, f"checkpoint: {done.path}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from hwsearch.pipelines import FinetuneConfig, finetune_checkpoint

    config = FinetuneConfig(
        source=model_source(args),
        policy=args.policy,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        lipschitz_beta=args.lipschitz_beta,
    )
    bar = ProgressBar(args.quiet, args.epochs, "finetune")
    try:
        out, policy_path = finetune_checkpoint(config, args.out, on_epoch=bar.epoch)
    finally:
        bar.close()
    say(
        args,
        f"fine-tuned weights: {out} (apply {policy_path} to them; compare with --policy defended={policy_path}@{out})",
    )
    return 0


def cmd_amplify(args: argparse.Namespace) -> int:
    from hwsearch.pipelines import AmplifyConfig, amplify_models

    config = AmplifyConfig(
        source=model_source(args),
        policy=args.policy,
        defended=args.defended,
        eps=args.eps,
        steps=args.steps,
        images=args.images,
        seed=args.seed,
    )
    results = amplify_models(config, args.out)
    out = Path(args.out)
    say(args, f"error amplification: {out / 'amplification.csv'} and {out / 'amplification.png'}")
    for name, r in results.items():
        say(args, f"{name}: last layer amplification {r.adversarial[-1]:.2f} (noise control {r.noise[-1]:.2f})")
    return 0
