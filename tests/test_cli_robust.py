"""Robustness through the CLI: defended fine-tuning, error amplification, robust columns in comparisons."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from hwsearch.checkpoint import load_checkpoint
from hwsearch.cli import main
from hwsearch.policy import uniform_policy
from hwsearch.policy_formats import load_policy, save_policy

LAYERS = ["net.features.conv1", "net.features.conv2", "net.features.conv3", "net.classifier.fc1", "net.classifier.fc2"]


@pytest.fixture(scope="module")
def w2_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_policy(uniform_policy(LAYERS, 2), tmp_path_factory.mktemp("pol") / "w2.json")


@pytest.fixture(scope="module")
def defended(checkpoint: Path, w2_policy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("def") / "defended.pt"
    argv = [
        "finetune",
        "--checkpoint",
        str(checkpoint),
        "--policy",
        str(w2_policy),
        "--lipschitz-beta",
        "1e-3",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    return out


def test_finetune_writes_weights_with_policy_and_calibration(defended: Path, w2_policy: Path) -> None:
    ckpt = load_checkpoint(defended)
    extra = json.loads(ckpt["extra_json"])
    assert extra["lipschitz_beta"] == 1e-3
    assert set(extra["calibration"]["ranges"]) == set(LAYERS)
    assert load_policy(defended.with_suffix(".policy.json")) == load_policy(w2_policy)
    assert all(not k.endswith(".layer.weight") for k in ckpt["state_dict"])  # an ordinary float checkpoint


def test_compare_reports_worst_case_and_per_attack_robustness(
    checkpoint: Path, defended: Path, w2_policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "compare",
        "--checkpoint",
        str(checkpoint),
        "--policy",
        f"w2={w2_policy}",
        "--policy",
        f"w2-defended={defended.with_suffix('.policy.json')}@{defended}",
        "--eps",
        "0.1",
        "0.3",
        "--attack-steps",
        "3",
        "--robust-images",
        "60",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    assert main(argv) == 0
    rows = {r["name"]: r for r in json.loads((tmp_path / "report.json").read_text())["rows"]}
    assert set(rows) == {"FP32", "fixed W8A8", "fixed W4A4", "w2", "w2-defended"}
    for r in rows.values():
        for eps in ("0.1", "0.3"):
            worst = r[f"robust@{eps}:worst"]
            figs = {k.split(":", 1)[1]: v for k, v in r.items() if k.startswith(f"robust@{eps}:")}
            per_attack = [v for k, v in figs.items() if k not in ("worst", "masking_gap", "masking_warning")]
            assert len(per_attack) == 6 and "square150-margin" in figs  # 5 gradient attacks + gradient-free Square
            assert worst <= min(per_attack) + 1e-9
            assert isinstance(figs["masking_warning"], bool)
        assert r["robust@0.3:worst"] <= r["robust@0.1:worst"] + 1e-9
    md = (tmp_path / "report.md").read_text()
    assert "Robust accuracy (%) per attack" in md and "![tradeoff.png](tradeoff.png)" in md
    assert (tmp_path / "tradeoff.png").stat().st_size > 1000 and (tmp_path / "bits-w2.png").is_file()
    assert "robust @0.1 %" in capsys.readouterr().out


def test_amplify_writes_profiles_for_fp32_quantized_and_defended(
    checkpoint: Path, defended: Path, w2_policy: Path, tmp_path: Path
) -> None:
    argv = [
        "amplify",
        "--checkpoint",
        str(checkpoint),
        "--policy",
        str(w2_policy),
        "--defended",
        str(defended),
        "--images",
        "40",
        "--steps",
        "3",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    assert main(argv) == 0
    rows = list(csv.DictReader((tmp_path / "amplification.csv").open()))
    assert rows and (tmp_path / "amplification.png").stat().st_size > 1000
    text = (tmp_path / "amplification.csv").read_text()
    assert "FP32" in text and "defended" in text
    report = tmp_path / "report"
    argv = [
        "compare",
        "--checkpoint",
        str(checkpoint),
        "--amplification",
        str(tmp_path),
        "--out",
        str(report),
        "--quiet",
    ]
    assert main(argv) == 0
    assert "![amplification.png](amplification.png)" in (report / "report.md").read_text()
    assert (report / "amplification.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["finetune", "--lipschitz-beta", "-1"], "lipschitz-beta"),
        (["compare", "--eps", "1.5"], "--eps 1.5"),
        (["compare", "--eps", "-0.1"], "--eps -0.1"),
        (["amplify", "--eps", "0"], "--eps 0"),
        (["search", "--attack", "cw"], "cw"),
    ],
)
def test_bad_robustness_settings_exit_2(
    argv: list[str], match: str, checkpoint: Path, w2_policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*argv, "--checkpoint", str(checkpoint)]
    if argv[0] == "finetune":
        argv += ["--policy", str(w2_policy), "--out", str(tmp_path / "d.pt")]
    if argv[0] in ("search", "amplify"):
        argv += ["--out", str(tmp_path / "o")]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
