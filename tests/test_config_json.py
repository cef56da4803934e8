"""Every config dataclass round-trips through versioned JSON, and bad input is one clear ConfigError line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hwsearch.envs import EnvConfig

from hwsearch.budget import Budget
from hwsearch.config_json import (
    CONFIG_SCHEMA_VERSION,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from hwsearch.errors import ConfigError
from hwsearch.evaluate import EvaluatorConfig
from hwsearch.hardware.bismo import BismoConfig
from hwsearch.hardware.bitfusion import BitFusionConfig, BitFusionEnergy
from hwsearch.hardware.measure import MeasureConfig
from hwsearch.parallel import ParallelConfig
from hwsearch.robust import AttackConfig, search_attacks
from hwsearch.search import SearchConfig
from hwsearch.training import TrainConfig

CLASSES = [
    TrainConfig,
    SearchConfig,
    EnvConfig,
    EvaluatorConfig,
    ParallelConfig,
    AttackConfig,
    MeasureConfig,
    BitFusionConfig,
    BismoConfig,
    Budget,
]
NON_DEFAULT = [
    TrainConfig(epochs=2, lr=0.01, batch_size=32, weight_decay=1e-4, seed=3, device="cuda:1"),
    SearchConfig(episodes=10, warmup_episodes=2, agent="random", seed=7, hidden=(16, 8), gamma=0.9),
    EnvConfig(budget=Budget("latency", 0.5), w_bits=(2, 4, 8), a_bits=(4, 8), w_rob=1.5, acc_ref=0.9),
    EnvConfig(budget=Budget("size", 1234.5, relative=False)),
    EvaluatorConfig(attacks=tuple(search_attacks(0.1, steps=3)), robust_subset=50, cache=False, lipschitz_beta=0.1),
    ParallelConfig(n_envs=4, backend="ray", cpus_per_env=0.5, gpus_per_env=0.25, ray_address="auto"),
    ParallelConfig(n_envs=2, backend="serial", compute_device="cpu", shared_cache=False),
    AttackConfig(
        "pgd", 0.5, 7, step_size=0.05, norm="l2", loss="margin", grad="shadow", restarts=2, random_start=False
    ),
    MeasureConfig(repeats=3, warmup=1, threads=2, seed=5),
    BitFusionConfig(
        n=8, m=16, freq_mhz=250.0, batch=1, energy=BitFusionEnergy(core_pj_per_cycle=100.0, dram_pj_per_bit=20.5)
    ),
    BismoConfig(dm=4, dk=128, dn=4, freq_mhz=150.0, core_pj_per_cycle=1234.5),
    Budget("energy", 2.5, relative=False),
]
CASES = [cls() for cls in CLASSES] + NON_DEFAULT


def _ids(cfg: Any) -> str:
    return type(cfg).__name__


@pytest.mark.parametrize("cfg", CASES, ids=_ids)
def test_json_round_trip(cfg: Any) -> None:
    data = config_to_dict(cfg)
    assert data["schema"] == CONFIG_SCHEMA_VERSION and data["type"] == type(cfg).__name__
    back = config_from_dict(type(cfg), json.loads(json.dumps(data)))
    assert back == cfg and type(back) is type(cfg)


@pytest.mark.parametrize("cfg", CASES, ids=_ids)
def test_save_load_round_trip(cfg: Any, tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    assert save_config(path, cfg) == path
    assert load_config(type(cfg), path) == cfg


def test_nested_configs_are_typed_dicts() -> None:
    data = config_to_dict(EvaluatorConfig(attacks=tuple(search_attacks(0.1, steps=3))))
    attack = data["fields"]["attacks"][0]
    assert attack["type"] == "AttackConfig" and attack["fields"]["steps"] == 3
    assert config_to_dict(EnvConfig())["fields"]["budget"]["type"] == "Budget"


def test_missing_fields_take_defaults() -> None:
    got = config_from_dict(SearchConfig, {"schema": 1, "type": "SearchConfig", "fields": {"episodes": 3}})
    assert got == SearchConfig(episodes=3)
    assert config_from_dict(Budget, {"schema": 1, "type": "Budget"}) == Budget()


def _doc(cls: type, **fields: Any) -> dict[str, Any]:
    return {"schema": 1, "type": cls.__name__, "fields": fields}


BAD = [
    (TrainConfig, [1, 2], "must be a JSON object"),
    (TrainConfig, {"type": "TrainConfig", "fields": {}}, "reads schema 1"),
    (TrainConfig, {**_doc(TrainConfig), "schema": 2}, "reads schema 1"),
    (TrainConfig, {**_doc(TrainConfig), "schema": True}, "reads schema 1"),
    (TrainConfig, _doc(SearchConfig), "expected 'TrainConfig'"),
    (TrainConfig, {"schema": 1, "fields": {}}, "expected 'TrainConfig'"),
    (TrainConfig, _doc(TrainConfig, epoch=3), "unknown field(s) ['epoch']; known fields: ['epochs'"),
    (TrainConfig, {**_doc(TrainConfig), "epochs": 3}, "unknown top-level key(s) ['epochs']"),
    (TrainConfig, {**_doc(TrainConfig), "fields": [1]}, "'fields' must be a JSON object"),
    (SearchConfig, _doc(SearchConfig, hidden=16), "SearchConfig.hidden = 16 must be a JSON list"),
    (EnvConfig, _doc(EnvConfig, budget="latency=0.5x"), "Budget config must be a JSON object"),
    (EnvConfig, _doc(EnvConfig, budget={**_doc(Budget), "schema": 9}), "reads schema 1"),
    (EnvConfig, _doc(EnvConfig, budget=_doc(Budget, limit=1)), "unknown field(s) ['limit']"),
    (EvaluatorConfig, _doc(EvaluatorConfig, attacks={"a": 1}), "must be a JSON list"),
    (BitFusionConfig, _doc(BitFusionConfig, energy=[1.0]), "BitFusionEnergy config must be a JSON object"),
    (TrainConfig, _doc(TrainConfig, epochs=-1), "epochs"),
]


@pytest.mark.parametrize(("cls", "data", "fragment"), BAD)
def test_bad_input(cls: type, data: Any, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(cls, data)
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg


def test_load_missing_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TrainConfig, tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON") as info:
        load_config(TrainConfig, bad)
    assert "\n" not in str(info.value)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(TrainConfig, tmp_path / "bin.json")


def test_to_dict_rejects_non_configs() -> None:
    with pytest.raises(ConfigError, match="not a config dataclass"):
        config_to_dict(TrainConfig)


def test_a_job_saved_before_reward_baseline_resumes_with_the_baseline_it_ran_with(tmp_path: Path) -> None:
    """Before 2026-12-06 every search stored rewards minus a moving baseline; its resume must not switch mid-run."""
    from hwsearch.job import JOB_CONFIG, SearchJobConfig, load_job_config

    path = tmp_path / JOB_CONFIG
    save_config(path, SearchJobConfig(checkpoint="c.pt"))
    assert load_job_config(tmp_path).search.reward_baseline == "none"
    data = json.loads(path.read_text(encoding="utf-8"))
    del data["fields"]["search"]["fields"]["reward_baseline"]
    path.write_text(json.dumps(data), encoding="utf-8")
    assert load_job_config(tmp_path).search.reward_baseline == "moving"


@pytest.mark.parametrize(
    ("setting", "today", "before"),
    [
        ("fold_batch_norms", True, False),  # its logged episodes were scored on the unfolded model
        ("select_top", 10, 0),  # it handed over the best reward
        ("export_style", None, "qdq"),  # it scored the fake-quant model without the export's roundings
    ],
)
def test_a_job_saved_before_a_setting_existed_resumes_as_it_ran(
    tmp_path: Path, setting: str, today: object, before: object
) -> None:
    from hwsearch.job import JOB_CONFIG, SearchJobConfig, load_job_config

    path = tmp_path / JOB_CONFIG
    save_config(path, SearchJobConfig(checkpoint="c.pt"))
    assert getattr(load_job_config(tmp_path), setting) == today
    data = json.loads(path.read_text(encoding="utf-8"))
    del data["fields"][setting]
    path.write_text(json.dumps(data), encoding="utf-8")
    assert getattr(load_job_config(tmp_path), setting) == before


@pytest.mark.parametrize(
    ("target", "style"), [("ort-cpu", "kernels"), ("ort-cpu:2", "kernels"), ("bitfusion-edge", "qdq")]
)
def test_a_job_scores_policies_as_its_target_runs_them(target: str, style: str) -> None:
    from hwsearch.job import SearchJobConfig

    config = SearchJobConfig(checkpoint="c.pt", target=target)
    assert config.scoring_style == style and config.evaluator_config().export_style == style
    assert (
        SearchJobConfig(checkpoint="c.pt", target=target, export_style="qdq").evaluator_config().export_style == "qdq"
    )
    with pytest.raises(ConfigError, match="export_style"):
        SearchJobConfig(checkpoint="c.pt", target=target, export_style="onnx")
