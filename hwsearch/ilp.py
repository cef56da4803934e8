"""The practitioners' baseline: per-layer sensitivity, then an integer program under the budget (HAWQ-V3,
AutoQuantize, AIMET AMP). See docs/ARCHITECTURE.md, "The ILP baseline".

Sensitivity is measured through the env's own evaluator, on the search-val split, in the env's own reward
terms: the drop of quantizing one layer's weights to each width with every other choice at the highest width
the search allows (8 bits by default), and likewise its input activations, assumed additive. The integer program
then picks one (w, a) pair per layer maximising the summed score (plus the env's exact, additive cost term)
under the budget, on the same cost table the budget walk uses (and, on a target that prices them, the same
boundary costs between consecutive layers, exactly), with ``scipy.optimize.milp`` (HiGHS).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hwsearch.budget import least_tails
from hwsearch.envs import MixedPrecisionEnv
from hwsearch.errors import BudgetError, ConfigError
from hwsearch.policy import Policy
from hwsearch.records import EvalResult

__all__ = [
    "Sensitivity",
    "IlpResult",
    "measure_sensitivity",
    "solve_ilp",
    "ilp_policy",
    "play_actions",
    "run_ilp_agent",
]


@dataclass(frozen=True)
class Sensitivity:
    """Reward-term change of each layer's weight choice (``weights[i, j]``) and activation choice
    (``activations[i, k]``) against the all-highest policy; 0 at the highest choice, usually negative below."""

    weights: np.ndarray
    activations: np.ndarray
    evaluations: int
    wall_s: float

    def scores(self) -> np.ndarray:
        """The additive score of every (layer, w, a) cell, ``(n_layers, n_w, n_a)``."""
        return self.weights[:, :, None] + self.activations[:, None, :]


@dataclass(frozen=True)
class IlpResult:
    """The ILP's policy, the score it predicted (reward terms, assumed additive) and what it cost."""

    policy: Policy
    choice: np.ndarray
    predicted_score: float
    evaluations: int
    sensitivity_s: float
    solve_s: float


def _terms(env: MixedPrecisionEnv, result: EvalResult) -> float:
    """The accuracy and robustness part of the env's reward (the cost part is exact and added separately)."""
    cfg = env.config
    value = cfg.w_acc * (result.accuracy - cfg.acc_ref)
    if result.robust_accuracy is not None:
        value += cfg.w_rob * (result.robust_accuracy - cfg.rob_ref)
    return float(value)


def measure_sensitivity(env: MixedPrecisionEnv) -> Sensitivity:
    """One evaluation per layer and lower width (weights, then activations) plus the all-highest reference:
    ``n_layers * (n_w - 1 + n_a - 1) + 1`` calls of ``env.evaluator``."""
    t0 = time.perf_counter()
    n_w, n_a = len(env.config.w_bits), len(env.config.a_bits)
    top = np.tile(np.array([n_w - 1, n_a - 1], dtype=np.int64), (env.n_layers, 1))
    calls = [0]

    def term(choice: np.ndarray) -> float:
        calls[0] += 1
        return _terms(env, env.evaluator.evaluate(env.policy_of(choice)))

    base = term(top)
    weights = np.zeros((env.n_layers, n_w))
    acts = np.zeros((env.n_layers, n_a))
    for i in range(env.n_layers):
        for col, table, n in ((0, weights, n_w), (1, acts, n_a)):
            for j in range(n - 1):
                choice = top.copy()
                choice[i, col] = j
                table[i, j] = term(choice) - base
    return Sensitivity(weights, acts, calls[0], time.perf_counter() - t0)


def solve_ilp(scores: np.ndarray, costs: np.ndarray, limit: float, pairs: np.ndarray | None = None) -> np.ndarray:
    """Maximise ``sum scores[i, j, k]`` over one (j, k) per layer i with ``sum costs[i, j, k] <= limit``.

    ``pairs[i, c, d]`` (optional, ``(n_layers, n_w * n_a, n_w * n_a)``, choices flattened w-major): a cost charged
    when layer ``i-1`` makes choice ``c`` and layer ``i`` choice ``d`` (``ort-cpu``'s boundaries), added to the
    budget exactly: one continuous variable per consecutive pair of choices, tied to both layers' binaries by
    transport constraints (its row sums are layer ``i-1``'s choice, its column sums layer ``i``'s), so at a binary
    solution it is 1 only on the chosen pair. One binary per (layer, w, a) cell; returns the ``(n_layers, 2)``
    choice indices. A limit below the cheapest policy raises a one-line :class:`BudgetError`.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    scores = np.asarray(scores, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.float64)
    if scores.shape != costs.shape or scores.ndim != 3:
        raise ValueError(f"scores {scores.shape} and costs {costs.shape} must both be (n_layers, n_w, n_a)")
    n, n_w, n_a = scores.shape
    cells = n_w * n_a
    if pairs is not None:
        pairs = np.asarray(pairs, dtype=np.float64)
        if pairs.shape != (n, cells, cells):
            raise ValueError(f"pairs {pairs.shape} must be (n_layers, {cells}, {cells})")
    n_pair = (n - 1) * cells * cells if pairs is not None else 0
    floor = float((costs[0].reshape(-1) + least_tails(costs.reshape(n, cells), pairs)[0]).min())
    if limit < floor * (1 - 1e-9):
        raise BudgetError(
            f"the ILP's budget {limit:.6g} is below the cost of the cheapest choice of every layer ({floor:.6g}); "
            "raise the budget"
        )
    width = n * cells + n_pair
    one_per_layer = np.hstack([np.kron(np.eye(n), np.ones(cells)), np.zeros((n, n_pair))])
    budget_row = np.concatenate([costs.reshape(-1), pairs[1:].reshape(-1) if pairs is not None else []])
    # a hair under the limit, so float rounding never leaves the answer above it (the budget walk would move it)
    tight = max(limit - 1e-9 * max(abs(limit), 1e-300), floor)
    constraints = [
        LinearConstraint(one_per_layer, 1.0, 1.0),
        LinearConstraint(budget_row.reshape(1, -1), -np.inf, tight),
    ]
    if pairs is not None:
        tie = np.zeros((2 * (n - 1) * cells, width))
        for i in range(1, n):
            base = n * cells + (i - 1) * cells * cells
            for c in range(cells):
                row = 2 * (i - 1) * cells + c
                tie[row, base + c * cells : base + (c + 1) * cells] = 1.0  # sum_d y[c, d] = x[i-1, c]
                tie[row, (i - 1) * cells + c] = -1.0
                tie[row + cells, base + c : base + cells * cells : cells] = 1.0  # sum_c y[c, d] = x[i, d]
                tie[row + cells, i * cells + c] = -1.0
        constraints.append(LinearConstraint(tie, 0.0, 0.0))
    integrality = np.concatenate([np.ones(n * cells), np.zeros(n_pair)])
    objective = np.concatenate([-scores.reshape(-1), np.zeros(n_pair)])
    res = milp(objective, constraints=constraints, integrality=integrality, bounds=Bounds(0.0, 1.0))
    if res.x is None:
        raise BudgetError(f"the ILP found no policy under the budget {limit:.6g} ({res.message}); raise the budget")
    picks = np.argmax(res.x[: n * cells].reshape(n, cells), axis=1)
    return np.stack([picks // n_a, picks % n_a], axis=1).astype(np.int64)


def ilp_policy(env: MixedPrecisionEnv) -> IlpResult:
    """Measure sensitivity through ``env.evaluator`` and solve under ``env``'s budget with its cost table."""
    sens = measure_sensitivity(env)
    t0 = time.perf_counter()
    scores = sens.scores()
    if env.config.w_cost:  # the env's cost term is additive over layers: exact, not estimated
        scores = scores - env.config.w_cost * env.cost_table() / env.cost_ref
    choice = solve_ilp(scores, env.cost_table(), env.budget_limit, env.boundary_table())
    predicted = float(scores[np.arange(env.n_layers), choice[:, 0], choice[:, 1]].sum())
    policy = env.policy_of(choice).with_meta(kind="ilp")
    return IlpResult(policy, choice, predicted, sens.evaluations, sens.wall_s, time.perf_counter() - t0)


def play_actions(env: MixedPrecisionEnv, actions: np.ndarray) -> dict[str, Any]:
    """One episode of the given actions (step order); the last step's ``info``."""
    env.reset()
    info: dict[str, Any] = {}
    for a in actions:
        _, _, terminated, _, info = env.step(np.asarray([a], dtype=np.float32))
    assert terminated
    return info


def run_ilp_agent(
    env: Any,
    init_policies: Sequence[Policy],
    init_actions: np.ndarray | None,
    done_before: int,
    record: Callable[[dict[str, Any]], None],
    episode_stored: Callable[[bool], None],
    notes: dict[str, Any],
) -> None:
    """The ``ilp`` agent: any given policies, then the integer program's answer, each played as an episode."""
    if not isinstance(env, MixedPrecisionEnv):
        raise ConfigError("--agent ilp evaluates its sensitivities in one process; use --n-envs 1")
    for e, actions in enumerate(init_actions if init_actions is not None else []):
        if e >= done_before:
            record(play_actions(env, actions))
            episode_stored(True)
    if done_before > len(init_policies):
        return
    ilp = ilp_policy(env)
    notes["ilp"] = {
        "sensitivity_evaluations": ilp.evaluations,
        "sensitivity_s": ilp.sensitivity_s,
        "solve_s": ilp.solve_s,
        "predicted_score": ilp.predicted_score,
    }
    record(play_actions(env, env.actions_for(ilp.policy)))
    episode_stored(True)
