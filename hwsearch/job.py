"""The search job: one search written to a folder (episode log, checkpoints, policy, summary), resumable, on any
parallel backend; and a budget sweep of such searches. The CLI's ``search`` and ``sweep`` are these calls.

The job's settings are one :class:`SearchJobConfig`, saved as versioned JSON (:mod:`hwsearch.config_json`) to
``OUT/config/job.json`` before anything is loaded; ``--resume`` reads it back, so a resumed search runs with the
settings it started with. See docs/ARCHITECTURE.md, "Data flow".
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from hwsearch.budget import Budget, parse_budget
from hwsearch.checks import check_choice, check_int, check_number
from hwsearch.config_json import config_from_dict, read_config_dict, save_config
from hwsearch.envs import ENFORCE_MODES
from hwsearch.errors import ConfigError, HwsearchError
from hwsearch.evaluate import Evaluator, EvaluatorConfig
from hwsearch.evaluate_shards import why_not_sharded
from hwsearch.hardware import DEFAULT_DEVICE, get_cost_model
from hwsearch.io import atomic_write_text
from hwsearch.job_compute import choose_compute, close_evaluator
from hwsearch.onnx_export import EXPORT_STYLES
from hwsearch.parallel import ParallelConfig, merge_worker_stats, parallel_env, require_ray
from hwsearch.policy import Policy
from hwsearch.policy_formats import save_policy
from hwsearch.records import EvalResult
from hwsearch.report import EpisodeLog, read_episode_log, search_summary
from hwsearch.robust.attacks import AttackConfig, search_attacks
from hwsearch.search import EpisodeRecord, SearchCheckpoint, SearchConfig, SearchResult, run_search
from hwsearch.selection import final_pick
from hwsearch.workflow import Workspace, build_env, prepare, range_images, target_export_style

__all__ = [
    "JOB_CONFIG",
    "SearchJobConfig",
    "SearchJobResult",
    "Progress",
    "StopOnSignal",
    "prepare_output",
    "run_search_job",
    "resume_search_job",
    "load_job_config",
    "parse_budgets",
    "SweepResult",
    "run_sweep",
]

#: Where a search folder keeps its settings (relative to the folder).
JOB_CONFIG = Path("config") / "job.json"


@dataclass(frozen=True)
class SearchJobConfig:
    """Everything a search job needs: the model, the target, the budget, the reward and the search settings.

    ``target`` names the cost model (an analytical device or a cost table file); ``compute_device`` is where torch
    runs the evaluations. ``search.seed`` seeds the agent and the evaluator's robust subset alike.
    ``init_policies`` (policy files, any format :mod:`hwsearch.policy_formats` reads) and ``init_from_ilp`` (the
    ILP baseline's answer, after them) warm-start the search: they are the first episodes.
    """

    checkpoint: str
    target: str = DEFAULT_DEVICE
    budget: str = "latency=0.5x"
    search: SearchConfig = field(default_factory=SearchConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data_root: str | None = None
    model_factory: str | None = None
    compute_device: str = "cpu"
    min_bits: int = 2
    max_bits: int = 8
    acc_weight: float = 10.0
    robust_weight: float = 0.0
    cost_weight: float = 0.0
    attack: str | None = None
    eps: float = 0.1
    steps: int = 10
    robust_images: int = 200
    episode_finetune_steps: int = 0
    episode_lipschitz_beta: float = 0.0
    checkpoint_every: int = 10
    tensorboard: bool = False
    threads: int | None = None
    init_policies: tuple[str, ...] = ()
    init_from_ilp: bool = False
    enforce: str = "step"
    max_accuracy_drop: float | None = None  # percentage points of search-val accuracy below fixed 8-bit's
    fold_batch_norms: bool = True  # score on the batch-norm-folded model (EvaluatorConfig.fold_batch_norms)
    select_top: int = 10  # the final pick re-scores this many best policies (hwsearch.selection); 0: best reward
    select_images: int = 3000  # on the first this many training images
    export_style: str | None = None  # scored as (EvaluatorConfig.export_style); None: the target's (scoring_style)

    def __post_init__(self) -> None:
        check_choice(self.enforce, "enforce", ENFORCE_MODES)
        if self.max_accuracy_drop is not None:
            check_number(self.max_accuracy_drop, "max_accuracy_drop", 0)
        object.__setattr__(self, "checkpoint", str(self.checkpoint))
        object.__setattr__(self, "init_policies", tuple(str(p) for p in self.init_policies))
        if self.threads is not None:
            check_int(self.threads, "threads", 1)
        parse_budget(self.budget)
        if not 1 <= self.min_bits <= self.max_bits <= 8:
            raise ConfigError(f"--min-bits {self.min_bits} / --max-bits {self.max_bits}: need 1 <= min <= max <= 8")
        for what in ("acc_weight", "robust_weight", "cost_weight"):
            check_number(getattr(self, what), what)
        check_int(self.checkpoint_every, "checkpoint_every", 1)
        check_int(self.robust_images, "robust_images", 1)
        check_int(self.select_top, "select_top", 0)
        check_int(self.select_images, "select_images", 1)
        if self.export_style is not None:
            check_choice(self.export_style, "export_style", EXPORT_STYLES)
        given = len(self.init_policies) + int(self.init_from_ilp)
        warmup = min(self.search.warmup_episodes, self.search.episodes)
        if self.search.agent != "ilp" and given > warmup:
            raise ConfigError(
                f"{given} initial policies are played as the first warm-up episodes, but the warm-up has {warmup}; "
                f"raise --warmup (and --episodes) to at least {given}"
            )
        if self.search.agent == "ilp" and self.max_accuracy_drop is not None:
            raise ConfigError(
                "--agent ilp sums per-layer reward terms and cannot keep an accuracy floor; drop --max-accuracy-drop "
                "or search with --agent ddpg (--init-from-ilp starts it from the ILP's answer)"
            )
        if self.search.agent == "ilp" and ((self.parallel.n_envs or 1) > 1 or self.parallel.shards > 1):
            raise ConfigError("--agent ilp evaluates its sensitivities in one process; use --n-envs 1 --shards 1")
        if self.parallel.shards > 1 and self.compute_device not in ("cpu", "auto"):
            raise ConfigError(
                f"--shards {self.parallel.shards} runs CPU processes; use --shards 1 with --compute-device"
            )
        if self.parallel.shards > 1 and (why := why_not_sharded(self.evaluator_config())) is not None:
            raise ConfigError(why)

    @property
    def attacks(self) -> tuple[AttackConfig, ...]:
        """The search's attacks: none unless robustness is asked for; else the STE + shadow pair."""
        if self.robust_weight <= 0 and not self.attack:
            return ()
        return tuple(search_attacks(self.eps, self.steps, method=self.attack or "pgd"))

    def evaluator_config(self) -> EvaluatorConfig:
        return EvaluatorConfig(
            attacks=self.attacks,
            robust_subset=self.robust_images,
            seed=self.search.seed,
            finetune_steps=self.episode_finetune_steps,
            lipschitz_beta=self.episode_lipschitz_beta,
            fold_batch_norms=self.fold_batch_norms,
            export_style=self.scoring_style,
        )

    @property
    def scoring_style(self) -> str:
        """``export_style``, or the export the target prices (:func:`hwsearch.workflow.target_export_style`)."""
        return self.export_style or target_export_style(self.target)

    def check(self) -> None:
        """Fail fast on what only the environment can tell (the target's name, the attack, Ray), before loading."""
        get_cost_model(self.target)
        _ = self.attacks
        if self.parallel.backend == "ray":
            require_ray()


@dataclass(frozen=True)
class SearchJobResult:
    """A finished search: the episodes and the folder holding ``policy.json``, ``episodes.csv``, ``summary.md``."""

    result: SearchResult
    out: Path
    budget: Budget
    target: str

    @property
    def best(self) -> EpisodeRecord:
        """The policy written to ``policy.json``: the final pick, or the best reward without one."""
        return self.result.chosen

    @property
    def policy_path(self) -> Path:
        return self.out / "policy.json"


class Progress(Protocol):
    """What a job reports while it runs (the CLI draws a progress bar; the library itself never prints)."""

    def start(self, total: int, done: int, desc: str) -> None: ...

    def episode(self, record: EpisodeRecord, best_reward: float) -> None: ...

    def close(self) -> None: ...


class _Silent:
    def start(self, total: int, done: int, desc: str) -> None:
        pass

    def episode(self, record: EpisodeRecord, best_reward: float) -> None:
        pass

    def close(self) -> None:
        pass


class StopOnSignal:
    """SIGINT/SIGTERM set a flag the search checks every step, so it stops cleanly after a checkpoint."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._old: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def prepare_output(path: str | Path, overwrite: bool, marker: str) -> Path:
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


def _workspace(config: SearchJobConfig) -> Workspace:
    return prepare(
        config.checkpoint,
        data_root=config.data_root,
        device=config.compute_device,
        model_name=config.model_factory,
    )


def _evaluator(config: SearchJobConfig, ws: Workspace) -> Evaluator:
    x, y = ws.split("val")
    train = ws.split("train") if config.episode_finetune_steps else None
    cfg = config.evaluator_config()
    return Evaluator(ws.model, ws.calibration, x, y, cfg, train_data=train, range_images=range_images(ws, cfg))


def _search_into(
    out: Path,
    config: SearchJobConfig,
    ws: Workspace,
    evaluator: Evaluator,
    budget: Budget,
    *,
    resuming: bool,
    stop: Callable[[], bool],
    progress: Progress,
    threads_note: str | None = None,
) -> SearchResult | None:
    """One search written to ``out`` (log, checkpoints, policy, summary); returns the result, or None if stopped."""
    t0 = time.perf_counter()
    search = replace(config.search, warmup_episodes=min(config.search.warmup_episodes, config.search.episodes))
    env_kwargs: dict[str, Any] = {
        "w_acc": config.acc_weight,
        "w_rob": config.robust_weight,
        "w_cost": config.cost_weight,
        "enforce": config.enforce,
    }
    if config.max_accuracy_drop is not None:
        env_kwargs["max_acc_drop"] = config.max_accuracy_drop / 100
    t_start = evaluator.timings.copy()  # a sweep shares the evaluator: report this search's part
    env, _ = build_env(
        ws,
        get_cost_model(config.target),
        budget,
        env_kwargs=env_kwargs,
        evaluator=evaluator,
        bits=range(config.min_bits, config.max_bits + 1),
    )
    history = read_episode_log(out / "episodes.csv", ws.layer_names) if resuming else []
    # finished episodes need no second evaluation
    evaluator.prime_cache((rec.policy.key(), EvalResult(rec.accuracy, rec.robust_accuracy)) for rec in history)
    if not resuming:  # a fresh run keeps nothing of a run it replaces (--overwrite)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
    # after the history is cached (workers start with it), before the log (a worker that cannot start leaves no run)
    init, ilp_notes = _init_policies(config, ws, env, history)
    search_env = env if search.agent == "ilp" else parallel_env(env, config.parallel)
    try:
        log = EpisodeLog(out / "episodes.csv", ws.layer_names, keep=len(history) if resuming else None)
        ckpt = SearchCheckpoint(out / "checkpoint", every=config.checkpoint_every)
        progress.start(search.episodes, len(history), f"search {budget} ({search.agent})")
        best = [max((r.reward for r in history), default=float("-inf"))]

        def on_episode(rec: EpisodeRecord) -> None:
            log.append(rec)
            best[0] = max(best[0], rec.reward)
            progress.episode(rec, best[0])

        result = run_search(
            search_env,
            search,
            on_episode=on_episode,
            checkpoint=ckpt,
            history=history,
            should_stop=stop,
            tensorboard=out / "tensorboard" if config.tensorboard else None,
            resume=resuming,
            init_policies=init,
        )
        if ilp_notes:
            result.notes.setdefault("ilp", ilp_notes)
        if search_env is not env:
            merge_worker_stats(search_env, evaluator)  # their cache (a sweep's next budget) and timings
    finally:
        if search_env is not env:
            search_env.close()
    progress.close()
    if stop():
        return None
    t_pick = time.perf_counter()
    pick_note = final_pick(
        ws,
        env,
        result,
        top=config.select_top,
        images=config.select_images,
        scoring=config.evaluator_config(),
        trained_on_train=config.episode_finetune_steps > 0,
    )
    pick_s = time.perf_counter() - t_pick
    top = result.chosen
    meta = {
        "source": "hwsearch search",
        "agent": search.agent,
        "device": config.target,
        "budget": str(budget),
        "episode": top.episode,
        "reward": top.reward,
        "val_accuracy": top.accuracy,
        "val_robust_accuracy": top.robust_accuracy,
        "latency_ms": top.latency_ms,
        "relative_cost": top.relative_cost,
        "checkpoint": config.checkpoint,
        "seed": search.seed,
    }
    save_policy(top.policy.with_meta(**meta), out / "policy.json")
    t = evaluator.timings.since(t_start)
    total = time.perf_counter() - t0
    timings = {
        "evaluation: quantize + accuracy": t.quantize + t.accuracy,
        "evaluation: attack": t.attack,
        "final pick": pick_s,
        "agent and other": total - t.quantize - t.accuracy - t.attack - pick_s,
        "total": total,
    }
    if search_env is not env:  # worker seconds overlap: their sum is CPU time, not a share of the wall time
        n = config.parallel.n_envs
        timings = {
            f"evaluation, summed over {n} workers: quantize + accuracy": t.quantize + t.accuracy,
            f"evaluation, summed over {n} workers: attack": t.attack,
            "total": total,
        }
    ref = {"accuracy": env.config.acc_ref, "robust_accuracy": env.config.rob_ref if evaluator.attacks else None}
    if env.config.acc_floor is not None:
        ref["accuracy_floor"] = round(env.config.acc_floor, 6)
    summary = search_summary(
        result, device=config.target, budget=str(budget), budget_limit=env.budget_limit, reference=ref, timings=timings
    )
    summary += f"\n{pick_note}\nEvaluation cache: {t.hits} hits of {t.calls} evaluations.\n"
    summary += threads_note or ""
    summary += "\nLearning curve: learning_curve.png (reward, running best, moving mean, cost, exploration).\n"
    atomic_write_text(out / "summary.md", summary)
    from hwsearch.plots import plot_learning_curve

    plot_learning_curve(
        result.episodes,
        out / "learning_curve.png",
        warmup_episodes=search.warmup_episodes if search.agent == "ddpg" else 0,
        init_episodes=result.init_episodes,
        budget=env.budget_limit / env.cost_ref,
        title=f"{search.agent} search, {budget} on {config.target}, seed {search.seed}",
    )
    return result


def _init_policies(
    config: SearchJobConfig, ws: Workspace, env: Any, history: Sequence[EpisodeRecord]
) -> tuple[list[Policy], dict[str, Any]]:
    """The warm start's policies: the files in order, then the ILP's answer (solved once: a resumed run that
    already played it takes it from its log; its answer fits the budget, so the log holds it unchanged)."""
    from hwsearch.policy_formats import load_policy

    policies = [load_policy(p, layer_names=ws.layer_names) for p in config.init_policies]
    for p in policies:
        env.choice_of(p)  # a width the search cannot choose fails now, in one line, before any episode
    notes: dict[str, Any] = {}
    if config.init_from_ilp:
        if len(history) > len(policies):
            policies.append(history[len(policies)].policy)
        else:
            from hwsearch.ilp import ilp_policy

            ilp = ilp_policy(env)
            policies.append(ilp.policy)
            notes = {
                "sensitivity_evaluations": ilp.evaluations,
                "sensitivity_s": ilp.sensitivity_s,
                "solve_s": ilp.solve_s,
                "predicted_score": ilp.predicted_score,
            }
    return policies, notes


def load_job_config(folder: str | Path) -> SearchJobConfig:
    """The settings of the search in ``folder`` (its ``config/job.json``); a clear error for anything else."""
    folder = Path(folder)
    path = folder / JOB_CONFIG
    if not path.is_file():
        if (folder / "run.json").is_file():
            raise ConfigError(
                f"{str(folder)!r} was written by an older hwsearch (run.json, not {JOB_CONFIG}); "
                "start a new search with --out"
            )
        raise ConfigError(f"{str(folder)!r} holds no search to resume (no {JOB_CONFIG}); start one with --out")
    try:
        data = read_config_dict(path)
        config = config_from_dict(SearchJobConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{str(path)!r} is corrupt ({exc}); start a new search with --out") from None
    if "reward_baseline" not in data["fields"].get("search", {}).get("fields", {}):
        # written before the setting existed, when every search stored rewards minus a moving baseline: a resumed
        # run keeps what it ran with (a fresh config still gets today's default)
        config = replace(config, search=replace(config.search, reward_baseline="moving"))
    if "fold_batch_norms" not in data["fields"]:
        config = replace(config, fold_batch_norms=False)  # its episodes were scored on the unfolded model
    if "select_top" not in data["fields"]:
        config = replace(config, select_top=0)  # it handed over the best reward (no final pick yet)
    if "export_style" not in data["fields"]:
        config = replace(config, export_style="qdq")  # its episodes were scored without the export's roundings
    return config


def run_search_job(
    config: SearchJobConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> SearchJobResult | None:
    """Run a fresh search into ``out``; returns None when ``should_stop`` turned true (resume it from ``out``).

    Refuses a folder that holds another run unless ``overwrite``. A failure before the first episode leaves
    nothing behind (a folder it created is removed).
    """
    config.check()
    existed = Path(out).exists()
    folder = prepare_output(out, overwrite, "episodes.csv")
    return _run(config, folder, resuming=False, existed=existed, progress=progress, should_stop=should_stop)


def resume_search_job(
    out: str | Path, *, progress: Progress | None = None, should_stop: Callable[[], bool] = lambda: False
) -> SearchJobResult | None:
    """Continue the interrupted search in ``out`` with the settings it was started with."""
    config = load_job_config(out)
    config.check()
    return _run(config, Path(out), resuming=True, existed=True, progress=progress, should_stop=should_stop)


def _run(
    config: SearchJobConfig,
    out: Path,
    *,
    resuming: bool,
    existed: bool,
    progress: Progress | None,
    should_stop: Callable[[], bool],
) -> SearchJobResult | None:
    budget = parse_budget(config.budget)
    try:
        ws = _workspace(config)
        evaluator = _evaluator(config, ws)
        config, compute_note, evaluator = choose_compute(config, ws, evaluator)
        try:
            if not resuming:  # settled: a resumed run keeps the parallelism its replay buffer is laid out for
                save_config(out / JOB_CONFIG, config)
            result = _search_into(
                out,
                config,
                ws,
                evaluator,
                budget,
                resuming=resuming,
                stop=should_stop,
                progress=progress or _Silent(),
                threads_note=compute_note,
            )
        finally:
            close_evaluator(evaluator)
    except HwsearchError:
        if not resuming and not (out / "episodes.csv").exists():  # failed before any episode: leave nothing
            if existed:
                (out / JOB_CONFIG).unlink(missing_ok=True)
                if (out / JOB_CONFIG.parent).is_dir() and not any((out / JOB_CONFIG.parent).iterdir()):
                    (out / JOB_CONFIG.parent).rmdir()
            else:
                shutil.rmtree(out, ignore_errors=True)
        raise
    return None if result is None else SearchJobResult(result, out, budget, config.target)


@dataclass(frozen=True)
class SweepResult:
    """The Pareto front's files (``csv``, ``png``), or none and the budget a stop came in."""

    files: dict[str, Path]
    stopped_during: Budget | None = None


def parse_budgets(text: str) -> list[Budget]:
    """``[METRIC=]V1,V2,...`` (default metric latency) as budgets, e.g. ``0.3x,0.5x`` or ``energy=0.4x,0.6x``."""
    metric, _, values = text.partition("=") if "=" in text else ("latency", "", text)
    budgets = [parse_budget(f"{metric}={v.strip()}") for v in values.split(",") if v.strip()]
    if not budgets:
        raise ConfigError(f"--budgets {text!r} names no budget; e.g. --budgets 0.3x,0.4x,0.5x")
    return budgets


def run_sweep(
    config: SearchJobConfig,
    budgets: Sequence[Budget],
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_budget: Callable[[Budget, SearchResult], None] | None = None,
) -> SweepResult:
    """One search per budget into ``out/<budget>``, sharing one evaluation cache, then the Pareto front of
    everything evaluated (``pareto.csv`` / ``.png``). When ``should_stop`` turns true the sweep ends after that
    budget's checkpoint, without a front, and says which budget it stopped in."""
    from hwsearch.pareto import write_pareto

    config.check()
    folder = prepare_output(out, overwrite, "pareto.csv")
    ws = _workspace(config)
    evaluator = _evaluator(config, ws)
    config, threads_note, evaluator = choose_compute(config, ws, evaluator)
    episodes: list[tuple[str, EpisodeRecord]] = []
    try:
        for budget in budgets:
            sub = folder / str(budget).replace("=", "-")
            sub.mkdir(parents=True, exist_ok=True)
            result = _search_into(
                sub,
                replace(config, budget=str(budget)),
                ws,
                evaluator,
                budget,
                resuming=False,
                stop=should_stop,
                progress=progress or _Silent(),
                threads_note=threads_note,
            )
            if result is None:
                return SweepResult({}, stopped_during=budget)
            episodes += [(str(budget), rec) for rec in result.episodes]
            if on_budget is not None:
                on_budget(budget, result)
    finally:
        close_evaluator(evaluator)
    return SweepResult(write_pareto(folder, episodes))
