"""The mixed-precision search environment (HAQ's design, made Gymnasium-clean)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hwsearch.budget import Budget, cheapest_choices, check_table_size, least_tails
from hwsearch.checks import check_choice, check_number
from hwsearch.errors import BudgetError, ConfigError, PolicyError
from hwsearch.hardware.base import CostModel
from hwsearch.hardware.cost import policy_cost
from hwsearch.layers import LayerInfo
from hwsearch.policy import VALID_BITS, LayerBits, Policy, uniform_policy
from hwsearch.records import EvalResult

__all__ = [
    "EvalResult",
    "PolicyEvaluator",
    "CostModel",
    "EnvConfig",
    "MixedPrecisionEnv",
    "action_to_index",
    "OBS_FEATURES",
    "ENFORCE_MODES",
]

OBS_FEATURES = (
    "layer_index",
    "is_linear",
    "depthwise",
    "in_channels",
    "out_channels",
    "kernel",
    "stride",
    "log_params",
    "input_size",
    "is_weight",
    "previous_action",
    "budget_left",
    "budget_rest",
)
ENFORCE_MODES = ("walk", "step")


@runtime_checkable
class PolicyEvaluator(Protocol):
    """Scores a policy (the env injects it so tests can hand in a cheap fake)."""

    def evaluate(self, policy: Policy) -> EvalResult: ...


@dataclass(frozen=True)
class EnvConfig:
    """Bit choices, budget and reward weights.

    Reward at episode end: ``w_acc * (acc - acc_ref) + w_rob * (rob - rob_ref) - w_cost * cost / cost_ref``
    with accuracies as fractions, ``cost_ref`` the fixed 8-bit cost of the budget metric. With ``max_acc_drop``
    (a fraction) an accuracy floor ``acc_ref - max_acc_drop`` also charges ``w_floor`` per unit of accuracy below
    it: a steep penalty (not a hard limit) on robustness bought with more clean accuracy than the user allows.

    ``enforce``: how requests are brought under the budget. ``step`` (AMC's action wall, the default) bounds each
    step's choice so the layers still to choose can fit at their cheapest, and the choice made is the one the
    agent is credited with; ``walk`` (HAQ) takes every request as asked and walks the finished policy down.
    Either way the walk runs last, so every evaluated policy meets the budget.
    """

    budget: Budget = field(default_factory=Budget)
    w_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    a_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    w_acc: float = 10.0
    w_rob: float = 0.0
    w_cost: float = 0.0
    acc_ref: float = 0.0
    rob_ref: float = 0.0
    enforce: str = "step"
    max_acc_drop: float | None = None
    w_floor: float = 100.0

    def __post_init__(self) -> None:
        check_choice(self.enforce, "enforce", ENFORCE_MODES)
        for what in ("w_bits", "a_bits"):
            bits = tuple(sorted(set(getattr(self, what))))
            if not bits or any(isinstance(b, bool) or not isinstance(b, int) or b not in VALID_BITS for b in bits):
                raise ConfigError(f"{what} = {getattr(self, what)!r}: choose bit widths among 1..8 and 32 (float)")
            object.__setattr__(self, what, bits)
        for what in ("w_acc", "w_rob", "w_cost", "w_floor", "acc_ref", "rob_ref"):
            check_number(getattr(self, what), what, 0 if what.startswith("w_") else None)
        if self.max_acc_drop is not None:
            check_number(self.max_acc_drop, "max_acc_drop", 0)

    @property
    def acc_floor(self) -> float | None:
        """The accuracy below which the floor's charge starts (None: no floor)."""
        return None if self.max_acc_drop is None else self.acc_ref - self.max_acc_drop

    def reward(self, accuracy: float, robust_accuracy: float | None, cost: float, cost_ref: float) -> float:
        """The episode's reward for these figures (``cost`` of the budget's metric, ``cost_ref`` fixed 8-bit's)."""
        reward = self.w_acc * (accuracy - self.acc_ref)
        if robust_accuracy is not None:
            reward += self.w_rob * (robust_accuracy - self.rob_ref)
        reward -= self.w_cost * cost / cost_ref
        if self.acc_floor is not None:
            reward -= self.w_floor * max(0.0, self.acc_floor - accuracy)
        return reward


def action_to_index(action: float, n: int) -> int:
    """Map an action in [-1, 1] to one of ``n`` equal-width bins; total for any float (NaN -> 0)."""
    a = float(action)
    if math.isnan(a):
        a = -1.0
    x = (min(max(a, -1.0), 1.0) + 1.0) / 2.0
    return min(int(x * n), n - 1)


class MixedPrecisionEnv(gym.Env[np.ndarray, np.ndarray]):
    """Chooses weight and activation bit widths layer by layer; rewards accuracy, robustness and cost.

    ## Description
    An episode walks the model's quantizable layers in forward order. Step ``2i`` picks the weight bits of
    layer ``i``, step ``2i + 1`` its input-activation bits (HAQ's 2N steps). With ``EnvConfig.enforce="step"``
    (the default) each step's choice is bounded so the layers still to choose can fit the budget at their
    cheapest (AMC's action wall: the nearest choice that leaves room, lower first). At the last step the policy
    is brought under the budget as HAQ does (from the last layer back, lower activation then weight bits by one
    choice until the cost fits; with the wall it rarely has anything to do), then evaluated.

    ## Action Space
    ``Box(-1, 1, (1,), float32)``; the value is mapped to one of the bit choices by equal-width bins
    (:func:`action_to_index`), a total function (NaN and infinities included).

    ## Observation Space
    ``Box(0, 1, (13,), float32)``: the layer's static features (see ``OBS_FEATURES``), min-max normalised over
    the model's layers; whether this step sets weights (1) or activations (0); the previous applied action
    mapped to [0, 1]; ``budget_left``, the share of the budget the least-cost completion of the choices so far
    would leave free; and ``budget_rest``, the least cost of the layers after this one, over the budget.

    ## Rewards
    0.0 on every step but the last; the last gets
    ``w_acc * (acc - acc_ref) + w_rob * (rob - rob_ref) - w_cost * cost / cost_ref`` (see :class:`EnvConfig`).
    With the agent's discount at 1.0 every transition's return is the episode's reward; the search's default
    (``SearchConfig.reward_mode="episode"``) goes further, as HAQ does, and relabels every transition of an
    episode with its reward in the replay buffer.

    ## Starting State
    The first layer's weight step; the previous action is 0. Nothing survives from one episode to the next.

    ## Episode End
    Terminates after ``2 * n_layers`` steps; never truncates. The observation returned with the last step repeats
    the last layer's features (no layer follows; agents mask it with the done flag). Every step's ``info`` carries
    ``action``, the action applied (the request clipped to [-1, 1], or the centre of the bin the wall moved it
    to), which the search stores in its replay buffer. ``info`` of the last step also carries ``policy``
    (enforced, a :class:`Policy`), ``requested_policy``, ``cost`` (latency_ms, energy_mj, size_bits, and
    ``relative`` / ``requested_relative``: the enforced and the requested policy's budget metric over fixed W8A8's),
    ``accuracy``, ``robust_accuracy`` and ``reward``.

    ## Arguments
    ``layers`` from :func:`hwsearch.layers.discover_layers`; ``evaluator`` implements ``evaluate(policy)``;
    ``cost_model`` implements ``layer_cost(layer, w, a)`` returning an object with ``latency_ms`` and
    ``energy_mj``; ``config`` an :class:`EnvConfig`.

    ## Version History
    * v0: initial version.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        layers: Sequence[LayerInfo],
        evaluator: PolicyEvaluator,
        cost_model: CostModel,
        config: EnvConfig | None = None,
    ) -> None:
        super().__init__()
        if not layers:
            raise ConfigError("the model has no quantizable (Conv2d/Linear) layers to search")
        self.layers = list(layers)
        self.evaluator = evaluator
        self.cost_model = cost_model
        self.config = config or EnvConfig()
        self.n_layers = len(self.layers)
        self.n_steps = 2 * self.n_layers
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(len(OBS_FEATURES),), dtype=np.float32)
        self._features = self._static_features()
        check_table_size(self.n_layers, len(self.config.w_bits), len(self.config.a_bits))
        self._costs = self._cost_tables()
        self._pairs = self._boundary_table()
        self._no_pairs = np.zeros(len(self.config.w_bits) * len(self.config.a_bits))
        metric = self.config.budget.metric
        self.cost_ref = self._reference_cost(metric)
        self.budget_limit = self.config.budget.resolve(self.cost_ref)
        # the action wall's exact least-cost completions (tail[i, c]: layers after i, given i's choice c)
        self._budget_pairs = self._pairs if metric == "latency" else None  # boundaries count on latency only
        self._tail = least_tails(self._costs[metric].reshape(self.n_layers, -1), self._budget_pairs)
        # the cheapest policy, boundaries included
        min_cost = float((self._costs[metric][0].reshape(-1) + self._tail[0]).min())
        if self.budget_limit < min_cost * (1 - 1e-9):
            raise BudgetError(
                f"budget {self.config.budget} = {self.budget_limit:.6g} is below the cost of the cheapest policy "
                f"({min_cost:.6g}); raise it to at least {min_cost / self.cost_ref:.3f}x"
            )
        self._step = 0
        self._choice = np.zeros((self.n_layers, 2), dtype=np.int64)
        self._asked = np.zeros_like(self._choice)  # before the action wall: what the agent requested
        self._prev_action = 0.0
        self._spent = 0.0

    # -- construction helpers -------------------------------------------------------------------------
    def _static_features(self) -> np.ndarray:
        rows = []
        for layer in self.layers:
            base = [
                layer.index,
                1.0 if layer.kind == "linear" else 0.0,
                1.0 if layer.depthwise else 0.0,
                layer.in_channels,
                layer.out_channels,
                layer.kernel[0],
                layer.stride[0],
                math.log(max(layer.params, 1)),
                layer.in_hw[0] * layer.in_hw[1],
            ]
            rows.append(base)
        feats = np.asarray(rows, dtype=np.float64)
        lo, hi = feats.min(axis=0), feats.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        return ((feats - lo) / span).astype(np.float32)

    def _cost_tables(self) -> dict[str, np.ndarray]:
        """Every layer's cost at every bit pair, priced once so budget enforcement is array arithmetic."""
        wb, ab = self.config.w_bits, self.config.a_bits
        lat = np.zeros((self.n_layers, len(wb), len(ab)))
        energy = np.zeros_like(lat)
        has_energy = True
        for i, layer in enumerate(self.layers):
            for j, w in enumerate(wb):
                for k, a in enumerate(ab):
                    c = self.cost_model.layer_cost(layer, w, a)
                    lat[i, j, k] = c.latency_ms
                    if c.energy_mj is None:
                        has_energy = False
                    else:
                        energy[i, j, k] = c.energy_mj
        size = np.array([[[layer.params * w] * len(ab) for w in wb] for layer in self.layers], dtype=np.float64)
        tables = {"latency": lat, "size": size}
        if has_energy:
            tables["energy"] = energy
        elif self.config.budget.metric == "energy":
            raise BudgetError(
                f"device {getattr(self.cost_model, 'name', '?')!r} has no energy figures; budget latency or size"
            )
        return tables

    def _boundary_table(self) -> np.ndarray | None:
        """``[i, prev choice, choice]``: latency of handing layer ``i-1``'s output to layer ``i`` beyond both
        cells, for a cost model that prices it (``boundary_cost``; ``ort-cpu``); choices flattened w-major."""
        boundary = getattr(self.cost_model, "boundary_cost", None)
        if not callable(boundary):
            return None
        pairs = [(w, a) for w in self.config.w_bits for a in self.config.a_bits]
        table = np.zeros((self.n_layers, len(pairs), len(pairs)))
        for i in range(1, self.n_layers):
            for j, p in enumerate(pairs):
                for k, q in enumerate(pairs):
                    table[i, j, k] = boundary(self.layers[i - 1], p, self.layers[i], q)
        return table

    def _pair_row(self, i: int) -> np.ndarray:
        """The boundary cost into layer ``i`` for each of its (flattened) choices, given layer ``i-1``'s choice;
        zeros without a pairwise table, for the first layer, or off the latency metric."""
        if self._budget_pairs is None or i == 0:
            return self._no_pairs
        prev = self._choice[i - 1]
        return self._budget_pairs[i, prev[0] * len(self.config.a_bits) + prev[1]]

    def _lower_bounds(self, layer: int, is_act: int) -> np.ndarray:
        """The least final cost of each choice open at this step (weight or activation choices of ``layer``),
        given the layers already chosen."""
        flat = self._costs[self.config.budget.metric][layer].reshape(-1) + self._pair_row(layer) + self._tail[layer]
        grid = flat.reshape(len(self.config.w_bits), len(self.config.a_bits))
        here = grid[self._choice[layer, 0]] if is_act else grid.min(axis=1)
        return self._spent + here

    def _wall(self, layer: int, is_act: int, index: int) -> int:
        """AMC's action wall: the requested choice if some completion of it fits, else the nearest one that does
        (lower first). One always does: the previous step's bound was exact and met."""
        bounds = self._lower_bounds(layer, is_act)
        ok = bounds <= self.budget_limit * (1 + 1e-12)
        if ok[index]:
            return index
        if not ok.any():  # unreachable while the bounds are exact; the walk at the end would repair it
            return int(np.argmin(bounds))
        open_ = np.flatnonzero(ok)
        return int(open_[np.argmin(np.abs(open_ - index) * 2 + (open_ > index))])

    def _reference_cost(self, metric: str) -> float:
        """Fixed W8A8's cost: what ``0.5x`` budgets and the cost term mean, whatever widths the search may use."""
        ref = policy_cost(self.cost_model, self.layers, uniform_policy([layer.name for layer in self.layers], 8))
        return float(ref.metric(metric) or 0.0)

    # -- gymnasium API --------------------------------------------------------------------------------
    def _obs(self) -> np.ndarray:
        layer = min(self._step // 2, self.n_layers - 1)
        is_weight = 1.0 if self._step % 2 == 0 else 0.0
        if self._step >= self.n_steps:  # the last observation: nothing is left to choose
            rest, least = 0.0, self.cost_of(self._choice, self.config.budget.metric)
        else:  # the least final cost given what is chosen, and what the layers after this one need at least
            bounds = self._lower_bounds(layer, 0 if is_weight else 1)
            least, rest = float(bounds.min()), float(self._tail[layer].min())
        limit = self.budget_limit
        budget = [min(max(1.0 - least / limit, 0.0), 1.0), min(max(rest / limit, 0.0), 1.0)]
        return np.concatenate(
            [self._features[layer], np.asarray([is_weight, self._prev_action, *budget], dtype=np.float32)]
        ).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._step = 0
        self._choice[:] = 0
        self._asked[:] = 0
        self._prev_action = 0.0
        self._spent = 0.0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._step >= self.n_steps:
            raise RuntimeError("step() called after the episode ended; call reset()")
        a = float(np.asarray(action, dtype=np.float64).reshape(-1)[0])
        a = -1.0 if math.isnan(a) else min(max(a, -1.0), 1.0)  # as action_to_index reads it
        layer, is_act = divmod(self._step, 2)
        n = len(self.config.a_bits if is_act else self.config.w_bits)
        index = self._asked[layer, is_act] = action_to_index(a, n)
        if self.config.enforce == "step":
            walled = self._wall(layer, is_act, index)
            if walled != index:  # credit the agent with the choice made: the centre of its bin
                index, a = walled, -1.0 + (2 * walled + 1) / n
        self._choice[layer, is_act] = index
        if is_act:
            w = int(self._choice[layer, 0])
            flat = w * len(self.config.a_bits) + index
            self._spent += float(self._costs[self.config.budget.metric][layer, w, index] + self._pair_row(layer)[flat])
        self._prev_action = (a + 1.0) / 2.0
        self._step += 1
        info: dict[str, Any] = {"action": np.asarray([a], dtype=np.float32)}
        if self._step < self.n_steps:
            return self._obs(), 0.0, False, False, info
        obs, reward, terminated, truncated, final = self._finish()
        return obs, reward, terminated, truncated, {**final, **info}

    # -- episode end ----------------------------------------------------------------------------------
    def cost_of(self, choice: np.ndarray, metric: str) -> float:
        t = self._costs[metric]
        if metric == "latency" and self._pairs is not None:
            flat = choice[:, 0] * len(self.config.a_bits) + choice[:, 1]
            pairs = float(self._pairs[np.arange(1, self.n_layers), flat[:-1], flat[1:]].sum())
            return float(t[np.arange(self.n_layers), choice[:, 0], choice[:, 1]].sum()) + pairs
        return float(t[np.arange(self.n_layers), choice[:, 0], choice[:, 1]].sum())

    def cost_table(self, metric: str | None = None) -> np.ndarray:
        """A copy of every layer's cost at every bit choice, ``(n_layers, len(w_bits), len(a_bits))``, in the
        budget's metric by default (the table the budget walk and the ILP baseline use; both add the target's
        boundary costs between consecutive layers, :meth:`boundary_table`, when it has them)."""
        metric = metric or self.config.budget.metric
        if metric not in self._costs:
            raise BudgetError(f"device {getattr(self.cost_model, 'name', '?')!r} has no {metric} figures")
        return self._costs[metric].copy()

    def boundary_table(self) -> np.ndarray | None:
        """A copy of the pairwise boundary costs the budget's metric adds between consecutive layers,
        ``(n_layers, choices, choices)`` with choices flattened w-major (row ``i``: into layer ``i``; row 0 is 0);
        None when there are none (every target but ``ort-cpu``, and any budget but latency)."""
        return None if self._budget_pairs is None else self._budget_pairs.copy()

    def choice_of(self, policy: Policy) -> np.ndarray:
        """The bit-choice indices of ``policy`` (the inverse of :meth:`policy_of`); a PolicyError for a layer or
        width this env cannot choose."""
        policy.check_against([ly.name for ly in self.layers])
        wb, ab = self.config.w_bits, self.config.a_bits
        choice = np.zeros((self.n_layers, 2), dtype=np.int64)
        for i, ly in enumerate(self.layers):
            bits = policy[ly.name]
            if bits.w not in wb or bits.a not in ab:
                raise PolicyError(
                    f"layer {ly.name!r}: W{bits.w}A{bits.a} is not a choice of this search (weights {list(wb)}, "
                    f"activations {list(ab)}); widen --min-bits/--max-bits or pick a target that prices it"
                )
            choice[i] = (wb.index(bits.w), ab.index(bits.a))
        return choice

    def actions_for(self, policy: Policy) -> np.ndarray:
        """The ``n_steps`` actions (bin centres, step order) that request ``policy``: what a warm start replays."""
        choice = self.choice_of(policy)
        n = (len(self.config.w_bits), len(self.config.a_bits))
        return np.asarray(
            [-1.0 + (2 * choice[i, c] + 1) / n[c] for i in range(self.n_layers) for c in (0, 1)], dtype=np.float32
        )

    def enforce_budget(self, choice: np.ndarray) -> np.ndarray:
        """HAQ's budget walk: from the last layer back, lower activation then weight bits until the cost fits.

        A step that would raise the cost is skipped (on a CPU, quantizing only the input of a float layer adds a
        quantize op and saves nothing); a layer whose both steps would is moved to its cheapest choice when a
        whole pass lowers nothing. Where boundary costs make those moves stall above the budget, the last resort
        is :meth:`cheapest_choice`, so every budget at or above the cheapest policy is met.
        """
        choice = choice.copy()
        metric = self.config.budget.metric
        table = self._costs[metric]
        while self.cost_of(choice, metric) > self.budget_limit:
            lowered = False
            for i in reversed(range(self.n_layers)):
                for col in (1, 0):
                    if choice[i, col] > 0:
                        lower = choice[i].copy()
                        lower[col] -= 1
                        if table[i, lower[0], lower[1]] > table[i, choice[i, 0], choice[i, 1]]:
                            continue
                        choice[i] = lower
                        lowered = True
                        if self.cost_of(choice, metric) <= self.budget_limit:
                            return choice
            if not lowered:
                for i in reversed(range(self.n_layers)):
                    cheapest = np.unravel_index(int(np.argmin(table[i])), table[i].shape)
                    if table[i][cheapest] < table[i, choice[i, 0], choice[i, 1]]:
                        choice[i] = cheapest
                        if self.cost_of(choice, metric) <= self.budget_limit:
                            return choice
                if self.cost_of(choice, metric) > self.budget_limit:  # construction refused budgets below this
                    return self.cheapest_choice()
        return choice

    def cheapest_choice(self) -> np.ndarray:
        """The policy of least cost in the budget's metric, boundaries included (the exact least-cost completions
        the action wall uses, read forward), as ``(n_layers, 2)`` choice indices."""
        cells = self._costs[self.config.budget.metric].reshape(self.n_layers, -1)
        flat = cheapest_choices(cells, self._tail, self._budget_pairs)
        n_a = len(self.config.a_bits)
        return np.stack([flat // n_a, flat % n_a], axis=1)

    def policy_of(self, choice: np.ndarray) -> Policy:
        wb, ab = self.config.w_bits, self.config.a_bits
        return Policy({ly.name: LayerBits(wb[c[0]], ab[c[1]]) for ly, c in zip(self.layers, choice, strict=True)})

    def _finish(self) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        cfg = self.config
        requested = self.policy_of(self._asked)
        enforced_choice = self.enforce_budget(self._choice)
        policy = self.policy_of(enforced_choice)
        result = self.evaluator.evaluate(policy)
        cost = {m: self.cost_of(enforced_choice, m) for m in self._costs}
        rob = result.robust_accuracy
        reward = cfg.reward(result.accuracy, rob, cost[cfg.budget.metric], self.cost_ref)
        requested_cost = self.cost_of(self._asked, cfg.budget.metric)
        info = {
            "policy": policy,
            "requested_policy": requested,
            "cost": {
                "latency_ms": cost["latency"],
                "energy_mj": cost.get("energy"),
                "size_bits": cost["size"],
                "relative": cost[cfg.budget.metric] / self.cost_ref,
                "requested_relative": requested_cost / self.cost_ref,
            },
            "accuracy": float(result.accuracy),
            "robust_accuracy": None if rob is None else float(rob),
            "per_attack": dict(result.per_attack),
            "reward": float(reward),
        }
        return self._obs(), float(reward), True, False, info
