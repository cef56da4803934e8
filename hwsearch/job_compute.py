"""How a search job uses the machine: threads, evaluation shards or parallel environments, settled once per job.

Apart from :mod:`hwsearch.job` because it is the one place that measures (``hwsearch.cores``) and the one that
owns worker processes of the evaluation (``hwsearch.evaluate_shards``), which the job must close however it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar, Protocol, TypeVar

from hwsearch.cores import choose_parallelism, model_probe, thread_candidates, use_threads
from hwsearch.evaluate import Evaluator
from hwsearch.evaluate_shards import ShardedEvaluator, why_not_sharded
from hwsearch.parallel import ParallelConfig
from hwsearch.workflow import Workspace


class _Job(Protocol):
    """What this module reads of :class:`hwsearch.job.SearchJobConfig` (which imports it): a dataclass."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def parallel(self) -> ParallelConfig: ...
    @property
    def threads(self) -> int | None: ...
    @property
    def search(self) -> Any: ...


Job = TypeVar("Job", bound=_Job)

__all__ = ["can_shard", "choose_compute", "close_evaluator", "sharded"]


def can_shard(evaluator: Evaluator) -> bool:
    """Whether :class:`~hwsearch.evaluate_shards.ShardedEvaluator` can take over ``evaluator``: on the CPU, and
    nothing in its config that shards cannot run (:func:`~hwsearch.evaluate_shards.why_not_sharded`)."""
    return evaluator.device.type == "cpu" and why_not_sharded(evaluator.config) is None


def sharded(config: _Job, evaluator: Evaluator) -> Evaluator:
    """``evaluator`` itself, or (``parallel.shards > 1``) the same scoring split over that many processes."""
    if config.parallel.shards <= 1:
        return evaluator
    return ShardedEvaluator.from_evaluator(evaluator, config.parallel.shards)


def close_evaluator(evaluator: Evaluator) -> None:
    """Stop the evaluator's worker processes, if it has any."""
    close = getattr(evaluator, "close", None)
    if callable(close):
        close()


def choose_compute(config: Job, ws: Workspace, evaluator: Evaluator) -> tuple[Job, str, Evaluator]:
    """The job with its parallelism settled, a line saying how, and the evaluator to search with: ``threads`` /
    ``shards`` / ``n_envs`` as asked, else measured (:func:`hwsearch.cores.choose_parallelism`: one shard per
    core, or one process on the faster thread count, timed on the reference policy; where shards cannot run, the
    faster thread count). Parallel environments are never chosen for the user: they change the DDPG run. Once per
    job: a sweep's searches share it, and a resumed run keeps what it started with. The shards timed for the
    choice are the ones returned (their workers already started), or closed."""

    def probe() -> None:  # built only when something is measured (the quantized copy costs a calibration pass)
        if not cached:
            cached.append(model_probe(evaluator.quantize(ws.uniform(8)), evaluator.x, evaluator.y))
        cached[0]()

    cached: list[Callable[[], None]] = []
    n_envs = config.parallel.n_envs
    if n_envs is None and (
        config.threads is not None
        or config.search.agent == "ilp"
        or config.parallel.backend == "ray"
        or config.parallel.shards > 1
        or not can_shard(evaluator)
    ):
        n_envs = 1  # asked-for threads or shards, the ILP's one-process pass, a Ray cluster, no shards: threads
    if n_envs is None:

        def evaluation_s(threads: int) -> float:
            use_threads(threads, lambda: None)
            return evaluator.seconds_to_evaluate(ws.uniform(8))  # the env's reference: cached for it

        trial: list[Evaluator] = []

        def sharded_s() -> float:
            trial.append(ShardedEvaluator.from_evaluator(evaluator, thread_candidates()[-1]))
            trial[0].seconds_to_evaluate(ws.uniform(8))  # starts the workers: not what an evaluation costs
            return trial[0].seconds_to_evaluate(ws.uniform(8))

        try:
            choice = choose_parallelism(probe, evaluation_s, config.search.episodes, sharded_s=sharded_s)
        except BaseException:
            for ev in trial:
                close_evaluator(ev)
            raise
        use_threads(choice.threads, lambda: None)
        resolved = replace(config, parallel=replace(config.parallel, n_envs=choice.n_envs, shards=choice.shards))
        if choice.shards > 1:
            note = f"Parallelism: {choice.shards} shards, 1 torch thread each ({choice.reason}).\n"
            return resolved, note, trial[0] if trial else sharded(resolved, evaluator)  # the timed shards, started
        for ev in trial:
            close_evaluator(ev)
        note = f"Parallelism: 1 environment, {choice.threads} torch thread(s) ({choice.reason}).\n"
        return resolved, note, evaluator
    config = replace(config, parallel=replace(config.parallel, n_envs=n_envs))
    if n_envs != 1:
        return config, f"Parallelism: {n_envs} environments, as asked (--n-envs).\n", evaluator
    if config.parallel.shards > 1:
        note = f"Parallelism: {config.parallel.shards} shards, 1 torch thread each, as asked (--shards).\n"
        return config, note, sharded(config, evaluator)
    if config.threads is not None:
        return config, f"Torch threads: {use_threads(config.threads, lambda: None)}, as asked (--threads).\n", evaluator
    n = use_threads(None, probe)
    among = " and ".join(map(str, thread_candidates()))
    return config, f"Torch threads: {n}, the faster of {among} for this model (hwsearch.cores).\n", evaluator
