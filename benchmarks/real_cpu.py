"""Search for this CPU, export, and measure what was predicted: the ``ort-cpu`` target end to end.

For smallcnn, resnet20 and mobilenet_v2 (trained on the embedded mnist5k), on a fresh ``ort-cpu`` cache (so the
cells are measured in this run, as a first use would):

1. a DDPG search on ``ort-cpu`` (ONNX Runtime on 1 thread; the search scores policies on the threads it chooses;
   clean objective) at the budget halfway between the all-W8A8 and the all-float policies' predicted latency;
2. for all-float, all-W8A8, the searched policy and two seeded random mixes of float / W8A8 / W4A8 / W4A32, at
   1 thread and at every core: the policy exported (``--onnx-style kernels``, the int8 form exact on this CPU),
   its latency predicted by ``ort-cpu`` and measured by ONNX Runtime at batch 1 (median of three rounds, the
   file and the float model timed in turn), the float model's, the prediction anchored on the float model's time now
   (:attr:`hwsearch.verify.Verified.anchored_ms`: the predicted speed-up over float), and the top-1 agreement on the test split with the fake-quant model in the file's form (the kernels
   export's roundings, as the search scored it) and with the plain one.

All-float and all-W8A8 are among the policies ``ort-cpu`` calibrates the rest of the graph on (with alternating
float / W8A8 layers and five seeded random mixes of the search's choices, fitted by least squares on top of the
cells and the measured hand-overs between consecutive layers; :mod:`hwsearch.hardware.ort_cpu`), so their
predictions are fits (``calibration: true``); the searched policy and
this benchmark's random mixes (other seeds, other choices) are predictions.

    python -m benchmarks.real_cpu [--models smallcnn resnet20 mobilenet_v2] [--episodes 60]

Writes benchmarks/results/real_cpu.json (``rows``: model, policy, threads, predicted_ms, measured_ms, fp32_ms,
agreement, ...) and real_cpu.md. Run it on a quiet machine: the figures are wall-clock times of ~0.1-1 ms. It
measures every cell and calibration anew in a temporary cache (``--reuse-cache`` prices from ``$HWSEARCH_CACHE``):
cells timed minutes or days earlier, when a shared host ran faster or slower, would skew every prediction.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import _common
from benchmarks._common import RESULTS, provenance, write_results
from hwsearch.cores import available_cores
from hwsearch.hardware.cost import policy_cost
from hwsearch.hardware.ort_cpu import OrtCpuCostModel
from hwsearch.job import SearchJobConfig, run_search_job
from hwsearch.onnx_export import export_onnx
from hwsearch.pipelines import BaselineConfig, train_baseline
from hwsearch.policy import FLOAT_BITS, Policy, uniform_policy
from hwsearch.search import SearchConfig
from hwsearch.verify import verify_onnx
from hwsearch.workflow import Workspace, prepare

MODELS = {
    "smallcnn": ("speed_smallcnn.pt", 8),
    "resnet20": ("speed_resnet20.pt", 2),
    "mobilenet_v2": ("real_mobilenet_v2.pt", 3),
}
MIX_CHOICES = ((FLOAT_BITS, FLOAT_BITS), (8, 8), (4, 8), (4, FLOAT_BITS))


def _checkpoint(model: str) -> Path:
    name, epochs = MODELS[model]
    path = RESULTS / name  # shared with benchmarks.search_speed / robust_fidelity (gitignored)
    if not path.exists():
        train_baseline(BaselineConfig(model=model, epochs=epochs), path)
    return path


def _bits(policy: Policy) -> dict[str, int]:
    """How many layers run each way."""
    out: dict[str, int] = {}
    for b in policy.layers.values():
        key = "float" if b.w == FLOAT_BITS and b.a == FLOAT_BITS else f"W{b.w}A{b.a}"
        out[key] = out.get(key, 0) + 1
    return out


def _search(ws: Workspace, ckpt: Path, cm: OrtCpuCostModel, episodes: int, work: Path) -> tuple[Policy, dict]:
    ref = policy_cost(cm, ws.layers, ws.uniform(8)).latency_ms
    fp = policy_cost(cm, ws.layers, uniform_policy(ws.layer_names, FLOAT_BITS)).latency_ms
    budget = round((1 + fp / ref) / 2, 3)
    job = SearchJobConfig(
        checkpoint=str(ckpt),
        target="ort-cpu",
        budget=f"latency={budget}x",
        search=SearchConfig(episodes=episodes, warmup_episodes=max(episodes // 4, 1), seed=0),
        threads=None,  # the scoring's threads: every core, as a search chooses (the target's 1 is ORT's)
    )
    t0 = time.perf_counter()
    done = run_search_job(job, work / f"search-{ws.model_name}", overwrite=True)
    best = done.result.best
    info = {
        "model": ws.model_name,
        "budget": job.budget,
        "episodes": episodes,
        "best_episode": best.episode,
        "best_val_accuracy": best.accuracy,
        "relative_latency": best.relative_cost,
        "wall_s": time.perf_counter() - t0,
        "bits": _bits(best.policy),
    }
    return best.policy, info


def _policies(ws: Workspace, searched: Policy, seed: int) -> list[tuple[str, Policy, bool]]:
    names = ws.layer_names
    rng = random.Random(seed)
    mixes = [(f"random-mix-{i}", Policy({n: rng.choice(MIX_CHOICES) for n in names}, {}), False) for i in range(2)]
    return [
        ("all-float", uniform_policy(names, FLOAT_BITS), True),
        ("all-int8", ws.uniform(8), True),
        ("searched", searched, False),
        *mixes,
    ]


def run(models: list[str], episodes: int, thread_counts: list[int]) -> dict[str, Any]:
    rows, searches = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["HWSEARCH_CACHE"] = str(work / "cache")  # a first use: every cell is measured in this run
        for model in models:
            ckpt = _checkpoint(model)
            ws = prepare(ckpt)
            measured: dict[int, float] = {}
            for threads in thread_counts:
                t0 = time.perf_counter()
                cm = OrtCpuCostModel(threads)
                cm.calibrate(ws)
                measured[threads] = time.perf_counter() - t0
            cm1 = OrtCpuCostModel(1)
            cm1.calibrate(ws)
            searched, info = _search(ws, ckpt, cm1, episodes, work)
            info["first_use_measure_s"] = measured
            searches.append(info)
            print(f"{model}: searched {info['bits']} at {info['budget']} in {info['wall_s']:.0f} s")
            for name, policy, calibration in _policies(ws, searched, seed=len(rows)):
                for threads in thread_counts:
                    cm = OrtCpuCostModel(threads)
                    path = export_onnx(
                        ws,
                        policy,
                        None,
                        work / f"{model}-{name}.onnx",
                        ws.splits.input_shape,
                        int8_form=cm.int8_form,
                        style="kernels",
                    )
                    v = verify_onnx(ws, path, f"ort-cpu:{threads}")
                    row = {
                        "model": model,
                        "policy": name,
                        "threads": threads,
                        "calibration": calibration,
                        "bits": _bits(policy),
                        "layers": {n: [b.w, b.a] for n, b in policy.layers.items()},
                        **v.to_dict(),
                        "file_bytes": path.stat().st_size,
                    }
                    rows.append(row)
                    print(
                        f"  {name:13s} {threads}t predicted {v.predicted_ms:.4f} measured {v.measured_ms:.4f} "
                        f"({100 * v.error:+.1f}%; anchored {100 * v.error_anchored:+.1f}%) fp32 {v.fp32_ms:.4f} "
                        f"agreement {100 * v.agreement:.2f}%"
                    )
    return {"rows": rows, "searches": searches}


def render(data: dict[str, Any]) -> str:
    lines = [
        "# ort-cpu: predicted vs measured latency of exported models",
        "",
        "Batch 1; measured = ONNX Runtime (CPU provider), the median of three rounds a second apart, the file and",
        "the float model timed in turn; `fit` marks two of the policies the target calibrates on (all-float,",
        "all-W8A8; with alternating and five seeded random mixes, fitted by least squares on top of the cells and",
        "the hand-overs measured between consecutive layers), so only the other rows test the prediction.",
        "`anchored` is the",
        "prediction at the float model's speed now (predicted x float measured / float predicted): the predicted",
        "speed-up over float, which is what the search's relative budgets rely on, against the measured one.",
        "",
        "| model | policy | threads | layers | predicted ms | measured ms | error | anchored ms | anchored error "
        "| fp32 ms | speed-up vs fp32 | agreement | plain agreement | ONNX acc | plain fake-quant acc | file KiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        bits = ", ".join(f"{k} x{v}" for k, v in sorted(r["bits"].items()))
        tag = " (fit)" if r["calibration"] else ""
        lines.append(
            f"| {r['model']} | {r['policy']}{tag} | {r['threads']} | {bits} | {r['predicted_ms']:.4f} | "
            f"{r['measured_ms']:.4f} | {100 * r['error']:+.1f}% | {_ms(r, 'anchored_ms')} | "
            f"{_pct(r, 'error_anchored', 1, signed=True)} | {r['fp32_ms']:.4f} | {r['speedup_vs_fp32']:.2f}x | "
            f"{100 * r['agreement']:.2f}% | {_pct(r, 'agreement_plain')} | {100 * r['accuracy_onnx']:.2f}% | "
            f"{_pct(r, 'accuracy_plain')} | {r['file_bytes'] / 1024:.0f} |"
        )
    held = [r for r in data["rows"] if not r["calibration"]]
    if held:
        worst = max(held, key=lambda r: abs(r["error"]))
        within = sum(abs(r["error"]) <= 0.10 for r in held)
        lines += [
            "",
            f"Predicted rows (not calibration): {within} of {len(held)} within 10% of measured; worst "
            f"{100 * worst['error']:+.1f}% ({worst['model']} {worst['policy']}, {worst['threads']} thread(s)). "
            f"Lowest agreement over all rows: {100 * min(r['agreement'] for r in data['rows']):.2f}%.",
        ]
        anchored = [r for r in data["rows"] if "error_anchored" in r and r["policy"] != "all-float"]
        if anchored:
            worst_a = max(anchored, key=lambda r: abs(r["error_anchored"]))
            lines += [
                "",
                f"Anchored on the float model's time now, every row but all-float (the anchor): "
                f"{sum(abs(r['error_anchored']) <= 0.10 for r in anchored)} of {len(anchored)} within 10% of "
                f"measured, worst {100 * worst_a['error_anchored']:+.1f}% ({worst_a['model']} {worst_a['policy']}, "
                f"{worst_a['threads']} thread(s)); of the predicted rows alone, "
                f"{sum(abs(r['error_anchored']) <= 0.10 for r in anchored if not r['calibration'])} of "
                f"{sum(not r['calibration'] for r in anchored)}.",
            ]
        lines += [
            "",
            "`agreement` is with the fake-quant model in the file's form (the deployment's roundings: biases on the",
            "accumulator grid, an 8-bit output where no quantized layer alone reads a layer's), `plain agreement`",
            "with the fake-quant model without them (`hwsearch.verify`).",
        ]
    lines += [
        "",
        "Repeatability: every row times the same float model again (`fp32 ms`); its spread in this run is the",
        "noise floor any prediction error is read against:",
        "",
    ]
    for model in dict.fromkeys(r["model"] for r in data["rows"]):
        for threads in sorted({r["threads"] for r in data["rows"] if r["model"] == model}):
            fp = [r["fp32_ms"] for r in data["rows"] if r["model"] == model and r["threads"] == threads]
            mid = sorted(fp)[len(fp) // 2]
            lines.append(
                f"- {model}, {threads} thread(s): float model {min(fp):.4f}-{max(fp):.4f} ms over {len(fp)} timings "
                f"({100 * (min(fp) / mid - 1):+.1f}% / {100 * (max(fp) / mid - 1):+.1f}% around the median)"
            )
    lines += [
        "",
        "Searches (DDPG on ort-cpu at 1 thread, clean objective, scored with the kernels export's roundings):",
        "",
    ]
    for s in data["searches"]:
        lines.append(
            f"- {s['model']}: {s['budget']}, {s['episodes']} episodes in {s['wall_s']:.0f} s, best episode "
            f"{s['best_episode']} (val accuracy {100 * s['best_val_accuracy']:.2f}%, "
            f"{s['relative_latency']:.3f}x W8A8's predicted latency): {s['bits']}"
        )
    return "\n".join(lines)


def _pct(row: dict[str, Any], key: str, digits: int = 2, signed: bool = False) -> str:
    """A percentage a row may lack (runs before the plain fake-quant model was compared, or before anchoring)."""
    if key not in row:
        return "-"
    return f"{100 * row[key]:{'+' if signed else ''}.{digits}f}%"


def _ms(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.4f}" if key in row else "-"


def readme_table(data: dict[str, Any]) -> str:
    """The README's table: every model's float, W8A8 and searched rows at each thread count."""
    meta = data["meta"]
    lines = [
        "| model | policy | threads | predicted ms | measured ms | error | anchored error | float ms | speed-up "
        "| agreement | plain agreement | accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        if r["policy"] not in ("all-float", "all-int8", "searched"):
            continue
        tag = " (fit)" if r["calibration"] else ""
        lines.append(
            f"| {r['model']} | {r['policy']}{tag} | {r['threads']} | {r['predicted_ms']:.3f} | {r['measured_ms']:.3f} "
            f"| {100 * r['error']:+.0f}% | {_pct(r, 'error_anchored', 0, signed=True)} | {r['fp32_ms']:.3f} "
            f"| {r['speedup_vs_fp32']:.2f}x | "
            f"{100 * r['agreement']:.1f}% | {_pct(r, 'agreement_plain', 1)} | {100 * r['accuracy_onnx']:.1f}% |"
        )
    lines.append(
        f"\n`python -m benchmarks.real_cpu` at {meta['commit'][:8]}, {meta['date'][:10]}, {meta['machine']['cpu']} "
        f"({meta['machine']['cores']} cores); every row, the random mixes and the noise floor are in "
        "`benchmarks/results/real_cpu.md`."
    )
    return "\n".join(lines)


def update_readme(data: dict[str, Any], readme: Path = RESULTS.parents[1] / "README.md") -> bool:
    """Replace the README's block between the markers with this run's table (False when it has no markers)."""
    return _common.update_readme("real_cpu", readme_table(data), readme)


def rerender() -> None:
    """Render real_cpu.md and the README block again from the JSON a run wrote (no measuring)."""
    _common.rerender("real_cpu", render, readme_table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--episodes", type=int, default=60)
    ap.add_argument("--threads", nargs="+", default=["1", "all"], help="thread counts to time (all = every core)")
    ap.add_argument("--render-only", action="store_true", help="re-render real_cpu.md and the README table")
    ap.add_argument(
        "--reuse-cache",
        action="store_true",
        help="price with the cells and calibrations already in $HWSEARCH_CACHE (default: measure them all in this "
        "run, so predictions and measurements see the machine in the same state)",
    )
    args = ap.parse_args()
    if args.render_only:
        rerender()
        return
    counts = sorted({available_cores() if t == "all" else int(t) for t in args.threads})
    with tempfile.TemporaryDirectory() as fresh:
        if not args.reuse_cache:  # a shared host's speed drifts by tens of percent over minutes
            os.environ["HWSEARCH_CACHE"] = fresh
        payload = {"meta": provenance(), **run(args.models, args.episodes, counts)}
    js, _ = write_results("real_cpu", payload, render)
    import json

    update_readme(json.loads(js.read_text(encoding="utf-8")))


if __name__ == "__main__":
    main()
