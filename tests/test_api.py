"""The README's Python example runs as written (on the session checkpoint, with a tiny budget)."""

from __future__ import annotations

from pathlib import Path

from hwsearch.budget import parse_budget
from hwsearch.search import SearchConfig
from hwsearch.workflow import prepare, search_policy


def test_readme_api_example(checkpoint: Path) -> None:
    ws = prepare(checkpoint)
    cfg = SearchConfig(episodes=3, warmup_episodes=1, hidden=(16, 16))
    result, env, _ = search_policy(ws, "bitfusion-edge", parse_budget("latency=0.7x"), cfg)
    best = result.best
    assert best.policy.names() == ws.layer_names
    assert best.relative_cost <= 0.7 + 1e-9 and 0 <= best.accuracy <= 1
    assert env.observation_space.contains(env.reset(seed=0)[0])
