"""``ShardedEvaluator``: each policy scored by several worker processes at once, each on its share of the images.

Why: N one-thread processes use N cores better than N torch threads (an attack step on a few dozen images does not
split well across threads), and parallel environments (:mod:`hwsearch.parallel`) score N *different* policies per
round, so every round waits for its slowest one; a policy's evaluation time varies 2-3x with how many images
survive the attack. Shards of one policy take about the same time, and the search is the one-environment search:
the same episodes, whatever the core count.

The split is exact: the clean images and the attacked subset are dealt round-robin to the shards, each image keeps
the random starts its id seeds (:func:`hwsearch.robust.attacks.image_starts`), and the shards' hit counts add up to
the counts one process gets (:class:`~hwsearch.evaluate.Counts`). Float results can differ in the last bit only
where a kernel's result depends on the batch it runs in.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import torch
from torch import Tensor, nn

from hwsearch.checks import check_int
from hwsearch.errors import ConfigError, HwsearchError
from hwsearch.evaluate import Counts, EvalTimings, Evaluator, EvaluatorConfig
from hwsearch.policy import Policy
from hwsearch.quant import Calibration
from hwsearch.robust.attacks import GRADIENT_FREE_METHODS

__all__ = ["ShardedEvaluator", "shard_positions"]

#: seconds a worker may take to load its model and images before the evaluator gives up on it
START_TIMEOUT_S = 300.0


def shard_positions(n: int, robust_index: Tensor, shards: int) -> list[Tensor]:
    """Positions (in a split of ``n`` images) each of ``shards`` shards scores: the attacked images
    (``robust_index``) and the others each dealt round-robin, so shards get equal shares of both kinds."""
    robust = robust_index.long().cpu()
    rest_mask = torch.ones(n, dtype=torch.bool)
    rest_mask[robust] = False
    rest = rest_mask.nonzero().squeeze(1)
    return [torch.cat([robust[k::shards], rest[k::shards]]) for k in range(shards)]


def _serve(conn: Connection, threads: int) -> None:
    """A worker: build the shard's evaluator from the payload, then score policies until told to stop."""
    from hwsearch.parallel_workers import ignore_sigint

    ignore_sigint()  # Ctrl-C is the driver's to handle; it stops the workers
    torch.set_num_threads(threads)
    try:
        payload = torch.load(io.BytesIO(conn.recv_bytes()), weights_only=False)
        ev = Evaluator(
            payload["model"],
            payload["calibration"],
            payload["x"],
            payload["y"],
            payload["config"],
            source_model=payload["source_model"],
            robust_index=payload["robust_index"],
            sample_ids=payload["sample_ids"],
        )
    except Exception as exc:  # noqa: BLE001 - reported to the driver, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            policy = conn.recv()
        except EOFError:
            return
        if policy is None:
            return
        before = ev.timings.copy()
        try:
            counts = ev._score(policy)
        except Exception as exc:  # noqa: BLE001 - as above
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            continue
        conn.send(("ok", (counts, ev.timings.since(before))))


def _stop(procs: Sequence[Any], conns: Sequence[Connection]) -> None:
    for conn in conns:
        with contextlib.suppress(OSError, ValueError):
            conn.send(None)
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
    for conn in conns:
        conn.close()


class ShardedEvaluator(Evaluator):
    """An :class:`~hwsearch.evaluate.Evaluator` whose scoring runs on ``shards`` worker processes of ``threads``
    torch threads each, every one on ``1/shards`` of the images; the driver keeps the cache and the timings.

    Workers start on the first policy scored (forkserver, so scripts need ``if __name__ == "__main__":``) and stop
    on :meth:`close` (or when the evaluator is collected). CPU only. Not with per-episode fine-tuning (each
    worker would repeat it) nor with Square in the attacks (it draws its noise per batch, so its verdicts would
    depend on the split). The stage timings it reports are the slowest shard's.
    """

    def __init__(
        self,
        model: nn.Module,
        calibration: Calibration,
        x: Tensor,
        y: Tensor,
        config: EvaluatorConfig | None = None,
        *,
        shards: int,
        threads: int = 1,
        source_model: nn.Module | None = None,
    ) -> None:
        check_int(shards, "shards", 1)
        check_int(threads, "threads per shard", 1)
        config = config or EvaluatorConfig()
        if config.finetune_steps:
            raise ConfigError("per-episode fine-tuning runs in one process; use --shards 1 with --episode-finetune")
        square = [a.label for a in config.attacks if a.method in GRADIENT_FREE_METHODS]
        if square:
            raise ConfigError(
                f"attack {square[0]} draws its noise per batch, so shards would change it; use --shards 1"
            )
        super().__init__(model, calibration, x, y, config, source_model=source_model)
        if self.device.type != "cpu":
            raise ConfigError(f"shards are CPU processes; the model is on {self.device}: use --shards 1 on a GPU")
        self.shards = shards
        self.threads = threads
        self._procs: list[Any] = []
        self._conns: list[Connection] = []
        self._finalizer: weakref.finalize | None = None

    @classmethod
    def from_evaluator(cls, ev: Evaluator, shards: int, threads: int = 1) -> ShardedEvaluator:
        """The same scoring as ``ev`` (model, images, config, cache so far), sharded."""
        out = cls(
            ev.model,
            ev.calibration,
            ev.x,
            ev.y,
            ev.config,
            shards=shards,
            threads=threads,
            source_model=ev.source_model if ev.source_model is not ev.model else None,
        )
        out.prime_cache(ev.cached())
        out.timings = ev.timings.copy()
        return out

    def to(self, device: str | torch.device) -> Evaluator:
        if torch.device(device).type != "cpu":
            raise ConfigError(f"shards are CPU processes; cannot move them to {device}: use --shards 1 on a GPU")
        return self

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a ShardedEvaluator owns worker processes and cannot be pickled; use --shards 1 with --n-envs")

    # ------------------------------------------------------------------------------------------- workers
    def _start(self) -> None:
        if self._procs:
            return
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        ctx: Any = mp.get_context(method)
        scoring = self.scoring_model()  # fold once here; the workers get the folded model
        worker_config = EvaluatorConfig(
            batch_size=self.config.batch_size,
            attacks=self.config.attacks,
            seed=self.config.seed,
            cache=False,
            fold_batch_norms=False,
        )
        source = None if self.source_model is self.model else self.source_model
        procs, conns = [], []
        try:
            for positions in shard_positions(len(self.x), self._rob_idx, self.shards):
                local = torch.isin(positions, self._rob_idx).nonzero().squeeze(1)
                payload = {
                    "model": scoring,
                    "calibration": self.calibration,
                    "x": self.x[positions].cpu(),
                    "y": self.y[positions].cpu(),
                    "config": worker_config,
                    "source_model": source,
                    "robust_index": local,
                    "sample_ids": positions,
                }
                buf = io.BytesIO()
                torch.save(payload, buf)
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(child, self.threads), daemon=True, name="hwsearch-shard")
                proc.start()
                child.close()
                parent.send_bytes(buf.getvalue())
                procs.append(proc)
                conns.append(parent)
            for k, conn in enumerate(conns):
                if not conn.poll(START_TIMEOUT_S):
                    raise HwsearchError(
                        f"evaluation shard {k} did not start in {START_TIMEOUT_S:.0f} s; use --shards 1"
                    )
                status, detail = self._receive(k, conn)
                if status != "ready":
                    raise HwsearchError(f"evaluation shard {k} could not start ({detail}); use --shards 1")
        except BaseException:
            _stop(procs, conns)
            raise
        self._procs, self._conns = procs, conns
        self._finalizer = weakref.finalize(self, _stop, procs, conns)

    def _receive(self, k: int, conn: Connection) -> tuple[str, Any]:
        try:
            return conn.recv()
        except (EOFError, OSError):
            code = self._procs[k].exitcode if k < len(self._procs) else None
            raise HwsearchError(f"evaluation shard {k} stopped (exit code {code}); rerun with --shards 1") from None

    def _send(self, k: int, conn: Connection, policy: Policy) -> None:
        try:
            conn.send(policy)
        except (BrokenPipeError, EOFError, OSError):
            code = self._procs[k].exitcode if k < len(self._procs) else None
            raise HwsearchError(f"evaluation shard {k} stopped (exit code {code}); rerun with --shards 1") from None

    def close(self) -> None:
        """Stop the workers (idempotent); a later evaluation starts them again."""
        if self._finalizer is not None:
            self._finalizer()
        self._procs, self._conns, self._finalizer = [], [], None

    def _score(self, policy: Policy) -> Counts:
        policy.check_against(self._layer_names())
        self._start()
        try:
            for k, conn in enumerate(self._conns):
                self._send(k, conn, policy)
            replies = [self._receive(k, conn) for k, conn in enumerate(self._conns)]
        except BaseException:
            self.close()  # a worker in an unknown state cannot score the next policy
            raise
        errors = [detail for status, detail in replies if status != "ok"]
        if errors:
            raise HwsearchError(f"an evaluation shard failed: {errors[0]}")
        parts: list[tuple[Counts, EvalTimings]] = [detail for _, detail in replies]
        total = parts[0][0]
        for counts, _ in parts[1:]:
            total = total + counts
        self.timings.quantize += max(t.quantize for _, t in parts)
        self.timings.accuracy += max(t.accuracy for _, t in parts)
        self.timings.attack += max(t.attack for _, t in parts)
        return total

    def _layer_names(self) -> list[str]:
        from hwsearch.quant import quantizable_names

        if not hasattr(self, "_names"):
            self._names = quantizable_names(self.model)
        return self._names
