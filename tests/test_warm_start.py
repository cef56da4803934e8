"""Warm start: given policies are the first episodes, and DDPG's replay buffer holds them as the actions that
request them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hwsearch.envs import EnvConfig, MixedPrecisionEnv, action_to_index

from hwsearch.budget import Budget
from hwsearch.errors import ConfigError, PolicyError
from hwsearch.parallel import ParallelConfig, parallel_env
from hwsearch.policy import LayerBits, Policy, uniform_policy
from hwsearch.search import SearchCheckpoint, SearchConfig, run_search
from tests.fakes import FakeCostModel, FakeEvaluator, fake_layers

TINY = {"episodes": 6, "warmup_episodes": 3, "hidden": (16, 16), "batch_size": 8}


def make_env() -> MixedPrecisionEnv:
    return MixedPrecisionEnv(fake_layers(), FakeEvaluator(), FakeCostModel(), EnvConfig(budget=Budget("latency", 0.5)))


def _given() -> list[Policy]:
    names = [ly.name for ly in fake_layers()]
    mixed = Policy({n: LayerBits(2 + i % 3, 3 + i % 2) for i, n in enumerate(names)})
    return [uniform_policy(names, 4, 5), mixed]  # both under the 0.5x budget: the walk leaves them alone


@pytest.mark.parametrize("bits", [(2, 3, 4, 5, 6, 7, 8), (2, 4, 8)])
def test_actions_for_requests_the_policy(bits: tuple[int, ...]) -> None:
    env = MixedPrecisionEnv(fake_layers(), FakeEvaluator(), FakeCostModel(), EnvConfig(w_bits=bits, a_bits=bits))
    p = Policy({ly.name: LayerBits(bits[i % len(bits)], bits[-1 - i % len(bits)]) for i, ly in enumerate(env.layers)})
    actions = env.actions_for(p)
    assert actions.shape == (env.n_steps,) and (np.abs(actions) <= 1).all()
    assert [action_to_index(a, len(bits)) for a in actions] == env.choice_of(p).reshape(-1).tolist()
    env.reset()
    for a in actions:
        *_, info = env.step(np.asarray([a]))
    assert info["requested_policy"] == p


@pytest.mark.parametrize("agent", ["ddpg", "random"])
def test_given_policies_are_the_first_episodes(agent: str, tmp_path: Path) -> None:
    env, given = make_env(), _given()
    ckpt = SearchCheckpoint(tmp_path / "ckpt", every=1)
    result = run_search(env, SearchConfig(agent=agent, **TINY), init_policies=given, checkpoint=ckpt)
    assert [r.policy for r in result.episodes[:2]] == given
    assert result.init_episodes == 2
    assert result.episodes[2].policy not in given  # then the search goes on as before
    if agent == "ddpg":  # the replay buffer holds the transitions that requested them, in step order
        agent_ = ckpt.load_agent(make_env(), SearchConfig(agent=agent, **TINY))
        assert agent_ is not None
        rb = agent_.replay_buffer
        steps = env.n_steps
        for e, p in enumerate(given):
            assert np.allclose(rb.actions[e * steps : (e + 1) * steps, 0, 0], env.actions_for(p))
            assert rb.dones[(e + 1) * steps - 1, 0] == 1.0
        assert rb.size() == TINY["episodes"] * steps


def test_a_warm_start_leaves_the_later_warmup_draws_unchanged() -> None:
    cfg = SearchConfig(agent="random", **TINY)
    plain = run_search(make_env(), cfg).episodes
    warm = run_search(make_env(), cfg, init_policies=_given()[:1]).episodes
    assert [r.policy for r in warm[1:]] == [r.policy for r in plain[1:]]


def test_warm_start_with_several_envs() -> None:
    given = _given()
    venv = parallel_env(make_env(), ParallelConfig(n_envs=2, backend="serial"))
    try:
        result = run_search(venv, SearchConfig(**TINY), init_policies=given)
    finally:
        venv.close()
    assert [r.policy for r in result.episodes[:2]] == given


def test_more_given_policies_than_warmup_episodes_is_refused() -> None:
    with pytest.raises(ConfigError, match="raise --warmup"):
        run_search(make_env(), SearchConfig(**{**TINY, "warmup_episodes": 1}), init_policies=_given())


def test_a_width_the_search_cannot_choose_is_refused() -> None:
    env = MixedPrecisionEnv(fake_layers(), FakeEvaluator(), FakeCostModel(), EnvConfig(w_bits=(4, 8), a_bits=(4, 8)))
    with pytest.raises(PolicyError, match="W2A4 is not a choice"):
        env.actions_for(Policy({ly.name: LayerBits(2, 4) for ly in env.layers}))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--init-from-ilp", "--warmup", "0"], "raise --warmup"),
        (["--init-policy", "missing.json"], "does not exist"),
        (["--agent", "ilp", "--n-envs", "2"], "use --n-envs 1"),
    ],
)
def test_bad_warm_start_options_are_one_line(
    extra: list[str], message: str, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hwsearch.cli import main

    argv = ["search", "--checkpoint", str(checkpoint), "--episodes", "3", "--out", str(tmp_path / "run"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
