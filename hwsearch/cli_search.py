"""``hwsearch search | sweep``: arguments to a :class:`~hwsearch.job.SearchJobConfig`, one call of
:mod:`hwsearch.job`, print."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hwsearch.cli_common import ProgressBar, add_common, add_target, say

__all__ = ["add_search_parsers", "job_config", "cmd_search", "cmd_sweep"]


def _search_options(p: argparse.ArgumentParser) -> None:
    add_target(p)
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20, help="random warm-up episodes before DDPG learns")
    p.add_argument(
        "--agent",
        default="ddpg",
        help="ddpg, random (same episodes, same budget enforcement) or ilp (sensitivity + integer program)",
    )
    p.add_argument(
        "--init-policy",
        action="append",
        default=[],
        metavar="FILE",
        help="play this policy file first (repeatable; JSON/YAML/CSV/HAQ): a warm start inside the warm-up",
    )
    p.add_argument("--init-from-ilp", action="store_true", help="play the ILP baseline's answer first (warm start)")
    p.add_argument("--hidden", type=int, nargs="+", default=[300, 300], help="actor/critic hidden widths")
    p.add_argument(
        "--enforce",
        default="step",
        choices=["step", "walk"],
        help="budget: step = AMC's per-step action wall (default); walk = HAQ's walk of the finished request only",
    )
    p.add_argument("--min-bits", type=int, default=2)
    p.add_argument("--max-bits", type=int, default=8)
    p.add_argument("--acc-weight", type=float, default=10.0)
    p.add_argument("--robust-weight", type=float, default=0.0)
    p.add_argument("--cost-weight", type=float, default=0.0)
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=None,
        metavar="POINTS",
        help="accuracy floor, a steep penalty: search-val accuracy more than POINTS percentage points below fixed "
        "8-bit's costs 100 reward per unit fraction below it, on top of --acc-weight (default: no floor)",
    )
    p.add_argument("--attack", default=None, help="pgd or fgsm (robustness in the reward)")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument(
        "--robust-images", type=int, default=200, help="search-val images the search attacks per policy (200)"
    )
    p.add_argument(
        "--select-top",
        type=int,
        default=10,
        metavar="K",
        help="the final pick re-scores the K best distinct policies' clean accuracy on training images the search "
        "never scored, pooled with search-val's, against the best reward's winner's curse (default 10, chosen on validation data: "
        "benchmarks/results/pick.md; 0: the best search reward)",
    )
    p.add_argument("--select-images", type=int, default=3000, help="training images the pick re-scores on (3000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tensorboard", action="store_true", help="log scalars for TensorBoard under OUT/tensorboard")
    p.add_argument("--episode-finetune-steps", type=int, default=0, help="QAT steps per evaluated policy (0 = off)")
    p.add_argument("--episode-lipschitz-beta", type=float, default=0.0, help="Lipschitz term in those steps")
    p.add_argument(
        "--n-envs",
        type=int,
        default=None,
        help="environments stepped at once; their evaluations run in parallel, but a round waits for its slowest "
        "and the episodes differ from one env's (default 1)",
    )
    p.add_argument(
        "--shards",
        type=int,
        default=None,
        help="processes that score each policy together, each on its share of the images, 1 torch thread each; "
        "the same episodes as one process (default, without --n-envs: one per core when that measures faster "
        "than threads and the search is long enough to repay starting them, else 1)",
    )
    p.add_argument("--backend", default="subproc", help="serial, subproc (processes on this machine) or ray")
    p.add_argument(
        "--cpus-per-env", type=float, default=1.0, help="CPUs each worker reserves (Ray) and its torch threads"
    )
    p.add_argument("--gpus-per-env", type=float, default=0.0, help="GPUs each Ray worker reserves (0.5 = half a card)")
    p.add_argument(
        "--ray-address", default=None, help="join this Ray cluster (auto or HOST:PORT); default: start a local one"
    )


def add_search_parsers(sub: Any) -> None:
    """Add ``search`` and ``sweep`` to the main CLI."""
    p = sub.add_parser("search", help="search a mixed-precision policy with DDPG (or random search)")
    add_common(p, auto_threads=True)
    _search_options(p)
    p.add_argument("--budget", default="latency=0.5x", help="METRIC=VALUE[x]: latency, energy or size")
    p.add_argument("--out", default="runs/search")
    p.add_argument("--overwrite", action="store_true", help="replace a finished or different run in --out")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the interrupted search in DIR")
    p.add_argument("--checkpoint-every", type=int, default=10, help="episodes between agent checkpoints")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("sweep", help="one search per budget and the Pareto front of all of them")
    add_common(p, auto_threads=True)
    _search_options(p)
    p.add_argument("--budgets", default="latency=0.3x,0.4x,0.5x,0.6x", help="[METRIC=]V1,V2,... e.g. 0.3x,0.5x")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_sweep, checkpoint_every=10, budget="latency=0.5x")


def job_config(args: argparse.Namespace) -> Any:
    """The :class:`~hwsearch.job.SearchJobConfig` these arguments describe."""
    from hwsearch.job import SearchJobConfig
    from hwsearch.parallel import ParallelConfig
    from hwsearch.search import SearchConfig

    parallel = ParallelConfig(
        n_envs=1 if args.n_envs is None and args.shards is not None else args.n_envs,  # given shards: no guessing
        shards=1 if args.shards is None else args.shards,
        backend=args.backend,
        cpus_per_env=args.cpus_per_env,
        gpus_per_env=args.gpus_per_env,
        ray_address=args.ray_address,
        # a worker that reserves a GPU evaluates on it, even when the driver (which scores only the reference
        # policy) has none and runs with --compute-device cpu
        compute_device="cuda" if args.backend == "ray" and args.gpus_per_env > 0 else None,
    )
    search = SearchConfig(
        episodes=args.episodes, warmup_episodes=args.warmup, agent=args.agent, seed=args.seed, hidden=tuple(args.hidden)
    )
    return SearchJobConfig(
        checkpoint=args.checkpoint,
        target=args.target,
        budget=args.budget,
        search=search,
        parallel=parallel,
        data_root=args.data_root,
        model_factory=args.model_factory,
        compute_device=args.compute_device,
        min_bits=args.min_bits,
        max_bits=args.max_bits,
        acc_weight=args.acc_weight,
        robust_weight=args.robust_weight,
        cost_weight=args.cost_weight,
        attack=args.attack,
        eps=args.eps,
        steps=args.steps,
        robust_images=args.robust_images,
        episode_finetune_steps=args.episode_finetune_steps,
        episode_lipschitz_beta=args.episode_lipschitz_beta,
        checkpoint_every=args.checkpoint_every,
        tensorboard=args.tensorboard,
        threads=args.threads,
        init_policies=tuple(args.init_policy),
        init_from_ilp=args.init_from_ilp,
        enforce=args.enforce,
        max_accuracy_drop=args.max_accuracy_drop,
        select_top=args.select_top,
        select_images=args.select_images,
    )


def cmd_search(args: argparse.Namespace) -> int:
    from hwsearch.job import StopOnSignal, resume_search_job, run_search_job

    progress = ProgressBar(args.quiet)
    with StopOnSignal() as stop:
        if args.resume:
            done = resume_search_job(args.resume, progress=progress, should_stop=stop)
        else:
            done = run_search_job(
                job_config(args), args.out, overwrite=args.overwrite, progress=progress, should_stop=stop
            )
    if done is None:
        folder = args.resume or args.out
        print(
            f"hwsearch: stopped by {stop.signal_name}; continue with: hwsearch search --resume {folder}",
            file=sys.stderr,
        )
        return 130
    top = done.best
    say(
        args,
        f"picked policy: val accuracy {100 * top.accuracy:.2f}% at {top.relative_cost:.3f}x fixed-8-bit "
        f"{done.budget.metric} ({top.latency_ms:.5g} ms on {done.target}); written to {done.policy_path}",
    )
    if done.result.notes.get("pick", {}).get("below_floor"):
        print(
            "hwsearch: warning: the picked policy misses the accuracy floor on the training images it was re-scored "
            f"on; see {done.out / 'summary.md'}, 'The pick'",
            file=sys.stderr,
        )
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """One search per budget, sharing one evaluation cache, then the Pareto front of everything evaluated."""
    from hwsearch.job import StopOnSignal, parse_budgets, run_sweep

    budgets = parse_budgets(args.budgets)
    config = job_config(args)

    def on_budget(budget: Any, result: Any) -> None:
        top = result.chosen
        say(args, f"{budget}: picked val accuracy {100 * top.accuracy:.2f}% at {top.relative_cost:.3f}x")

    with StopOnSignal() as stop:
        done = run_sweep(
            config,
            budgets,
            args.out,
            overwrite=args.overwrite,
            progress=ProgressBar(args.quiet),
            should_stop=stop,
            on_budget=on_budget,
        )
    if done.stopped_during is not None:
        print(f"hwsearch: stopped by {stop.signal_name} during {done.stopped_during}", file=sys.stderr)
        return 130
    say(args, f"Pareto front: {done.files['csv']} and {done.files['png']}")
    return 0
