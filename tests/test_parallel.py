"""Several envs at once: SubprocVecEnv and Ray workers give the serial run's episodes; resume; missing Ray."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from hwsearch.errors import ConfigError, HwsearchError
from hwsearch.parallel import ParallelConfig, make_vec_env
from hwsearch.search import SearchCheckpoint, SearchConfig, run_search
from tests.ci import import_or_skip
from tests.test_search import TINY, make_env  # make_env is a top-level function: picklable as an env factory

SEVEN = {**TINY, "episodes": 7}  # not a multiple of 2: the last round's extra episode is not recorded


def _vec(backend: str, n: int = 2, **kw: object):  # type: ignore[no-untyped-def]
    return make_vec_env([make_env] * n, ParallelConfig(n_envs=n, backend=backend, **kw))


def _policies(res) -> list:  # type: ignore[no-untyped-def]
    return [e.policy for e in res.episodes]


def test_two_subprocess_envs_run_the_asked_episodes_like_the_serial_vec_env() -> None:
    cfg = SearchConfig(seed=5, **SEVEN)
    vec = _vec("subproc")
    try:
        for pid in [*(w.pid for w in vec.processes), vec.manager._process.pid]:
            os.kill(pid, signal.SIGINT)  # Ctrl-C reaches the whole process group; only the driver may act on it
        seen: list = []
        par = run_search(vec, cfg, on_episode=seen.append)
        cached = dict(vec.cache_items())
    finally:
        vec.close()
    assert len(par.episodes) == 7 == len(seen)
    assert [e.episode for e in par.episodes] == list(range(7))
    assert all(e.relative_cost <= 0.4 + 1e-9 for e in par.episodes)
    assert {e.policy.key() for e in par.episodes} <= set(cached)  # every evaluation went through the shared cache
    serial = _vec("serial")
    try:
        ref = run_search(serial, cfg)
    finally:
        serial.close()
    assert _policies(par) == _policies(ref)
    assert [e.reward for e in par.episodes] == [e.reward for e in ref.episodes]


def test_random_agent_with_two_envs_gives_the_one_env_episodes() -> None:
    cfg = SearchConfig(agent="random", seed=2, **SEVEN)
    vec = _vec("serial")
    try:
        par = run_search(vec, cfg)
    finally:
        vec.close()
    assert _policies(par) == _policies(run_search(make_env(), cfg))


def test_ddpg_with_two_envs_trains_once_per_transition_and_resumes(tmp_path: Path) -> None:
    cfg = SearchConfig(seed=3, **SEVEN)
    ckpt = SearchCheckpoint(tmp_path / "ckpt", every=3)
    done: list = []
    vec = _vec("serial")
    try:
        first = run_search(vec, cfg, checkpoint=ckpt, on_episode=done.append, should_stop=lambda: len(done) >= 4)
    finally:
        vec.close()
    assert len(first.episodes) == 4  # two rounds of two envs
    state = ckpt.state()
    assert state is not None and state["episodes_done"] == 4 and state["n_envs"] == 2
    with pytest.raises(ConfigError, match="n_envs"):
        run_search(make_env(), cfg, checkpoint=ckpt, history=first.episodes, resume=True)
    vec = _vec("serial")
    try:
        agent = ckpt.load_agent(vec, cfg)
        assert agent.train_freq.frequency == make_env().n_steps and agent.train_freq.unit.value == "step"
        assert agent.gradient_steps == -1  # as many updates as transitions collected since the last round
        second = run_search(vec, cfg, checkpoint=ckpt, history=first.episodes, resume=True)
    finally:
        vec.close()
    assert len(second.episodes) == 7 and second.episodes[:4] == first.episodes
    assert [e.episode for e in second.episodes] == list(range(7))


@pytest.mark.slow
def test_two_ray_workers_match_the_serial_runs() -> None:
    ray = import_or_skip("ray", "ray is not installed (it is in the dev extra: pip install -e '.[dev]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ddpg = SearchConfig(seed=5, **SEVEN)
        rand = SearchConfig(agent="random", seed=5, **SEVEN)
        vec = _vec("ray", cpus_per_env=1)
        try:
            par_ddpg = run_search(vec, ddpg)
            par_rand = run_search(vec, rand)
            assert {e.policy.key() for e in par_ddpg.episodes} <= dict(vec.cache_items()).keys()
        finally:
            vec.close()
        assert ray.is_initialized()  # a RayVecEnv leaves a Ray instance it did not start running
    finally:
        ray.shutdown()
    serial = _vec("serial")
    try:
        ref_ddpg = run_search(serial, ddpg)
    finally:
        serial.close()
    # DDPG with two envs differs from one env (batched actions, training after each round of two episodes),
    # but any backend with the same n_envs and seed gives the same episodes; random search matches one env.
    assert _policies(par_ddpg) == _policies(ref_ddpg)
    assert [e.reward for e in par_ddpg.episodes] == [e.reward for e in ref_ddpg.episodes]
    assert _policies(par_rand) == _policies(run_search(make_env(), rand))


def test_missing_ray_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(HwsearchError, match=r"pip install 'hwsearch\[ray\]'") as err:
        _vec("ray")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"n_envs": 0}, "n_envs"),
        ({"backend": "mpi"}, "backend"),
        ({"cpus_per_env": 0}, "cpus_per_env"),
        ({"gpus_per_env": 1, "backend": "subproc"}, "gpus_per_env"),
        ({"ray_address": "auto", "backend": "subproc"}, "ray_address"),
    ],
)
def test_bad_parallel_config_is_refused(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ParallelConfig(**kw)


@pytest.mark.slow
def test_copies_of_a_real_env_in_subprocesses_score_like_the_driver(checkpoint: Path) -> None:
    from hwsearch.budget import parse_budget
    from hwsearch.hardware import get_cost_model
    from hwsearch.parallel import merge_worker_stats, parallel_env
    from hwsearch.workflow import build_env, prepare

    ws = prepare(checkpoint)
    cfg = SearchConfig(agent="random", episodes=4, seed=1)
    env, evaluator = build_env(ws, get_cost_model("bitfusion-edge"), parse_budget("latency=0.6x"))
    ref = run_search(env, cfg)
    env2, evaluator2 = build_env(ws, get_cost_model("bitfusion-edge"), parse_budget("latency=0.6x"))
    vec = parallel_env(env2, ParallelConfig(n_envs=2, backend="subproc"))
    try:
        par = run_search(vec, cfg)
        merge_worker_stats(vec, evaluator2)
    finally:
        vec.close()
    assert par.episodes == ref.episodes  # same policies, same accuracies: a worker's copy scores as the driver does
    assert evaluator2.cache.keys() == evaluator.cache.keys()
    assert evaluator2.timings.calls == evaluator.timings.calls  # the reference policy, then one call per episode


@pytest.mark.slow
def test_cli_search_with_two_worker_processes(checkpoint: Path, tmp_path: Path) -> None:
    from hwsearch.cli import main

    out = tmp_path / "run"
    args = [
        "search",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--episodes",
        "5",
        "--warmup",
        "2",
        "--hidden",
        "16",
        "16",
        "--n-envs",
        "2",
        "--backend",
        "subproc",
        "--budget",
        "latency=0.8x",
        "--quiet",
    ]
    assert main(args) == 0
    assert len((out / "episodes.csv").read_text().splitlines()) == 6
    assert "summed over 2 workers" in (out / "summary.md").read_text()
