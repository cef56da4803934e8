"""Resumable search: checkpoints, clean stops on signals, and no finished episode lost to a kill."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hwsearch.cli import main
from hwsearch.search import SearchCheckpoint, SearchConfig, run_search
from tests.test_search import TINY, make_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("agent", ["ddpg", "random"])
def test_stop_then_resume_runs_exactly_the_remaining_episodes(agent: str, tmp_path: Path) -> None:
    cfg = SearchConfig(agent=agent, seed=3, **{**TINY, "episodes": 7})
    ckpt = SearchCheckpoint(tmp_path / "ckpt", every=2)
    done: list = []
    first = run_search(make_env(), cfg, checkpoint=ckpt, on_episode=done.append, should_stop=lambda: len(done) >= 4)
    assert len(first.episodes) == 4
    state = ckpt.state()
    assert state is not None and state["episodes_done"] == 4
    if agent == "ddpg":
        assert (ckpt.latest() / "agent.zip").is_file() and (ckpt.latest() / "replay.pkl").is_file()
        resumed_agent = ckpt.load_agent(make_env(), cfg)
        n = 4 * make_env().n_steps  # the stop lands on the next step, whose transition is not stored
        assert resumed_agent.num_timesteps in (n, n + 1)
        assert resumed_agent.replay_buffer.size() == n
        assert resumed_agent.action_noise.episodes == 4
        assert resumed_agent.baseline_kind == cfg.reward_baseline == "none"
        moving = ckpt.load_agent(make_env(), SearchConfig(agent=agent, seed=3, reward_baseline="moving", **TINY))
        assert moving is not None and moving.baseline_kind == "moving"  # the job's settings rule, not the zip's
    second = run_search(make_env(), cfg, checkpoint=ckpt, history=first.episodes, resume=True)
    assert len(second.episodes) == 7
    assert second.episodes[:4] == first.episodes
    assert [e.episode for e in second.episodes] == list(range(7))
    if agent == "random":  # its stream goes on as if never interrupted
        whole = run_search(make_env(), cfg)
        assert [e.policy for e in second.episodes] == [e.policy for e in whole.episodes]


@pytest.mark.parametrize("agent", ["ddpg", "random"])
def test_resume_after_a_kill_between_checkpoints(agent: str, tmp_path: Path) -> None:
    """The log has more episodes than the last checkpoint (a SIGKILL between checkpoints): none is lost."""
    cfg = SearchConfig(agent=agent, seed=5, **{**TINY, "episodes": 8})
    ckpt = SearchCheckpoint(tmp_path / "ckpt", every=3)
    done: list = []
    first = run_search(make_env(), cfg, checkpoint=ckpt, on_episode=done.append, should_stop=lambda: len(done) >= 5)
    log = first.episodes  # 5 finished; pretend the kill came before the stop's checkpoint:
    latest = ckpt.latest()
    assert latest is not None
    for folder in ckpt.root.glob("ckpt-000005-*"):
        import shutil

        shutil.rmtree(folder)
    (ckpt.root / "LATEST").write_text(sorted(p.name for p in ckpt.root.glob("ckpt-000003-*"))[-1] + "\n")
    assert ckpt.state()["episodes_done"] == 3
    second = run_search(make_env(), cfg, checkpoint=ckpt, history=log, resume=True)
    assert len(second.episodes) == 8 and second.episodes[:5] == log
    if agent == "random":
        whole = run_search(make_env(), cfg)
        assert [e.policy for e in second.episodes] == [e.policy for e in whole.episodes]


def test_stop_mid_episode_keeps_only_whole_episodes_in_the_replay_buffer(tmp_path: Path) -> None:
    env = make_env()
    steps = [0]

    def stop() -> bool:  # stops 3 steps into the 5th episode
        steps[0] += 1
        return steps[0] > 4 * env.n_steps + 3

    cfg = SearchConfig(seed=1, **{**TINY, "episodes": 20})
    ckpt = SearchCheckpoint(tmp_path / "ckpt", every=100)
    res = run_search(env, cfg, checkpoint=ckpt, should_stop=stop)
    assert len(res.episodes) == 4
    agent = ckpt.load_agent(make_env(), cfg)
    assert agent is not None and agent.replay_buffer.size() == 4 * env.n_steps


def test_a_fresh_run_never_inherits_an_old_checkpoint(tmp_path: Path) -> None:
    cfg = SearchConfig(seed=2, **TINY)
    ckpt = SearchCheckpoint(tmp_path / "ckpt", every=2)
    a = run_search(make_env(), cfg, checkpoint=ckpt)
    b = run_search(make_env(), cfg, checkpoint=ckpt)  # same folder, no resume: same episodes as the first run
    assert [e.policy for e in a.episodes] == [e.policy for e in b.episodes]


def test_checkpoint_keeps_only_recent_complete_folders(tmp_path: Path) -> None:
    ckpt = SearchCheckpoint(tmp_path, every=1, keep=2)
    for n in (1, 2, 3, 4, 4):
        ckpt.save(n, None, {})
    names = sorted(p.name for p in tmp_path.glob("ckpt-*"))
    assert len(names) == 2 and all(n.startswith("ckpt-000004-") for n in names)  # a re-save never overwrites
    assert ckpt.state()["episodes_done"] == 4 and ckpt.latest().name == names[-1]
    (ckpt.latest() / "state.json").unlink()  # a torn folder is never taken as the latest
    assert ckpt.latest() is None


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _start_search(checkpoint: Path, out: Path, episodes: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "hwsearch.cli",
        "search",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--episodes",
        str(episodes),
        "--warmup",
        "3",
        "--hidden",
        "16",
        "16",
        "--checkpoint-every",
        "3",
        "--budget",
        "latency=0.8x",
        "--quiet",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_rows(path: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and len(_rows(path)) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"no {n} episodes within {timeout}s")


@pytest.mark.slow
def test_sigkill_loses_no_finished_episode_and_resume_completes(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _start_search(checkpoint, out, episodes=40)
    _wait_for_rows(out / "episodes.csv", 8, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = _rows(out / "episodes.csv")
    assert len(before) >= 8
    assert main(["search", "--resume", str(out), "--quiet"]) == 0
    after = _rows(out / "episodes.csv")
    assert len(after) == 40
    assert after[: len(before)] == before  # every finished episode is still in the log, unchanged
    assert (out / "policy.json").is_file() and (out / "summary.md").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_stop_cleanly_with_a_checkpoint(
    sig: signal.Signals, checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = _start_search(checkpoint, out, episodes=200)
    _wait_for_rows(out / "episodes.csv", 5, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"stopped by {sig.name}" in err and "--resume" in err and "Traceback" not in err
    rows = _rows(out / "episodes.csv")
    state = SearchCheckpoint(out / "checkpoint").state()
    assert state is not None and state["episodes_done"] == len(rows)
    assert not (out / "policy.json").exists()


def test_resuming_a_log_from_before_new_columns_keeps_rows_aligned(tmp_path: Path) -> None:
    """An episodes.csv written before ``requested_relative_cost``/``noise_sigma`` existed is rewritten under the
    current header on resume, so the rows appended after it line up and every episode reads back."""
    import csv

    from hwsearch.policy import Policy
    from hwsearch.report import EPISODE_FIELDS, EpisodeLog, read_episode_log
    from hwsearch.search import EpisodeRecord

    names = ["a", "b"]
    old_fields = [f for f in EPISODE_FIELDS if f not in ("requested_relative_cost", "noise_sigma")]
    path = tmp_path / "episodes.csv"
    rows = [
        {
            **dict.fromkeys(old_fields, ""),
            "episode": i,
            "reward": 0.5 + i,
            "accuracy": 0.9,
            "latency_ms": 1.0,
            "size_bits": 8.0,
            "relative_cost": 0.5,
            "a": "4/4",
            "b": "8/2",
        }
        for i in range(3)
    ]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, [*old_fields, *names])
        writer.writeheader()
        writer.writerows(rows)
    log = EpisodeLog(path, names, keep=2)
    rec = EpisodeRecord(
        episode=2,
        policy=Policy({"a": (2, 2), "b": (3, 3)}),
        reward=9.0,
        accuracy=0.8,
        robust_accuracy=None,
        latency_ms=1.0,
        energy_mj=None,
        size_bits=4.0,
        relative_cost=0.4,
        requested_relative_cost=0.6,
        noise_sigma=0.3,
    )
    log.append(rec)
    with path.open(newline="") as fh:
        lines = list(csv.reader(fh))
    assert lines[0] == [*EPISODE_FIELDS, *names] and all(len(r) == len(lines[0]) for r in lines)
    back = read_episode_log(path, names)
    assert [r.reward for r in back] == [0.5, 1.5, 9.0]
    assert back[2].policy == rec.policy and back[2].noise_sigma == 0.3 and back[0].noise_sigma is None


def test_an_agent_saved_for_another_observation_is_a_one_line_error(tmp_path: Path) -> None:
    """A checkpoint from an hwsearch whose observation had other features cannot be resumed: say so, and how."""
    import gymnasium as gym
    import numpy as np

    from hwsearch.errors import ConfigError

    ckpt = SearchCheckpoint(tmp_path / "ckpt", every=2)
    cfg = SearchConfig(**{**TINY, "episodes": 2, "warmup_episodes": 1})
    run_search(make_env(), cfg, checkpoint=ckpt)
    env = make_env()
    env.observation_space = gym.spaces.Box(0.0, 1.0, shape=(11,), dtype=np.float32)  # the old 11 features
    with pytest.raises(ConfigError, match="another observation or action space.*--overwrite"):
        ckpt.load_agent(env, cfg)
