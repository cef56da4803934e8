"""``ShardedEvaluator``: each policy scored by several worker processes at once, each on its share of the images.

Why: N one-thread processes use N cores better than N torch threads (an attack step on a few dozen images does not
split well across threads), and parallel environments (:mod:`hwsearch.parallel`) score N *different* policies per
round, so every round waits for its slowest one; a policy's evaluation time varies 2-3x with how many images
survive the attack. Shards of one policy take about the same time, and the search is the one-environment search:
the same episodes, whatever the core count.

How: each shard runs the clean pass on its round-robin share of the images; then the driver runs the attack
cascade stage by stage, dealing each stage's candidates (the attacked images still standing) across the shards,
hardest first, by how many stages each image survived in earlier evaluations. An attack's cost is in the images
that resist it, so dealing them evenly keeps the shards busy alike; dealing by position left one shard with twice
the other's attack time on some policies (resnet20, 2 shards).

The split is exact: each image keeps the random starts its id seeds (:func:`hwsearch.robust.attacks.image_starts`)
and stops being attacked on its own verdict, so where it is attacked changes nothing, and the counts are those one
process gets (:class:`~hwsearch.evaluate.Counts`). Float results can differ in the last bit only where a kernel's
result depends on the batch it runs in.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import time
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import torch
from torch import Tensor, nn

from hwsearch.checks import check_int
from hwsearch.errors import ConfigError, HwsearchError
from hwsearch.evaluate import Counts, Evaluator, EvaluatorConfig, correct_mask
from hwsearch.policy import Policy
from hwsearch.quant import Calibration
from hwsearch.robust.attacks import GRADIENT_FREE_METHODS, AttackConfig, attack_survivors

__all__ = ["ShardedEvaluator", "shard_positions", "why_not_sharded"]

#: seconds a worker may take to load its model and images before the evaluator gives up on it
START_TIMEOUT_S = 300.0


def why_not_sharded(config: EvaluatorConfig) -> str | None:
    """Why shards cannot score with ``config`` (a one-line error naming the fix), or None: per-episode fine-tuning
    runs in one process (each shard would repeat it), and Square draws its noise per batch (the deal would change
    its verdicts). The one place the job's config check, the compute choice and the evaluator ask."""
    if config.finetune_steps:
        return "per-episode fine-tuning runs in one process; use --shards 1 with --episode-finetune-steps"
    square = [a.label for a in config.attacks if a.method in GRADIENT_FREE_METHODS]
    if square:
        return f"attack {square[0]} draws its noise per batch, so shards would change it; use --shards 1"
    return None


def shard_positions(n: int, robust_index: Tensor, shards: int) -> list[Tensor]:
    """Positions (in a split of ``n`` images) each of ``shards`` shards scores: the attacked images
    (``robust_index``) and the others each dealt round-robin, so shards get equal shares of both kinds."""
    robust = robust_index.long().cpu()
    rest_mask = torch.ones(n, dtype=torch.bool)
    rest_mask[robust] = False
    rest = rest_mask.nonzero().squeeze(1)
    return [torch.cat([robust[k::shards], rest[k::shards]]) for k in range(shards)]


class _Shard:
    """A worker's state: the evaluator of its clean share, every attacked image, and the policy last quantized."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.ev = Evaluator(
            payload["model"],
            payload["calibration"],
            payload["x"],
            payload["y"],
            payload["config"],
            source_model=payload["source_model"],
            range_images=payload["range_images"],
        )
        self.x_rob, self.y_rob, self.rob_ids = payload["x_rob"], payload["y_rob"], payload["rob_ids"]
        self.attacks: tuple[AttackConfig, ...] = payload["attacks"]
        self.seed: int = payload["seed"]
        self.qmodel: nn.Module | None = None

    def clean(self, policy: Policy) -> tuple[Tensor, float, float]:
        """Quantize (kept for the attack stages that follow) and classify the share: verdicts, seconds of each."""
        t0 = time.perf_counter()
        self.qmodel = self.ev.quantize(policy)
        t1 = time.perf_counter()
        hits = correct_mask(self.qmodel, self.ev.x, self.ev.y, self.ev.config.batch_size)
        return hits, t1 - t0, time.perf_counter() - t1

    def attack(self, stage: int, positions: Tensor) -> tuple[Tensor, float]:
        """Which of the attacked images at ``positions`` survive the cascade's attack ``stage``; seconds."""
        if self.qmodel is None:
            raise HwsearchError("an attack stage came before any policy was quantized")
        t0 = time.perf_counter()
        survived = attack_survivors(
            self.qmodel,
            self.x_rob[positions],
            self.y_rob[positions],
            self.attacks[stage],
            sample_ids=self.rob_ids[positions],
            seed=self.seed,
            source_model=None if self.ev.source_model is self.ev.model else self.ev.source_model,
        )
        return survived, time.perf_counter() - t0


def _serve(conn: Connection, threads: int) -> None:
    """A worker: build its shard from the payload, then answer ("clean", policy) and ("attack", stage,
    positions) until told to stop."""
    from hwsearch.parallel_workers import ignore_sigint

    ignore_sigint()  # Ctrl-C is the driver's to handle; it stops the workers
    torch.set_num_threads(threads)
    try:
        shard = _Shard(torch.load(io.BytesIO(conn.recv_bytes()), weights_only=False))
    except Exception as exc:  # noqa: BLE001 - reported to the driver, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        try:
            reply = shard.clean(request[1]) if request[0] == "clean" else shard.attack(request[1], request[2])
        except Exception as exc:  # noqa: BLE001 - as above
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            continue
        conn.send(("ok", reply))


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
        range_images: Tensor | None = None,
    ) -> None:
        check_int(shards, "shards", 1)
        check_int(threads, "threads per shard", 1)
        config = config or EvaluatorConfig()
        if (why := why_not_sharded(config)) is not None:
            raise ConfigError(why)
        super().__init__(model, calibration, x, y, config, source_model=source_model, range_images=range_images)
        if self.device.type != "cpu":
            raise ConfigError(f"shards are CPU processes; the model is on {self.device}: use --shards 1 on a GPU")
        self.shards = shards
        self.threads = threads
        self._procs: list[Any] = []
        self._conns: list[Connection] = []
        self._finalizer: weakref.finalize | None = None
        self._shares: list[Tensor] = []
        self._hardness = torch.zeros(len(self._rob_idx))  # stages each attacked image survived, running mean

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
            range_images=ev.range_images,
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
            attacks=(),
            seed=self.config.seed,
            cache=False,
            fold_batch_norms=False,
            export_style=self.config.export_style,
        )
        common = {
            "model": scoring,
            "calibration": self.calibration,
            "config": worker_config,
            "source_model": None if self.source_model is self.model else self.source_model,
            "x_rob": self.x_rob.cpu(),
            "y_rob": self.y_rob.cpu(),
            "rob_ids": self.robust_ids,
            "attacks": self.attacks,
            "seed": self.config.seed,
            "range_images": None if self.range_images is None else self.range_images.cpu(),
        }
        self._shares = shard_positions(len(self.x), self._rob_idx, self.shards)
        procs: list[Any] = []
        conns: list[Connection] = []
        try:
            for share in self._shares:
                buf = io.BytesIO()
                torch.save({**common, "x": self.x[share].cpu(), "y": self.y[share].cpu()}, buf)
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_serve, args=(child, self.threads), daemon=True, name="hwsearch-shard")
                proc.start()
                child.close()
                parent.send_bytes(buf.getvalue())
                procs.append(proc)
                conns.append(parent)
            self._procs, self._conns = procs, conns
            for k, conn in enumerate(conns):
                if not conn.poll(START_TIMEOUT_S):
                    raise HwsearchError(
                        f"evaluation shard {k} did not start in {START_TIMEOUT_S:.0f} s; use --shards 1"
                    )
                status, detail = self._receive(k)
                if status != "ready":
                    raise HwsearchError(f"evaluation shard {k} could not start ({detail}); use --shards 1")
        except BaseException:
            self._procs, self._conns = [], []
            _stop(procs, conns)
            raise
        self._finalizer = weakref.finalize(self, _stop, procs, conns)

    def _lost(self, k: int) -> HwsearchError:
        code = self._procs[k].exitcode if k < len(self._procs) else None
        return HwsearchError(f"evaluation shard {k} stopped (exit code {code}); rerun with --shards 1")

    def _receive(self, k: int) -> tuple[str, Any]:
        try:
            return self._conns[k].recv()
        except (EOFError, OSError):
            raise self._lost(k) from None

    def _ask(self, requests: dict[int, tuple[Any, ...]]) -> dict[int, Any]:
        """Send each shard ``k`` its request, then collect the answers (a worker failing raises here)."""
        for k, request in requests.items():
            try:
                self._conns[k].send(request)
            except (BrokenPipeError, EOFError, OSError):
                raise self._lost(k) from None
        replies = {k: self._receive(k) for k in requests}
        errors = [detail for status, detail in replies.values() if status != "ok"]
        if errors:
            raise HwsearchError(f"an evaluation shard failed: {errors[0]}")
        return {k: detail for k, (_, detail) in replies.items()}

    def close(self) -> None:
        """Stop the workers (idempotent); a later evaluation starts them again."""
        if self._finalizer is not None:
            self._finalizer()
        self._procs, self._conns, self._finalizer = [], [], None

    def deal(self, candidates: Tensor) -> list[Tensor]:
        """Attacked-subset positions ``candidates`` split across the shards: ordered hardest first (stages
        survived in earlier evaluations, a running mean; position breaks ties), then dealt round-robin."""
        order = sorted(candidates.tolist(), key=lambda j: (-float(self._hardness[j]), j))
        ranked = torch.tensor(order, dtype=torch.long)
        return [ranked[k :: self.shards] for k in range(self.shards)]

    def _score(self, policy: Policy) -> Counts:
        policy.check_against(self._layer_names())
        self._start()
        try:
            return self._score_on_shards(policy)
        except BaseException:
            self.close()  # a worker in an unknown state cannot score the next policy
            raise

    def _score_on_shards(self, policy: Policy) -> Counts:
        clean = self._ask({k: ("clean", policy) for k in range(self.shards)})
        hits = torch.zeros(len(self.x), dtype=torch.bool)
        for k, share in enumerate(self._shares):
            hits[share] = clean[k][0]
        self.timings.quantize += max(q for _, q, _ in clean.values())
        self.timings.accuracy += max(c for _, _, c in clean.values())
        counts = Counts(correct=int(hits.sum()), images=len(self.x))
        if not self.attacks:
            return counts
        alive = hits[self._rob_idx].clone()
        survived_stages = torch.zeros(len(alive))
        for stage, cfg in enumerate(self.attacks):
            deals = {k: d for k, d in enumerate(self.deal(alive.nonzero().squeeze(1))) if d.numel()}
            if deals:
                answers = self._ask({k: ("attack", stage, d) for k, d in deals.items()})
                for k, d in deals.items():
                    alive[d] = answers[k][0]
                self.timings.attack += max(t for _, t in answers.values())
            survived_stages += alive.float()
            counts.per_attack[cfg.label] = int(alive.sum())
        counts.robust = int(alive.sum())
        counts.robust_images = len(alive)
        self._hardness = 0.5 * self._hardness + 0.5 * survived_stages
        return counts

    def _layer_names(self) -> list[str]:
        from hwsearch.quant import quantizable_names

        if not hasattr(self, "_names"):
            self._names = quantizable_names(self.model)
        return self._names
