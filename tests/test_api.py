"""The README's Python API runs exactly what the CLI runs: the same job, the same episodes for the same seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwsearch.cli import main
from hwsearch.config_json import load_config
from hwsearch.job import JOB_CONFIG, SearchJobConfig, resume_search_job, run_search_job
from hwsearch.pipelines import ModelSource
from hwsearch.policy_formats import load_policy
from hwsearch.search import SearchConfig
from hwsearch.workflow import prepare

TINY = SearchConfig(episodes=3, warmup_episodes=1, hidden=(16, 16), seed=4)


def _job(checkpoint: Path) -> SearchJobConfig:
    return SearchJobConfig(checkpoint=str(checkpoint), target="bitfusion-edge", budget="latency=0.7x", search=TINY)


def test_readme_api_example(checkpoint: Path, tmp_path: Path) -> None:
    done = run_search_job(_job(checkpoint), tmp_path / "run")
    assert done is not None
    ws = ModelSource(str(checkpoint)).prepare()
    best = done.best
    assert best.policy.names() == ws.layer_names == prepare(checkpoint).layer_names
    assert best.relative_cost <= 0.7 + 1e-9 and 0 <= best.accuracy <= 1
    assert load_policy(done.policy_path) == best.policy
    assert load_config(SearchJobConfig, tmp_path / "run" / JOB_CONFIG) == _job(checkpoint)


def test_api_and_cli_write_the_same_episodes(checkpoint: Path, tmp_path: Path) -> None:
    assert run_search_job(_job(checkpoint), tmp_path / "api") is not None
    argv = ["search", "--checkpoint", str(checkpoint), "--target", "bitfusion-edge", "--budget", "latency=0.7x"]
    argv += ["--episodes", "3", "--warmup", "1", "--hidden", "16", "16", "--seed", "4", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "cli")]) == 0
    api = (tmp_path / "api" / "episodes.csv").read_text()
    assert api == (tmp_path / "cli" / "episodes.csv").read_text() and api.count("\n") == 4
    saved = load_config(SearchJobConfig, tmp_path / "cli" / JOB_CONFIG)
    assert saved == _job(checkpoint)  # the CLI's flags are exactly this config


def test_resume_of_a_finished_job_records_nothing_new(checkpoint: Path, tmp_path: Path) -> None:
    first = run_search_job(_job(checkpoint), tmp_path / "run")
    again = resume_search_job(tmp_path / "run")
    assert first is not None and again is not None
    # the log keeps rounded figures; the episodes themselves are the same
    assert [(e.episode, e.policy) for e in again.result.episodes] == [
        (e.episode, e.policy) for e in first.result.episodes
    ]


def test_a_run_json_folder_is_refused_clearly(tmp_path: Path) -> None:
    from hwsearch.errors import ConfigError

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "run.json").write_text('{"schema": 1, "args": {}}')
    with pytest.raises(ConfigError, match="older hwsearch"):
        resume_search_job(tmp_path / "old")
