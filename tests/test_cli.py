"""The CLI, in-process: outputs of each command, and one clear line with exit code 2 for each user mistake."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hwsearch.budget import Budget, parse_budget
from hwsearch.checkpoint import save_checkpoint
from hwsearch.cli import build_parser, main
from hwsearch.config_json import load_config
from hwsearch.job import SearchJobConfig
from hwsearch.models import build_model
from hwsearch.policy_formats import load_policy
from hwsearch.runtime import set_seed

SEARCH_FAST = ["--episodes", "4", "--warmup", "2", "--hidden", "16", "16", "--quiet"]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("hwsearch: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_search_writes_policy_episodes_and_summary(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "search"
    args = ["search", "--checkpoint", str(checkpoint), "--out", str(out), "--budget", "latency=0.8x"]
    assert main(args + SEARCH_FAST + ["--max-accuracy-drop", "0.5"]) == 0
    policy = load_policy(out / "policy.json")
    assert policy.names() == [
        "net.features.conv1",
        "net.features.conv2",
        "net.features.conv3",
        "net.classifier.fc1",
        "net.classifier.fc2",
    ]
    assert policy.meta["relative_cost"] <= 0.8 + 1e-9
    rows = list(csv.DictReader((out / "episodes.csv").open()))
    assert len(rows) == 4 and rows[0]["net.features.conv1"].count("/") == 1
    summary = (out / "summary.md").read_text()
    assert "Where time went" in summary
    ref = json.loads(summary.split("fixed 8-bit reference (search-val): ")[1].split("\n")[0])
    assert ref["accuracy_floor"] == pytest.approx(ref["accuracy"] - 0.005)
    # the one saved job config reloads as the settings the search ran with (what --resume reads)
    job = load_config(SearchJobConfig, out / "config" / "job.json")
    assert job.max_accuracy_drop == 0.5
    assert job.search.episodes == 4 and parse_budget(job.budget) == Budget("latency", 0.8, relative=True)
    assert job.checkpoint == str(checkpoint) and job.target == "bitfusion-edge" and job.parallel.n_envs == 1
    assert sorted(p.name for p in (out / "config").iterdir()) == ["job.json"] and not (out / "run.json").exists()
    # a second run into the same folder is refused unless asked
    assert main(args + SEARCH_FAST) == 2


def test_compare_writes_report_with_baselines(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    search = tmp_path / "s"
    assert main(["search", "--checkpoint", str(checkpoint), "--out", str(search), *SEARCH_FAST]) == 0
    out = tmp_path / "report"
    code = main(
        [
            "compare",
            "--checkpoint",
            str(checkpoint),
            "--policy",
            f"mine={search / 'policy.json'}",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    for name in ("FP32", "fixed W8A8", "fixed W4A4", "mine"):
        assert f"| {name} |" in table
    report = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["fixed W8A8"]["speedup_vs_8bit"] == pytest.approx(1.0)
    assert rows["fixed W4A4"]["latency_ms"] < rows["fixed W8A8"]["latency_ms"]
    assert rows["FP32"]["latency_ms"] is None
    assert (out / "report.csv").read_text().startswith("name,")


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["search", "--checkpoint", "/nonexistent/fp32.pt"], "/nonexistent/fp32.pt"),
        (["search", "--target", "tpu-v9"], "tpu-v9"),
        (["search", "--budget", "latency=0.01x"], "raise it to at least"),
        (["search", "--budget", "latency=-1x"], "budget"),
        (["search", "--budget", "speed=0.5x"], "malformed"),
        (["search", "--agent", "ppo"], "ppo"),
        (["compare", "--target", "tpu-v9"], "tpu-v9"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(
    argv: list[str], match: str, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*argv]
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", str(checkpoint)]
    if argv[0] == "search":
        argv += ["--out", str(tmp_path / "o"), *SEARCH_FAST]
    assert main(argv) == 2
    assert match in one_line_error(capsys)
    assert not (tmp_path / "o" / "policy.json").exists()


def test_unknown_model_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--model", "resnet9000", "--out", str(tmp_path / "x.pt"), "--quiet"]) == 2
    assert "resnet9000" in one_line_error(capsys)
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize(
    ("layers", "match"),
    [
        ({"net.features.conv1": {"w": 4, "a": 4}, "ghost.layer": {"w": 4, "a": 4}}, "ghost.layer"),
        ({"net.features.conv1": {"w": 12, "a": 4}}, "out of range"),
        ({"net.features.conv1": {"w": 4, "a": 4}}, "misses layer"),
    ],
)
def test_bad_policies_exit_2(
    layers: dict, match: str, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"schema": 1, "layers": layers}))
    assert main(["compare", "--checkpoint", str(checkpoint), "--policy", str(p), "--quiet"]) == 2
    assert match in one_line_error(capsys)


def test_console_script_reports_errors_without_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hwsearch.cli",
            "search",
            "--checkpoint",
            str(tmp_path / "missing.pt"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "missing.pt" in proc.stderr


def test_search_on_a_table_uses_only_the_bit_widths_it_prices(checkpoint: Path, tmp_path: Path) -> None:
    """A table with W4/W8 x A4/A8 only (as a measured table would be) restricts the search to those widths."""
    from hwsearch.hardware import build_table, get_cost_model, save_table
    from hwsearch.workflow import prepare

    ws = prepare(checkpoint)
    table = build_table(get_cost_model("bitfusion-edge"), ws.layers, batch=1, model="smallcnn", bits=(4, 8))
    path = save_table(table, tmp_path / "t.json")
    out = tmp_path / "s"
    argv = [
        "search",
        "--checkpoint",
        str(checkpoint),
        "--target",
        str(path),
        "--budget",
        "latency=0.8x",
        "--out",
        str(out),
    ]
    assert main(argv + SEARCH_FAST) == 0
    rows = list(csv.DictReader((out / "episodes.csv").open()))
    bits = {int(b) for r in rows for name in ws.layer_names for b in r[name].split("/")}
    assert bits <= {4, 8} and 4 in bits


def test_search_logs_tensorboard_scalars(checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    argv = ["search", "--checkpoint", str(checkpoint), "--out", str(out), "--budget", "latency=0.8x", "--tensorboard"]
    assert main(argv + SEARCH_FAST) == 0
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"episode/reward", "episode/accuracy", "episode/best_reward"} <= set(tags)
    assert len(acc.Scalars("episode/reward")) == 4


def test_overwrite_starts_a_fresh_run_with_the_same_episodes(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "s"
    argv = [
        "search",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--budget",
        "latency=0.8x",
        "--checkpoint-every",
        "2",
        "--overwrite",
        *SEARCH_FAST,
    ]
    assert main(argv) == 0
    first = (out / "episodes.csv").read_text()
    assert main(argv) == 0
    assert (out / "episodes.csv").read_text() == first


def test_a_custom_factory_checkpoint_is_searched_only_with_model_factory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint never picks the code it imports: the user names the factory, and then every command works."""
    factory = "tests.fakes:tiny_cnn"
    set_seed(0)
    model = build_model(factory, 10, (1, 28, 28))
    ckpt = save_checkpoint(
        tmp_path / "tiny.pt",
        model,
        model_name=factory,
        dataset="mnist5k",
        num_classes=10,
        input_shape=(1, 28, 28),
        mean=(0.5,),
        std=(0.5,),
        metrics={},
    )
    out = tmp_path / "s"
    args = ["search", "--checkpoint", str(ckpt), "--out", str(out), "--budget", "latency=0.9x", *SEARCH_FAST]
    assert main(args) == 2
    assert f"--model-factory {factory}" in one_line_error(capsys)
    assert main([*args, "--model-factory", factory]) == 0
    assert load_policy(out / "policy.json").names() == ["net.0", "net.3"]


@pytest.mark.parametrize(
    ("argv", "dest", "new_flag"),
    [
        (["train", "--device", "cuda"], "compute_device", "--compute-device"),
        (["search", "--device", "bismo-edge"], "target", "--target"),
        (["sweep", "--device", "bismo-edge"], "target", "--target"),
        (["compare", "--device", "bismo-edge"], "target", "--target"),
        (["evaluate", "--device", "bismo-edge"], "target", "--target"),
        (["show", "--policy", "p.json", "--device", "bismo-edge"], "target", "--target"),
        (["latency", "show", "--model", "smallcnn", "--device", "bismo-edge"], "target", "--target"),
        (["latency", "build", "--model", "smallcnn", "--device", "bismo-edge"], "target", "--target"),
    ],
)
def test_old_device_flag_still_works_and_says_what_to_type(
    argv: list[str], dest: str, new_flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--device`` meant the torch device on train and the cost model elsewhere: each now has its own name."""
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == argv[argv.index("--device") + 1]
    err = capsys.readouterr().err
    assert "--device is deprecated" in err and new_flag in err and err.count("\n") == 1


@pytest.mark.parametrize("command", ["train", "search", "compare", "evaluate", "export", "finetune", "amplify"])
def test_every_model_command_takes_compute_device(command: str) -> None:
    argv = [command, "--compute-device", "cpu"]
    if command in ("export",):
        argv += ["--policy", "p.json", "--format", "json", "--out", "x.json"]
    if command == "finetune":
        argv += ["--policy", "p.json"]
    assert build_parser().parse_args(argv).compute_device == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_names_the_right_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--compute-device", "cuda", "--out", str(tmp_path / "x.pt"), "--quiet"]) == 2
    err = one_line_error(capsys)
    assert "CUDA is not available" in err and "use --compute-device cpu" in err
