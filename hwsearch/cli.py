"""The ``hwsearch`` command: parses arguments, calls the library, prints. User mistakes exit 2 in one line."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hwsearch.errors import ConfigError, HwsearchError

__all__ = ["main", "build_parser"]

DEFAULT_DEVICE = "bitfusion-edge"
FACTORY_HELP = "rebuild a checkpoint of a custom model with this factory (imports it: only code you trust)"
DEFAULT_CHECKPOINT = "runs/fp32.pt"


def _progress(total: int, quiet: bool, desc: str):  # type: ignore[no-untyped-def]
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=quiet, dynamic_ncols=True, file=sys.stderr)


def _say(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text)


def _out_dir(path: str, overwrite: bool, marker: str) -> Path:
    """Refuse to mix two runs in one folder; nothing already computed is silently replaced."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {str(out)!r} is a file; name a folder")
    if (out / marker).exists() and not overwrite:
        raise ConfigError(
            f"output folder {str(out)!r} already holds a run ({marker}); pass --overwrite or another --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".hwsearch-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"output folder {str(out)!r} is not writable ({exc.strerror}); choose another --out"
        ) from None
    return out


# ---------------------------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from hwsearch.checkpoint import save_checkpoint
    from hwsearch.data import load_dataset, tensors
    from hwsearch.evaluate import clean_accuracy
    from hwsearch.models import build_model
    from hwsearch.runtime import resolve_compute_device, set_seed
    from hwsearch.training import TrainConfig, train

    device = resolve_compute_device(args.device)
    splits = load_dataset(args.dataset, args.data_root)
    set_seed(args.seed)
    model = build_model(args.model, splits.num_classes, splits.input_shape, splits.mean, splits.std)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed, device=str(device))
    regularizer = None
    if args.lipschitz_beta > 0:
        from hwsearch.robust import lipschitz_regularizer

        regularizer = lipschitz_regularizer(args.lipschitz_beta)
    bar = _progress(args.epochs, args.quiet, "train")

    def on_epoch(epoch: int, stats: dict) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['train_acc']:.3f}")

    t0 = time.perf_counter()
    train(model, splits.train, cfg, regularizer=regularizer, on_epoch=on_epoch)
    bar.close()
    x, y = tensors(splits.test)
    acc = clean_accuracy(model, x.to(device), y.to(device))
    path = save_checkpoint(
        args.out,
        model,
        model_name=args.model,
        dataset=args.dataset,
        num_classes=splits.num_classes,
        input_shape=splits.input_shape,
        mean=splits.mean,
        std=splits.std,
        metrics={"test_accuracy": acc, "epochs": args.epochs, "lipschitz_beta": args.lipschitz_beta, "seed": args.seed},
    )
    _say(
        args,
        f"trained {args.model} on {args.dataset} in {time.perf_counter() - t0:.1f}s: test accuracy {100 * acc:.2f}%",
    )
    _say(args, f"checkpoint: {path}")
    return 0


# --------------------------------------------------------------------------------------------- search
def _attack_list(args: argparse.Namespace) -> tuple[Any, ...]:
    """The search's attacks: none unless robustness is asked for; else the STE + shadow pair."""
    if args.robust_weight <= 0 and not args.attack:
        return ()
    from hwsearch.robust import search_attacks

    return tuple(search_attacks(args.eps, args.steps, method=args.attack or "pgd"))


_RUN_KEYS = (
    "checkpoint",
    "data_root",
    "model_factory",
    "compute_device",
    "device",
    "budget",
    "episodes",
    "warmup",
    "agent",
    "hidden",
    "min_bits",
    "max_bits",
    "acc_weight",
    "robust_weight",
    "cost_weight",
    "attack",
    "eps",
    "steps",
    "seed",
    "checkpoint_every",
    "episode_finetune_steps",
    "episode_lipschitz_beta",
    "tensorboard",
    "n_envs",
    "backend",
    "cpus_per_env",
    "gpus_per_env",
)


def _resume_args(args: argparse.Namespace) -> argparse.Namespace:
    """The settings of the run being resumed; only output-related flags come from this command line."""
    run = Path(args.resume) / "run.json"
    if not run.is_file():
        raise ConfigError(f"{str(args.resume)!r} holds no search to resume (no run.json); start one with --out")
    try:
        saved = json.loads(run.read_text(encoding="utf-8"))["args"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{str(run)!r} is corrupt; start a new search with --out") from None
    merged = dict(vars(args))
    merged.update({k: saved[k] for k in _RUN_KEYS if k in saved})
    merged["out"] = str(args.resume)
    return argparse.Namespace(**merged)


def _evaluator_for(args: argparse.Namespace, ws: Any) -> Any:
    from hwsearch.evaluate import Evaluator, EvaluatorConfig

    x, y = ws.split("val")
    cfg = EvaluatorConfig(
        attacks=_attack_list(args),
        seed=args.seed,
        finetune_steps=args.episode_finetune_steps,
        lipschitz_beta=args.episode_lipschitz_beta,
    )
    train = ws.split("train") if args.episode_finetune_steps else None
    return Evaluator(ws.model, ws.calibration, x, y, cfg, train_data=train)


def _search_into(
    out: Path, args: argparse.Namespace, ws: Any, evaluator: Any, budget: Any, *, resuming: bool, stop: _StopOnSignal
) -> Any:
    """One search written to ``out`` (log, checkpoints, policy, summary); returns the result, or None if stopped."""
    from hwsearch.config_json import save_config
    from hwsearch.hardware import get_cost_model
    from hwsearch.io import atomic_write_text
    from hwsearch.parallel import merge_worker_stats, parallel_env
    from hwsearch.policy import save_policy
    from hwsearch.records import EvalResult
    from hwsearch.report import EpisodeLog, read_episode_log, search_summary
    from hwsearch.search import SearchCheckpoint, SearchConfig, run_search
    from hwsearch.workflow import build_env

    t0 = time.perf_counter()
    config = SearchConfig(
        episodes=args.episodes,
        warmup_episodes=min(args.warmup, args.episodes),
        agent=args.agent,
        seed=args.seed,
        hidden=tuple(args.hidden),
        device="cpu",
    )
    env_kwargs: dict[str, Any] = {"w_acc": args.acc_weight, "w_rob": args.robust_weight, "w_cost": args.cost_weight}
    if not 1 <= args.min_bits <= args.max_bits <= 8:
        raise ConfigError(f"--min-bits {args.min_bits} / --max-bits {args.max_bits}: need 1 <= min <= max <= 8")
    t_start = evaluator.timings.copy()  # a sweep shares the evaluator: report this search's part
    env, _ = build_env(
        ws,
        get_cost_model(args.device),
        budget,
        env_kwargs=env_kwargs,
        evaluator=evaluator,
        bits=range(args.min_bits, args.max_bits + 1),
    )
    if not resuming:  # the resolved settings (the device's bit choices, the W8A8 references), reloadable
        for name, cfg in (("search", config), ("env", env.config), ("evaluator", evaluator.config)):
            save_config(out / "config" / f"{name}.json", cfg)
    history = read_episode_log(out / "episodes.csv", ws.layer_names) if resuming else []
    # finished episodes need no second evaluation
    evaluator.prime_cache((rec.policy.key(), EvalResult(rec.accuracy, rec.robust_accuracy)) for rec in history)
    if not resuming:  # a fresh run keeps nothing of a run it replaces (--overwrite)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
    # after the history is cached (workers start with it), before the log (a worker that cannot start leaves no run)
    search_env = parallel_env(env, _parallel_config(args))
    try:
        log = EpisodeLog(out / "episodes.csv", ws.layer_names, keep=len(history) if resuming else None)
        ckpt = SearchCheckpoint(out / "checkpoint", every=args.checkpoint_every)
        bar = _progress(config.episodes, args.quiet, f"search {budget} ({config.agent})")
        bar.update(len(history))
        best = [max((r.reward for r in history), default=float("-inf"))]

        def on_episode(rec: Any) -> None:
            log.append(rec)
            best[0] = max(best[0], rec.reward)
            bar.update(1)
            bar.set_postfix(best=f"{best[0]:.3f}", acc=f"{rec.accuracy:.3f}", cost=f"{rec.relative_cost:.2f}")

        result = run_search(
            search_env,
            config,
            on_episode=on_episode,
            checkpoint=ckpt,
            history=history,
            should_stop=stop,
            tensorboard=out / "tensorboard" if args.tensorboard else None,
            resume=resuming,
        )
        if search_env is not env:
            merge_worker_stats(search_env, evaluator)  # their cache (a sweep's next budget) and timings
    finally:
        if search_env is not env:
            search_env.close()
    bar.close()
    if stop():
        return None
    top = result.best
    meta = {
        "source": "hwsearch search",
        "agent": config.agent,
        "device": args.device,
        "budget": str(budget),
        "episode": top.episode,
        "reward": top.reward,
        "val_accuracy": top.accuracy,
        "val_robust_accuracy": top.robust_accuracy,
        "latency_ms": top.latency_ms,
        "relative_cost": top.relative_cost,
        "checkpoint": str(args.checkpoint),
        "seed": config.seed,
    }
    save_policy(top.policy.with_meta(**meta), out / "policy.json")
    now = evaluator.timings
    t = {f: getattr(now, f) - getattr(t_start, f) for f in ("quantize", "accuracy", "attack", "calls", "hits")}
    total = time.perf_counter() - t0
    timings = {
        "evaluation: quantize + accuracy": t["quantize"] + t["accuracy"],
        "evaluation: attack": t["attack"],
        "agent and other": total - t["quantize"] - t["accuracy"] - t["attack"],
        "total": total,
    }
    if search_env is not env:  # worker seconds overlap: their sum is CPU time, not a share of the wall time
        n = args.n_envs
        timings = {
            f"evaluation, summed over {n} workers: quantize + accuracy": t["quantize"] + t["accuracy"],
            f"evaluation, summed over {n} workers: attack": t["attack"],
            "total": total,
        }
    ref = {"accuracy": env.config.acc_ref, "robust_accuracy": env.config.rob_ref if evaluator.attacks else None}
    summary = search_summary(
        result, device=args.device, budget=str(budget), budget_limit=env.budget_limit, reference=ref, timings=timings
    )
    summary += f"\nEvaluation cache: {t['hits']} hits of {t['calls']} evaluations.\n"
    atomic_write_text(out / "summary.md", summary)
    return result


def _parallel_config(args: argparse.Namespace) -> Any:
    from hwsearch.parallel import ParallelConfig

    return ParallelConfig(
        n_envs=getattr(args, "n_envs", 1),
        backend=getattr(args, "backend", "subproc"),
        cpus_per_env=getattr(args, "cpus_per_env", 1.0),
        gpus_per_env=getattr(args, "gpus_per_env", 0.0),
        ray_address=getattr(args, "ray_address", None),
        # a worker that reserves a GPU evaluates on it, even when the driver (which scores only the reference
        # policy) has none and runs with --compute-device cpu
        compute_device="cuda"
        if getattr(args, "backend", "") == "ray" and getattr(args, "gpus_per_env", 0) > 0
        else None,
    )


def cmd_search(args: argparse.Namespace) -> int:
    from hwsearch.budget import parse_budget
    from hwsearch.hardware import get_cost_model
    from hwsearch.io import atomic_write_json

    resuming = bool(args.resume)
    if resuming:
        args = _resume_args(args)
    budget = parse_budget(args.budget)
    get_cost_model(args.device)  # fail fast on a bad name, before loading anything
    _attack_list(args)
    _parallel_config(args)  # fail fast on bad --n-envs/--backend, and on a missing Ray, before loading anything
    if args.backend == "ray":
        from hwsearch.parallel import require_ray

        require_ray()
    existed = Path(args.out).exists()
    out = Path(args.out) if resuming else _out_dir(args.out, args.overwrite, "episodes.csv")
    try:
        if not resuming:
            atomic_write_json(out / "run.json", {"schema": 1, "args": {k: getattr(args, k) for k in _RUN_KEYS}})
        ws = _prepare(args)
        with _StopOnSignal() as stop:
            result = _search_into(out, args, ws, _evaluator_for(args, ws), budget, resuming=resuming, stop=stop)
    except HwsearchError:
        if not resuming and not (out / "episodes.csv").exists():  # failed before any episode: leave nothing
            if existed:
                (out / "run.json").unlink(missing_ok=True)
            else:
                shutil.rmtree(out, ignore_errors=True)
        raise
    if result is None:
        print(
            f"hwsearch: stopped by {stop.signal_name}; continue with: hwsearch search --resume {out}", file=sys.stderr
        )
        return 130
    top = result.best
    _say(
        args,
        f"best policy: val accuracy {100 * top.accuracy:.2f}% at {top.relative_cost:.3f}x fixed-8-bit "
        f"{budget.metric} ({top.latency_ms:.5g} ms on {args.device}); written to {out / 'policy.json'}",
    )
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """One search per budget, sharing one evaluation cache, then the Pareto front of everything evaluated."""
    from hwsearch.budget import parse_budget
    from hwsearch.hardware import get_cost_model
    from hwsearch.pareto import write_pareto

    metric, _, values = args.budgets.partition("=") if "=" in args.budgets else ("latency", "", args.budgets)
    budgets = [parse_budget(f"{metric}={v.strip()}") for v in values.split(",") if v.strip()]
    if not budgets:
        raise ConfigError(f"--budgets {args.budgets!r} names no budget; e.g. --budgets 0.3x,0.4x,0.5x")
    get_cost_model(args.device)
    _attack_list(args)
    _parallel_config(args)
    if args.backend == "ray":
        from hwsearch.parallel import require_ray

        require_ray()
    out = _out_dir(args.out, args.overwrite, "pareto.csv")
    ws = _prepare(args)
    evaluator = _evaluator_for(args, ws)
    episodes = []
    with _StopOnSignal() as stop:
        for budget in budgets:
            sub = out / str(budget).replace("=", "-")
            sub.mkdir(parents=True, exist_ok=True)
            result = _search_into(sub, args, ws, evaluator, budget, resuming=False, stop=stop)
            if result is None:
                print(f"hwsearch: stopped by {stop.signal_name} during {budget}", file=sys.stderr)
                return 130
            episodes += [(str(budget), rec) for rec in result.episodes]
            _say(
                args,
                f"{budget}: best val accuracy {100 * result.best.accuracy:.2f}% at {result.best.relative_cost:.3f}x",
            )
    paths = write_pareto(out, episodes)
    _say(args, f"Pareto front: {paths['csv']} and {paths['png']}")
    return 0


class _StopOnSignal:
    """SIGINT/SIGTERM set a flag the search checks every step, so it stops cleanly after a checkpoint."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._old: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> _StopOnSignal:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# -------------------------------------------------------------------------------------------- compare
def _named(spec: str, what: str) -> tuple[str, str]:
    name, sep, value = spec.partition("=")
    if not sep:
        name, value = Path(spec).parent.name or Path(spec).stem, spec
    if not name or not value:
        raise ConfigError(f"{what} {spec!r} is malformed; write NAME=PATH")
    return name, value


def cmd_compare(args: argparse.Namespace) -> int:
    from hwsearch.hardware import get_cost_model
    from hwsearch.plots import plot_policy_bits, plot_tradeoff
    from hwsearch.policy import load_policy
    from hwsearch.report import compare_table, write_compare
    from hwsearch.workflow import compare_policies, robust_evaluator, standard_entries

    cost_model = get_cost_model(args.device)  # fail fast on a bad name, before loading anything
    for eps in args.eps:
        if not 0 < eps <= 1:
            raise ConfigError(f"--eps {eps} is outside (0, 1]; eps is in input units of [0, 1] images")
    for flag, value in (("--robust-images", args.robust_images), ("--attack-steps", args.attack_steps)):
        if value < 1:
            raise ConfigError(f"{flag} {value} must be >= 1")
    policies: dict[str, Any] = {}
    others: dict[str, Any] = {}
    for spec in args.policy:
        name, value = _named(spec, "--policy")
        path, _, ckpt = value.partition("@")
        policies[name] = (load_policy(path), ckpt or None)
    for spec in args.model:
        name, ckpt = _named(spec, "--model")
        policies[name] = (None, ckpt)
    ws = _prepare(args)
    entries: dict[str, Any] = standard_entries(ws, bits=tuple(args.fixed))
    for name, (policy, ckpt) in policies.items():
        if ckpt is None:
            entries[name] = policy
        else:
            if ckpt not in others:
                others[ckpt] = _prepare(args, ckpt)
            entries[name] = (policy, others[ckpt])
    robust = robust_evaluator(ws, args.eps, steps=args.attack_steps, restarts=args.restarts, images=args.robust_images)
    rows = compare_policies(ws, entries, args.device, split="test", robust_eval=robust if args.eps else None)
    header = (
        f"# hwsearch comparison\n\nModel `{ws.model_name}` on the `{ws.splits.name}` test split "
        f"({len(ws.splits.test)} images), device `{args.device}`."
    )
    if args.eps:
        header += (
            f" Robust accuracy: per-sample worst case over STE-, shadow- and transfer-PGD ({args.attack_steps} steps, "
            f"{args.restarts} restart(s)), margin-loss PGD and FGSM, L-inf, on the first {args.robust_images} test images."
        )
    if args.out:
        out = _out_dir(args.out, True, "report.md")
        plots = ["tradeoff.png"]
        plot_tradeoff(rows, out / "tradeoff.png", device=args.device)
        from hwsearch.hardware import policy_cost

        for row in rows:
            if row.policy is not None and not row.name.startswith("fixed"):
                fname = f"bits-{''.join(c if c.isalnum() else '_' for c in row.name)}.png"
                src = entries[row.name][1] if isinstance(entries[row.name], tuple) else ws
                shares = policy_cost(cost_model, src.layers, row.policy).latency_shares()
                plot_policy_bits(row.policy, shares, out / fname, title=f"{row.name}: bits per layer")
                plots.append(fname)
        if args.amplification:
            src = Path(args.amplification)
            src = src / "amplification.png" if src.is_dir() else src
            if not src.is_file():
                raise ConfigError(f"--amplification {str(src)!r} is not a PNG written by `hwsearch amplify`")
            shutil.copyfile(src, out / "amplification.png")
            plots.append("amplification.png")
        header += "\n\n" + "\n".join(f"![{p}]({p})" for p in plots)
        paths = write_compare(out, rows, args.device, header)
        _say(args, f"report: {paths['md']}")
    print(compare_table(rows, args.device), end="")
    return 0


# ------------------------------------------------------------------------------------ finetune, amplify
def cmd_finetune(args: argparse.Namespace) -> int:
    from hwsearch.checkpoint import save_checkpoint
    from hwsearch.policy import load_policy, save_policy
    from hwsearch.training import TrainConfig
    from hwsearch.workflow import finetune_policy

    if args.lipschitz_beta < 0:
        raise ConfigError(f"--lipschitz-beta {args.lipschitz_beta} must be >= 0 (0 = plain QAT)")
    policy = load_policy(args.policy)
    ws = _prepare(args)
    policy.check_against(ws.layer_names)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed, device=str(ws.device))
    bar = _progress(args.epochs, args.quiet, "finetune")

    def on_epoch(epoch: int, stats: dict) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['train_acc']:.3f}")

    model = finetune_policy(ws, policy, cfg, lipschitz_beta=args.lipschitz_beta, on_epoch=on_epoch)
    bar.close()
    out = Path(args.out)
    meta = ws.meta
    extra = {"policy": policy.to_dict(), "calibration": ws.calibration.to_dict(), "lipschitz_beta": args.lipschitz_beta}
    save_checkpoint(
        out,
        model,
        model_name=meta["model_name"],
        dataset=meta["dataset"],
        num_classes=meta["num_classes"],
        input_shape=meta["input_shape"],
        mean=meta["mean"],
        std=meta["std"],
        metrics={"finetune_epochs": args.epochs, "lipschitz_beta": args.lipschitz_beta, "seed": args.seed},
        extra=extra,
    )
    save_policy(policy.with_meta(finetuned=str(out)), out.with_suffix(".policy.json"))
    _say(
        args,
        f"fine-tuned weights: {out} (apply {out.with_suffix('.policy.json')} to them; compare with "
        f"--policy defended={out.with_suffix('.policy.json')}@{out})",
    )
    return 0


def cmd_amplify(args: argparse.Namespace) -> int:
    from hwsearch.policy import load_policy
    from hwsearch.quant import apply_policy
    from hwsearch.robust import AttackConfig, amplification_profile, attack, write_amplification

    if not 0 < args.eps <= 1:
        raise ConfigError(f"--eps {args.eps} is outside (0, 1]; eps is in input units of [0, 1] images")
    ws = _prepare(args)
    models: dict[str, Any] = {"FP32": ws.model}
    if args.policy:
        policy = load_policy(args.policy)
        models[f"quantized ({Path(args.policy).name})"] = apply_policy(ws.model, policy, ws.calibration)
    if args.defended:
        dws = _prepare(args, args.defended)
        stored = dws.meta.get("extra", {}).get("policy")
        if stored is None and not args.policy:
            raise ConfigError(f"{args.defended!r} was not written by `hwsearch finetune`; pass --policy too")
        from hwsearch.policy import Policy

        dpolicy = Policy.from_dict(stored) if stored is not None else load_policy(args.policy)
        models["defended"] = apply_policy(dws.model, dpolicy, dws.calibration)
    x, y = ws.split("test", args.images)
    x, y = x.to(ws.device), y.to(ws.device)
    cfg = AttackConfig("pgd", args.eps, args.steps, grad="shadow")
    results = {}
    for name, model in models.items():
        g = torch_generator(args.seed)
        x_adv = attack(model, x, y, cfg, generator=g)
        results[name] = amplification_profile(model, x, x_adv, generator=torch_generator(args.seed))
    out = _out_dir(args.out, True, "amplification.csv")
    write_amplification(results, out / "amplification.csv", out / "amplification.png")
    _say(args, f"error amplification: {out / 'amplification.csv'} and {out / 'amplification.png'}")
    for name, r in results.items():
        _say(args, f"{name}: last layer amplification {r.adversarial[-1]:.2f} (noise control {r.noise[-1]:.2f})")
    return 0


def torch_generator(seed: int) -> Any:
    import torch

    return torch.Generator().manual_seed(seed)


def _prepare(args: argparse.Namespace, checkpoint: str | None = None) -> Any:
    """The workspace of ``checkpoint`` (default ``--checkpoint``) with the command's data, device and factory."""
    from hwsearch.workflow import prepare

    return prepare(
        checkpoint or args.checkpoint,
        data_root=args.data_root,
        device=getattr(args, "compute_device", "cpu"),
        model_name=getattr(args, "model_factory", None),
    )


# --------------------------------------------------------------------------------------------- parser
def _common(p: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    if checkpoint:
        p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="FP32 checkpoint from `hwsearch train`")
    p.add_argument("--data-root", default=None, help="folder of a local dataset (cifar10, svhn, imagefolder)")
    p.add_argument("--model-factory", default=None, metavar="MODULE:FACTORY", help=FACTORY_HELP)
    p.add_argument("--compute-device", default="cpu", help="cpu, cuda or auto: where models run")
    p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for small models)")


def _search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=DEFAULT_DEVICE, help="target device (see `hwsearch latency devices`)")
    p.add_argument("--episodes", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20, help="random warm-up episodes before DDPG learns")
    p.add_argument("--agent", default="ddpg", help="ddpg or random (same episodes, same budget enforcement)")
    p.add_argument("--hidden", type=int, nargs="+", default=[300, 300], help="actor/critic hidden widths")
    p.add_argument("--min-bits", type=int, default=2)
    p.add_argument("--max-bits", type=int, default=8)
    p.add_argument("--acc-weight", type=float, default=10.0)
    p.add_argument("--robust-weight", type=float, default=0.0)
    p.add_argument("--cost-weight", type=float, default=0.0)
    p.add_argument("--attack", default=None, help="pgd or fgsm (robustness in the reward)")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tensorboard", action="store_true", help="log scalars for TensorBoard under OUT/tensorboard")
    p.add_argument("--episode-finetune-steps", type=int, default=0, help="QAT steps per evaluated policy (0 = off)")
    p.add_argument("--episode-lipschitz-beta", type=float, default=0.0, help="Lipschitz term in those steps")
    p.add_argument(
        "--n-envs", type=int, default=1, help="environments stepped at once; their evaluations run in parallel"
    )
    p.add_argument("--backend", default="subproc", help="serial, subproc (processes on this machine) or ray")
    p.add_argument(
        "--cpus-per-env", type=float, default=1.0, help="CPUs each worker reserves (Ray) and its torch threads"
    )
    p.add_argument("--gpus-per-env", type=float, default=0.0, help="GPUs each Ray worker reserves (0.5 = half a card)")
    p.add_argument(
        "--ray-address", default=None, help="join this Ray cluster (auto or HOST:PORT); default: start a local one"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hwsearch",
        description="Find per-layer bit widths that keep a network accurate and robust within a device budget.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an FP32 baseline and save a checkpoint")
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--data-root", default=None)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lipschitz-beta", type=float, default=0.0, help="orthogonality term weight (0 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--out", default=DEFAULT_CHECKPOINT)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("search", help="search a mixed-precision policy with DDPG (or random search)")
    _common(p)
    _search_options(p)
    p.add_argument("--budget", default="latency=0.5x", help="METRIC=VALUE[x]: latency, energy or size")
    p.add_argument("--out", default="runs/search")
    p.add_argument("--overwrite", action="store_true", help="replace a finished or different run in --out")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the interrupted search in DIR")
    p.add_argument("--checkpoint-every", type=int, default=10, help="episodes between agent checkpoints")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("sweep", help="one search per budget and the Pareto front of all of them")
    _common(p)
    _search_options(p)
    p.add_argument("--budgets", default="latency=0.3x,0.4x,0.5x,0.6x", help="[METRIC=]V1,V2,... e.g. 0.3x,0.5x")
    p.add_argument("--out", default="runs/sweep")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_sweep, checkpoint_every=10)

    p = sub.add_parser("compare", help="compare FP32, fixed-bit baselines and policies on the test split")
    _common(p)
    p.add_argument("--device", default=DEFAULT_DEVICE)
    p.add_argument("--policy", action="append", default=[], help="[NAME=]policy.json (repeatable)")
    p.add_argument("--fixed", type=int, nargs="*", default=[8, 4], help="fixed bit widths to include")
    p.add_argument("--model", action="append", default=[], help="NAME=CKPT: another FP32 model (e.g. + Lipschitz)")
    p.add_argument("--eps", type=float, nargs="*", default=[], help="robust accuracy at these L-inf eps (e.g. 0.1 0.2)")
    p.add_argument("--attack-steps", type=int, default=20)
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--robust-images", type=int, default=500)
    p.add_argument("--amplification", default=None, help="folder (or PNG) from `hwsearch amplify` to embed")
    p.add_argument("--out", default=None, help="folder for report.md/json/csv and plots")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("finetune", help="quantization-aware fine-tuning of a policy, with the Lipschitz term")
    _common(p)
    p.add_argument("--policy", required=True)
    p.add_argument("--lipschitz-beta", type=float, default=0.0, help="orthogonality term weight (0 = plain QAT)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/defended.pt")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("amplify", help="per-layer error amplification of FP32, a policy and its defended version")
    _common(p)
    p.add_argument("--policy", default=None)
    p.add_argument("--defended", default=None, help="checkpoint written by `hwsearch finetune`")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/amplify")
    p.set_defaults(func=cmd_amplify)

    try:
        from hwsearch.cli_latency import add_latency_parser
    except ImportError:  # pragma: no cover - the latency commands ship with the package
        pass
    else:
        add_latency_parser(sub)
    from hwsearch.cli_export import add_export_parser

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
