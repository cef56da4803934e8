"""The bad-input matrix: every user mistake gets one clear stderr line, exit code 2, no traceback, no debris.

Each case builds its inputs under a scratch folder, runs ``hwsearch.cli.main`` in-process with that folder as
the working directory, and checks that the folder is exactly as it was before (no partial checkpoint, policy,
run folder, job config or temp file is left behind, and no existing file was touched).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hwsearch.cli import main

LAYERS = ["net.features.conv1", "net.features.conv2", "net.features.conv3", "net.classifier.fc1", "net.classifier.fc2"]
SEARCH_FAST = ["--episodes", "2", "--warmup", "1", "--hidden", "8", "8", "--quiet"]

Setup = Callable[[Path, Path], list[str]]  # (scratch folder, trained checkpoint) -> argv


@dataclass(frozen=True)
class Case:
    """One bad input: how to build it, and a word the error line must contain (what was wrong)."""

    id: str
    setup: Setup
    expect: str


# ------------------------------------------------------------------------------------------- helpers
def _policy_dict(bits: dict[str, Any] | None = None, schema: Any = 1) -> dict[str, Any]:
    layers = {n: {"w": 4, "a": 4} for n in LAYERS} if bits is None else bits
    return {"schema": schema, "layers": layers, "meta": {}}


def _write(tmp: Path, name: str, content: str | bytes | dict) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict):
        content = json.dumps(content)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _with(**changes: Any) -> dict[str, Any]:
    """A valid 4-bit policy with some layers' bits replaced (None drops the layer)."""
    layers: dict[str, Any] = {n: {"w": 4, "a": 4} for n in LAYERS}
    for name, bits in changes.items():
        key = name.replace("__", ".")
        if bits is None:
            layers.pop(key)
        else:
            layers[key] = bits
    return _policy_dict(layers)


BAD_POLICIES: dict[str, str | dict] = {
    "malformed-json": '{"schema": 1, "layers": {',
    "not-an-object": "[1, 2, 3]",
    "wrong-schema": _policy_dict(schema=99),
    "no-layers": {"schema": 1},
    "empty-layers": _policy_dict({}),
    "bits-out-of-range": _with(net__features__conv2={"w": 9, "a": 4}),
    "bits-zero": _with(net__features__conv2={"w": 0, "a": 4}),
    "bits-negative": _with(net__classifier__fc1={"w": 4, "a": -2}),
    "bits-non-integer": _with(net__features__conv2={"w": 4.5, "a": 4}),
    "bits-string": _with(net__features__conv2={"w": "4", "a": 4}),
    "bits-wrong-shape": _with(net__features__conv2={"w": 4}),
}
LAYER_MISMATCH: dict[str, dict] = {
    "unknown-layer": {**_with(), "layers": {**_with()["layers"], "net.features.conv9": {"w": 4, "a": 4}}},
    "missing-layer": _with(net__classifier__fc2=None),
}


@functools.cache
def _valid_table() -> dict[str, Any]:
    """A complete analytical smallcnn table (the shape ``latency build`` writes), as a plain dict."""
    from hwsearch.hardware import build_table, get_cost_model
    from hwsearch.models import model_layers

    _, layers = model_layers("smallcnn", 10, (1, 28, 28))
    table = build_table(get_cost_model("bitfusion-edge"), layers, batch=1, model="smallcnn", bits=(2, 4, 8))
    return table.to_dict()


def _table(mutate: Callable[[dict[str, Any]], None]) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        data = copy.deepcopy(_valid_table())
        mutate(data)
        path = tmp / "table.json"
        path.write_text(json.dumps(data))  # json writes NaN as NaN, which Python's reader accepts
        return path

    return make


def _first_cell(data: dict[str, Any]) -> dict[str, Any]:
    return next(iter(data["entries"].values()))["W8A8"]


def _drop_signature(d: dict[str, Any]) -> None:
    d["entries"].pop(next(iter(d["entries"])))


def _drop_pair(d: dict[str, Any]) -> None:
    next(iter(d["entries"].values())).pop("W8A8")


def _set_cell(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        _first_cell(d)[key] = value

    return mutate


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        d[key] = value

    return mutate


BAD_TABLES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "missing-signature": (_drop_signature, "no entry"),
    "missing-bit-pair": (_drop_pair, "W8A8"),
    "nan-latency": (_set_cell("latency", float("nan")), "finite"),
    "inf-latency": (_set_cell("latency", float("inf")), "finite"),
    "negative-latency": (_set_cell("latency", -1.0), "positive"),
    "zero-latency": (_set_cell("latency", 0.0), "positive"),
    "string-latency": (_set_cell("latency", "fast"), "not a number"),
    "negative-energy": (_set_cell("energy", -0.5), "positive"),
    "wrong-latency-unit": (_set("units", {"latency": "seconds", "energy": "mJ"}), "unit"),
    "wrong-energy-unit": (_set("units", {"latency": "ms", "energy": "J"}), "unit"),
    "cycles-without-clock": (_set("units", {"latency": "cycles", "energy": "mJ"}), "clock_hz"),
    "wrong-schema": (_set("schema", 7), "schema"),
    "empty-entries": (_set("entries", {}), "no entries"),
    "zero-batch": (_set("batch", 0), "batch"),
    "bad-bit-key": (lambda d: next(iter(d["entries"].values())).update({"W9A8": {"latency": 1.0}}), "bit key"),
}


def _ckpt_variant(mutate: Callable[[dict[str, Any]], None], name: str = "variant.pt") -> Callable[[Path, Path], Path]:
    def make(tmp: Path, ckpt: Path) -> Path:
        data = torch.load(ckpt, weights_only=True)
        mutate(data)
        path = tmp / name
        torch.save(data, path)
        return path

    return make


def _arch(d: dict[str, Any]) -> None:
    d["model_name"] = "resnet20"


def _classes(d: dict[str, Any]) -> None:
    d["num_classes"] = 7


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: proof of code execution if the marker ever appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _evil_zip(tmp: Path, ckpt: Path) -> Path:
    data = torch.load(ckpt, weights_only=True)
    data["metrics"] = {"note": _Payload(tmp / "PWNED")}
    path = tmp / "evil.pt"
    torch.save(data, path)
    return path


def _evil_raw(tmp: Path, ckpt: Path) -> Path:
    path = tmp / "evil-raw.pt"
    path.write_bytes(pickle.dumps({"schema": 1, "x": _Payload(tmp / "PWNED")}, protocol=2))
    return path


def _truncated(tmp: Path, ckpt: Path) -> Path:
    raw = ckpt.read_bytes()
    return _write(tmp, "truncated.pt", raw[: len(raw) // 2])


def _png(path: Path, h: int, w: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)).save(path)


def _folder_mixed_sizes(tmp: Path) -> Path:
    root = tmp / "imgs"
    for cls in ("a", "b"):
        for i in range(3):
            _png(root / cls / f"{i}.png", 8, 8)
    _png(root / "b" / "odd.png", 12, 10)
    return root


def _folder_one_class(tmp: Path) -> Path:
    root = tmp / "imgs"
    for i in range(4):
        _png(root / "only" / f"{i}.png", 8, 8)
    return root


def _folder_corrupt_image(tmp: Path) -> Path:
    root = tmp / "imgs"
    for cls in ("a", "b"):
        for i in range(3):
            _png(root / cls / f"{i}.png", 8, 8)
    _write(root, "a/broken.png", b"this is not a png")
    return root


def _folder_no_images(tmp: Path) -> Path:
    root = tmp / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    return root


def _empty(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _regular_file(tmp: Path) -> Path:
    return _write(tmp, "a-file", "not a folder")


def _train(*extra: str) -> list[str]:
    return ["train", "--epochs", "0", "--quiet", "--out", "out/fp32.pt", *extra]


def _search(ckpt: Path, *extra: str, out: str = "out") -> list[str]:
    return ["search", "--checkpoint", str(ckpt), "--out", out, *SEARCH_FAST, *extra]


def _run_folder(tmp: Path, marker: str) -> Path:
    run = tmp / "old-run"
    _write(run, marker, "kept,row\n1,2\n")
    return run


# --------------------------------------------------------------------------------------------- cases
CASES: list[Case] = [
    # --- checkpoints
    Case(
        "ckpt-missing", lambda t, c: ["compare", "--checkpoint", str(t / "nope.pt"), "--out", "rep"], "does not exist"
    ),
    Case(
        "ckpt-garbage",
        lambda t, c: ["compare", "--checkpoint", str(_write(t, "g.pt", os.urandom(256))), "--out", "rep"],
        "checkpoint",
    ),
    Case(
        "ckpt-empty-file", lambda t, c: ["compare", "--checkpoint", str(_write(t, "e.pt", b"")), "--out", "rep"], "pt"
    ),
    Case(
        "ckpt-truncated", lambda t, c: ["compare", "--checkpoint", str(_truncated(t, c)), "--out", "rep"], "checkpoint"
    ),
    Case(
        "ckpt-not-a-dict",
        lambda t, c: ["evaluate", "--policy", "p.json", "--checkpoint", str(_tensor_file(t))],
        "not an hwsearch checkpoint",
    ),
    Case(
        "ckpt-other-architecture",
        lambda t, c: ["compare", "--checkpoint", str(_ckpt_variant(_arch)(t, c)), "--out", "rep"],
        "does not fit model resnet20",
    ),
    Case(
        "ckpt-other-num-classes",
        lambda t, c: ["show", "--policy", "p.json", "--checkpoint", str(_ckpt_variant(_classes)(t, c))],
        "shape mismatch",
    ),
    Case(
        "ckpt-custom-factory",
        lambda t, c: [
            "show",
            "--policy",
            "p.json",
            "--checkpoint",
            str(_ckpt_variant(_set("model_name", "os:getcwd"))(t, c)),
        ],
        "custom model",
    ),
    Case(
        "ckpt-wrong-schema",
        lambda t, c: ["compare", "--checkpoint", str(_ckpt_variant(_set("schema", 5))(t, c)), "--out", "rep"],
        "schema",
    ),
    Case(
        "ckpt-pickled-code-zip",
        lambda t, c: ["compare", "--checkpoint", str(_evil_zip(t, c)), "--out", "rep"],
        "refused",
    ),
    Case(
        "ckpt-pickled-code-raw",
        lambda t, c: ["evaluate", "--policy", "p.json", "--checkpoint", str(_evil_raw(t, c))],
        "checkpoint",
    ),
    Case(
        "ckpt-pickled-code-export",
        lambda t, c: [
            "export",
            "--policy",
            "p.json",
            "--format",
            "checkpoint",
            "--checkpoint",
            str(_evil_zip(t, c)),
            "--out",
            "q.pt",
        ],
        "refused",
    ),
    # --- datasets
    Case("data-unknown", lambda t, c: _train("--dataset", "imagenet22k"), "unknown dataset"),
    Case(
        "data-folder-missing",
        lambda t, c: _train("--dataset", "imagefolder", "--data-root", str(t / "no")),
        "does not exist",
    ),
    Case("data-folder-not-given", lambda t, c: _train("--dataset", "imagefolder"), "needs a local folder"),
    Case(
        "data-folder-empty",
        lambda t, c: _train("--dataset", "imagefolder", "--data-root", str(_empty(t))),
        "imagefolder",
    ),
    Case(
        "data-folder-no-images",
        lambda t, c: _train("--dataset", "imagefolder", "--data-root", str(_folder_no_images(t))),
        "imagefolder",
    ),
    Case(
        "data-folder-one-class",
        lambda t, c: _train("--dataset", "imagefolder", "--data-root", str(_folder_one_class(t))),
        "class folder",
    ),
    Case(
        "data-folder-mixed-shapes",
        lambda t, c: _train("--dataset", "imagefolder", "--data-root", str(_folder_mixed_sizes(t))),
        "differ in size",
    ),
    Case(
        "data-folder-corrupt-image",
        lambda t, c: _train("--dataset", "imagefolder", "--data-root", str(_folder_corrupt_image(t))),
        "cannot read image",
    ),
    Case("data-cifar10-empty", lambda t, c: _train("--dataset", "cifar10", "--data-root", str(_empty(t))), "cifar10"),
    Case("data-svhn-missing", lambda t, c: _train("--dataset", "svhn", "--data-root", str(t / "no")), "does not exist"),
    Case(
        "data-root-is-file",
        lambda t, c: _train("--dataset", "cifar10", "--data-root", str(_regular_file(t))),
        "cifar10",
    ),
    # --- names: model, device, attack
    Case("model-unknown", lambda t, c: _train("--model", "resnet9000"), "unknown model"),
    Case("model-bad-factory", lambda t, c: _train("--model", "no_such_module_xyz:make"), "cannot import"),
    Case("model-factory-not-a-model", lambda t, c: _train("--model", "os:getcwd"), "not an nn.Module"),
    Case("compute-device-unknown", lambda t, c: _train("--compute-device", "tpu"), "unknown"),
    Case("compute-device-cuda-absent", lambda t, c: _train("--compute-device", "cuda"), "cuda"),
    Case("target-device-unknown-search", lambda t, c: _search(c, "--target", "tpu-v9"), "unknown device"),
    Case(
        "target-device-unknown-compare",
        lambda t, c: ["compare", "--checkpoint", str(c), "--target", "x"],
        "unknown device",
    ),
    Case(
        "target-device-unknown-evaluate",
        lambda t, c: ["evaluate", "--quantized", "q.pt", "--target", "x"],
        "unknown device",
    ),
    Case(
        "target-device-unknown-latency",
        lambda t, c: ["latency", "show", "--model", "smallcnn", "--target", "nosuch"],
        "unknown device",
    ),
    Case("attack-unknown", lambda t, c: _search(c, "--attack", "carlini"), "method"),
    Case(
        "search-compute-device-unknown",
        lambda t, c: _search(c, "--compute-device", "tpu"),
        "unknown",
    ),
    Case(
        "search-ckpt-missing",
        lambda t, c: _search(t / "nope.pt"),
        "does not exist",
    ),
    # --- budgets
    Case("budget-zero", lambda t, c: _search(c, "--budget", "latency=0"), "positive"),
    Case("budget-zero-relative", lambda t, c: _search(c, "--budget", "latency=0x"), "positive"),
    Case("budget-negative", lambda t, c: _search(c, "--budget", "latency=-0.5x"), "positive"),
    Case("budget-nan", lambda t, c: _search(c, "--budget", "latency=nan"), "budget"),
    Case("budget-malformed", lambda t, c: _search(c, "--budget", "latency=fast"), "malformed"),
    Case("budget-unknown-metric", lambda t, c: _search(c, "--budget", "power=0.5x"), "malformed"),
    Case(
        "budgets-empty-sweep",
        lambda t, c: ["sweep", "--checkpoint", str(c), "--budgets", ",", "--out", "out"],
        "no budget",
    ),
    Case(
        "budgets-negative-sweep",
        lambda t, c: ["sweep", "--checkpoint", str(c), "--budgets", "0.5x,-1x", "--out", "out"],
        "positive",
    ),
    Case("robust-images-zero", lambda t, c: _search(c, "--robust-images", "0"), "robust_images"),
    Case(
        "budget-infeasible",
        lambda t, c: _search(c, "--budget", "latency=0.001x"),
        "below the cost",
    ),
    Case(
        "budget-infeasible-absolute",
        lambda t, c: _search(c, "--budget", "size=8"),
        "below the cost",
    ),
    # --- eps
    Case(
        "eps-negative-compare", lambda t, c: ["compare", "--checkpoint", str(c), "--eps", "-0.1", "--out", "rep"], "eps"
    ),
    Case(
        "eps-above-1-compare", lambda t, c: ["compare", "--checkpoint", str(c), "--eps", "1.5", "--out", "rep"], "eps"
    ),
    Case("eps-zero-amplify", lambda t, c: ["amplify", "--checkpoint", str(c), "--eps", "0", "--out", "amp"], "eps"),
    Case("eps-above-1-amplify", lambda t, c: ["amplify", "--checkpoint", str(c), "--eps", "2", "--out", "amp"], "eps"),
    Case("eps-negative-search", lambda t, c: _search(c, "--attack", "pgd", "--eps", "-0.1"), "eps"),
    Case("eps-above-1-search", lambda t, c: _search(c, "--robust-weight", "1", "--eps", "1.01"), "eps"),
    Case("accuracy-drop-negative", lambda t, c: _search(c, "--max-accuracy-drop", "-1"), "max_accuracy_drop"),
    Case(
        "accuracy-floor-with-ilp",
        lambda t, c: _search(c, "--agent", "ilp", "--max-accuracy-drop", "0.5"),
        "cannot keep an accuracy floor",
    ),
    Case("eps-nan-search", lambda t, c: _search(c, "--attack", "fgsm", "--eps", "nan"), "eps"),
    # --- other numbers
    Case("threads-zero", lambda t, c: ["compare", "--checkpoint", str(c), "--threads", "0"], "threads"),
    Case(
        "lipschitz-beta-negative",
        lambda t, c: ["finetune", "--policy", "p.json", "--lipschitz-beta", "-1", "--out", "d.pt"],
        "lipschitz",
    ),
    Case("train-lr-negative", lambda t, c: _train("--lr", "-1"), "lr"),
    Case("train-batch-zero", lambda t, c: _train("--batch-size", "0"), "batch_size"),
    Case(
        "input-shape-bad",
        lambda t, c: ["latency", "show", "--model", "smallcnn", "--input-shape", "1,0,28"],
        "input-shape",
    ),
    # --- output folders
    Case("out-is-a-file", lambda t, c: _search(c, out=str(_regular_file(t))), "is a file"),
    Case("out-under-a-file", lambda t, c: _search(c, out=str(_regular_file(t) / "sub")), "not writable"),
    Case("out-read-only", lambda t, c: _search(c, out=str(_read_only(t) / "sub")), "not writable"),
    Case(
        "out-holds-other-run-search", lambda t, c: _search(c, out=str(_run_folder(t, "episodes.csv"))), "already holds"
    ),
    Case(
        "out-holds-other-run-sweep",
        lambda t, c: [
            "sweep",
            "--checkpoint",
            str(c),
            "--budgets",
            "0.5x",
            "--out",
            str(_run_folder(t, "pareto.csv")),
            *SEARCH_FAST,
        ],
        "already holds",
    ),
    Case("resume-no-run", lambda t, c: ["search", "--resume", str(_empty(t))], "no search to resume"),
    Case(
        "resume-corrupt-run",
        lambda t, c: ["search", "--resume", str(_write(t, "r/config/job.json", "{oops").parent.parent)],
        "corrupt",
    ),
    Case(
        "resume-old-run-json",
        lambda t, c: ["search", "--resume", str(_write(t, "r/run.json", {"schema": 1, "args": {}}).parent)],
        "older hwsearch",
    ),
    Case("train-out-under-a-file", lambda t, c: _train("--out", str(_regular_file(t) / "fp32.pt")), "fp32.pt"),
    Case("train-out-is-a-folder", lambda t, c: _train("--out", str(_empty(t))), "empty"),
    Case(
        "export-out-under-a-file",
        lambda t, c: ["export", "--policy", "p.json", "--format", "yaml", "--out", str(_regular_file(t) / "p.yaml")],
        "p.yaml",
    ),
]

# --- policy files, through each command that reads one
for _name, _content in BAD_POLICIES.items():
    _expect = {"malformed-json": "JSON", "not-an-object": "object", "wrong-schema": "schema"}.get(_name, "")

    def _make(kind: str, content: Any = _content) -> Setup:
        def setup(t: Path, c: Path) -> list[str]:
            p = str(_write(t, "bad.json", content))
            return {
                "compare": ["compare", "--checkpoint", str(c), "--policy", f"mine={p}", "--fixed", "--out", "rep"],
                "evaluate": ["evaluate", "--policy", p, "--checkpoint", str(c)],
                "show": ["show", "--policy", p],
                "export": ["export", "--policy", p, "--format", "yaml", "--out", "out.yaml"],
            }[kind]

        return setup

    for _kind in ("compare", "evaluate", "show", "export"):
        CASES.append(Case(f"policy-{_name}-{_kind}", _make(_kind), _expect))

for _name, _content in LAYER_MISMATCH.items():
    _expect = "does not have" if _name == "unknown-layer" else "misses"

    def _make2(kind: str, content: Any = _content) -> Setup:
        def setup(t: Path, c: Path) -> list[str]:
            p = str(_write(t, "bad.json", content))
            return {
                "compare": ["compare", "--checkpoint", str(c), "--policy", f"mine={p}", "--fixed", "--out", "rep"],
                "evaluate": ["evaluate", "--policy", p, "--checkpoint", str(c)],
                "show": ["show", "--policy", p, "--checkpoint", str(c)],
                "export": ["export", "--policy", p, "--format", "yaml", "--checkpoint", str(c), "--out", "out.yaml"],
                "latency": ["latency", "show", "--model", "smallcnn", "--policy", p],
            }[kind]

        return setup

    for _kind in ("compare", "evaluate", "show", "export", "latency"):
        CASES.append(Case(f"policy-{_name}-{_kind}", _make2(_kind), _expect))

CASES.append(Case("policy-missing-file", lambda t, c: ["show", "--policy", str(t / "nope.json")], "does not exist"))
CASES.append(
    Case("policy-unknown-extension", lambda t, c: ["show", "--policy", str(_write(t, "p.bin", "x"))], "format")
)
CASES.append(
    Case("policy-not-utf8", lambda t, c: ["show", "--policy", str(_write(t, "p.json", b"\xff\xfe\x00"))], "policy")
)

# --- cost tables, through `latency show` (the --device path and --table) and the search's --device
for _name, (_mutate, _expect) in BAD_TABLES.items():

    def _make3(kind: str, mutate: Any = _mutate) -> Setup:
        def setup(t: Path, c: Path) -> list[str]:
            p = str(_table(mutate)(t))
            if kind == "latency-device":
                return ["latency", "show", "--model", "smallcnn", "--target", p]
            return ["latency", "show", "--model", "smallcnn", "--table", p]

        return setup

    CASES.append(Case(f"table-{_name}-device", _make3("latency-device"), _expect))
    CASES.append(Case(f"table-{_name}-table", _make3("latency-table"), _expect))

CASES += [
    Case(
        "table-missing-file",
        lambda t, c: ["latency", "show", "--model", "smallcnn", "--target", str(t / "no.json")],
        "does not exist",
    ),
    Case(
        "table-malformed-json",
        lambda t, c: ["latency", "show", "--model", "smallcnn", "--target", str(_write(t, "t.json", "{"))],
        "JSON",
    ),
    Case(
        "table-not-json-name",
        lambda t, c: ["latency", "show", "--model", "smallcnn", "--table", str(_write(t, "t.txt", "{}"))],
        "schema",
    ),
    Case("table-flag-not-json", lambda t, c: ["latency", "show", "--model", "smallcnn", "--table", "t.txt"], ".json"),
    Case(
        "table-nan-search",
        lambda t, c: _search(c, "--target", str(_table(_set_cell("latency", float("nan")))(t))),
        "finite",
    ),
    Case(
        "table-bad-unit-compare",
        lambda t, c: ["compare", "--checkpoint", str(c), "--target", str(_table(_set("units", {"latency": "s"}))(t))],
        "unit",
    ),
    Case(
        "table-missing-signature-search",
        lambda t, c: _search(c, "--target", str(_table(_drop_signature)(t))),
        "no entry",
    ),
]


def _tensor_file(tmp: Path) -> Path:
    path = tmp / "tensor.pt"
    torch.save(torch.zeros(3), path)
    return path


def _read_only(tmp: Path) -> Path:
    folder = tmp / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        (folder / "probe").write_text("")
    except OSError:
        return folder
    (folder / "probe").unlink()
    folder.chmod(0o700)
    pytest.skip("running as root: chmod 0o500 does not stop writes (out-under-a-file covers an unwritable --out)")


def _snapshot(root: Path) -> dict[str, tuple[bool, int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (p.is_dir(), st.st_size if not p.is_dir() else 0, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input_gets_one_clear_line(
    case: Case,
    checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # relative and default outputs land in the checked folder
    _write(work, "p.json", _policy_dict())  # a valid policy for cases whose mistake is elsewhere
    argv = case.setup(work, checkpoint)
    before = _snapshot(work)
    capsys.readouterr()
    try:
        code = main(argv)
    finally:
        for p in work.rglob("*"):
            if p.is_dir():
                p.chmod(0o700)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, f"exit {code}; stderr: {err[-2000:]}"
    assert err.startswith("hwsearch: error: ") and "\n" not in err and "Traceback" not in err, err
    assert case.expect.lower() in err.lower(), err
    assert len(err) > len("hwsearch: error: ") + 20, err
    assert not (work / "PWNED").exists(), "the pickled payload ran"
    assert _snapshot(work) == before, "the failed command left something behind or changed a file"


def test_pickle_payload_is_live(checkpoint: Path, tmp_path: Path) -> None:
    """Control for the pickled-code cases: the same file does run its payload when loaded without weights_only."""
    path = _evil_zip(tmp_path, checkpoint)
    torch.load(path, weights_only=False)
    assert (tmp_path / "PWNED").exists()


def test_matrix_is_large_enough() -> None:
    """The issue asks for the whole matrix: keep it from silently shrinking."""
    assert len(CASES) >= 100
