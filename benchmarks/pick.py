"""Does the final pick (``hwsearch.selection``) choose better than the best search reward? On validation data only.

Runs the demo's search (``make demo``'s settings, ``--select-top 0`` so the episodes are the search's own) for
each ``--seeds`` on the demo's checkpoint, then scores every distinct policy it evaluated, and fixed W8A8, image
by image: clean and under the search's attack pair on all 1,000 search-val images, clean on the training images.
It then cuts search-val at random ``--cuts`` times into 700 images that choose (the search's reward: clean
accuracy on all 700, robustness on 200 of them, as ``--robust-images 200``) and 300 that judge, and compares, on
the judging images, the policy each rule chooses: the best reward, or the pick of the K best re-scored with
their clean hits pooled over the choosing and the training images (:func:`hwsearch.selection.select_policy`,
the code the search runs). The test split is never read.

    python -m benchmarks.pick [--seeds 0 1] [--checkpoint runs/demo/fp32.pt]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hwsearch.envs import EnvConfig

from benchmarks._common import ROOT, provenance, write_results
from hwsearch.evaluate import correct_mask
from hwsearch.job import SearchJobConfig, run_search_job
from hwsearch.quant import apply_policy
from hwsearch.quant.fold import fold_batch_norms
from hwsearch.report import learning_figures
from hwsearch.robust.attacks import attack_survivors, search_attacks
from hwsearch.search import EpisodeRecord, SearchConfig, SearchResult
from hwsearch.selection import select_policy
from hwsearch.workflow import prepare

__all__ = ["main"]

TOPS = (3, 5, 10, 20)
JUDGE = 300  # search-val images that judge; the other 700 choose
ROBUST_CHOOSE = 200  # of the choosing images, those the reward's robustness figure is measured on (the demo's)


def _demo_job(checkpoint: Path, seed: int) -> SearchJobConfig:
    """``make demo``'s search, with the pick off."""
    return SearchJobConfig(
        checkpoint=str(checkpoint),
        target="bitfusion-edge",
        budget="latency=0.5x",
        search=SearchConfig(episodes=200, seed=seed),
        robust_weight=5.0,
        max_accuracy_drop=0.0,
        eps=0.1,
        steps=3,
        robust_images=200,
        select_top=0,
    )


def _verdicts(ws: Any, policies: list[Any], eps: float, steps: int) -> dict[str, np.ndarray]:
    """Per policy (rows), per image (columns): clean and robust on search-val, clean on the training images."""
    xv, yv = ws.split("val")
    xt, yt = ws.split("train")
    folded = fold_batch_norms(ws.model, tuple(xv.shape[1:]), xv[:8])
    ids = torch.arange(len(xv))
    clean, robust, train = [], [], []
    for policy in policies:
        q = apply_policy(folded, policy, ws.calibration).eval()
        ok = correct_mask(q, xv, yv).cpu()
        alive = ok.clone()
        for attack in search_attacks(eps, steps):  # the search's cascade: attack only what still stands
            idx = alive.nonzero().squeeze(1)
            alive[idx] = attack_survivors(q, xv[idx], yv[idx], attack, sample_ids=ids[idx], source_model=ws.model)
        clean.append(ok.numpy())
        robust.append(alive.numpy())
        train.append(correct_mask(q, xt, yt).cpu().numpy())
    return {"val": np.stack(clean), "robust": np.stack(robust), "train": np.stack(train)}


def _simulate(
    job: SearchJobConfig,
    episodes: list[EpisodeRecord],
    w8a8: Any,
    v: dict[str, np.ndarray],
    cuts: int,
    seed: int,
) -> dict[str, Any]:
    """Each rule's choice, judged on held-out search-val images, over ``cuts`` random cuts. Rows of ``v``: the
    episodes' distinct policies in order of first appearance, then ``w8a8``."""
    keys = [r.policy.key() for r in episodes]
    row = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    ref = row[w8a8.key()] = len(row)
    clean, robust, train = v["val"].astype(float), v["robust"].astype(float), v["train"].astype(float)
    train_acc = {k: float(train[i].mean()) for k, i in row.items()}
    rng = np.random.default_rng(seed)
    rules = ["best reward"] + [f"pick of the top {k}" for k in TOPS]
    judged: dict[str, list[tuple[float, float, float]]] = {r: [] for r in rules}
    drop = (job.max_accuracy_drop or 0.0) / 100
    for _ in range(cuts):
        perm = rng.permutation(clean.shape[1])
        judge, choose = perm[:JUDGE], perm[JUDGE:]
        acc_c, rob_c = clean[:, choose].mean(1), robust[:, choose[:ROBUST_CHOOSE]].mean(1)
        acc_j, rob_j = clean[:, judge].mean(1), robust[:, judge].mean(1)
        env_c, env_j = (  # the search's reward terms, fixed 8-bit's figures on the choosing / judging images
            EnvConfig(w_acc=job.acc_weight, w_rob=job.robust_weight, acc_ref=a[ref], rob_ref=r[ref], max_acc_drop=drop)
            for a, r in ((acc_c, rob_c), (acc_j, rob_j))
        )
        recs = [
            EpisodeRecord(
                episode=r.episode,
                policy=r.policy,
                reward=env_c.reward(float(acc_c[row[k]]), float(rob_c[row[k]]), r.relative_cost, 1.0),
                accuracy=float(acc_c[row[k]]),
                robust_accuracy=float(rob_c[row[k]]),
                latency_ms=r.latency_ms,
                energy_mj=r.energy_mj,
                size_bits=r.size_bits,
                relative_cost=r.relative_cost,
            )
            for r, k in zip(episodes, keys, strict=True)
        ]
        result = SearchResult(SearchConfig(episodes=len(recs)), recs)
        chosen = {"best reward": result.best}
        for k in TOPS:
            sel = select_policy(
                result,
                env_c,
                lambda p: train_acc[p.key()],
                w8a8,
                top=k,
                val_images=len(choose),
                fresh_images=train.shape[1],
            )
            chosen[f"pick of the top {k}"] = sel.pick.record
        for rule, rec in chosen.items():
            i = row[rec.policy.key()]
            reward = env_j.reward(float(acc_j[i]), float(rob_j[i]), rec.relative_cost, 1.0)
            judged[rule].append((100 * (acc_j[i] - acc_j[ref]), 100 * (rob_j[i] - rob_j[ref]), reward))
    out = {}
    for rule, rows in judged.items():
        a = np.array(rows)
        out[rule] = {
            "accuracy_vs_w8a8_points": float(a[:, 0].mean()),
            "share_more_than_1_point_below_w8a8": float(np.mean(a[:, 0] < -1.0)),
            "robust_vs_w8a8_points": float(a[:, 1].mean()),
            "reward": float(a[:, 2].mean()),
        }
    return out


def _render(data: dict[str, Any]) -> str:
    lines = [
        "# The final pick against the best search reward (validation data only)",
        "",
        f"`make demo`'s search (smallcnn, mnist5k, bitfusion-edge, latency=0.5x, --robust-weight 5, "
        f"--max-accuracy-drop 0, PGD-3 on 200 images), pick off. Each of {data['cuts']} random cuts of search-val "
        f"chooses on 700 images (robustness on 200 of them) and judges on the other {JUDGE}; the pick re-scores "
        f"the K best on the {data['train_images']} training images. Means over the cuts, on the judging images.",
        "",
        "| seed | best episode (phase) | rule | accuracy - W8A8 (points) | cuts > 1 point below W8A8 | "
        "robust - W8A8 (points) | reward |",
        "|---|---|---|---|---|---|---|",
    ]
    for rec in data["records"]:
        phase = f"{rec['best_episode']} ({rec['best_phase']})"
        for rule, r in rec["rules"].items():
            lines.append(
                f"| {rec['seed']} | {phase} | {rule} | {r['accuracy_vs_w8a8_points']:+.2f} | "
                f"{100 * r['share_more_than_1_point_below_w8a8']:.0f}% | {r['robust_vs_w8a8_points']:+.1f} | "
                f"{r['reward']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--checkpoint", default=None, help="the demo's checkpoint (default: trained as make demo does)")
    ap.add_argument("--cuts", type=int, default=400)
    ap.add_argument("--out", default=str(ROOT / "runs" / "pick"))
    args = ap.parse_args(argv)
    from hwsearch.cli import main as cli

    out = Path(args.out)
    ckpt = Path(args.checkpoint) if args.checkpoint else out / "fp32.pt"
    if not ckpt.exists():
        assert cli(["train", "--out", str(ckpt), "--quiet"]) == 0  # make demo's checkpoint (training is seeded)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    ws = prepare(ckpt)
    w8a8 = ws.uniform(8)
    records = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        job = _demo_job(ckpt, seed)
        done = run_search_job(job, out / f"seed{seed}", overwrite=True)
        assert done is not None
        episodes = done.result.episodes
        policies = list({r.policy.key(): r.policy for r in episodes}.values()) + [w8a8]
        verdicts = _verdicts(ws, policies, job.eps, job.steps)
        figures = learning_figures(done.result)
        records.append(
            {
                "seed": seed,
                "episodes": len(episodes),
                "distinct_policies": len(policies) - 1,
                "best_episode": figures["best_episode"],
                "best_phase": figures["best_phase"],
                "rules": _simulate(job, episodes, w8a8, verdicts, args.cuts, seed),
                "seconds": time.perf_counter() - t0,
            }
        )
        print(f"seed {seed}: {records[-1]['seconds']:.0f} s", flush=True)
    payload = {
        "meta": provenance(argv),
        "checkpoint": str(ckpt),
        "cuts": args.cuts,
        "train_images": len(ws.splits.train),
        "records": records,
    }
    write_results("pick", payload, _render)


if __name__ == "__main__":
    main()
